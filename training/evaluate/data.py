"""`--data SPEC` -> the labelled images evaluation scores: a bank (train) and queries (test).

Every contrastkit.training.data spec with labels works (the bank and queries of kNN evaluation);
`skimage-photos` adds nine real photos for zero-shot (queries only, no bank);
`pairs:FILE` gives every image of the file with its caption, for retrieval only (no bank,
no class labels). `holdout_eval_data` gives what a training run did not train on: the
held-out rows of its pairs file, or the test queries of a labelled set.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from contrastkit.training.data import DataError, load_knn_data, pairs_split, parse_spec
from contrastkit.training.data.files import warn_skipped_rows
from contrastkit.training.evaluate import photos
from contrastkit.training.evaluate.pairs import ImageFiles, read_pair_spec
from contrastkit.training.evaluate.pixels import Images
from contrastkit.training.evaluate.retrieval import caption_ids


@dataclass
class EvalData:
    """Queries (always) and a bank (None for query-only sets); labels int64 index `classes`.

    Images are uint8 [N, C, H, W] tensors, or sequences of PIL images of any sizes.
    Caption data (`pairs:`) sets `captions`, one per query image; its `classes` are then
    the distinct captions and `query_labels` index them (no class labels to classify).
    """

    spec: str
    classes: list[str]
    queries: Images
    query_labels: torch.Tensor
    bank: Images | None = None
    bank_labels: torch.Tensor | None = None
    captions: list[str] | None = None


def subset(
    images: Images, labels: torch.Tensor, limit: int | None, seed: int
) -> tuple[Images, torch.Tensor]:
    """A fixed random `limit` of the rows (in their original order), or all of them.

    Random rather than the first rows: a folder's files come sorted by class.
    """
    n = len(labels)
    if limit is None or limit >= n:
        return images, labels
    keep = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    if isinstance(images, torch.Tensor):
        return images[keep], labels[keep]
    return [images[i] for i in keep.tolist()], labels[keep]


def load_eval_data(spec: str, image_size: int, limit: int | None = None, seed: int = 0) -> EvalData:
    """Load `spec`; folder images are decoded at `image_size` (the model's input side)."""
    if spec == photos.SPEC:
        pictures, picture_labels, classes = photos.load_photos()
        shown, shown_labels = subset(pictures, picture_labels, limit, seed)
        return EvalData(spec, classes, shown, shown_labels)
    if parse_spec(spec).kind == "pairs":
        return _pairs_data(spec, limit, seed)
    data = _labelled_data(spec, image_size, limit, seed)
    if data is None:
        raise DataError(f"--data {spec!r} has no class labels: evaluation needs labelled images")
    return data


def holdout_eval_data(
    spec: str, *, holdout: float, seed: int, image_size: int, limit: int | None = 5000
) -> EvalData | None:
    """What a run trained on `spec` with this `holdout` and `seed` did not train on.

    pairs: exactly the held-out rows (contrastkit.training.data.pairs_split), or a fixed random
    `limit` of them, as images on disk with their captions (classes: the distinct
    captions, query_labels index them); None when holdout is 0 or holds no row. Labelled
    sets: load_eval_data's test queries with their classes (no bank, no captions).
    None for unlabelled sets and shards (nothing is held out of them).
    """
    parsed = parse_spec(spec)
    if parsed.kind == "shards":
        return None
    if parsed.kind != "pairs":
        data = _labelled_data(spec, image_size, limit, seed)
        if data is None:
            return None
        return EvalData(spec, data.classes, data.queries, data.query_labels)
    assert parsed.path is not None
    if holdout <= 0:
        return None
    held = pairs_split(parsed.path, holdout, seed)[1]
    warn_skipped_rows(held, "held-out rows", stacklevel=2)
    if not held.paths:
        return None
    return _pair_rows(spec, held.paths, held.captions, limit, seed)


def _labelled_data(spec: str, image_size: int, limit: int | None, seed: int) -> EvalData | None:
    """A labelled spec's bank and queries, each a fixed random `limit`; None if unlabelled."""
    pair = load_knn_data(spec, image_size=image_size)
    if pair is None:
        return None
    bank, queries = pair
    bank_images, bank_labels = subset(bank.images, bank.labels, limit, seed)
    query_images, query_labels = subset(queries.images, queries.labels, limit, seed + 1)
    return EvalData(spec, list(bank.classes), query_images, query_labels, bank_images, bank_labels)


def _pairs_data(spec: str, limit: int | None, seed: int) -> EvalData:
    """Every pair of the file, or a fixed random `limit` of them (same rows for every model)."""
    path = parse_spec(spec).path
    assert path is not None
    paths, captions = read_pair_spec(path)
    return _pair_rows(spec, paths, captions, limit, seed)


def _pair_rows(
    spec: str, paths: list[str], captions: list[str], limit: int | None, seed: int
) -> EvalData:
    """Image-caption rows -> retrieval EvalData, keeping a fixed random `limit` of them."""
    keep = subset(torch.empty(len(paths), 0), torch.arange(len(paths)), limit, seed)[1]
    paths = [paths[i] for i in keep.tolist()]
    captions = [captions[i] for i in keep.tolist()]
    distinct, labels = caption_ids(captions)
    return EvalData(spec, distinct, ImageFiles(paths), labels, captions=captions)
