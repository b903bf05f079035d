"""contrastkit.training.dist: no-ops on one process; on 2 gloo CPU processes the losses equal one
process.

The 2-process run spawns once per module (a fixture); each rank holds half of one
float64 batch, computes every loss the DDP way and saves loss values and input
gradients. The tests compare them with the plain single-process losses on the whole
batch: the mean of the ranks' losses equals the full loss, and the concatenated input
gradients divided by the world size (what DDP's averaging does) equal the full gradients.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from contrastkit.training import dist
from contrastkit.training.losses import (
    byol_loss,
    clip_loss,
    info_nce,
    nt_xent,
    siglip_loss,
    sinkhorn,
    swav_loss,
)
from tests.helpers import free_port

WORLD = 2
N = 8  # global batch; each rank holds N // WORLD rows
LOSSES = ["nt_xent", "clip", "clip_multi", "siglip_multi", "info_nce_in_batch",
          "info_nce_queue", "byol", "swav"]  # fmt: skip
# Multi-positive caption groups with copies on both ranks and across them.
GROUPS = torch.tensor([0, 1, 0, 2, 1, 3, 0, 2])


def _inputs() -> dict[str, torch.Tensor]:
    """One fixed float64 global batch (identical in every process: seeded generator)."""
    g = torch.Generator().manual_seed(0)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    return {
        "z1": r(N, 5),
        "z2": r(N, 5),
        "k": r(N, 5),
        "queue": torch.nn.functional.normalize(r(6, 5), dim=1),
        "scores": torch.nn.functional.normalize(r(4, N, 6), dim=2),  # 2 global + 2 small crops
        "x": r(N, 3),
        "w": r(WORLD, N, 3),  # a different weight per rank for the gather test
    }


def _leaf(t: torch.Tensor, rows: slice) -> torch.Tensor:
    return t[rows].clone().requires_grad_()


def _one_loss(name: str, inp: dict[str, torch.Tensor], rows: slice) -> dict[str, torch.Tensor]:
    """Loss `name` on `rows` of the batch: {"loss": value, "<input>": its gradient}."""
    z1, z2 = _leaf(inp["z1"], rows), _leaf(inp["z2"], rows)
    leaves = {"z1": z1, "z2": z2}
    if name == "nt_xent":
        loss = nt_xent(z1, z2, 0.3)
    elif name == "clip":
        scale = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
        leaves["scale"] = scale
        loss = clip_loss(z1, z2, scale)
    elif name in ("clip_multi", "siglip_multi"):
        scale = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
        leaves["scale"] = scale
        if name == "clip_multi":
            loss = clip_loss(z1, z2, scale, GROUPS[rows])
        else:
            loss = siglip_loss(z1, z2, scale, torch.tensor(-2.0, dtype=torch.float64), GROUPS[rows])
    elif name == "info_nce_in_batch":
        del leaves["z2"]  # keys as MoCo makes them: no gradient
        loss = info_nce(z1, inp["k"][rows], None, 0.2)
    elif name == "info_nce_queue":
        del leaves["z2"]
        loss = info_nce(z1, inp["k"][rows], inp["queue"], 0.2)
    elif name == "byol":
        del leaves["z2"]  # the target side is detached inside
        loss = byol_loss(z1, z2)
    else:
        crops = [_leaf(s, rows) for s in inp["scores"]]
        leaves = {f"crop{i}": c for i, c in enumerate(crops)}
        codes = [sinkhorn(c, 0.05, 3) for c in crops[:2]]
        loss = swav_loss(crops, codes, 0.1)
    loss.backward()
    out = {"loss": loss.detach()}
    for key, leaf in leaves.items():
        assert leaf.grad is not None, (name, key)
        out[key] = leaf.grad
    return out


def _gather_grad(inp: dict[str, torch.Tensor], rows: slice, rank: int) -> torch.Tensor:
    """Rank `rank`'s loss sum(w[rank] * gathered**2): its gradient needs every rank's share."""
    x = _leaf(inp["x"], rows)
    (inp["w"][rank] * dist.gather_with_grad(x) ** 2).sum().backward()
    assert x.grad is not None
    return x.grad


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    assert dist.init_from_env(device="cpu")
    try:
        inp = _inputs()
        rows = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
        res: dict[str, Any] = {
            "rank": dist.rank(),
            "world": dist.world_size(),
            "main": dist.is_main(),
            "gathered": dist.gather_with_grad(inp["x"][rows]),
            "gathered_no_grad": dist.gather_no_grad(inp["x"][rows]),
            "gather_grad": _gather_grad(inp, rows, rank),
            "sinkhorn": sinkhorn(inp["scores"][0][rows], 0.05, 3),
            "sum": dist.all_reduce_sum_(torch.tensor([rank + 1.0])),
            "mean": dist.all_reduce_mean(torch.tensor([rank + 1.0])),
            "broadcast": dist.broadcast_(torch.tensor([rank + 5.0]), src=1),
        }
        res.update({name: _one_loss(name, inp, rows) for name in LOSSES})
        dist.barrier()
        torch.save(res, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.cleanup()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Run `_worker` on 2 gloo processes (a 300-s guard against a hang, generous for a busy
    machine) and load what each rank saved."""
    out = tmp_path_factory.mktemp("dist")
    ctx = mp.spawn(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=False)
    assert ctx is not None
    deadline = time.monotonic() + 300
    while not ctx.join(timeout=1):  # raises if a rank raised
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("2-process gloo run timed out")
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b| (shapes must agree)."""
    assert a.shape == b.shape
    return float((a - b).abs().max())


def test_collectives(ranks: list[dict[str, Any]]) -> None:
    inp = _inputs()
    for r, res in enumerate(ranks):
        assert (res["rank"], res["world"], res["main"]) == (r, WORLD, r == 0)
        _close(res["gathered"], inp["x"])  # rank order
        _close(res["gathered_no_grad"], inp["x"])
        assert res["sum"].item() == 3.0 and res["mean"].item() == 1.5
        assert res["broadcast"].item() == 6.0


def test_gather_with_grad_gradient_equals_single_process(ranks: list[dict[str, Any]]) -> None:
    inp = _inputs()
    x = inp["x"].clone().requires_grad_()
    torch.stack([(inp["w"][r] * x**2).sum() for r in range(WORLD)]).sum().backward()
    assert x.grad is not None
    _close(torch.cat([res["gather_grad"] for res in ranks]), x.grad)


def test_sinkhorn_over_ranks_equals_full_batch(ranks: list[dict[str, Any]]) -> None:
    full = sinkhorn(_inputs()["scores"][0], 0.05, 3)
    assert _max_diff(torch.cat([res["sinkhorn"] for res in ranks]), full) <= 1e-6


@pytest.mark.parametrize("name", LOSSES)
def test_loss_and_grads_over_ranks_equal_full_batch(ranks: list[dict[str, Any]], name: str) -> None:
    full = _one_loss(name, _inputs(), slice(None))
    parts = [res[name] for res in ranks]
    assert _max_diff(torch.stack([p["loss"] for p in parts]).mean(), full["loss"]) <= 1e-6
    for key, grad in full.items():
        if key == "loss":
            continue
        if key == "scale":  # a replicated parameter: DDP averages its gradients
            got = torch.stack([p[key] for p in parts]).mean()
        else:  # DDP averages over ranks: the global-batch gradient divided by the world
            got = torch.cat([p[key] for p in parts]) / WORLD
        assert _max_diff(got, grad) <= 1e-6, key


# ---------------------------------------------------------------- one process


def test_single_process_helpers_are_no_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not dist.is_dist()
    assert (dist.rank(), dist.world_size(), dist.is_main()) == (0, 1, True)
    x = torch.randn(3, 2, requires_grad=True)
    gathered = dist.gather_with_grad(x)
    gathered.sum().backward()
    assert gathered is x and x.grad is not None and torch.equal(x.grad, torch.ones(3, 2))
    assert not dist.gather_no_grad(x).requires_grad
    y = torch.tensor([2.0, 3.0])
    assert dist.all_reduce_sum_(y) is y and y.tolist() == [2.0, 3.0]
    assert dist.broadcast_(y) is y
    mean = dist.all_reduce_mean(y)
    assert mean is not y and torch.equal(mean, y)
    dist.barrier()
    dist.cleanup()
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert dist.init_from_env() is False and not dist.is_dist()
