"""Evaluation of frozen encoders: weighted kNN, linear probe, zero-shot, few-shot, and
image-text retrieval (`retrieval`); `compare` weighs several models' results.

Any Encoder works (the built-in model, open_clip, export directories, training
checkpoints); images become features through the encoder's own preprocessing
(`pixels.extract_features`), and every task scores those features. `knn` is the
weighted kNN classifier that training's online evaluation uses too; the command
`contrastive eval` is contrastkit.training.commands.eval.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from contrastkit.training.evaluate.logreg import LinearModel, fit_logreg, select_l2
    from contrastkit.training.evaluate.pixels import extract_features, to_model_pixels
    from contrastkit.training.evaluate.retrieval import recall_at_k
    from contrastkit.training.evaluate.tasks import few_shot, knn_task, linear_probe, sample_shots
    from contrastkit.training.evaluate.zeroshot import (
        zero_shot,
        zero_shot_accuracy,
        zero_shot_classifier,
    )

# name -> its module; imported on first use, so that a light submodule (`defaults`, which
# `contrastive eval --help` reads) does not bring in torch with the package. The
# `retrieval` function is not among them: `contrastkit.training.evaluate.retrieval` is its module
# (an import of the module binds that name here), so it is
# contrastkit.training.evaluate.retrieval.retrieval.
_EXPORTS = {
    "LinearModel": "logreg",
    "extract_features": "pixels",
    "few_shot": "tasks",
    "fit_logreg": "logreg",
    "knn_task": "tasks",
    "linear_probe": "tasks",
    "recall_at_k": "retrieval",
    "sample_shots": "tasks",
    "select_l2": "logreg",
    "to_model_pixels": "pixels",
    "zero_shot": "zeroshot",
    "zero_shot_accuracy": "zeroshot",
    "zero_shot_classifier": "zeroshot",
}
__all__ = [
    "LinearModel",
    "extract_features",
    "few_shot",
    "fit_logreg",
    "knn_task",
    "linear_probe",
    "recall_at_k",
    "sample_shots",
    "select_l2",
    "to_model_pixels",
    "zero_shot",
    "zero_shot_accuracy",
    "zero_shot_classifier",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
