"""`contrastive bench quality --quick`: a CPU quality benchmark that can fail.

Every registered method (or --methods) trains with its DEFAULT recipe (the resolved
TrainConfig and Params: nothing here restates an optimiser, lr or head size) on
Fashion-MNIST (60,000 train images, 10,000 test), the `tiny` backbone at 16 px, batch
256, --epochs (3) epochs. Per method the run records the loss of every step, the mean of
the last LOSS_WINDOW steps of every epoch, the final kNN top-1 (k = 200, t = 0.1, cosine,
every test image against every train image) and the wall seconds. References, measured
in the same run: kNN on raw pixels (once); the untrained encoder at seeds 0, 1 and 2;
lightly (contrastkit.training.bench.peer_lightly, in its own environment) trained with the same
recipe, where lightly has the method (not CLIP/SigLIP).

Criteria (contrastkit.training.bench.criteria says the formulas): (a) kNN more than 3 standard
errors above the best untrained seed; (b) final-epoch loss within max(10%, 0.05) of the
peer's; (c) kNN no more than 2 standard errors below the peer's. The command exits 1
when any criterion of any method fails (or a run fails), 0 when all pass, 130 when a
signal (e.g. `timeout`) stopped it (the JSON keeps the methods finished before).

    scripts/peer-lightly-env.sh                      # once: lightly's venv in /tmp/lightlyenv
    contrastive bench quality --quick                # every method, 3 epochs (~1 h, 2 cores)
    contrastive bench quality --quick --epochs 1 --methods simclr,byol
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from contrastkit.training.bench import criteria
from contrastkit.training.bench.checkout_path import checkout_path
from contrastkit.training.bench.pipelines import BenchSettings, build_trainer
from contrastkit.training.bench.time_to_knn import KNN_K, KNN_T, knn_run, raw_pixel_knn
from contrastkit.training.data import DataError, load_knn_data
from contrastkit.training.encoders.environment import environment, timestamp, write_json
from contrastkit.training.engine.trainer import Trainer

QUICK_DATA, QUICK_BACKBONE, QUICK_IMAGE_SIZE, QUICK_BATCH, QUICK_EPOCHS = (
    "fashion-mnist", "tiny", 16, 256, 3,
)  # fmt: skip
UNTRAINED_SEEDS = (0, 1, 2)
# lightly's methods (contrastkit.training.bench.peer_lightly_methods.PEER_METHODS; not imported
# here: that module needs lightly, which our own environment does not have)
PEER_METHODS = (
    "simclr", "moco", "moco-tuned", "byol", "simsiam", "barlow", "vicreg", "swav", "dino",
)  # fmt: skip
REPO = Path(__file__).resolve().parents[2]


def say(message: str) -> None:
    print(f"bench quality --quick: {message}", file=sys.stderr, flush=True)


def quick_settings(args: argparse.Namespace, methods: list[str]) -> tuple[BenchSettings, int]:
    """The flags, else the benchmark's fixed recipe -> (BenchSettings, epochs)."""
    epochs = QUICK_EPOCHS if args.epochs is None else int(args.epochs)
    if epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {epochs}")
    bench = BenchSettings(
        data=args.data or QUICK_DATA,
        backbone=args.backbone or QUICK_BACKBONE,
        batch_size=args.batch_size or QUICK_BATCH,
        image_size=args.image_size or QUICK_IMAGE_SIZE,
        device="cpu",
        precision="fp32",
        clip_text_tower=args.clip_text_tower,
        threads=torch.get_num_threads(),
        methods=methods,
    )
    return bench, epochs


def untrained_knn(s: BenchSettings, seeds: tuple[int, ...]) -> list[float]:
    """kNN top-1 of the untrained encoder (a fresh Trainer's backbone) at each seed."""
    found = []
    for seed in seeds:
        with tempfile.TemporaryDirectory(prefix="bench-untrained-") as out:
            trainer = build_trainer(
                dataclasses.replace(s, seed=seed), "simclr", Path(out) / "run",
                knn_every=1, knn_k=KNN_K, knn_t=KNN_T, knn_max_train=1 << 31,
            )  # fmt: skip
            acc = trainer.knn.maybe_run(trainer.method, trainer._autocast)
        assert acc is not None
        say(f"untrained encoder, seed {seed}: kNN {acc:.4f}")
        found.append(acc)
    return found


def ours(s: BenchSettings, epochs: int, method: str) -> dict[str, Any]:
    """Our Trainer with the method's defaults -> losses per step, kNN after the last
    epoch (only: each evaluation embeds 70,000 images), seconds."""
    losses: list[float] = []
    shape: dict[str, int] = {}

    def record_losses(trainer: Trainer) -> dict[str, Any]:
        step = trainer.step_on_views
        shape["steps_per_epoch"] = trainer.steps_per_epoch

        def recorded(views: Any) -> dict[str, torch.Tensor]:
            logs = step(views)
            losses.append(trainer.last_loss)
            return logs

        trainer.step_on_views = recorded  # type: ignore[method-assign]
        return {}

    t0 = time.perf_counter()
    found = knn_run(
        s, epochs, math.inf, None, say, method, overrides={"knn_every": epochs},
        raw_pixels=False, untrained=False, before=record_losses,
    )  # fmt: skip
    return {
        "knn_top1": found["final_top1"], "losses": losses, "steps": len(losses),
        "steps_per_epoch": shape["steps_per_epoch"], "epochs_done": found["epochs_done"],
        "stopped": found["stopped"], "seconds": time.perf_counter() - t0,
    }  # fmt: skip


def peer(s: BenchSettings, epochs: int, method: str, python: str, folder: Path) -> dict[str, Any]:
    """lightly's run of `method` (contrastkit.training.bench.peer_lightly in the peer's python) ->
    its result JSON; {"n/a": why} without the method or the environment."""
    if method not in PEER_METHODS:
        return {"n/a": "lightly has no implementation of this method"}
    if not Path(python).exists():
        return {"n/a": f"no peer environment at {python} (scripts/peer-lightly-env.sh)"}
    out, log = folder / f"peer-{method}.json", folder / f"peer-{method}.log"
    cmd = [
        python, "-m", "contrastkit.training.bench.peer_lightly",
        "--method", method, "--epochs", str(epochs),
        "--data", s.data, "--backbone", s.backbone, "--image-size", str(s.image_size),
        "--batch-size", str(s.batch_size), "--seed", str(s.seed),
        "--threads", str(torch.get_num_threads()), "--out", str(out),
    ]  # fmt: skip
    # the peer's venv has not installed us: it imports this checkout through symlinks
    env = os.environ | {"PYTHONPATH": str(checkout_path(folder / "import-path"))}
    say(f"{method}: peer (lightly) ... log {log}")
    with log.open("w") as f:
        done = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = log.read_text().strip().splitlines()[-3:]
        return {"error": f"exit {done.returncode}: {' | '.join(tail)}"}
    import json

    result: dict[str, Any] = json.loads(out.read_text())
    return result


def judge(row: dict[str, Any], untrained: list[float], n: int) -> dict[str, Any]:
    """A row with its ours/peer figures -> the loss windows and the criteria's verdicts."""
    o, p = row["ours"], row["peer"]
    if "losses" in o:
        o["epoch_loss"] = criteria.window_means(
            o["losses"], o["steps_per_epoch"], criteria.LOSS_WINDOW
        )
    if "losses" in p:
        p["epoch_loss"] = criteria.window_means(
            p["losses"], p["steps_per_epoch"], criteria.LOSS_WINDOW
        )
    loss = o["epoch_loss"][-1] if o.get("epoch_loss") else None
    peer_loss = p["epoch_loss"][-1] if p.get("epoch_loss") else None
    # a peer that failed is no reference, but not our method's failure either
    return criteria.verdicts(
        o.get("knn_top1"), untrained, n, loss=loss, peer_loss=peer_loss,
        peer_acc=p.get("knn_top1"),
    )  # fmt: skip


def _f(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def table(result: dict[str, Any]) -> str:
    """The markdown table of every method's row."""
    head = ("| method | epochs | steps | loss ours | loss peer | kNN ours | kNN peer | "
            "untrained (best) | raw pixels | vs untrained (SE) | vs peer (SE) | (a) | (b) | (c) "
            "| overall | s ours | s peer |")  # fmt: skip
    lines = [head, "|" + "---|" * 17]
    raw, best = result["raw_pixel_top1"], max(result["untrained"]["top1"])
    for name, row in result["methods"].items():
        o, p, v = row["ours"], row["peer"], row["verdicts"]
        loss_o = o["epoch_loss"][-1] if o.get("epoch_loss") else None
        loss_p = p["epoch_loss"][-1] if p.get("epoch_loss") else None
        peer_knn = _f(p.get("knn_top1")) if "n/a" not in p and "error" not in p else (
            "n/a" if "n/a" in p else "failed")  # fmt: skip
        cells = [
            name, str(o.get("epochs_done", "failed")), str(o.get("steps", "")), _f(loss_o),
            _f(loss_p), _f(o.get("knn_top1")), peer_knn, _f(best), _f(raw),
            _f(v.get("untrained_margin_se"), 1), _f(v.get("peer_margin_se"), 1),
            v["beats_untrained"], v["loss_vs_peer"], v["knn_vs_peer"], f"**{v['overall']}**",
            _f(o.get("seconds"), 0), _f(p.get("seconds"), 0),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_method(s: BenchSettings, epochs: int, method: str, args: argparse.Namespace,
               folder: Path) -> dict[str, Any]:  # fmt: skip
    """Ours, then the peer, of one method (a failed run of either is recorded, not raised)."""
    try:
        mine = ours(s, epochs, method)
    except Exception as e:  # one method's failure is a figure of the benchmark
        say(f"{method}: failed: {type(e).__name__}: {e}")
        mine = {"error": f"{type(e).__name__}: {e}"}
    other = (
        {"n/a": "--no-peer"} if args.no_peer else peer(s, epochs, method, args.peer_python, folder)
    )
    return {"ours": mine, "peer": other}


def run(args: argparse.Namespace, methods: list[str]) -> int:
    """The benchmark -> exit status: 0 all pass, 1 a criterion or run failed, 2 bad input."""
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        s, epochs = quick_settings(args, methods)
        data = load_knn_data(s.data, image_size=s.image_size)
    except (ValueError, DataError) as e:
        print(f"contrastive bench quality: {e}", file=sys.stderr)
        return 2
    if data is None:
        print(f"contrastive bench quality: --data {s.data} has no labels", file=sys.stderr)
        return 2
    n = int(data[1].images.shape[0])
    env = environment("cpu")
    path = Path(args.json) if args.json else Path(args.out) / f"quality-quick-{timestamp(env)}.json"
    folder = path.parent / f"{path.stem}-peer"
    folder.mkdir(parents=True, exist_ok=True)
    names = ("BEAT_UNTRAINED_SE", "PEER_KNN_SE", "LOSS_REL_TOL", "LOSS_ABS_TOL", "LOSS_WINDOW")
    crit = {k: getattr(criteria, k) for k in names}
    result: dict[str, Any] = {
        "benchmark": "quality-quick", **env, "criteria": crit, "queries": n,
        "settings": dataclasses.asdict(s) | {"epochs": epochs, "knn_k": KNN_K, "knn_t": KNN_T},
        "methods": {},
    }  # fmt: skip
    say(f"results -> {path}")
    result["raw_pixel_top1"] = raw_pixel_knn(s.data, s.image_size, torch.device("cpu"))["top1"]
    say(f"raw pixels: kNN {result['raw_pixel_top1']:.4f}")
    accs = untrained_knn(s, UNTRAINED_SEEDS)
    mean = sum(accs) / len(accs)
    spread = max(accs) - min(accs)
    seeds = list(UNTRAINED_SEEDS)
    result["untrained"] = {"seeds": seeds, "top1": accs, "mean": mean, "spread": spread}
    write_json(path, result)
    for method in methods:
        say(f"{method}: {epochs} epochs at batch {s.batch_size} ...")
        row = run_method(s, epochs, method, args, folder)
        if row["ours"].get("stopped") == "signal":
            # the Trainer turned SIGINT/SIGTERM into a clean stop of this run: end here, or
            # a `timeout` would only skip to the next method; the partial row is not kept
            result["interrupted"] = method
            write_json(path, result)
            say(f"interrupted during {method}: the finished methods are in {path}")
            return 130
        row["verdicts"] = judge(row, accs, n)
        result["methods"][method] = row
        say(f"{method}: {row['verdicts']['overall']}")
        write_json(path, result)
    print(f"Quality (--quick): {s.data}, {s.backbone} at {s.image_size} px, batch {s.batch_size}, "
          f"{epochs} epochs, {env['device_name']}, kNN k={KNN_K} t={KNN_T} over {n} queries; "
          f"untrained seeds {_f(mean)} mean, {_f(spread)} spread\n")  # fmt: skip
    print(table(result))
    print(f"\nwrote {path}")
    failed = [m for m, r in result["methods"].items() if r["verdicts"]["overall"] != "PASS"]
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0
