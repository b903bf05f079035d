"""Config, schedule, optimisers, checkpoints, metrics and kNN: the engine's parts."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from contrastkit.training.config import ConfigError, TrainConfig, build_config, parse_overrides
from contrastkit.training.engine.checkpoint import (
    Checkpoint,
    CheckpointError,
    all_finite,
    load_checkpoint,
    save_checkpoint,
)
from contrastkit.training.engine.metrics import MetricsLogger, read_metrics
from contrastkit.training.engine.optim import LARS, apply_lr, build_optimizer, param_groups
from contrastkit.training.engine.schedule import lr_at, scaled_lr
from contrastkit.training.evaluate.knn import knn_accuracy, knn_predict


@dataclasses.dataclass
class P:
    temperature: float = 0.5
    queue_size: int = 16
    head_norm: str = "batch"


# -- config --------------------------------------------------------------------------
def test_build_config_routes_keys_and_coerces_strings() -> None:
    cfg, p = build_config(
        {"epochs": "3", "lr": "0.1", "temperature": "0.2", "steps": "none", "compile": "true"}, P
    )
    assert (cfg.epochs, cfg.lr, cfg.steps, cfg.compile) == (3, 0.1, None, True)
    assert p.temperature == 0.2 and p.queue_size == 16
    assert cfg.method_params == {"temperature": 0.2, "queue_size": 16, "head_norm": "batch"}


def test_build_config_round_trips_through_a_checkpoint_dict() -> None:
    cfg, _ = build_config({"epochs": 2, "temperature": 0.3}, P)
    again, p = build_config(cfg.to_dict(), P)
    assert again == cfg and p.temperature == 0.3


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"tempreature": "0.1"}, "unknown setting 'tempreature'"),
        ({"epochs": "three"}, "epochs: expected int"),
        ({"compile": "maybe"}, "expected true/false"),
        ({"batch_size": "1"}, "batch_size must be at least 2"),
        ({"optimizer": "rmsprop"}, "optimizer must be"),
        ({"lr": "-1"}, "lr must be positive"),
    ],
)
def test_build_config_rejects_bad_values_with_a_clear_message(
    values: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(values, P)


def test_parse_overrides() -> None:
    assert parse_overrides(["a=1", "b = x=y"]) == {"a": "1", "b": "x=y"}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["oops"])


def test_train_config_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="bogus"):
        TrainConfig.from_dict({"bogus": 1})


# -- schedule ------------------------------------------------------------------------
def test_lr_warmup_then_cosine() -> None:
    total, warmup, peak = 111, 10, 2.0
    lrs = [lr_at(s, total, warmup, peak, 0.1) for s in range(total)]
    assert lrs[0] == pytest.approx(peak / warmup)
    assert lrs[warmup - 1] == pytest.approx(peak)
    assert lrs[warmup] == pytest.approx(peak)
    assert lrs[-1] == pytest.approx(0.1 * peak)
    mid = warmup + (total - warmup - 1) // 2
    assert lrs[mid] == pytest.approx(peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))), 1e-2)
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1 :], strict=False))
    assert scaled_lr(0.3, 512) == pytest.approx(0.6)


# -- optimisers ----------------------------------------------------------------------
def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))


def test_param_groups_exempt_biases_and_norms() -> None:
    groups = param_groups(_net(), 0.1, set())
    assert [p.ndim for p in groups[0]["params"]] == [2, 2]
    assert all(p.ndim == 1 for p in groups[1]["params"]) and len(groups[1]["params"]) == 4
    assert groups[1]["weight_decay"] == 0.0


def test_param_groups_without_scales_are_the_two_groups_of_before() -> None:
    net = _net()
    groups = param_groups(net, 0.1, set())
    assert [(g["weight_decay"], g["lars"], g["lr_scale"]) for g in groups] == [
        (0.1, True, 1.0),
        (0.0, False, 1.0),
    ]
    assert groups == param_groups(net, 0.1, set(), {})
    matrices = [p for p in net.parameters() if p.ndim > 1]
    vectors = [p for p in net.parameters() if p.ndim == 1]
    assert (groups[0]["params"], groups[1]["params"]) == (matrices, vectors)


def test_param_groups_split_by_decay_and_lr_scale_in_a_fixed_order() -> None:
    net = _net()
    net[0].bias.requires_grad_(False)  # frozen: in no group, whatever its scale
    scales = {"0.weight": 0.25, "0.bias": 0.25, "1.weight": 0.5, "2.weight": 0.5}
    groups = param_groups(net, 0.1, {"2.weight"}, scales)
    by_id = {id(p): n for n, p in net.named_parameters()}
    got = [(g["lr_scale"], g["weight_decay"], [by_id[id(p)] for p in g["params"]]) for g in groups]
    assert got == [
        (1.0, 0.1, []),  # the scale-1 groups come first even when empty
        (1.0, 0.0, ["1.bias", "2.bias"]),
        (0.5, 0.0, ["1.weight", "2.weight"]),  # a LayerNorm weight, and one in no_decay
        (0.25, 0.1, ["0.weight"]),
    ]
    assert [g["lars"] for g in groups] == [True, False, False, True]


def test_param_groups_refuse_unknown_names_and_negative_scales() -> None:
    with pytest.raises(ValueError, match="lacks"):
        param_groups(_net(), 0.1, set(), {"backbone.0.weight": 0.5})
    with pytest.raises(ValueError, match="non-negative"):
        param_groups(_net(), 0.1, set(), {"0.weight": -1.0})


def test_apply_lr_multiplies_each_group_by_its_scale() -> None:
    opt = build_optimizer("adamw", param_groups(_net(), 0.1, set(), {"0.weight": 0.1}), 1.0, 0.9)
    apply_lr(opt, 0.5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5, 0.5, 0.05])


def test_an_optimizer_state_from_before_lr_scales_loads_and_trains_at_the_full_lr() -> None:
    """Checkpoints hold the optimizer's groups without "lr_scale": they must still load
    into the groups built now (same count, same sizes), and train at the scheduled lr."""
    net = _net()
    old_groups = [
        {k: v for k, v in g.items() if k != "lr_scale"} for g in param_groups(net, 0.1, set())
    ]
    old = build_optimizer("lars", old_groups, 0.3, 0.9)
    net(torch.randn(4, 4)).sum().backward()
    old.step()
    new = build_optimizer("lars", param_groups(net, 0.1, set()), 0.3, 0.9)
    new.load_state_dict(old.state_dict())
    apply_lr(new, 0.2)
    assert [g["lr"] for g in new.param_groups] == [0.2, 0.2]
    buffers = [new.state[p]["momentum_buffer"] for p in net.parameters()]
    for p, buf in zip(net.parameters(), buffers, strict=True):
        torch.testing.assert_close(buf, old.state[p]["momentum_buffer"])


@pytest.mark.parametrize("clip", [False, True])
def test_lars_matches_a_per_tensor_reference(clip: bool) -> None:
    """LARS, and its LARC-clipped form as apex's LARC / solo-learn compute it, written out
    per tensor."""
    net, ref = _net(), _net()
    lr, eta, wd = (2.0, 0.001, 1e-4) if clip else (0.5, 0.02, 0.01)
    opt = LARS(param_groups(net, wd, set()), lr=lr, momentum=0.9, eta=eta, clip=clip)
    bufs = {n: torch.zeros_like(p) for n, p in ref.named_parameters()}
    x = torch.randn(16, 4)
    for _ in range(3):
        for model in (net, ref):
            model.zero_grad()
            model(x).pow(2).mean().backward()
        opt.step()
        with torch.no_grad():
            for n, p in ref.named_parameters():
                g = p.grad.clone()
                if p.ndim > 1:  # decayed and adapted; You et al.'s eq. 6 trust ratio
                    local = eta * p.norm().item() / (g.norm().item() + wd * p.norm().item())
                    g += wd * p
                    g *= min(local / lr, 1.0) if clip else local
                bufs[n] = 0.9 * bufs[n] + g
                p -= lr * bufs[n]
    for a, b in zip(net.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("lr", [0.05, 4.8, 100.0])
def test_clipped_trust_ratio_never_exceeds_eta(lr: float) -> None:
    """One step without momentum moves each adapted layer by <= eta of its norm (and never
    by more than plain SGD would); unclipped LARS moves it by lr * eta whatever lr is."""
    eta = 0.001
    for clip in (True, False):
        net = _net()
        before = {n: p.detach().clone() for n, p in net.named_parameters()}
        net(torch.randn(16, 4)).pow(2).mean().backward()
        grads = {n: p.grad.clone() for n, p in net.named_parameters()}
        LARS(param_groups(net, 0.0, set()), lr=lr, momentum=0.0, eta=eta, clip=clip).step()
        for n, p in net.named_parameters():
            if p.ndim <= 1:
                continue  # biases and norms are not adapted
            ratio = ((p - before[n]).norm() / before[n].norm()).item()
            sgd_ratio = (lr * grads[n].norm() / before[n].norm()).item()
            if clip:
                assert ratio <= eta * (1 + 1e-5), (n, ratio)
                assert ratio == pytest.approx(min(eta, sgd_ratio), rel=1e-4)
            else:
                assert ratio == pytest.approx(lr * eta, rel=1e-4)


def test_lr_scaling_rules() -> None:
    from contrastkit.training.engine.schedule import scaled_lr

    assert scaled_lr(0.3, 4096) == pytest.approx(4.8)
    assert scaled_lr(0.3, 4096, "sqrt") == pytest.approx(1.2)
    assert scaled_lr(0.3, 256, "sqrt") == scaled_lr(0.3, 256) == 0.3
    with pytest.raises(ValueError, match="lr_scaling"):
        scaled_lr(0.3, 256, "cubic")


def test_build_optimizer_kinds() -> None:
    groups = param_groups(_net(), 0.0, set())
    assert isinstance(build_optimizer("sgd", groups, 0.1, 0.9), torch.optim.SGD)
    assert isinstance(build_optimizer("adamw", param_groups(_net(), 0, set()), 0.1, 0.9),
                      torch.optim.AdamW)  # fmt: skip
    with pytest.raises(ValueError, match="optimizer"):
        build_optimizer("adagrad", groups, 0.1, 0.9)


# -- checkpoints ---------------------------------------------------------------------
def test_checkpoint_round_trip_and_refusals(tmp_path: Path) -> None:
    ckpt = Checkpoint(method="simclr", config={"a": 1}, model={"w": torch.arange(3.0)},
                      step=7, rng={"torch": [torch.get_rng_state()]})  # fmt: skip
    path = save_checkpoint(tmp_path / "last.pt", ckpt)
    back = load_checkpoint(tmp_path)  # a folder means its last.pt
    assert back.step == 7 and torch.equal(back.model["w"], ckpt.model["w"])
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files left

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    torch.save({"model": {}, "config": {}, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "evil.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a contrastive"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_all_finite() -> None:
    assert all_finite([torch.ones(3), torch.arange(3)])
    assert not all_finite([torch.ones(3), torch.tensor([1.0, math.nan])])
    assert not all_finite([torch.tensor([math.inf])])


# -- metrics -------------------------------------------------------------------------
def test_metrics_jsonl_and_truncate(tmp_path: Path) -> None:
    m = MetricsLogger(tmp_path, tensorboard=False)
    for step in (1, 2, 3):
        m.log(step, "train", {"loss": 1.0 / step})
    m.log(4, "train", {"loss": math.nan})
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3, 4] and records[3]["loss"] is None
    m.truncate_after(2)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]


# -- kNN -----------------------------------------------------------------------------
def test_knn_predict_matches_a_loop_reference() -> None:
    g = torch.Generator().manual_seed(0)
    bank, labels = torch.randn(50, 6, generator=g), torch.randint(0, 3, (50,), generator=g)
    queries = torch.randn(7, 6, generator=g)
    pred = knn_predict(bank, labels, queries, 3, k=5, t=0.5, chunk=3)
    bn = bank / bank.norm(dim=1, keepdim=True)
    for i, q in enumerate(queries):
        sims = bn @ (q / q.norm())
        top = sims.argsort(descending=True)[:5]
        votes = [sum(math.exp(sims[j] / 0.5) for j in top if labels[j] == c) for c in range(3)]
        assert pred[i] == max(range(3), key=lambda c: votes[c])


def test_knn_accuracy_on_separable_clusters() -> None:
    g = torch.Generator().manual_seed(1)
    centres = torch.eye(4) * 5
    labels = torch.arange(4).repeat(25)
    bank = centres[labels] + torch.randn(100, 4, generator=g)
    assert knn_accuracy(bank, labels, centres, torch.arange(4), 4, k=10) == 1.0
    with pytest.raises(ValueError, match="temperature"):
        knn_predict(bank, labels, centres, 4, t=0.0)
