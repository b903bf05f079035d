"""Checkpoints: the typed schema round-trips; a checkpoint of a newer format is refused
naming both versions; a flipped byte inside a tensor is refused with a clear error on
resume, export and eval (exit 2, file kept); a checkpoint written before checksums loads
with a warning; the digest depends on contents only, not on key order or device."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from contrastkit.training.cli import main as cli_main
from contrastkit.training.encoders.nets.backbones import BackboneSpec
from contrastkit.training.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKSUM,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    state_digest,
    write_state,
)


def _checkpoint() -> Checkpoint:
    return Checkpoint(
        method="simclr",
        config={"method": "simclr", "lr": 0.3, "betas": (0.9, 0.99)},
        model={"w": torch.arange(4096, dtype=torch.float32), "b": torch.zeros(3)},
        step=7,
    )


def _state() -> dict[str, object]:
    return _checkpoint().to_state()


def flip_inside(path: Path, tensor: torch.Tensor) -> None:
    """Flip one bit in the middle of `tensor`'s bytes where they lie in the file."""
    raw = bytearray(path.read_bytes())
    at = raw.find(tensor.numpy().tobytes())
    assert at >= 0, "the tensor's bytes are not stored verbatim"
    raw[at + tensor.numel() * tensor.element_size() // 2] ^= 0x10
    path.write_bytes(bytes(raw))


def test_round_trip_verifies_and_strips_the_checksum(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "last.pt", _checkpoint())
    raw = torch.load(path, weights_only=True)
    assert raw[CHECKSUM]["algorithm"] == "sha256" and len(raw[CHECKSUM]["digest"]) == 64
    assert raw["format"] == CHECKPOINT_FORMAT
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.step == 7 and ckpt.format == CHECKPOINT_FORMAT
    assert torch.equal(ckpt.model["w"], torch.arange(4096, dtype=torch.float32))


def test_every_field_round_trips(tmp_path: Path) -> None:
    want = Checkpoint(
        method="byol", config={"method": "byol", "image_size": 32}, model={"w": torch.ones(2)},
        step=11, epoch=2, step_in_epoch=3, train_seconds=1.5, world_size=2,
        backbone=BackboneSpec("resnet18", True, 32), feat_dim=512,
        optimizer={"state": {}, "param_groups": []}, scaler={"scale": 2.0},
        rng={"torch": [torch.get_rng_state()]},
    )  # fmt: skip
    got = load_checkpoint(save_checkpoint(tmp_path / "last.pt", want))
    assert got.model.keys() == want.model.keys() and got.rng.keys() == want.rng.keys()
    same = {"model", "rng"}
    for name in set(vars(want)) - same:
        assert getattr(got, name) == getattr(want, name), name
    # the file's layout is what earlier versions wrote: the backbone with its feat_dim
    raw = torch.load(tmp_path / "last.pt", weights_only=True)
    assert raw["backbone"] == {"name": "resnet18", "cifar_stem": True, "image_size": 32,
                               "feat_dim": 512}  # fmt: skip


def test_a_newer_format_is_refused_naming_both_versions(tmp_path: Path) -> None:
    newer = CHECKPOINT_FORMAT + 1
    write_state(tmp_path / "last.pt", {**_state(), "format": newer})
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path)
    message = str(e.value)
    assert f"format {newer}" in message and f"up to {CHECKPOINT_FORMAT}" in message
    assert "newer version" in message


@pytest.mark.parametrize("bad", ["1", 0, -3, 1.0, True, None])
def test_a_malformed_format_is_refused(tmp_path: Path, bad: object) -> None:
    write_state(tmp_path / "last.pt", {**_state(), "format": bad})
    with pytest.raises(CheckpointError, match="unreadable checkpoint format"):
        load_checkpoint(tmp_path)


def test_a_malformed_entry_is_refused_not_guessed(tmp_path: Path) -> None:
    write_state(tmp_path / "last.pt", {**_state(), "step": "seven"})
    with pytest.raises(CheckpointError, match="malformed checkpoint entry"):
        load_checkpoint(tmp_path)


def test_the_cli_refuses_a_newer_checkpoint_on_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_state(tmp_path / "last.pt", {**_state(), "format": CHECKPOINT_FORMAT + 1})
    assert cli_main(["train", "--out", str(tmp_path), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"format {CHECKPOINT_FORMAT + 1}" in err and f"up to {CHECKPOINT_FORMAT}" in err


def test_digest_sees_every_change_but_not_key_order() -> None:
    base = state_digest(_state())
    reordered = dict(reversed(list(_state().items())))
    assert state_digest(reordered) == base
    changed_value = _state()
    changed_value["model"]["w"][100] += 1.0  # type: ignore[index]
    changed_dtype = _state()
    changed_dtype["model"]["b"] = torch.zeros(3, dtype=torch.float64)  # type: ignore[index]
    changed_shape = _state()
    changed_shape["model"]["b"] = torch.zeros(1, 3)  # type: ignore[index]
    changed_number = _state()
    changed_number["config"]["lr"] = 0.30000000000000004  # type: ignore[index]
    digests = {
        state_digest(s) for s in (changed_value, changed_dtype, changed_shape, changed_number)
    }
    assert len(digests) == 4 and base not in digests


def test_a_flipped_byte_in_a_tensor_is_refused_and_the_file_kept(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "last.pt", _checkpoint())
    flip_inside(path, torch.arange(4096, dtype=torch.float32))
    damaged = path.read_bytes()
    # torch itself reads it without complaint: this is what the checksum is for
    assert torch.load(path, weights_only=True)["step"] == 7
    with pytest.raises(CheckpointError, match="is damaged: its contents do not match"):
        load_checkpoint(path)
    assert path.read_bytes() == damaged


def test_a_checkpoint_without_checksum_loads_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "last.pt"
    torch.save(_state(), path)  # as versions before checksums wrote it
    with caplog.at_level(logging.WARNING, "contrastive.checkpoint"):
        ckpt = load_checkpoint(path)
    assert ckpt.step == 7
    assert "without a checksum" in caplog.text


def test_a_mangled_checksum_entry_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    torch.save({**_state(), CHECKSUM: {"algorithm": "md5", "digest": "00"}}, path)
    with pytest.raises(CheckpointError, match="unreadable checksum"):
        load_checkpoint(path)


@pytest.fixture(scope="module")
def damaged_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 2-step run whose last.pt has one flipped bit inside its largest tensor."""
    out = tmp_path_factory.mktemp("run")
    argv = ["train", "--method", "simclr", "--data", "digits", "--backbone", "tiny",
            "--batch-size", "32", "--out", str(out), "--device", "cpu", "--steps", "2",
            "--set", "image_size=16", "--set", "progress=false", "--set", "knn_every=0",
            "--set", "tensorboard=false", "--set", "proj_hidden=64"]  # fmt: skip
    assert cli_main(argv) == 0
    model = load_checkpoint(out).model
    largest = max(model.values(), key=lambda t: t.numel())
    flip_inside(out / "last.pt", largest)
    return out


@pytest.mark.parametrize("command", ["train", "export", "eval"])
def test_every_reader_of_a_damaged_checkpoint_exits_2(
    command: str, damaged_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (damaged_run / "last.pt").read_bytes()
    argv = {
        "train": ["train", "--out", str(damaged_run), "--resume", "--steps", "4"],
        "export": ["export", str(damaged_run), str(tmp_path / "export")],
        "eval": [
            "eval",
            "--model",
            str(damaged_run),
            "--data",
            "digits",
            "--task",
            "knn",
            "--out",
            str(tmp_path / "eval"),
        ],
    }[command]
    assert cli_main(argv) == 2
    assert "is damaged: its contents do not match the sha256" in capsys.readouterr().err
    assert (damaged_run / "last.pt").read_bytes() == before
    assert not (tmp_path / "export").exists()
