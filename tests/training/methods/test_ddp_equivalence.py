"""Every method under 2-process DDP (gloo, CPU) equals one process on the whole batch.

Two ranks each build the method from the same seed, wrap it in DistributedDataParallel
as training/engine/trainer.py does, and take STEPS training steps on their half of the same
pre-made views (float64; SwAV float32), in the engine's order: forward -> backward ->
on_before_step -> optimiser -> EMA -> on_after_step. The parent process runs the same
steps on the whole batch without a process group, meanwhile. Compared per step: the
rank-mean loss, every parameter's (DDP-averaged) gradient, and the whole state_dict
afterwards (weights, EMA targets, MoCo's and SwAV's queues, extra state).

Encoders are per-sample (the tiny GroupNorm backbone, LayerNorm heads, a transformer
text tower), so only the methods' cross-rank logic can make the runs differ. MoCo, BYOL
and SwAV cast to float32 in places, so they get float32-size tolerances.

`clip_ft` is CLIP fine-tuning a whole open_clip model (`--init-from open_clip:...`,
contrastkit.training.engine.clip_start): a tiny ViT + text transformer whose towers and temperature
the method adopts, as the engine builds it from a checkpoint's recorded architecture.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from contrastkit.training import dist
from contrastkit.training.encoders.nets.backbones import BackboneSpec, build_backbone
from contrastkit.training.engine.clip_start import rebuild_start
from contrastkit.training.engine.optim import build_optimizer, param_groups
from contrastkit.training.methods import Method, MethodContext, MomentumMethod, Views, get_method
from contrastkit.training.methods.clip import CLIP
from contrastkit.training.momentum import update_momentum
from tests.helpers import TINY_CLIP_CFG, free_port

WORLD, B = 2, 4  # processes, samples per process
N = WORLD * B  # the global batch
SIZE, SMALL, STEPS = 16, 8, 2
HEAD = {"proj_hidden": 16, "proj_dim": 8, "head_norm": "layer"}
PARAMS: dict[str, dict[str, Any]] = {
    "simclr": HEAD,
    # a queue of 3 global batches: after 2 steps it still holds some initial rows
    "moco": HEAD | {"queue_size": 3 * N, "base_momentum": 0.9, "final_momentum": 0.9},
    "byol": HEAD | {"pred_hidden": 16, "base_momentum": 0.9, "final_momentum": 0.99},
    # queue of one global batch: full after step 0, so step 1's Sinkhorn runs over it;
    # prototypes frozen for step 0 only, so both on_before_step branches run
    "swav": HEAD | {"n_prototypes": 6, "n_small_crops": 2, "small_size": SMALL,
                    "queue_length": N, "freeze_prototypes_steps": 1},
    # centre fed by every rank; last layer frozen for step 0 only, teacher temperature
    # warming up over both steps
    "dino": HEAD | {"out_dim": 6, "n_small_crops": 2, "small_size": SMALL,
                    "base_momentum": 0.9, "final_momentum": 0.99, "freeze_last_layer_epochs": 0.25,
                    "teacher_temp": 0.07, "warmup_teacher_temp_epochs": 0.5},
    "clip": {"embed_dim": 8, "text_tower": "transformer", "text_width": 16,
             "text_layers": 1, "text_heads": 2, "context_length": 8},
    "barlow": HEAD | {"lambd": 0.1},
    "vicreg": HEAD,
    "simsiam": HEAD | {"pred_hidden": 16},
}  # fmt: skip
# CLIP with SigLIP's sigmoid loss; bias 0, not -10: each negative then weighs log 2, so a
# rank that saw only its own texts gives a visibly different loss (test_half_batch...)
PARAMS["siglip"] = PARAMS["clip"] | {"loss": "siglip", "init_logit_bias": 0.0}
PARAMS["clip_ft"] = {}  # a pretrained open_clip model's own towers (see _build)
METHOD = {"siglip": "clip", "clip_ft": "clip"}  # which registered method a case trains
FT_SIZE = int(TINY_CLIP_CFG["vision_cfg"]["image_size"])  # the ViT takes only its own size
METHODS = list(PARAMS)
# SwAV stays float32: its Sinkhorn runs in float32 and cannot mix in a float64 queue.
DTYPE = {name: torch.float32 if name == "swav" else torch.float64 for name in METHODS}
# Relative tolerance (of the largest reference value): float64 end to end, or float32 casts.
# Measured worst cases: simclr 4e-15, clip 4e-11 (AdamW divides tiny gradients by their
# own size), moco/byol 2e-7 (loss), swav 1.2e-6 (gradients).
REL = {"simclr": 1e-9, "clip": 1e-8, "siglip": 1e-8, "clip_ft": 1e-8, "moco": 2e-5,
       "byol": 2e-5, "swav": 5e-5, "dino": 1e-9, "barlow": 1e-8, "vicreg": 1e-8,
       "simsiam": 1e-8}  # fmt: skip
# State that the steps must change (else comparing states after the steps proves little).
MOVED = {
    "simclr": ["backbone.body.0.weight"],
    "moco": ["queue", "key_backbone.body.0.weight"],
    "byol": ["target_projector.0.weight"],
    "swav": ["queue", "prototypes.layer.weight"],
    "dino": ["center", "head.last.weight", "teacher_head.last.weight"],
    "clip": ["logit_scale", "text.model.token_embedding.weight"],
    "siglip": ["logit_scale", "logit_bias", "text.model.token_embedding.weight"],
    "clip_ft": ["logit_scale", "backbone.conv1.weight", "text.token_embedding.weight"],
    "barlow": ["backbone.body.0.weight", "projector.0.weight"],
    "vicreg": ["backbone.body.0.weight", "projector.0.weight"],
    "simsiam": ["backbone.body.0.weight", "predictor.0.weight"],
}
TIMEOUT_S = 300  # a guard against a hang, generous for a busy machine

Record = dict[str, Any]  # one step: {"loss": Tensor, "grads": {name: Tensor}, "state": {...}}


def _build(name: str, world: int) -> Method:
    """The method in DTYPE, initialised identically in every process (fixed seed)."""
    torch.manual_seed(0)
    start, size = None, SIZE
    if name == "clip_ft":  # the architecture as a checkpoint records it, seeded weights
        start = rebuild_start({"reference": "test", "name": None, "model_cfg": TINY_CLIP_CFG,
                               "tokenizer": {"kind": "open_clip", "context_length": 16},
                               "preprocess": {"size": FT_SIZE}})  # fmt: skip
        backbone, feat_dim = start.model.get_submodule("visual"), start.embed_dim
        size = FT_SIZE
    else:
        backbone, feat_dim = build_backbone(BackboneSpec("tiny"))
    ctx = MethodContext(torch.device("cpu"), size, STEPS, 4, N, world_size=world, start=start)
    cls = get_method(METHOD.get(name, name))
    return cls(backbone, feat_dim, cls.Params(**PARAMS[name]), ctx).to(DTYPE[name])


def _views(method: Method, name: str, step: int) -> Views:
    """Step `step`'s views of the whole global batch (DTYPE crops, CLIP token ids)."""
    g = torch.Generator().manual_seed(100 + step)
    multi = [SIZE, SIZE, SMALL, SMALL]
    sizes = {"swav": multi, "dino": multi, "clip": [SIZE], "siglip": [SIZE], "clip_ft": [FT_SIZE]}
    crops = [
        torch.randn(N, 3, s, s, generator=g, dtype=DTYPE[name])
        for s in sizes.get(name, [SIZE, SIZE])
    ]
    if METHOD.get(name, name) != "clip":
        return Views(crops=crops)
    # repeated captions, within a rank and across ranks: the multi-positive mask (on by
    # default) must pair samples of different ranks as the single process does
    captions = [f"a photo of {i % 3} in batch {step}" for i in range(N)]
    assert isinstance(method, CLIP)
    texts = method.text.prepare(captions, torch.device("cpu"))
    return Views(crops=crops, n_global=1, texts=texts)


def _rows(views: Views, rows: slice) -> Views:
    texts = None if views.texts is None else {k: v[rows] for k, v in views.texts.items()}
    return Views([c[rows] for c in views.crops], views.n_global, texts)


def _train(name: str, rows: slice, steps: int = STEPS) -> list[Record]:
    """`steps` engine-style steps on `rows` of each step's views; DDP when a group is up."""
    method = _build(name, dist.world_size())
    model: nn.Module = method
    if dist.is_dist():
        model = nn.parallel.DistributedDataParallel(method, broadcast_buffers=False)
    cls = type(method)
    groups = param_groups(method, cls.default_weight_decay, method.no_weight_decay())
    # the unscaled per-256 lr, so that each step moves the weights visibly
    optimizer = build_optimizer(cls.default_optimizer, groups, cls.default_lr, 0.9)
    records: list[Record] = []
    for step in range(steps):
        out = model(_rows(_views(method, name, step), rows))
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        method.on_before_step(step)
        grads = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
        optimizer.step()
        if isinstance(method, MomentumMethod):
            for online, target in method.momentum_pairs():
                update_momentum(online, target, method.momentum_at((step + 1) / STEPS))
        method.on_after_step(step)
        state = {k: v.clone() for k, v in method.state_dict().items()}
        records.append({"loss": dist.all_reduce_mean(out.loss), "grads": grads, "state": state})
    return records


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    assert dist.init_from_env(device="cpu")
    try:
        rows = slice(rank * B, (rank + 1) * B)
        result = {name: _train(name, rows) for name in METHODS}
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.cleanup()


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """One intra-op thread while the ranks run: on 2 cores, OpenMP threads spinning
    against the ranks made the (tiny) reference run ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(single-process records per method, [rank 0's, rank 1's records per method]).

    The reference runs here while the two ranks run, to overlap the ranks' start-up.
    """
    out = tmp_path_factory.mktemp("ddp")
    ctx = mp.spawn(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=False)
    assert ctx is not None
    deadline = time.monotonic() + TIMEOUT_S
    try:
        with _one_thread(), torch.random.fork_rng():
            single = {name: _train(name, slice(None)) for name in METHODS}
        while not ctx.join(timeout=1):  # raises if a rank raised
            if time.monotonic() > deadline:
                pytest.fail(f"2-process DDP run did not finish in {TIMEOUT_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return single, [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def _close(got: torch.Tensor, want: torch.Tensor, rel: float, what: str) -> None:
    """Equal up to `rel` times the largest |want| (exactly, for integer tensors)."""
    assert got.shape == want.shape and got.dtype == want.dtype, what
    if not want.is_floating_point():
        assert torch.equal(got, want), what
        return
    err = float((got - want).abs().max())
    scale = max(float(want.abs().max()), 1e-12)
    assert err <= rel * scale, f"{what}: max |diff| {err:.3g} > {rel:g} x {scale:.3g}"


@pytest.mark.parametrize("name", METHODS)
def test_loss_equals_single_process(runs: Any, name: str) -> None:
    single, ranks = runs
    for step, want in enumerate(single[name]):
        for r, res in enumerate(ranks):
            got = res[name][step]["loss"]
            err = float((got - want["loss"]).abs()) / max(float(want["loss"].abs()), 1e-12)
            assert err <= REL[name], f"rank {r} step {step}: relative loss error {err:.3g}"


@pytest.mark.parametrize("name", METHODS)
def test_gradients_equal_single_process(runs: Any, name: str) -> None:
    single, ranks = runs
    for step, want in enumerate(single[name]):
        grads = want["grads"]
        assert grads and any(float(g.abs().max()) > 0 for g in grads.values())
        for r, res in enumerate(ranks):
            got = res[name][step]["grads"]
            assert sorted(got) == sorted(grads), f"rank {r} step {step}: parameters with grads"
            for key, g in grads.items():
                _close(got[key], g, REL[name], f"rank {r} step {step} grad {key}")


@pytest.mark.parametrize("name", METHODS)
def test_state_after_steps_equals_single_process(runs: Any, name: str) -> None:
    """Weights after the optimiser, EMA targets, queues (fed by every rank), extra state."""
    single, ranks = runs
    for step, want in enumerate(single[name]):
        state = want["state"]
        for r, res in enumerate(ranks):
            got = res[name][step]["state"]
            assert sorted(got) == sorted(state)
            for key, v in state.items():
                _close(got[key], v, REL[name], f"rank {r} step {step} {key}")
    # the steps change what they should (else the comparison above would be vacuous)
    first, last = single[name][0]["state"], single[name][-1]["state"]
    for key in MOVED[name]:
        assert not torch.equal(first[key], last[key]), key


@pytest.mark.parametrize(
    "name", ["simclr", "moco", "swav", "clip", "siglip", "clip_ft", "barlow", "vicreg"]
)
def test_half_batch_alone_differs(runs: Any, name: str) -> None:
    """A rank that ignored the other rank's samples would give another loss: the loss
    comparison above can fail. (MoCo's step 0 negatives are the queue; step 1's queue
    then holds the other rank's keys.)"""
    single, _ = runs
    step = 1 if name == "moco" else 0
    with _one_thread(), torch.random.fork_rng():
        halves = [_train(name, slice(r * B, (r + 1) * B), step + 1) for r in range(WORLD)]
    mean = torch.stack([h[step]["loss"] for h in halves]).mean()
    assert abs(float(mean - single[name][step]["loss"])) > 1e-3
