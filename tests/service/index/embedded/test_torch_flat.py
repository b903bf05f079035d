"""The torch exact-search fallback agrees with FAISS's flat index (run here on the CPU)."""

from __future__ import annotations

import numpy as np
import torch

from contrastkit.service.index.embedded.faiss_index import VectorIndex
from contrastkit.service.index.embedded.torch_flat import TorchFlatIndex
from contrastkit.service.index.types import IndexSpec
from tests.helpers import unit_rows


def test_torch_flat_matches_faiss_flat() -> None:
    vecs, queries = unit_rows(2000, 24, 0), unit_rows(50, 24, 1)
    labels = np.arange(2000, dtype=np.int64) * 3 + 1
    spec = IndexSpec(kind="flat")
    ref = VectorIndex.build(24, spec, labels, vecs)
    got = TorchFlatIndex.build(24, spec, labels, vecs, torch.device("cpu"))
    for index in (ref, got):
        index.remove(labels[:100])
        index.add(np.array([7, 8], dtype=np.int64), vecs[:2])
    (rs, rl), (gs, gl) = ref.search(queries, 10), got.search(queries, 10)
    np.testing.assert_array_equal(rl, gl)
    np.testing.assert_allclose(rs, gs, atol=1e-5)
    allowed = labels[100:400]
    (rs, rl), (gs, gl) = ref.search(queries, 5, allowed), got.search(queries, 5, allowed)
    np.testing.assert_array_equal(rl, gl)
    assert got.live == ref.live == 1902


def test_fewer_items_than_k() -> None:
    idx = TorchFlatIndex.build(
        4, IndexSpec(), np.array([5], np.int64), unit_rows(1, 4, 2), torch.device("cpu")
    )
    scores, labels = idx.search(unit_rows(2, 4, 3), 3)
    assert labels.tolist() == [[5, -1, -1], [5, -1, -1]]
    assert np.isinf(scores[:, 1:]).all()
