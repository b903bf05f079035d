"""The real CLI under torchrun: 2 CPU processes (gloo) train, checkpoint and resume.

`--standalone` starts torchrun's own rendezvous on localhost port 0, so the OS picks a
free port for it and the workers share its store: runs never collide on a fixed port.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from contrastkit.training.engine.checkpoint import LAST, Checkpoint, load_checkpoint

ROOT = Path(__file__).resolve().parents[3]
TIMEOUT_S = 180  # per torchrun call; a hang fails the test instead of blocking CI
FIRST = ["--method", "simclr", "--data", "digits", "--backbone", "tiny", "--batch-size", "32"]
# A constant learning rate (no warmup, cosine floor = peak): the schedule then does not
# depend on --steps, so 6 steps + a resume to 8 must equal 8 uninterrupted steps.
CONSTANT_LR = ["--set", "warmup_epochs=0", "--set", "min_lr_ratio=1"]


def _children(pid: int) -> list[int]:
    """Direct children of `pid` (Linux /proc; empty where unavailable)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _stop(proc: subprocess.Popen[str]) -> str:
    """End a hung torchrun: SIGTERM (it forwards it to its workers, which it starts in
    their own sessions), then SIGKILL it and any worker still left. Returns its output."""
    workers = _children(proc.pid)
    proc.terminate()
    try:
        output, _ = proc.communicate(timeout=45)  # torchrun waits 30 s before SIGKILL
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return output


def _torchrun(out: Path, *args: str) -> str:
    """`python -m torch.distributed.run --nproc_per_node 2 ... -m contrastkit.training train ARGS`;
    fails the test unless it exits 0 within TIMEOUT_S. Returns the combined output."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
        "-m", "contrastkit.training", "train", *args, "--device", "cpu", "--out", str(out),
        "--set", "progress=false", "--set", "knn_every=0",
    ]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        tail = _stop(proc)[-3000:]
        pytest.fail(f"torchrun did not finish in {TIMEOUT_S} s:\n{tail}")
    if proc.returncode != 0:
        # the first failing rank's error is often far above the tail (the others then
        # fail with "connection closed"), so list every error line first
        errors = dict.fromkeys(line for line in output.splitlines() if "Error:" in line)
        pytest.fail(
            f"torchrun exited {proc.returncode}; errors:\n" + "\n".join(errors)
            + f"\n--- output tail:\n{output[-3000:]}"
        )  # fmt: skip
    return output


def _train_steps(out: Path) -> list[int]:
    """The steps of the `train` records in RUN/metrics.jsonl, in file order."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return [r["step"] for r in records if r.get("kind") == "train"]


def _checkpoint(out: Path) -> Checkpoint:
    assert (out / LAST).is_file()
    return load_checkpoint(out / LAST)


@pytest.mark.slow
@pytest.mark.timeout(4 * TIMEOUT_S)
def test_torchrun_trains_checkpoints_and_resumes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _torchrun(run, *FIRST, *CONSTANT_LR, "--steps", "6")
    first = _checkpoint(run)
    assert (first.step, first.world_size) == (6, 2)
    assert first.config["batch_size"] == 32  # per process: 64 images per step
    assert _train_steps(run)[-1] == 6
    # every rank's random streams are saved, so each can continue its own
    assert len(first.rng["torch"]) == 2

    output = _torchrun(run, "--resume", "--steps", "8")
    assert "8 steps" in output
    resumed = _checkpoint(run)
    assert resumed.step == 8
    steps = _train_steps(run)
    assert steps[-1] == 8 and 6 in steps and max(steps) == 8
    assert json.loads((run / "summary.json").read_text())["steps"] == 8

    # the resumed run is the run that was never interrupted: same batches, same
    # per-rank augmentations, same weights
    straight = tmp_path / "straight"
    _torchrun(straight, *FIRST, *CONSTANT_LR, "--steps", "8")
    want = _checkpoint(straight).model
    assert sorted(resumed.model) == sorted(want)
    for key, value in resumed.model.items():
        err = float((value.double() - want[key].double()).abs().max()) if value.numel() else 0.0
        assert err <= 1e-6, f"{key}: resumed and uninterrupted runs differ by {err:.3g}"


def _rank_of(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            if item.startswith(b"RANK="):
                return int(item[5:])
    return None


@pytest.mark.slow
@pytest.mark.timeout(2 * TIMEOUT_S)
def test_sigterm_to_one_rank_stops_every_rank_after_the_same_step(tmp_path: Path) -> None:
    """A node's SIGTERM reaches its own ranks only (Kubernetes stopping one pod): all ranks
    must still stop after the same step and save, instead of the others waiting in a
    collective for a rank that has left."""
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
        "-m", "contrastkit.training", "train", *FIRST, "--steps", "100000", "--device", "cpu",
        "--out", str(run), "--set", "progress=false", "--set", "knn_every=0",
        "--set", "log_every=1",
    ]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not (run / "metrics.jsonl").is_file() or len(_train_steps(run)) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, "no training steps"
            time.sleep(0.2)
        ranks = {_rank_of(pid): pid for pid in _children(proc.pid)}
        os.kill(ranks[1], signal.SIGTERM)  # rank 1 only: rank 0 hears nothing
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except (subprocess.TimeoutExpired, AssertionError, KeyError):
        pytest.fail("torchrun did not stop cleanly:\n" + _stop(proc)[-3000:])
    # torchrun's failure report: both ranks stop as a signalled run does (130), rank 1 on
    # its signal, rank 0 on the agreement; whichever exits second may instead be ended by
    # torchrun's own SIGTERM once the first has exited, which is after the checkpoint
    # (-15; either order happens on a loaded machine). Without the agreement rank 1 aborts
    # (-6) and rank 0 dies in a collective, leaving no summary.
    report = re.findall(r"rank\s*:\s*(\d+) \(local_rank: \d+\)\s*exitcode\s*:\s*(-?\d+)", output)
    codes = {int(rank): int(code) for rank, code in report}
    assert set(codes) == {0, 1} and 130 in codes.values(), output[-3000:]
    assert set(codes.values()) <= {130, -15}, output[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped"] == "signal"
    saved = _checkpoint(run)
    assert saved.step == summary["steps"] == _train_steps(run)[-1]
    assert saved.step < 100000
