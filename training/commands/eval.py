"""`contrastive eval`: score a model's features with kNN, a linear probe, zero-shot and few-shot.

    contrastive eval --model builtin --data fashion-mnist --task zeroshot --limit 1000
    contrastive eval --model runs/simclr --data fashion-mnist --task knn,linear,fewshot

Writes eval-<date>.json (every number, the model, data, settings, date and device) and
eval-<date>.md (the table, also printed) into --out.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from typing import Any

import torch

from training.encoders import TEXT, Encoder
from training.evaluate.data import EvalData, load_eval_data
from training.evaluate.models import CheckpointLoader, resolve_model
from training.evaluate.pixels import extract_features
from training.evaluate.report import markdown, write_report
from training.evaluate.tasks import FEWSHOT_L2, few_shot, knn_task, linear_probe
from training.evaluate.zeroshot import TEMPLATE_CHOICES, zero_shot

TASKS = ("knn", "linear", "zeroshot", "fewshot")
BANK_TASKS = ("knn", "linear", "fewshot")  # those that learn from the train images


class EvalError(ValueError):
    """A command line that cannot be evaluated; the message says what to change."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="builtin | open_clip:ARCH | export dir | checkpoint file or run folder",
    )
    p.add_argument("--pretrained", default=None, help="open_clip weights: tag or local file")
    p.add_argument(
        "--data",
        required=True,
        help="a labelled training data spec (digits, fashion-mnist[:DIR], "
        "folder:DIR, ...) or skimage-photos (zero-shot only)",
    )
    p.add_argument(
        "--task",
        default="auto",
        help="comma list of knn,linear,zeroshot,fewshot [auto: every task the "
        "model and data allow]",
    )
    p.add_argument("--out", default="eval-results", help="folder for JSON + markdown")
    p.add_argument("--k", type=int, default=200, help="kNN neighbours [200]")
    p.add_argument("--t", type=float, default=0.1, help="kNN temperature [0.1]")
    p.add_argument("--shots", default="1,5,10", help="few-shot examples per class [1,5,10]")
    p.add_argument("--seeds", type=int, default=5, help="few-shot draws averaged [5]")
    p.add_argument(
        "--fewshot-l2", type=float, default=FEWSHOT_L2, help=f"few-shot L2 strength [{FEWSHOT_L2}]"
    )
    p.add_argument(
        "--templates",
        choices=sorted(TEMPLATE_CHOICES),
        default="both",
        help="zero-shot prompts: default (7-template ensemble), single, both [both]",
    )
    p.add_argument(
        "--class-names",
        default=None,
        help="comma list replacing the data's class names for zero-shot",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="score a fixed random N of the train and of the test images",
    )
    p.add_argument("--batch-size", type=int, default=256, help="images per embedding batch")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N [auto]")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch [torch's]")
    p.add_argument("--seed", type=int, default=0, help="seed of --limit and the validation split")


def parse_tasks(text: str) -> list[str] | None:
    """'knn,linear' -> ['knn', 'linear']; 'auto' -> None (decided by model and data)."""
    if text.strip() == "auto":
        return None
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise EvalError(f"unknown task(s) {unknown or text!r}; choose from {', '.join(TASKS)}")
    return list(dict.fromkeys(tasks))


def parse_ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise EvalError(f"{what} must be a comma list of integers, got {text!r}") from e
    if not values or min(values) < 1:
        raise EvalError(f"{what} must be positive integers, got {text!r}")
    return values


def choose_tasks(requested: list[str] | None, encoder: Encoder) -> list[str]:
    if requested is None:
        return [t for t in TASKS if t != "zeroshot" or TEXT in encoder.capabilities]
    if "zeroshot" in requested and TEXT not in encoder.capabilities:
        raise EvalError(
            f"zero-shot needs a model that embeds text, and {encoder.model_id!r} is image-only; "
            "drop zeroshot from --task or pass a CLIP-style model"
        )
    return requested


def class_names(args: argparse.Namespace, data: EvalData) -> list[str]:
    if args.class_names is None:
        return data.classes
    names = [n.strip() for n in args.class_names.split(",")]
    if len(names) != len(data.classes):
        raise EvalError(f"--class-names has {len(names)} names; the data has {len(data.classes)}")
    return names


def evaluate(
    args: argparse.Namespace, checkpoint_loader: CheckpointLoader | None = None
) -> dict[str, Any]:
    """Run the command line's tasks; returns the report (what the JSON file holds)."""
    from training.data import parse_spec
    from training.encoders.environment import environment
    from training.evaluate import photos

    requested = parse_tasks(args.task)
    if args.threads:
        torch.set_num_threads(args.threads)
    shots = parse_ints(args.shots, "--shots")
    if args.data != photos.SPEC:
        parse_spec(args.data)  # a bad spec fails before the model loads
    device = None if args.device == "auto" else args.device
    encoder = resolve_model(args.model, args.pretrained, device, checkpoint_loader)
    tasks = choose_tasks(requested, encoder)
    data = load_eval_data(args.data, encoder.info.preprocess.size, args.limit, args.seed)
    if data.bank is None:
        if requested is not None and set(tasks) & set(BANK_TASKS):
            raise EvalError(f"--data {args.data} has test images only: use --task zeroshot")
        tasks = [t for t in tasks if t not in BANK_TASKS]
    if not tasks:
        raise EvalError(
            f"nothing to evaluate: {args.data} has no train split and the model no text"
        )
    names = class_names(args, data)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    queries = extract_features(encoder, data.queries, args.batch_size, "embed test")
    seconds["embed_test"] = time.perf_counter() - t0
    bank = torch.empty(0)
    if data.bank is not None and set(tasks) & set(BANK_TASKS):
        t0 = time.perf_counter()
        bank = extract_features(encoder, data.bank, args.batch_size, "embed train")
        seconds["embed_train"] = time.perf_counter() - t0
    results: dict[str, Any] = {}
    for task in tasks:
        t0 = time.perf_counter()
        results[task] = _run_task(task, args, encoder, data, names, bank, queries, shots)
        seconds[task] = time.perf_counter() - t0
    settings = {"k": args.k, "t": args.t, "shots": shots, "seeds": args.seeds,
                "fewshot_l2": args.fewshot_l2, "templates": args.templates,
                "limit": args.limit, "seed": args.seed, "batch_size": args.batch_size,
                "threads": torch.get_num_threads()}  # fmt: skip
    return {
        "model": args.model, "pretrained": args.pretrained, "model_id": encoder.model_id,
        "embed_dim": encoder.embed_dim, "data": args.data, "classes": names,
        "n_bank": len(bank),  # 0 when no task used the train images
        "n_queries": len(data.query_labels), "tasks": tasks, "settings": settings,
        **environment(encoder.device), "seconds": seconds, "results": results,
    }  # fmt: skip


def _run_task(
    task: str, args: argparse.Namespace, encoder: Encoder, data: EvalData, names: list[str],
    bank: torch.Tensor, queries: torch.Tensor, shots: list[int],
) -> Any:  # fmt: skip
    n_cls = len(data.classes)
    if task == "zeroshot":
        sets = TEMPLATE_CHOICES[args.templates]
        found = zero_shot(encoder, queries, data.query_labels, names, sets)
        return {name: asdict(r) for name, r in found.items()}
    assert data.bank_labels is not None
    if task == "knn":
        return asdict(knn_task(bank, data.bank_labels, queries, data.query_labels, n_cls,
                               k=args.k, t=args.t))  # fmt: skip
    if task == "linear":
        return asdict(linear_probe(bank, data.bank_labels, queries, data.query_labels, n_cls,
                                   seed=args.seed, device=encoder.device))  # fmt: skip
    runs = few_shot(bank, data.bank_labels, queries, data.query_labels, n_cls, shots,
                    args.seeds, args.fewshot_l2, device=encoder.device)  # fmt: skip
    return [asdict(r) for r in runs]


def run(args: argparse.Namespace, checkpoint_loader: CheckpointLoader | None = None) -> int:
    """The `contrastive eval` command: 0 on success, 2 for a bad command line or input."""
    from training.data import DataError
    from training.encoders import MissingCapabilityError, UnknownModelError
    from training.encoders.exported.format import ExportError
    from training.engine.checkpoint import CheckpointError

    try:
        report = evaluate(args, checkpoint_loader)
    except (EvalError, DataError, UnknownModelError, MissingCapabilityError,
            CheckpointError, ExportError, ValueError) as e:  # fmt: skip
        print(f"contrastive eval: {e}", file=sys.stderr)
        return 2
    json_path, md_path = write_report(report, args.out)
    print(markdown(report))
    print(f"\nwrote {json_path} and {md_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="contrastive eval", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
