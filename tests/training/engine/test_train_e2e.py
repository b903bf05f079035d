"""End to end on real data (scikit-learn digits) on the CPU: every method trains, its
loss falls, and `--resume` continues exactly where an interrupted run stopped."""

from __future__ import annotations

import json
import signal
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from contrastkit.training.cli import main as train_main
from contrastkit.training.engine.checkpoint import load_checkpoint
from contrastkit.training.engine.metrics import read_metrics
from contrastkit.training.engine.trainer import Trainer
from contrastkit.training.methods import method_names

METHODS = ["simclr", "moco", "byol", "swav", "clip", "barlow", "vicreg", "simsiam", "dino"]
# Small and fast: the GroupNorm toy backbone, 16x16 crops, small heads.
SMALL: dict[str, list[str]] = {
    "simclr": ["proj_hidden=128"],
    "moco": ["proj_hidden=128", "queue_size=256"],
    "byol": ["proj_hidden=128", "pred_hidden=128"],
    # SwAV needs its queue at small batches (as the paper says for batches < 256).
    "swav": ["proj_hidden=128", "n_prototypes=30", "n_small_crops=2", "lr=0.3",
             "freeze_prototypes_steps=22", "queue_length=512"],
    "clip": ["text_tower=transformer", "text_width=32", "text_layers=1", "text_heads=2",
             "context_length=16"],
    "barlow": ["proj_hidden=128", "proj_dim=128"],
    "vicreg": ["proj_hidden=128", "proj_dim=128"],
    "simsiam": ["proj_hidden=128", "proj_dim=128", "pred_hidden=32"],
    "dino": ["proj_hidden=128", "out_dim=256", "n_small_crops=2"],
}  # fmt: skip


def argv(method: str, out: Path, *extra: str, steps: int | None = None) -> list[str]:
    args = ["train", "--method", method, "--data", "digits", "--backbone", "tiny",
            "--batch-size", "64", "--out", str(out), "--device", "cpu"]  # fmt: skip
    if steps is not None:
        args += ["--steps", str(steps)]
    sets = ["image_size=16", "progress=false", "tensorboard=false", "log_every=1",
            "deterministic=true", *SMALL[method], *extra]  # fmt: skip
    for s in sets:
        args += ["--set", s]
    return args


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run) if r["kind"] == "train"]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_and_its_loss_falls(method: str, tmp_path: Path) -> None:
    out = tmp_path / method
    assert train_main(argv(method, out, "epochs=3", "knn_every=3")) == 0
    loss = losses(out)
    assert len(loss) == 3 * 22 and all(v is not None for v in loss)
    # A queue makes the task harder once it holds real embeddings (MoCo's starts as random
    # unit vectors, easy negatives; SwAV's joins the Sinkhorn problem once full, and its
    # prototypes unfreeze at step 22): compare from the step the queue is in use.
    start = {"moco": 4, "swav": 24}.get(method, 0)
    first, last = statistics.mean(loss[start : start + 12]), statistics.mean(loss[-12:])
    assert last < first, (method, first, last)
    knn = [r for r in read_metrics(out) if r["kind"] == "knn"]
    assert len(knn) == 1 and 0.3 < knn[0]["knn_top1"] <= 1.0  # 10 classes: chance is 0.1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 66 and summary["stopped"] == "done"
    state = load_checkpoint(out)
    assert state.step == 66 and state.method == method


@pytest.mark.parametrize(
    ("method", "extra"),
    [*((m, ()) for m in METHODS), ("clip", ("loss=siglip",))],
    ids=[*METHODS, "clip-siglip"],
)
def test_resume_after_a_crash_repeats_the_uninterrupted_losses(
    method: str, extra: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    common = ("checkpoint_every_steps=3", "knn_every=0", *extra)
    assert_crash_and_resume_repeat_the_run(
        lambda out: argv(method, out, *common, steps=7), tmp_path, monkeypatch
    )


def assert_crash_and_resume_repeat_the_run(
    args: Callable[[Path], list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    crash_at: int = 5,
    saved_at: int = 3,
) -> None:
    """`train_main(args(out))` run whole, and run again crashing at step `crash_at` (the
    last checkpoint at step `saved_at`) then `--resume`d: the same losses and weights,
    bit for bit."""
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert train_main(args(whole)) == 0

    real_step = Trainer._train_step

    def crash(self: Trainer, batch: Any) -> Any:
        if self.step == crash_at:
            raise RuntimeError("simulated crash")
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "_train_step", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_main(args(broken))
    monkeypatch.setattr(Trainer, "_train_step", real_step)
    assert load_checkpoint(broken).step == saved_at
    assert train_main([*args(broken), "--resume"]) == 0
    assert losses(broken) == losses(whole)  # exact: same batches, views and updates
    a, b = load_checkpoint(whole).model, load_checkpoint(broken).model
    assert sorted(a) == sorted(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_sigterm_saves_a_checkpoint_and_resume_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    real_step = Trainer._train_step

    def terminate_at_step_2(self: Trainer, batch: Any) -> Any:
        if self.step == 2:
            signal.raise_signal(signal.SIGTERM)  # what Kubernetes sends before eviction
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "_train_step", terminate_at_step_2)
    assert train_main(argv("simclr", out, "knn_every=0", steps=6)) == 130
    assert load_checkpoint(out).step == 3  # the step in flight finished, then it saved
    monkeypatch.setattr(Trainer, "_train_step", real_step)
    assert train_main([*argv("simclr", out, "knn_every=0", steps=6), "--resume"]) == 0
    assert load_checkpoint(out).step == 6


def make_simclr_losses_nan(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on every SimCLR loss is NaN (as a diverged run's)."""
    from contrastkit.training.methods.simclr import SimCLR

    real_loss = SimCLR.loss

    def nan_loss(self: SimCLR, views: Any) -> Any:
        out = real_loss(self, views)
        out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(SimCLR, "loss", nan_loss)


def test_non_finite_losses_skip_steps_then_stop_without_saving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert train_main(argv("simclr", out, "knn_every=0", steps=2)) == 0
    before = load_checkpoint(out)
    make_simclr_losses_nan(monkeypatch)
    code = train_main([*argv("simclr", out, "knn_every=0", "max_nonfinite=3", steps=6), "--resume"])
    assert code == 1
    err = capsys.readouterr().err
    assert "3 non-finite losses in a row" in err
    assert f"The last good checkpoint is {out / 'last.pt'}" in err
    after = load_checkpoint(out)
    assert after.step == before.step == 2  # nothing non-finite was saved
    for key, value in before.model.items():
        assert torch.equal(value, after.model[key])


def test_cli_refuses_to_overwrite_and_to_change_a_resumed_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert train_main(argv("simclr", out, "knn_every=0", steps=1)) == 0
    assert train_main(argv("simclr", out, "knn_every=0", steps=2)) == 2
    assert "pass --resume" in capsys.readouterr().err
    before = (out / "last.pt").read_bytes()
    changed = [*argv("simclr", out, "knn_every=0", "temperature=0.2", steps=2),
               "--resume", "--seed", "5", "--lr", "0.1"]  # fmt: skip
    assert train_main(changed) == 2
    err = capsys.readouterr().err
    assert "--resume cannot change what the run trains" in err
    # every difference, as name: saved -> new; the run settings and the method's alike
    assert "  seed: 0 -> 5\n" in err and "  lr: 0.4 -> 0.1\n" in err  # the saved default
    assert "  temperature: 0.5 -> 0.2\n" in err
    assert "steps" not in err.split("may change:")[0]  # --steps 2 is allowed to change
    assert (out / "last.pt").read_bytes() == before
    # what may change does: a longer run, other logging and kNN settings
    longer = [*argv("simclr", out, "knn_every=0", "log_every=5", "max_nonfinite=4", steps=2)]
    assert train_main([*longer, "--resume"]) == 0
    assert load_checkpoint(out).step == 2


def test_resume_needs_a_checkpoint_unless_auto(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    typo = tmp_path / "rnu"
    assert train_main([*argv("simclr", typo, "knn_every=0", steps=1), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"no checkpoint in {typo}" in err and "--resume auto" in err
    assert not (typo / "last.pt").exists()
    fresh = tmp_path / "run"
    assert train_main([*argv("simclr", fresh, "knn_every=0", steps=1), "--resume", "auto"]) == 0
    assert load_checkpoint(fresh).step == 1
    assert train_main([*argv("simclr", fresh, "knn_every=0", steps=2), "--resume", "auto"]) == 0
    assert load_checkpoint(fresh).step == 2  # the second start continued the first


def test_non_finite_before_any_checkpoint_names_no_missing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make_simclr_losses_nan(monkeypatch)
    out = tmp_path / "run"
    assert train_main(argv("simclr", out, "knn_every=0", "max_nonfinite=2", steps=4)) == 1
    err = capsys.readouterr().err
    assert "2 non-finite losses in a row" in err
    assert "No checkpoint was written yet" in err and "last good checkpoint" not in err
    assert not (out / "last.pt").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "simclr", "--set", "temprature=0.1"], "unknown setting 'temprature'"),
        (["--method", "nope"], "unknown method 'nope'"),
        (["--data", "nowhere:x"], "data"),
        (["--backbone", "no_such_net"], "unknown backbone"),
        (["--method", "simclr", "--set", "temperature=0"], "temperature"),
    ],
)
def test_cli_bad_settings_exit_2_with_a_message(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train_main(["train", "--out", str(tmp_path / "r"), "--steps", "1", *args]) == 2
    assert message in capsys.readouterr().err


def test_yaml_config_and_list_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text("method: byol\nbackbone: tiny\nimage_size: 16\nproj_hidden: 64\n"
                   "pred_hidden: 64\nknn_every: 0\nprogress: false\n")  # fmt: skip
    out = tmp_path / "r"
    assert train_main(["train", "--config", str(cfg), "--out", str(out), "--steps", "2",
                       "--batch-size", "16", "--device", "cpu"]) == 0  # fmt: skip
    saved = load_checkpoint(out).config
    assert saved["method"] == "byol" and saved["method_params"]["proj_hidden"] == 64
    assert train_main(["train", "--method", "swav", "--list-settings"]) == 0
    listing = capsys.readouterr().out
    assert "n_prototypes" in listing and "batch_size" in listing


def test_contrastive_entry_point_dispatches_train(tmp_path: Path) -> None:
    from contrastkit.service.cli import main as contrastive

    out = tmp_path / "r"
    assert contrastive(argv("simclr", out, "knn_every=0", steps=1)) == 0
    assert load_checkpoint(out).step == 1


def test_a_checkpoint_from_before_larc_resumes_with_the_lars_it_trained_with(
    tmp_path: Path,
) -> None:
    from contrastkit.training.cli import build_training_parser
    from contrastkit.training.commands.train import resolve
    from contrastkit.training.engine.checkpoint import save_checkpoint

    out = tmp_path / "run"
    assert train_main(argv("simclr", out, "knn_every=0", steps=1)) == 0
    state = load_checkpoint(out)
    for key in ("lars_eta", "lars_clip", "lr_scaling"):  # as older versions wrote it
        del state.config[key]
    save_checkpoint(out / "last.pt", state)
    args = build_training_parser().parse_args(["train", "--out", str(out), "--resume"])
    cfg, _, checkpoint = resolve(args)
    assert checkpoint is not None
    assert (cfg.lars_eta, cfg.lars_clip, cfg.lr_scaling) == (0.02, False, "linear")
    fresh = build_training_parser().parse_args(["train", "--out", str(tmp_path / "new")])
    new_cfg, _, _ = resolve(fresh)
    assert (new_cfg.lars_eta, new_cfg.lars_clip) == (0.02, True)  # the new defaults


def test_a_checkpoint_from_before_the_jitter_size_rule_keeps_its_jitter(
    tmp_path: Path,
) -> None:
    """Before `jitter_strength` existed every size had SimCLR's s = 0.5: such a checkpoint
    resumes with it (and the Trainer's augmenter applies it); a new run sizes it."""
    from contrastkit.training.cli import build_training_parser
    from contrastkit.training.commands.train import resolve
    from contrastkit.training.engine.checkpoint import save_checkpoint

    out = tmp_path / "run"
    assert train_main(argv("simclr", out, "knn_every=0", steps=1)) == 0
    state = load_checkpoint(out)
    assert state.config["jitter_strength"] is None
    del state.config["jitter_strength"]
    save_checkpoint(out / "last.pt", state)
    args = build_training_parser().parse_args(["train", "--out", str(out), "--resume",
                                               "--steps", "2"])  # fmt: skip
    cfg, params, checkpoint = resolve(args)
    assert cfg.jitter_strength == 0.5
    assert Trainer(cfg, params, resume=checkpoint).augment.jitter_strength == 0.5
    with pytest.raises(ValueError, match="jitter_strength"):
        resolve(build_training_parser().parse_args(
            ["train", "--out", str(tmp_path / "bad"), "--set", "jitter_strength=3"]))  # fmt: skip


def _as_before(out: Path, drop_params: tuple[str, ...], params: dict[str, Any]) -> None:
    """Rewrite the run's checkpoint as a version before `drop_params` existed wrote it."""
    from contrastkit.training.engine.checkpoint import save_checkpoint

    state = load_checkpoint(out)
    saved = state.config["method_params"]
    for key in drop_params:
        del saved[key]
    saved.update(params)
    for key in ("optimizer", "lr", "weight_decay"):  # older versions saved them unset
        state.config[key] = None
    save_checkpoint(out / "last.pt", state)


def test_a_moco_checkpoint_from_before_v2_defaults_resumes_with_its_tuned_recipe(
    tmp_path: Path,
) -> None:
    """`moco` was the tuned variant (LARS 0.4 / 1e-5, scale 0.08) until crop_min_scale
    existed: such a checkpoint resumes with it; a new run gets MoCo v2's SGD recipe."""
    from contrastkit.training.cli import build_training_parser
    from contrastkit.training.commands.train import resolve

    out = tmp_path / "run"
    assert train_main(argv("moco", out, "knn_every=0", steps=1)) == 0
    old = {"base_momentum": 0.99, "final_momentum": 0.99, "head_norm": "batch"}
    _as_before(out, ("crop_min_scale",), old)
    args = build_training_parser().parse_args(["train", "--out", str(out), "--resume"])
    cfg, params, checkpoint = resolve(args)
    assert checkpoint is not None
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay) == ("lars", 0.4, 1e-5)
    assert (params.crop_min_scale, params.base_momentum, params.head_norm) == (0.08, 0.99, "batch")
    # the filled-in values are the checkpoint's: restating them is no change
    same = ["train", "--out", str(out), "--resume", "--set", "optimizer=lars"]
    assert resolve(build_training_parser().parse_args(same))[0].optimizer == "lars"
    fresh = build_training_parser().parse_args(["train", "--method", "moco", "--out",
                                                str(tmp_path / "new")])  # fmt: skip
    new_cfg, new_params, _ = resolve(fresh)
    assert (new_cfg.optimizer, new_cfg.lr, new_params.crop_min_scale) == (None, None, 0.2)
    # a checkpoint that has crop_min_scale holds the resolved v2 defaults
    again = tmp_path / "v2"
    assert train_main(argv("moco", again, "knn_every=0", steps=1)) == 0
    args = build_training_parser().parse_args(["train", "--out", str(again), "--resume"])
    assert resolve(args)[0].optimizer == "sgd"


def test_a_swav_checkpoint_from_before_epoch_freeze_resumes_unchanged(tmp_path: Path) -> None:
    """Old SwAV checkpoints saved freeze_prototypes_steps=313 and queue_length=0, and no
    freeze_prototypes_epochs: the explicit values still win on resume."""
    from contrastkit.training.cli import build_training_parser
    from contrastkit.training.commands.train import resolve

    out = tmp_path / "run"
    assert train_main(argv("swav", out, "knn_every=0", "queue_length=0", steps=1)) == 0
    _as_before(out, ("freeze_prototypes_epochs",),
               {"freeze_prototypes_steps": 313, "queue_length": 0})  # fmt: skip
    args = build_training_parser().parse_args(["train", "--out", str(out), "--resume",
                                               "--steps", "2"])  # fmt: skip
    cfg, params, checkpoint = resolve(args)
    trainer = Trainer(cfg, params, resume=checkpoint)
    assert trainer.method.freeze_steps == 313 and trainer.method.queue_length == 0


def _listing_sections(listing: str) -> dict[str, list[str]]:
    """`--list-settings` output -> {section title: its setting lines}."""
    sections: dict[str, list[str]] = {}
    lines: list[str] = []
    for line in listing.splitlines():
        if line.startswith("  "):
            lines.append(line.strip())
        else:
            lines = sections.setdefault(line, [])
    return sections


@pytest.mark.parametrize("method", method_names())
def test_list_settings_names_the_method_and_a_source_for_every_setting(
    method: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """For every registered method: the `method` row names it (not TrainConfig's default
    'simclr'), and every run setting and method setting says where its default is from."""
    import dataclasses

    from contrastkit.training.config import TrainConfig, setting_sources
    from contrastkit.training.methods import get_method

    params_cls = get_method(method).Params
    names = {f.name for f in dataclasses.fields(params_cls)}
    assert set(setting_sources(params_cls)) == names  # no source for a setting gone since
    assert train_main(["train", "--method", method, "--list-settings"]) == 0
    sections = _listing_sections(capsys.readouterr().out)
    run, own = sections["run settings:"], sections[f"{method} settings:"]
    assert [x for x in run if x.startswith("method = ")] == [
        next(x for x in run if x.startswith(f"method = {method!r}  "))
    ]
    fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "method_params"]
    assert [x.partition(" = ")[0] for x in run] == fields
    assert [x.partition(" = ")[0] for x in own] == [f.name for f in dataclasses.fields(params_cls)]
    for line in run + own:
        source = line.partition("  # ")[2]
        assert source.strip() and "source not recorded" not in line, line
    if method == "moco":
        assert any("base_momentum = 0.999" in x and "MoCo v1/v2" in x for x in own)


@pytest.mark.parametrize("method", method_names())
def test_list_settings_names_a_source_for_every_optimiser_default(method: str) -> None:
    from contrastkit.training.commands.train import list_settings

    listing = list_settings(method)
    assert "source not recorded" not in listing, listing
    if method == "moco":
        assert any(x.strip().startswith("lr = 0.03") and "MoCo v2" in x
                   for x in listing.splitlines())  # fmt: skip


def test_list_settings_takes_the_method_from_a_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text("method: dino\n")
    assert train_main(["train", "--config", str(cfg), "--list-settings"]) == 0
    listing = capsys.readouterr().out
    assert "dino settings:" in listing and "method = 'dino'" in listing


def test_simsiam_and_dino_checkpoints_from_before_views_resume_with_their_old_views() -> None:
    """SimSiam trained on BYOL's views and DINO on SwAV's multi-crop until `views` existed:
    such checkpoints keep them; checkpoints that saved `views` keep what they saved."""
    from contrastkit.training.engine.resume import with_old_defaults

    for method, old in (("simsiam", "byol"), ("dino", "swav")):
        before = with_old_defaults({"method": method, "method_params": {"proj_dim": 8}})
        assert before["method_params"] == {"proj_dim": 8, "views": old}
        saved = {"method": method, "method_params": {"views": method}}
        assert with_old_defaults(saved)["method_params"] == {"views": method}


def test_clip_with_siglip_loss_trains(tmp_path: Path) -> None:
    """`--set loss=siglip`: the loss falls and the bias learns (resume: the test above)."""
    out = tmp_path / "run"
    assert train_main(argv("clip", out, "loss=siglip", "knn_every=0", steps=30)) == 0
    loss = losses(out)
    assert statistics.mean(loss[-8:]) < statistics.mean(loss[:8])
    assert float(load_checkpoint(out).model["logit_bias"]) != -10.0


def test_a_clip_checkpoint_from_before_multi_positive_keeps_one_positive_per_row() -> None:
    from contrastkit.training.engine.resume import with_old_defaults

    before = with_old_defaults({"method": "clip", "method_params": {"loss": "siglip"}})
    assert before["method_params"] == {"loss": "siglip", "multi_positive": False}
    saved = {"method": "clip", "method_params": {"multi_positive": True}}
    assert with_old_defaults(saved)["method_params"] == {"multi_positive": True}
