"""The options of `contrastive eval`: its flags, and the checks of their values that
need no model (which tasks, which numbers, which --pretrained for which model).

Imports nothing heavy: `contrastive eval --help` builds its parser from here."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from contrastkit.training.evaluate.defaults import FEWSHOT_L2

if TYPE_CHECKING:
    from contrastkit.training.encoders import Encoder
    from contrastkit.training.evaluate.data import EvalData

TASKS = ("knn", "linear", "zeroshot", "fewshot", "retrieval")
BANK_TASKS = ("knn", "linear", "fewshot")  # those that learn from the train images
TEXT_TASKS = ("zeroshot", "retrieval")
# --templates value -> the template sets (contrastkit.training.evaluate.zeroshot.TEMPLATE_SETS) it
# scores
TEMPLATE_CHOICES: dict[str, tuple[str, ...]] = {
    "default": ("ensemble",),
    "single": ("single",),
    "both": ("ensemble", "single"),
}
# labelled data: each image's caption for retrieval is its class name in this template set
RETRIEVAL_TEMPLATE_SET = "single"


class EvalError(ValueError):
    """A command line that cannot be evaluated; the message says what to change."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        action="append",
        help="builtin | open_clip:ARCH | export dir | checkpoint file or run folder; "
        "repeat to compare models",
    )
    p.add_argument(
        "--pretrained",
        action="append",
        default=None,
        help="open_clip weights: tag or local file; once for every open_clip model, or once "
        "per open_clip --model, in order",
    )
    p.add_argument(
        "--data",
        required=True,
        help="a labelled training data spec (digits, fashion-mnist[:DIR], folder:DIR, ...), "
        "pairs:FILE (retrieval only) or skimage-photos (zero-shot only)",
    )
    p.add_argument(
        "--task",
        default="auto",
        help="comma list of knn,linear,zeroshot,fewshot,retrieval [auto: every task the "
        "model and data allow; retrieval only for pairs: data]",
    )
    p.add_argument("--recall-at", default="1,5,10", help="retrieval: recall@K for these K [1,5,10]")
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


def choose_tasks(requested: list[str] | None, encoder: Encoder, captions: bool) -> list[str]:
    """The tasks to run; `captions`: the data is image-caption pairs (no class labels)."""
    from contrastkit.training.encoders import TEXT

    has_text = TEXT in encoder.capabilities
    if requested is None:
        if captions:
            requested = ["retrieval"]
        else:  # retrieval of class-name captions only on request: it repeats zero-shot
            return [t for t in TASKS if t not in TEXT_TASKS or (t == "zeroshot" and has_text)]
    if captions and set(requested) - {"retrieval"}:
        raise EvalError("pairs: data has captions, not class labels: use --task retrieval")
    if "zeroshot" in requested and not has_text:
        raise EvalError(
            f"zero-shot needs a model that embeds text, and {encoder.model_id!r} is image-only; "
            "drop zeroshot from --task or pass a CLIP-style model"
        )
    if "retrieval" in requested and not has_text:
        raise EvalError(
            f"retrieval needs a text tower, and {encoder.model_id!r} embeds images only; "
            "pass a CLIP-style model"
        )
    return requested


def pretrained_per_model(models: list[str], given: list[str] | None) -> list[str | None]:
    """--pretrained values -> one per --model: a single value goes to every model (only
    open_clip reads it); several pair up with the open_clip models in order."""
    if not given:
        return [None] * len(models)
    if len(given) == 1:
        return [given[0]] * len(models)
    clip = [i for i, m in enumerate(models) if m.startswith("open_clip:")]
    if len(clip) != len(given):
        raise EvalError(
            f"{len(given)} --pretrained values for {len(clip)} open_clip models: give one "
            "for all, or one per open_clip --model"
        )
    out: list[str | None] = [None] * len(models)
    for i, tag in zip(clip, given, strict=True):
        out[i] = tag
    return out


def class_names(args: argparse.Namespace, data: EvalData) -> list[str]:
    if args.class_names is None:
        return data.classes
    names = [n.strip() for n in args.class_names.split(",")]
    if len(names) != len(data.classes):
        raise EvalError(f"--class-names has {len(names)} names; the data has {len(data.classes)}")
    return names


def captions_of(data: EvalData, names: list[str]) -> list[str]:
    """One caption per query image: its own (pairs:), else its class name in the template."""
    from contrastkit.training.evaluate.zeroshot import TEMPLATE_SETS, fill

    if data.captions is not None:
        return data.captions
    template = TEMPLATE_SETS[RETRIEVAL_TEMPLATE_SET][0]
    return [fill(template, names[i]) for i in data.query_labels.tolist()]


def is_caption_data(spec: str) -> bool:
    """True for `pairs:FILE`; raises DataError for a bad spec before any model loads."""
    from contrastkit.training.data import parse_spec
    from contrastkit.training.evaluate import photos

    return spec != photos.SPEC and parse_spec(spec).kind == "pairs"


def check_command_line(args: argparse.Namespace, models: list[str]) -> None:
    """Raise for a bad task, number, data spec or model reference before any model loads
    (so the third --model's typo does not surface after two models' evaluations)."""
    from contrastkit.training.encoders import check_reference
    from contrastkit.training.evaluate.models import is_checkpoint_ref
    from contrastkit.training.extras import require_data

    parse_tasks(args.task)
    parse_ints(args.shots, "--shots")
    parse_ints(args.recall_at, "--recall-at")
    is_caption_data(args.data)
    require_data(args.data)  # MissingExtraError: e.g. digits without scikit-learn
    for ref in models:
        if not is_checkpoint_ref(ref):
            check_reference(ref)
