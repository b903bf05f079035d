"""Evaluation of frozen encoders: weighted kNN, linear probe, zero-shot, few-shot, and
image-text retrieval (`retrieval`); `compare` weighs several models' results.

Any Encoder works (the built-in model, open_clip, export directories, training
checkpoints); images become features through the encoder's own preprocessing
(`pixels.extract_features`), and every task scores those features. `knn` is the
weighted kNN classifier that training's online evaluation uses too; the command
`contrastive eval` is training.commands.eval.
"""

from training.evaluate.logreg import LinearModel, fit_logreg, select_l2
from training.evaluate.pixels import extract_features, to_model_pixels
from training.evaluate.retrieval import recall_at_k, retrieval
from training.evaluate.tasks import few_shot, knn_task, linear_probe, sample_shots
from training.evaluate.zeroshot import zero_shot, zero_shot_accuracy, zero_shot_classifier

__all__ = [
    "LinearModel",
    "extract_features",
    "few_shot",
    "fit_logreg",
    "knn_task",
    "linear_probe",
    "recall_at_k",
    "retrieval",
    "sample_shots",
    "select_l2",
    "to_model_pixels",
    "zero_shot",
    "zero_shot_accuracy",
    "zero_shot_classifier",
]
