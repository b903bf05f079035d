"""`contrastive bench quality`: how good each method's representation gets, side by side.

Every registered method (or --methods) trains through the real Trainer on one data set
with one backbone, and for each the run records, in one process on one device:

- kNN (k = 200, t = 0.1) of the untrained encoder: the reference each method must beat;
- kNN after every epoch (contrastkit.training.bench.time_to_knn.knn_run, the figure PERFORMANCE.md
  quotes);
- a linear probe on the frozen backbone features after the last epoch (the evaluate
  package's probe: logistic regression, its L2 strength chosen on a validation split),
  and the same probe of the untrained encoder, its reference;
- kNN on raw pixels, once: the floor that any representation should approach.

Then --lars-methods (BYOL and SimCLR) train again at --lars-batch with the LARS this
project used before clipping existed (unclipped, eta 0.02:
contrastkit.training.engine.resume.BEFORE_SETTINGS_EXISTED)
and the clipped one it uses now (solo-learn's LARC, eta 0.02), so the two are compared at
the large batch where their difference shows, in the same run.

--quick is the CPU benchmark with pass criteria (contrastkit.training.bench.quality_quick): every
method's default recipe on Fashion-MNIST at 16 px, against the untrained encoder and
lightly's implementation of the same recipe; it exits 1 when a method fails.

    contrastive bench quality --quick                        # CPU, criteria, peer
    contrastive bench quality --device cuda --data fashion-mnist --epochs 20
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from contrastkit.training.bench import flags, quality_quick
from contrastkit.training.bench.flags import DEFAULT_LARS_METHODS
from contrastkit.training.bench.pipelines import BenchSettings
from contrastkit.training.bench.time_to_knn import KNN_K, KNN_T, knn_run, raw_pixel_knn
from contrastkit.training.config import ConfigError, TrainConfig
from contrastkit.training.data import DataError, LabelledArrays, load_knn_data
from contrastkit.training.data.idx import FASHION_MNIST_DIR
from contrastkit.training.encoders.environment import environment, timestamp, write_json
from contrastkit.training.engine.resume import BEFORE_SETTINGS_EXISTED
from contrastkit.training.engine.runstate import train_device
from contrastkit.training.engine.trainer import Trainer
from contrastkit.training.evaluate.knn import embed
from contrastkit.training.evaluate.tasks import linear_probe
from contrastkit.training.methods import METHODS, get_method

# The two LARS forms side by side: the old one exactly as old checkpoints resume with it,
# the clipped one exactly as a run gets it today (TrainConfig's defaults).
LARS_VARIANTS: dict[str, dict[str, Any]] = {
    "old": {
        "lars_eta": BEFORE_SETTINGS_EXISTED["lars_eta"],
        "lars_clip": BEFORE_SETTINGS_EXISTED["lars_clip"],
    },
    "clipped": {"lars_eta": TrainConfig.lars_eta, "lars_clip": TrainConfig.lars_clip},
}

Data = tuple[LabelledArrays, LabelledArrays]

# its flags live in contrastkit.training.bench.flags, which `--help` imports without torch
add_arguments = flags.quality


def registered_methods() -> list[str]:
    """Every method in the registry. Asking for one imports every module of
    contrastkit.training.methods, so methods added since this file was written are included."""
    get_method("simclr")
    return sorted(METHODS)


def say(message: str) -> None:
    print(f"bench quality: {message}", file=sys.stderr, flush=True)


def _names(text: str, what: str) -> list[str]:
    names = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    for name in names:
        try:
            get_method(name)
        except ValueError as e:  # it names the choices; say which flag was wrong
            raise ConfigError(f"{what}: {e}") from None
    return names


@dataclasses.dataclass
class Plan:
    """What one quality run trains (the JSON's "settings", with the BenchSettings)."""

    bench: BenchSettings
    methods: list[str]
    epochs: int
    lars_methods: list[str]
    lars_batch: int
    time_limit: float | None


def plan_from_args(args: argparse.Namespace, device: torch.device) -> Plan:
    """Flags, else defaults for the device (--quick is quality_quick's, not a Plan)."""
    gpu = device.type == "cuda"
    # Fashion-MNIST takes a CPU minutes an epoch at 32 px: digits there.
    default_data = "fashion-mnist" if gpu and Path(FASHION_MNIST_DIR).is_dir() else "digits"

    def pick(value: Any, cuda: Any, cpu: Any) -> Any:
        return value if value is not None else cuda if gpu else cpu

    methods = registered_methods() if args.methods is None else _names(args.methods, "--methods")
    bench = BenchSettings(
        data=pick(args.data, default_data, "digits"),
        backbone=pick(args.backbone, "resnet18", "tiny"),
        batch_size=pick(args.batch_size, 256, 64),
        image_size=args.image_size or 32,
        device=args.device,
        precision=args.precision,
        clip_text_tower=args.clip_text_tower,
        threads=torch.get_num_threads(),
        methods=methods,
    )
    epochs = int(pick(args.epochs, 20, 3))
    if epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {epochs}")
    return Plan(
        bench=bench,
        methods=methods,
        epochs=epochs,
        lars_methods=_names(
            pick(args.lars_methods, DEFAULT_LARS_METHODS, DEFAULT_LARS_METHODS), "--lars-methods"
        ),
        lars_batch=int(pick(args.lars_batch, 1024, 256)),
        time_limit=args.time_limit or None,
    )


def frozen_features(trainer: Trainer, images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> L2-normalised backbone features [N, d] on the trainer's device, made
    exactly as the online kNN makes them (eval view, autocast, eval mode)."""
    method, size = trainer.method, trainer.image_size

    def features(u8: torch.Tensor) -> torch.Tensor:
        with trainer._autocast():
            return method.image_features(trainer.augment.eval_view(u8, size)).float()  # type: ignore[no-any-return]

    was_training = method.training
    method.eval()
    try:
        with torch.no_grad():
            return F.normalize(embed(features, images, trainer.device), dim=1)
    finally:
        method.train(was_training)


def probe(data: Data, key: str) -> Callable[[Trainer], dict[str, Any]]:
    """knn_run's `before` / `after`: a linear probe of the backbone as it is then (train set
    -> test set), under `key`. Before training it is the probe's reference: random conv
    features are separable enough that a probe alone says little without it."""
    bank, queries = data

    def run_probe(trainer: Trainer) -> dict[str, Any]:
        t0 = time.perf_counter()
        bank_f = frozen_features(trainer, bank.images)
        query_f = frozen_features(trainer, queries.images)
        found = linear_probe(
            bank_f, bank.labels, query_f, queries.labels, len(bank.classes),
            device=trainer.device,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        say(f"{key}: top-1 {found.top1:.4f} (l2 {found.l2:.3g}, {seconds:.1f} s)")
        return {
            key: {
                "top1": found.top1,
                "l2": found.l2,
                "n_train": found.n_train,
                "n_val": found.n_val,
                "seconds": seconds,
            }
        }

    return run_probe


def skip_reason(method: str, data: Data) -> str | None:
    """Why `method` cannot train on this data, or None. Image-text methods need captions:
    a labelled set gives them its class names ('a photo of a {}.'), so only a set without
    class names would skip them (the quality bench needs labels anyway, for kNN)."""
    if get_method(method).needs_text and not data[0].classes:
        return "needs captions, and the data has neither captions nor class names"
    return None


def train_one(
    plan: Plan,
    method: str,
    data: Data,
    *,
    batch_size: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One method's run -> its row: untrained kNN, kNN per epoch, probe, time. A run that
    fails (a diverging optimiser, memory) becomes {"error": ...}, so the others still run."""
    s = plan.bench if batch_size is None else dataclasses.replace(plan.bench, batch_size=batch_size)
    t0 = time.perf_counter()
    try:
        found = knn_run(
            s, plan.epochs, math.inf, plan.time_limit, say, method,
            overrides=overrides, raw_pixels=False,
            before=probe(data, "untrained_probe"), after=probe(data, "linear_probe"),
        )  # fmt: skip
    except Exception as e:  # one method's failure is a figure of the benchmark, not its end
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        say(f"{method}: failed: {type(e).__name__}: {e}")
        return {
            "method": method,
            "batch_size": s.batch_size,
            "settings": overrides or {},
            "error": f"{type(e).__name__}: {e}",
            "seconds": time.perf_counter() - t0,
        }
    untrained, final = found["untrained_top1"], found["final_top1"]
    return {
        "method": method,
        "batch_size": s.batch_size,
        "settings": overrides or {},
        "untrained_top1": untrained,
        "untrained_probe": found["untrained_probe"],
        "per_epoch": found["per_epoch"],
        "final_top1": final,
        "linear_probe": found["linear_probe"],
        "epochs_requested": found["epochs_requested"],
        "epochs_done": found["epochs_done"],
        "stopped": found["stopped"],
        "above_untrained": None if untrained is None or final is None else final > untrained,
        "probe_above_untrained": (found["linear_probe"]["top1"] > found["untrained_probe"]["top1"]),
        "seconds": time.perf_counter() - t0,
        "images_per_second": found["images_per_second"],
        "loss": found["loss"],
    }


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _probe(row: dict[str, Any], key: str = "linear_probe") -> float | None:
    found = row.get(key)
    return None if found is None else float(found["top1"])


def quality_table(methods: dict[str, dict[str, Any]]) -> str:
    """The markdown table of the methods' rows (skipped and failed runs say so)."""
    lines = [
        "| method | untrained kNN | final kNN | untrained probe | linear probe | epochs "
        "| seconds | above untrained |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in methods.items():
        if "skipped" in row or "error" in row:
            why = f"skipped: {row['skipped']}" if "skipped" in row else f"failed: {row['error']}"
            lines.append(f"| {name} | {why} | | | | | | |")
            continue
        above = {True: "yes", False: "**no**", None: "n/a"}[row["above_untrained"]]
        lines.append(
            f"| {name} | {_f(row['untrained_top1'])} | {_f(row['final_top1'])} | "
            f"{_f(_probe(row, 'untrained_probe'))} | {_f(_probe(row))} | "
            f"{row['epochs_done']:g} | {row['seconds']:.0f} | {above} |"
        )
    return "\n".join(lines)


def lars_table(lars: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The markdown table of the LARS comparison: per method, old then clipped."""
    lines = [
        "| method | batch | LARS | final kNN | linear probe | epochs | seconds | final loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, variants in lars.items():
        for variant, row in variants.items():
            s = row["settings"]
            clip = "LARC clip" if s["lars_clip"] else "no clip"
            form = f"{variant}: eta {s['lars_eta']:g}, {clip}"
            if "error" in row:
                lines.append(f"| {name} | {row['batch_size']} | {form} | failed: {row['error']} "
                             "| | | | |")  # fmt: skip
                continue
            loss = "n/a" if row["loss"] is None else f"{row['loss']:.4f}"
            lines.append(
                f"| {name} | {row['batch_size']} | {form} | {_f(row['final_top1'])} | "
                f"{_f(_probe(row))} | {row['epochs_done']:g} | {row['seconds']:.0f} | {loss} |"
            )
    return "\n".join(lines)


def print_report(result: dict[str, Any]) -> None:
    s = result["settings"]
    print(
        f"Representation quality: {s['data']}, {s['backbone']}, {s['epochs']} epochs at batch "
        f"{s['batch_size']}, on {result['device']} ({result['device_name']}); "
        f"kNN k={KNN_K}, t={KNN_T}; raw pixels {_f(result['raw_pixel_top1'])}\n"
    )
    print(quality_table(result["methods"]))
    for note in result["notes"]:
        print(f"\nnote: {note}")
    below = result["below_untrained"]
    if below:
        print(f"\nNOT above the untrained encoder: {', '.join(below)}")
    if result["lars"]:
        print(f"\nOld vs clipped LARS at batch {s['lars_batch']}:\n")
        print(lars_table(result["lars"]))


def train_all(plan: Plan, data: Data, result: dict[str, Any], path: Path) -> bool:
    """Every method, then the LARS comparison, into `result` (rewritten to `path` after each
    run, so what finished survives a run cut short). False when SIGINT/SIGTERM stopped a
    run: the Trainer turns the signal into a clean stop of that run only, so the bench must
    end here itself or a `timeout` would merely skip to the next method."""
    s = plan.bench
    for method in plan.methods:
        reason = skip_reason(method, data)
        if reason is not None:
            say(f"{method}: skipped: {reason}")
            result["methods"][method] = {"method": method, "skipped": reason}
            continue
        if get_method(method).needs_text:
            result["notes"].append(
                f"{method} trained on captions made from the class names "
                "(the data has no captions of its own)"
            )
        say(f"{method}: {plan.epochs} epochs at batch {s.batch_size} ...")
        row = train_one(plan, method, data)
        result["methods"][method] = row
        if row.get("above_untrained") is False:
            result["below_untrained"].append(method)
        write_json(path, result)
        if row.get("stopped") == "signal":
            return False
    for method in plan.lars_methods:
        result["lars"][method] = {}
        for variant, lars in LARS_VARIANTS.items():
            say(f"{method}: {variant} LARS {lars} at batch {plan.lars_batch} ...")
            row = train_one(
                plan, method, data, batch_size=plan.lars_batch,
                overrides={"optimizer": "lars", **lars},
            )  # fmt: skip
            result["lars"][method][variant] = row
            write_json(path, result)
            if row.get("stopped") == "signal":
                return False
    return True


def run(args: argparse.Namespace) -> int:
    if args.quick:
        try:
            methods = (
                registered_methods() if args.methods is None else _names(args.methods, "--methods")
            )
        except ConfigError as e:
            print(f"contrastive bench quality: {e}", file=sys.stderr)
            return 2
        return quality_quick.run(args, methods)
    try:
        device = train_device(args.device)
        if args.threads:
            torch.set_num_threads(args.threads)
        plan = plan_from_args(args, device)
        s = plan.bench
        data = load_knn_data(s.data, image_size=s.image_size)
        if data is None:
            raise DataError(f"--data {s.data!r} has no labels: quality needs kNN and a probe")
        env = environment(device)
        path = Path(args.json) if args.json else Path(args.out) / f"quality-{timestamp(env)}.json"
        settings = dataclasses.asdict(s) | {
            "epochs": plan.epochs,
            "lars_methods": plan.lars_methods,
            "lars_batch": plan.lars_batch,
            "lars_variants": LARS_VARIANTS,
            "time_limit_s": plan.time_limit,
            "knn_k": KNN_K,
            "knn_t": KNN_T,
        }
        result: dict[str, Any] = {"benchmark": "quality", **env, "settings": settings}
        result |= {"raw_pixel_top1": None, "methods": {}, "lars": {}, "notes": []}
        result["below_untrained"] = []
        say(f"{device} ({env['device_name']}), data {s.data}, methods {', '.join(plan.methods)}")
        say(f"results -> {path}")
        result["raw_pixel_top1"] = raw_pixel_knn(s.data, s.image_size, device)["top1"]
        write_json(path, result)
        if not train_all(plan, data, result, path):
            result["interrupted"] = True
            say("interrupted: the runs so far are in the table and the JSON")
    except (ConfigError, DataError, ValueError) as e:
        print(f"contrastive bench quality: {e}", file=sys.stderr)
        return 2
    print_report(result)
    print(f"\nwrote {path}")
    if result.get("interrupted"):
        return 130
    runs = [*result["methods"].values(), *(r for v in result["lars"].values() for r in v.values())]
    return 1 if any("error" in r for r in runs) else 0


def main(argv: list[str] | None = None) -> int:
    """`python -m contrastkit.training.bench.quality` (the same as `contrastive bench quality`)."""
    parser = argparse.ArgumentParser(
        prog="python -m contrastkit.training.bench.quality", description=__doc__
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
