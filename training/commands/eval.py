"""`contrastive eval`: score models with kNN, a linear probe, zero-shot, few-shot, retrieval.

    contrastive eval --model builtin --data fashion-mnist --task zeroshot --limit 1000
    contrastive eval --model runs/simclr --data fashion-mnist --task knn,linear,fewshot
    contrastive eval --model open_clip:ViT-B-32 --pretrained laion2b_s34b_b79k \
        --model runs/clip --data pairs:held-out.csv --task retrieval

Writes eval-<date>.json (every number, the model, data, settings, date and device) and
eval-<date>.md (the table, also printed) into --out. Several --model: every task runs
for each on the same images; one table, a column per model, and the better model with
the command that serves it (contrastkit.training.evaluate.compare states the rule).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from contrastkit.training.commands.eval_options import (
    BANK_TASKS,
    TEMPLATE_CHOICES,
    EvalError,
    add_arguments,
    captions_of,
    check_command_line,
    choose_tasks,
    class_names,
    is_caption_data,
    parse_ints,
    parse_tasks,
    pretrained_per_model,
)

if TYPE_CHECKING:
    import torch

    from contrastkit.training.encoders import Encoder
    from contrastkit.training.evaluate.data import EvalData
    from contrastkit.training.evaluate.models import CheckpointLoader


def evaluate(
    args: argparse.Namespace,
    checkpoint_loader: CheckpointLoader | None = None,
    model: str | None = None,
    pretrained: str | None = None,
) -> dict[str, Any]:
    """Run the command line's tasks for `model` (default: the first --model); returns the
    report (what the JSON file holds)."""
    import torch

    from contrastkit.training.encoders.environment import environment
    from contrastkit.training.evaluate.data import load_eval_data
    from contrastkit.training.evaluate.models import resolve_model
    from contrastkit.training.evaluate.pixels import extract_features
    from contrastkit.training.evaluate.retrieval import retrieval

    model = model or args.model[0]
    requested = parse_tasks(args.task)
    if args.threads:
        torch.set_num_threads(args.threads)
    shots = parse_ints(args.shots, "--shots")
    ks = sorted(set(parse_ints(args.recall_at, "--recall-at")))
    captions = is_caption_data(args.data)
    device = None if args.device == "auto" else args.device
    encoder = resolve_model(model, pretrained, device, checkpoint_loader)
    tasks = choose_tasks(requested, encoder, captions)
    data = load_eval_data(args.data, encoder.info.preprocess.size, args.limit, args.seed)
    if data.bank is None:
        if requested is not None and set(tasks) & set(BANK_TASKS):
            raise EvalError(f"--data {args.data} has test images only: use --task zeroshot")
        tasks = [t for t in tasks if t not in BANK_TASKS]
    if not tasks:
        raise EvalError(
            f"nothing to evaluate: {args.data} has no train split and the model no text"
        )
    names = class_names(args, data) if not captions else []
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
        if task == "retrieval":
            texts = captions_of(data, names)
            results[task] = retrieval(encoder, queries, texts, ks, args.batch_size)
        else:
            results[task] = _run_task(task, args, encoder, data, names, bank, queries, shots)
        seconds[task] = time.perf_counter() - t0
    settings = {"k": args.k, "t": args.t, "shots": shots, "seeds": args.seeds,
                "fewshot_l2": args.fewshot_l2, "templates": args.templates,
                "limit": args.limit, "seed": args.seed, "batch_size": args.batch_size,
                "recall_at": ks, "threads": torch.get_num_threads()}  # fmt: skip
    return {
        "model": model, "pretrained": pretrained, "model_id": encoder.model_id,
        "embed_dim": encoder.embed_dim, "data": args.data, "classes": names,
        "n_bank": len(bank),  # 0 when no task used the train images
        "n_queries": len(data.query_labels), "tasks": tasks, "settings": settings,
        **environment(encoder.device), "seconds": seconds, "results": results,
    }  # fmt: skip


def _run_task(
    task: str, args: argparse.Namespace, encoder: Encoder, data: EvalData, names: list[str],
    bank: torch.Tensor, queries: torch.Tensor, shots: list[int],
) -> Any:  # fmt: skip
    from contrastkit.training.evaluate.tasks import few_shot, knn_task, linear_probe
    from contrastkit.training.evaluate.zeroshot import zero_shot

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
    from contrastkit.training.data import DataError
    from contrastkit.training.encoders import MissingCapabilityError, UnknownModelError
    from contrastkit.training.encoders.exported.format import ExportError
    from contrastkit.training.engine.checkpoint import CheckpointError
    from contrastkit.training.evaluate.report import markdown, write_report
    from contrastkit.training.extras import MissingExtraError

    try:
        report = evaluate_all(args, checkpoint_loader)
    except (EvalError, DataError, UnknownModelError, MissingCapabilityError,
            CheckpointError, ExportError, ValueError, MissingExtraError) as e:  # fmt: skip
        print(f"contrastive eval: {e}", file=sys.stderr)
        return 2
    json_path, md_path = write_report(report, args.out)
    print(markdown(report))
    print(f"\nwrote {json_path} and {md_path}")
    return 0


def evaluate_all(
    args: argparse.Namespace, checkpoint_loader: CheckpointLoader | None = None
) -> dict[str, Any]:
    """One model: its report. Several: {"models": [report per model], "verdict", "date"};
    the same --seed and --limit give every model the same images."""
    from contrastkit.training.evaluate.compare import verdict

    models = list(args.model)
    tags = pretrained_per_model(models, args.pretrained)
    check_command_line(args, models)
    if len(models) == 1:
        return evaluate(args, checkpoint_loader, models[0], tags[0])
    if len(set(models)) < len(models):
        raise EvalError(f"a --model is given twice: {models}")
    reports = [evaluate(args, checkpoint_loader, m, t) for m, t in zip(models, tags, strict=True)]
    return {"models": reports, "verdict": verdict(reports), "date": reports[0]["date"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="contrastive eval", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
