"""Recall of the approximate indexes at their default parameters, on real embeddings.

The vectors are the built-in model's embeddings of scikit-learn's 1,797 handwritten
digits, and, because IVF only switches on from ~24,300 vectors at its defaults, of ~25,000
copies of them under random rotations, shifts, scales, blur and colours. Embedding those
takes minutes on 2 CPU cores, so `scripts/make_recall_embeddings.py` made them once and
they ship as int8 codes in data/recall-digits.npz (beside this file); the test checks a
sample against the live model, so the file cannot silently drift from the model or the
recipe.
Each collection (kind "ivf" or "hnsw", IndexSpec defaults) answers held-out queries;
recall@10 is measured against exact search over the same vectors. `pytest -s` prints it.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from contrastkit.service.index.embedded.store import CollectionStore
from contrastkit.service.index.types import IndexKind, IndexSpec
from tests.helpers import unit_rows

K = 10
MIN_RECALL = 0.95
TIE = 1e-6  # a hit scoring within this of the exact k-th score counts as a true neighbour
SAMPLE = 48  # images re-embedded live to check the shipped file
# int8 rounding moves a unit vector by at most sqrt(d) * 0.5 / 127 ~ 0.08; in practice
# the cosine to the live embedding stays above 0.999
MIN_COSINE = 0.998
SCRIPT = Path(__file__).resolve().parents[4] / "scripts" / "make_recall_embeddings.py"


def _recipe() -> ModuleType:
    """scripts/make_recall_embeddings.py as a module (it is not part of the package)."""
    spec = importlib.util.spec_from_file_location("make_recall_embeddings", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # inspect.getsource needs it registered
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def recipe() -> ModuleType:
    return _recipe()


@pytest.fixture(scope="module")
def shipped(recipe: ModuleType) -> np.ndarray:
    """All shipped vectors, dequantised: [1797 * VARIANTS, 384] float32, unit norm."""
    with np.load(recipe.OUT) as f:
        assert str(f["model_id"]) == recipe.MODEL_ID
        assert str(f["recipe"]) == recipe.recipe_hash(), (
            "the image recipe changed: run python scripts/make_recall_embeddings.py"
        )
        codes = f["codes"]
    assert codes.shape == (1797 * recipe.VARIANTS, 384)
    return recipe.dequantise(codes)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def small_set(shipped: np.ndarray) -> np.ndarray:
    """The 1,797 digits as they are: [1797, 384]."""
    return shipped[:1797]


@pytest.fixture(scope="module")
def large_set(shipped: np.ndarray) -> np.ndarray:
    """Each digit and VARIANTS - 1 random variants of it: [1797 * VARIANTS, 384]."""
    return shipped


@pytest.mark.slow
def test_shipped_embeddings_are_the_live_models(recipe: ModuleType, shipped: np.ndarray) -> None:
    """A sample of originals and variants, embedded now, matches the file."""
    from contrastkit.training.encoders import load_encoder

    encoder = load_encoder("builtin", device="cpu")
    assert encoder.model_id == recipe.MODEL_ID
    # originals and the first round of variants: making all 27,000 images takes a while
    images = recipe.images(2 * 1797)
    rows = np.random.default_rng(3).choice(len(images), SAMPLE, replace=False)
    live = recipe.embed(encoder, [images[i] for i in rows])
    cosines = np.sum(live * shipped[rows], axis=1)
    assert cosines.min() >= MIN_COSINE, cosines.min()
    # and the check can fail: another row's vector is far from these
    assert np.sum(live * shipped[np.roll(rows, 1)], axis=1).min() < MIN_COSINE


def test_quantisation_round_trip(recipe: ModuleType) -> None:
    v = unit_rows(64, 384)
    back = recipe.dequantise(recipe.quantise(v))
    assert np.allclose(np.linalg.norm(back, axis=1), 1.0, atol=1e-5)
    assert np.sum(v * back, axis=1).min() > MIN_COSINE


@pytest.fixture
def store() -> Iterator[CollectionStore]:
    root = Path(tempfile.mkdtemp(prefix="recall-"))
    s = CollectionStore(root)
    yield s
    s.close()
    shutil.rmtree(root, ignore_errors=True)


def _split(vecs: np.ndarray, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(vecs))
    return vecs[order[queries:]], vecs[order[:queries]]


def recall_at_k(
    store: CollectionStore, kind: IndexKind, base: np.ndarray, queries: np.ndarray
) -> tuple[float, str, float]:
    """-> (recall@K of a `kind` collection at default parameters, its active index, q/s)."""
    name = f"{kind}-{len(base)}"
    store.create(name, "builtin:conse-effnetlite0-minilm6-v1", base.shape[1], IndexSpec(kind=kind))
    col = store.get(name)
    ids = [str(i) for i in range(len(base))]
    for i in range(0, len(base), 1000):
        col.upsert(ids[i : i + 1000], base[i : i + 1000], [{} for _ in ids[i : i + 1000]])
    t0 = time.perf_counter()
    hits = col.search(queries, K)
    qps = len(queries) / (time.perf_counter() - t0)
    exact = queries @ base.T  # [q, n]
    kth = -np.partition(-exact, K - 1, axis=1)[:, K - 1]
    found = 0
    for q, row in enumerate(hits):
        assert len(row) == K
        # exact inner products, so a hit is a true neighbour iff it scores >= the k-th
        found += sum(exact[q, int(h.id)] >= kth[q] - TIE for h in row)
    return found / (K * len(queries)), col.info().active_index, qps


def _report(label: str, kind: str, active: str, n: int, q: int, recall: float, qps: float) -> None:
    print(
        f"\n{label}: {kind} (active {active}) over {n} vectors, {q} held-out queries: "
        f"recall@{K} = {recall:.4f}, {qps:.0f} queries/s"
    )


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_recall_on_digits(store: CollectionStore, small_set: np.ndarray, kind: IndexKind) -> None:
    base, queries = _split(small_set, 200, seed=1)
    recall, active, qps = recall_at_k(store, kind, base, queries)
    _report("digits", kind, active, len(base), len(queries), recall, qps)
    # too few vectors for IVF at its defaults: it serves exact search until ~24,300
    assert active == ("hnsw" if kind == "hnsw" else "flat")
    assert recall >= MIN_RECALL


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_recall_on_augmented_digits(
    store: CollectionStore, large_set: np.ndarray, kind: IndexKind
) -> None:
    base, queries = _split(large_set, 1000, seed=2)
    recall, active, qps = recall_at_k(store, kind, base, queries)
    _report("augmented digits", kind, active, len(base), len(queries), recall, qps)
    assert active == kind  # large enough for IVF to be trained at its default nlist
    assert recall >= MIN_RECALL
