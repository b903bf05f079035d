"""Image-text retrieval: recall@K in both directions on held-out image-caption pairs.

Image -> text: an image is a hit at K when its own caption is among the K texts most
cosine-similar to it; text -> image: a caption is a hit at K when one of the images it
belongs to is among the K most similar images. Recall@K is the fraction of hits.

Duplicate captions: the text gallery holds each distinct caption string once, and
matching is by string, so when several images share a caption, any of those images
answers that caption, and that caption answers each of them. (Keeping the copies would
put identical embeddings side by side, one "right" and the others "wrong" only by
their row number.)

Ties: a wrong item scored exactly as high as the best right one ranks above it. A
collapsed model that maps everything to one vector so scores 0, not 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm import tqdm

from contrastkit.training.encoders import TEXT, Encoder

ROW_CHUNK = 1024  # query rows per step: bounds the [rows, gallery] masks' memory


def _hits(
    sim: torch.Tensor, query_ids: torch.Tensor, gallery_ids: torch.Tensor, ks: Sequence[int]
) -> dict[int, float]:
    """sim [Q, G], ids int64 [Q] and [G] -> {K: fraction of queries with a match in top K}."""
    hits = dict.fromkeys(ks, 0)
    for start in range(0, len(query_ids), ROW_CHUNK):
        rows = sim[start : start + ROW_CHUNK].float()
        match = query_ids[start : start + ROW_CHUNK, None] == gallery_ids[None, :]
        best = rows.masked_fill(~match, float("-inf")).max(dim=1).values
        # wrong items at or above the best right one: ties count against the query
        above = (~match & (rows >= best[:, None])).sum(dim=1)
        found = match.any(dim=1)
        for k in ks:
            hits[k] += int((found & (above < k)).sum())
    n = max(len(query_ids), 1)
    return {k: hits[k] / n for k in ks}


def recall_at_k(
    sim: torch.Tensor,
    img_caption_ids: torch.Tensor,
    txt_caption_ids: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, dict[int, float]]:
    """sim float [N_img, N_txt] (cosines); caption ids int64 [N_img] and [N_txt] (equal id
    = equal caption string) -> {"i2t": {K: recall}, "t2i": {K: recall}}, recalls in [0, 1].

    A K past the gallery size counts every query that has a match at all.
    """
    if sim.shape != (len(img_caption_ids), len(txt_caption_ids)):
        raise ValueError(
            f"sim is {list(sim.shape)}, ids are [{len(img_caption_ids)}] and "
            f"[{len(txt_caption_ids)}]"
        )
    img_ids, txt_ids = img_caption_ids.long().cpu(), txt_caption_ids.long().cpu()
    sim = sim.cpu()
    return {
        "i2t": _hits(sim, img_ids, txt_ids, ks),
        "t2i": _hits(sim.T, txt_ids, img_ids, ks),
    }


def caption_ids(captions: Sequence[str]) -> tuple[list[str], torch.Tensor]:
    """N captions -> (the distinct strings in first-seen order, int64 [N] index into them)."""
    distinct = list(dict.fromkeys(captions))
    index = {c: i for i, c in enumerate(distinct)}
    return distinct, torch.tensor([index[c] for c in captions], dtype=torch.long)


def embed_texts(encoder: Encoder, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """N strings -> unit float32 [N, d], in batches, with a progress bar on a terminal."""
    encoder.require(TEXT)
    out = []
    with tqdm(total=len(texts), desc="embed captions", unit="text", disable=None,
              leave=False) as bar:  # fmt: skip
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            out.append(encoder.encode_texts(chunk))
            bar.update(len(chunk))
    return torch.cat(out) if out else torch.empty(0, encoder.embed_dim)


def retrieval(
    encoder: Encoder,
    image_features: torch.Tensor,
    captions: Sequence[str],
    ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 256,
) -> dict[str, object]:
    """image_features unit [N, d] and each image's caption (N strings) -> the JSON result:
    {"i2t": {"recall@K": r}, "t2i": {...}, "mean": {"k": smallest K, "recall": mean of
    i2t and t2i recall@k}, "n_images", "n_texts"}."""
    distinct, img_ids = caption_ids(captions)
    texts = embed_texts(encoder, distinct, batch_size)
    sim = image_features.float() @ texts.T
    found = recall_at_k(sim, img_ids, torch.arange(len(distinct)), ks)
    out: dict[str, object] = {
        side: {f"recall@{k}": r for k, r in found[side].items()} for side in ("i2t", "t2i")
    }
    k = min(ks)  # the headline of a comparison: recall@1 unless --recall-at leaves 1 out
    out["mean"] = {"k": k, "recall": (found["i2t"][k] + found["t2i"][k]) / 2}
    out.update(n_images=len(img_ids), n_texts=len(distinct))
    return out
