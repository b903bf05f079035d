"""SwAV and CLIP methods: views, loss wiring against independent references, hooks, queue,
caption generation, the frozen MiniLM text tower and its cache, and that training moves
the loss. Tiny backbone, small images, CPU."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from contrastkit.training.augment import Augmenter
from contrastkit.training.data import Batch
from contrastkit.training.encoders.nets.backbones import BackboneSpec, build_backbone
from contrastkit.training.encoders.nets.minilm import MiniLM
from contrastkit.training.encoders.nets.text_towers import MiniLMTower
from contrastkit.training.encoders.templates import DEFAULT_TEMPLATES
from contrastkit.training.methods import clip as clip_module
from contrastkit.training.methods.base import MethodContext, Views, split_views
from contrastkit.training.methods.clip import CLIP, CLIPParams, caption_keys
from contrastkit.training.methods.swav import SwAV, SwAVParams

CLASSES = ["cat", "dog", "golden_retriever", "truck"]
B, SIZE = 8, 16


def make_ctx(classes: list[str] | None = CLASSES, image_size: int = SIZE) -> MethodContext:
    return MethodContext(
        device=torch.device("cpu"),
        image_size=image_size,
        total_steps=100,
        steps_per_epoch=10,
        global_batch=B,
        classes=classes,
    )


def make_batch(seed: int = 0, texts: list[str] | None = None, labelled: bool = True) -> Batch:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (B, 3, 20, 20), generator=g, dtype=torch.uint8)
    labels = torch.arange(B) % len(CLASSES) if labelled else None
    return Batch(images=images, labels=labels, texts=texts, index=torch.arange(B) * 7 + 3)


def swav(**overrides: Any) -> SwAV:
    torch.manual_seed(0)
    backbone, dim = build_backbone(BackboneSpec("tiny"))
    base: dict[str, Any] = dict(n_prototypes=16, proj_hidden=32, proj_dim=16)
    base |= dict(n_small_crops=2, small_size=8)
    return SwAV(backbone, dim, SwAVParams(**(base | overrides)), make_ctx())


def train_steps(method: Any, views: Views, steps: int, lr: float) -> tuple[float, float]:
    """Adam on fixed views with the engine's hook order; returns (first, last) loss."""
    opt = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=lr)
    losses = []
    for step in range(steps):
        loss = method.loss(views).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        method.on_before_step(step)
        opt.step()
        method.on_after_step(step)
        losses.append(float(loss.detach()))
    return losses[0], losses[-1]


# -- SwAV references: scaling-vector Sinkhorn and a looped swapped cross-entropy ----------------
def ref_sinkhorn(scores: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    """Q = n * diag(a) P diag(b), P = exp(S / eps): b makes every prototype's mass 1/K,
    a makes every sample's mass 1/n, alternately (float64)."""
    p = torch.exp(scores.double() / eps)
    n, k = p.shape
    a = torch.ones(n, dtype=torch.float64)
    for _ in range(iters):
        b = 1.0 / (k * (a @ p))
        a = 1.0 / (n * (p @ b))
    return n * a[:, None] * p * b[None, :]


def ref_swapped(scores: list[torch.Tensor], codes: list[torch.Tensor], t: float) -> torch.Tensor:
    terms = []
    for i, code in enumerate(codes):
        for v, s in enumerate(scores):
            if v != i:
                logp = s.double() / t - torch.logsumexp(s.double() / t, dim=1, keepdim=True)
                terms.append(-(code * logp).sum(1).mean())
    return torch.stack(terms).mean()


def test_swav_multicrop_views_and_grouped_backbone_calls() -> None:
    method = swav(n_small_crops=3)
    views = method.make_views(make_batch(), Augmenter("cpu", seed=0))
    assert views.n_global == 2
    assert [tuple(c.shape) for c in views.crops] == [(B, 3, SIZE, SIZE)] * 2 + [(B, 3, 8, 8)] * 3
    calls: list[int] = []
    method.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    method.loss(views)
    assert calls == [2 * B, 3 * B]  # one call per crop size
    two = swav(n_small_crops=0).make_views(make_batch(), Augmenter("cpu"))
    assert len(two.crops) == 2
    auto = SwAV(*build_backbone(BackboneSpec("tiny")), SwAVParams(), make_ctx(image_size=32))
    sizes = [s.size for s in auto.view_specs]
    assert sizes == [32, 32] + [round(32 * 96 / 224)] * 4


def test_swav_loss_equals_reference_on_its_own_scores() -> None:
    method = swav(epsilon=0.1)
    views = method.make_views(make_batch(), Augmenter("cpu", seed=1))
    z = method.embed(views.crops)
    weight = method.prototypes.layer.weight
    scores = [zi @ weight.T for zi in z]
    codes = [ref_sinkhorn(s.detach(), 0.1, 3) for s in scores[:2]]
    expected = ref_swapped(scores, codes, 0.1)
    out = method.loss(views)
    torch.testing.assert_close(out.loss.double(), expected.detach(), rtol=1e-5, atol=1e-6)
    assert 0 < float(out.logs["proto_usage"]) <= 1


def test_swav_prototypes_frozen_then_trained() -> None:
    method = swav(freeze_prototypes_steps=2)
    views = method.make_views(make_batch(), Augmenter("cpu"))
    opt = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    before = method.prototypes.layer.weight.detach().clone()
    for step in range(3):
        opt.zero_grad(set_to_none=True)
        method.loss(views).loss.backward()
        method.on_before_step(step)
        grad = method.prototypes.layer.weight.grad
        if step < 2:
            assert grad is None  # no momentum or weight decay can move them either
            torch.testing.assert_close(method.prototypes.layer.weight.detach(), before)
        else:
            assert grad is not None and float(grad.norm()) > 0
        first = method.projector[0]
        assert isinstance(first, torch.nn.Linear) and first.weight.grad is not None
        assert float(first.weight.grad.norm()) > 0
        opt.step()
        method.on_after_step(step)
    assert not torch.allclose(method.prototypes.layer.weight, before)


def test_swav_prototype_freeze_is_counted_in_epochs() -> None:
    """One epoch by default (the paper's freeze_prototypes_niters); the ctx's 10 steps per
    epoch turn 1.5 epochs into 15 steps; an explicit step count wins."""
    assert SwAVParams().freeze_prototypes_epochs == 1.0
    assert SwAVParams().freeze_prototypes_steps is None
    assert swav().freeze_steps == 10
    assert swav(freeze_prototypes_epochs=1.5).freeze_steps == 15
    assert swav(freeze_prototypes_epochs=0).freeze_steps == 0
    assert swav(freeze_prototypes_epochs=3, freeze_prototypes_steps=313).freeze_steps == 313
    method = swav(freeze_prototypes_epochs=0.2)  # 2 steps
    views = method.make_views(make_batch(), Augmenter("cpu"))
    for step in range(3):
        method.loss(views).loss.backward()
        method.on_before_step(step)
        assert (method.prototypes.layer.weight.grad is None) == (step < 2)
        method.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="freeze_prototypes_epochs"):
        swav(freeze_prototypes_epochs=-1)


def _swav_at(global_batch: int, world: int = 1, steps_per_epoch: int = 100, **p: Any) -> SwAV:
    ctx = MethodContext(
        device=torch.device("cpu"), image_size=SIZE, total_steps=100,
        steps_per_epoch=steps_per_epoch, global_batch=global_batch, world_size=world,
    )  # fmt: skip
    backbone, dim = build_backbone(BackboneSpec("tiny"))
    base: dict[str, Any] = dict(n_prototypes=16, proj_hidden=32, proj_dim=16, n_small_crops=0)
    return SwAV(backbone, dim, SwAVParams(**(base | p)), ctx)


def test_swav_queue_is_on_by_default_at_small_global_batches() -> None:
    """queue_length=None: the paper's 3840 at global batches <= 256 (capped to one epoch,
    a multiple of the process count), none above; an explicit value always wins."""
    assert SwAVParams().queue_length is None
    assert _swav_at(64).queue.shape == (2, 3840, 16)
    assert _swav_at(256).queue.shape == (2, 3840, 16)  # SwAV's own batch-256 recipe
    assert _swav_at(257).queue_length == 0 and _swav_at(4096).queue.shape == (2, 0, 16)
    assert _swav_at(64, steps_per_epoch=10).queue_length == 640  # one epoch of samples
    assert _swav_at(70, world=7, steps_per_epoch=10).queue_length == 700
    assert _swav_at(252, world=9).queue_length == 3840 - 3840 % 9
    assert _swav_at(64, queue_length=0).queue_length == 0  # explicit off wins
    assert _swav_at(4096, queue_length=8192).queue_length == 8192  # explicit on wins


def test_swav_prototypes_unit_norm_after_step() -> None:
    method = swav()
    w = method.prototypes.layer.weight
    with torch.no_grad():
        w.mul_(torch.rand(w.shape[0], 1) * 3 + 0.1)
    direction = w.detach() / w.detach().norm(dim=1, keepdim=True)
    method.on_after_step(0)
    torch.testing.assert_close(w.detach().norm(dim=1), torch.ones(w.shape[0]))
    torch.testing.assert_close(w.detach(), direction)


def test_swav_queue_fills_then_feeds_sinkhorn() -> None:
    method = swav(queue_length=2 * B, queue_start_step=1)
    views = method.make_views(make_batch(), Augmenter("cpu"))
    embeddings = []
    for step in range(3):
        embeddings.append([zi.detach() for zi in method.embed(views.crops)[:2]])
        method.loss(views)
        method.on_after_step(step)
        filled = {0: 0, 1: B, 2: 2 * B}[step]  # filling starts at step 1
        assert method.queue_filled == filled
    for crop in range(2):  # newest first: step 2's embeddings, then step 1's
        torch.testing.assert_close(method.queue[crop, :B], embeddings[2][crop])
        torch.testing.assert_close(method.queue[crop, B:], embeddings[1][crop])
    # full: the batch's codes come from Sinkhorn over [queue rows; batch rows]
    z = [zi.detach() for zi in method.embed(views.crops)[:2]]
    weight = method.prototypes.layer.weight.detach()
    for crop, code in enumerate(method.codes(z)):
        stacked = torch.cat([method.queue[crop], z[crop]]) @ weight.T
        torch.testing.assert_close(code, ref_sinkhorn(stacked, 0.05, 3)[-B:].float())
    # counters and queue survive a checkpoint round trip
    clone = swav(queue_length=2 * B, queue_start_step=1)
    clone.load_state_dict(method.state_dict())
    assert (clone.steps_done, clone.queue_filled) == (3, 2 * B)
    torch.testing.assert_close(clone.queue, method.queue)


def test_swav_training_lowers_loss() -> None:
    method = swav(freeze_prototypes_steps=0)
    views = method.make_views(make_batch(), Augmenter("cpu"))
    first, last = train_steps(method, views, 30, lr=3e-3)
    assert last < first - 0.3, (first, last)


# -- CLIP ---------------------------------------------------------------------------------------
def clip(classes: list[str] | None = CLASSES, **overrides: Any) -> CLIP:
    torch.manual_seed(0)
    backbone, dim = build_backbone(BackboneSpec("tiny"))
    base: dict[str, Any] = dict(text_tower="transformer", text_width=32, text_layers=1)
    base |= dict(text_heads=2, context_length=16, embed_dim=16)
    return CLIP(backbone, dim, CLIPParams(**(base | overrides)), make_ctx(classes))


def ref_clip(
    image: torch.Tensor, text: torch.Tensor, scale: float, groups: list[int] | None = None
) -> torch.Tensor:
    """Row by row: -log softmax of the matching pair, images->texts and texts->images;
    with `groups`, the mean of -log softmax over every pair of the row's group."""
    image, text = image.double(), text.double()
    n = len(image)
    group = groups if groups is not None else list(range(n))
    sim = [
        [float(F.cosine_similarity(image[i], text[j], dim=0)) for j in range(n)] for i in range(n)
    ]
    total = 0.0
    for i in range(n):
        row = [scale * s for s in sim[i]]
        col = [scale * sim[j][i] for j in range(n)]
        positives = [j for j in range(n) if group[j] == group[i]]
        for logits in (row, col):
            log_z = math.log(sum(math.exp(x) for x in logits))
            total -= sum(logits[j] - log_z for j in positives) / len(positives)
    return torch.tensor(total / (2 * n), dtype=torch.float64)


def ref_siglip(
    image: torch.Tensor, text: torch.Tensor, t: float, b: float, groups: list[int]
) -> torch.Tensor:
    """Pair by pair: -log sigmoid(+-(t cos + b)), + where the groups match; / n images."""
    image, text = image.double(), text.double()
    total = 0.0
    for i in range(len(image)):
        for j in range(len(text)):
            z = 1.0 if groups[i] == groups[j] else -1.0
            logit = t * float(F.cosine_similarity(image[i], text[j], dim=0)) + b
            total += math.log1p(math.exp(-z * logit))
    return torch.tensor(total / len(image), dtype=torch.float64)


def test_clip_loss_equals_reference_and_logs() -> None:
    method = clip()
    views = method.make_views(make_batch(), Augmenter("cpu"))
    out = method.loss(views)
    image = method.encode_image(views.crops[0]).detach()
    text = method.text(views.texts).detach()
    labels = make_batch().labels.tolist()  # type: ignore[union-attr]
    expected = ref_clip(image, text, 1 / 0.07, labels)  # multi-positive by default
    torch.testing.assert_close(out.loss.detach(), expected.float())
    assert float(out.logs["logit_scale"]) == pytest.approx(1 / 0.07, rel=1e-6)
    pos = sum(float(F.cosine_similarity(image[i], text[i], dim=0)) for i in range(B)) / B
    assert float(out.logs["pos_sim"]) == pytest.approx(pos, abs=1e-6)


def test_clip_logit_scale_capped_and_clamped() -> None:
    method = clip()
    with torch.no_grad():
        method.logit_scale.fill_(math.log(150.0))
    assert float(method.scale().detach()) == pytest.approx(100.0)
    method.on_after_step(0)
    assert float(method.logit_scale.detach()) == pytest.approx(math.log(100.0))
    with torch.no_grad():
        method.logit_scale.fill_(-1.0)
    method.on_after_step(1)
    assert float(method.logit_scale.detach()) == 0.0


def test_clip_captions_from_labels_are_deterministic() -> None:
    method = clip()
    batch = make_batch()
    captions = method.captions(batch)
    for caption, label in zip(captions, batch.labels.tolist(), strict=True):  # type: ignore[union-attr]
        name = CLASSES[label].replace("_", " ")
        assert caption in {t.format(name) for t in DEFAULT_TEMPLATES}
    views = method.make_views(batch, Augmenter("cpu"))
    assert views.texts is not None
    expected = method.text.prepare(captions, torch.device("cpu"))["input_ids"]
    assert torch.equal(views.texts["input_ids"], expected)
    # the same (index, step) -> the same caption, whatever the row order or the instance
    perm = torch.randperm(B)
    shuffled = Batch(batch.images[perm], batch.labels[perm], None, batch.index[perm])  # type: ignore[index]
    assert clip().captions(shuffled) == [captions[i] for i in perm.tolist()]
    # another step draws other templates (for some rows), restored from the state dict
    method.on_after_step(4)
    later = method.captions(batch)
    assert later != captions
    restored = clip()
    restored.load_state_dict(method.state_dict())
    assert restored.captions(batch) == later


def test_clip_pairs_captions_and_missing_captions() -> None:
    texts = [f"photo number {i}" for i in range(B)]
    method = clip()
    batch = make_batch(texts=texts)
    views = method.make_views(batch, Augmenter("cpu"))
    assert method.captions(batch) == texts
    assert views.texts is not None
    expected = method.text.prepare(texts, torch.device("cpu"))["input_ids"]
    assert torch.equal(views.texts["input_ids"], expected)
    torch.testing.assert_close(method.encode_text(texts), method.text(views.texts))
    with pytest.raises(ValueError, match="captions"):
        clip(classes=None).make_views(make_batch(), Augmenter("cpu"))
    with pytest.raises(ValueError, match="captions"):
        method.make_views(make_batch(labelled=False), Augmenter("cpu"))


# -- CLIP / SigLIP multi-positive targets -------------------------------------------------------
REPEATED = ["a cat", "a dog", "a cat", "a bird", "a dog", "a cat", "a fish", "a bird"]


def _same(values: list[Any]) -> torch.Tensor:
    """bool [n, n]: values[i] == values[j], by an explicit double loop."""
    return torch.tensor([[a == b for b in values] for a in values])


def _record_groups(monkeypatch: pytest.MonkeyPatch, loss: str) -> list[torch.Tensor | None]:
    """Wrap the method's loss function; returns the list the groups it gets go into."""
    seen: list[torch.Tensor | None] = []
    name = "siglip_loss" if loss == "siglip" else "clip_loss"
    inner = getattr(clip_module, name)

    def spy(*args: Any) -> torch.Tensor:
        seen.append(args[-1])
        return inner(*args)  # type: ignore[no-any-return]

    monkeypatch.setattr(clip_module, name, spy)
    return seen


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_clip_multi_positive_mask_from_labels_and_repeated_captions(
    loss: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _record_groups(monkeypatch, loss)
    method = clip(loss=loss)
    assert method.params.multi_positive  # on by default
    labelled = make_batch()
    method.loss(method.make_views(labelled, Augmenter("cpu")))
    groups = seen[-1]
    assert groups is not None
    mask = groups[:, None] == groups[None, :]
    assert torch.equal(mask, _same(labelled.labels.tolist()))  # type: ignore[union-attr]
    assert int(mask.sum()) == 2 * B  # 4 classes, 2 images each: one copy per row
    # real captions: the repeated ones (same token ids) share a group, whatever the labels
    method.loss(method.make_views(make_batch(texts=REPEATED), Augmenter("cpu")))
    groups = seen[-1]
    assert groups is not None and torch.equal(groups[:, None] == groups[None, :], _same(REPEATED))
    # switched off: the plain one-positive loss, no groups
    off = clip(loss=loss, multi_positive=False)
    views = off.make_views(labelled, Augmenter("cpu"))
    off.loss(views)
    assert views.caption_groups is None and seen[-1] is None


def test_siglip_method_loss_equals_multi_positive_reference() -> None:
    method = clip(loss="siglip")
    views = method.make_views(make_batch(texts=REPEATED), Augmenter("cpu"))
    out = method.loss(views)
    image = method.encode_image(views.crops[0]).detach()
    text = method.text(views.texts).detach()
    groups = [REPEATED.index(c) for c in REPEATED]
    expected = ref_siglip(image, text, 10.0, -10.0, groups)
    torch.testing.assert_close(out.loss.detach().double(), expected, rtol=1e-5, atol=1e-6)
    plain = clip(loss="siglip", multi_positive=False).loss(views).loss.detach()
    assert float(plain) != pytest.approx(float(out.loss.detach()), rel=1e-3)


def test_caption_keys_equal_exactly_for_equal_rows() -> None:
    ids = torch.tensor([[5, 7, 0, 0], [5, 7, 0, 0], [5, 8, 0, 0], [7, 5, 0, 0], [5, 7, 1, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0]])
    keys = caption_keys({"input_ids": ids, "attention_mask": mask})
    assert keys.dtype == torch.int64
    assert torch.equal(keys[:, None] == keys[None, :], _same([tuple(r) for r in ids.tolist()]))
    # padded to another length (another rank's longest caption): the same keys
    wider = caption_keys({"input_ids": F.pad(ids, (0, 3)), "attention_mask": F.pad(mask, (0, 3))})
    assert torch.equal(wider, keys)
    # another tensor differing in one row splits that row off
    other = mask.clone()
    other[1, 0] = 0
    split = caption_keys({"input_ids": ids, "attention_mask": other})
    assert split[0] != split[1] and split[2] == keys[2]
    # frozen-text-tower embeddings (floats): bitwise-equal rows match
    emb = torch.randn(4, 6)
    emb[2] = emb[0]
    keys = caption_keys({"embeddings": emb})
    assert torch.equal(keys[:, None] == keys[None, :], _same([0, 1, 0, 3]))


def test_split_views_carries_caption_groups() -> None:
    groups = torch.arange(B) % 3
    views = Views([torch.zeros(B, 3, 2, 2)], 1, {"input_ids": torch.zeros(B, 4)}, groups)
    got = [p.caption_groups for p in split_views(views, 2)]
    assert all(g is not None for g in got)
    assert [g.tolist() for g in got if g is not None] == [groups[:4].tolist(), groups[4:].tolist()]


def test_clip_transformer_training_lowers_loss() -> None:
    method = clip()
    views = method.make_views(make_batch(), Augmenter("cpu"))
    first, last = train_steps(method, views, 30, lr=2e-3)
    assert last < first - 0.3, (first, last)


# -- CLIP with the packaged MiniLM ---------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm() -> MiniLM:
    return MiniLM()


@pytest.fixture
def minilm_clip(minilm: MiniLM, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., CLIP]]:
    """Builds CLIP methods whose MiniLM tower reuses the one loaded model (a copy when
    it trains, so no test changes the shared weights)."""

    def build_tower(kind: str, embed_dim: int, *, lock: bool, **_: Any) -> MiniLMTower:
        assert kind == "minilm"
        model = minilm if lock else copy.deepcopy(minilm)
        return MiniLMTower(embed_dim or MiniLM.dim, lock=lock, minilm=model)

    monkeypatch.setattr(
        "contrastkit.training.encoders.nets.text_towers.build_text_tower", build_tower
    )

    def make(**overrides: Any) -> CLIP:
        settings: dict[str, Any] = dict(text_tower="minilm", embed_dim=0)
        return clip(**(settings | overrides))

    yield make


def test_clip_minilm_locked_no_grad_and_cache(
    minilm: MiniLM, minilm_clip: Callable[..., CLIP]
) -> None:
    method = minilm_clip()
    method.train()
    tower = method.text
    assert isinstance(tower, MiniLMTower) and isinstance(tower.proj, torch.nn.Identity)
    assert method.embed_dim == 384 and not tower.minilm.training  # no dropout when locked
    batch = make_batch()
    views = method.make_views(batch, Augmenter("cpu"))
    assert views.texts is not None
    with torch.no_grad():
        direct = minilm(method.captions(batch))
    torch.testing.assert_close(views.texts["embeddings"], direct, atol=1e-5, rtol=1e-4)
    out = method.loss(views)
    out.loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in tower.minilm.parameters())
    assert float(method.image_proj.weight.grad.norm()) > 0  # type: ignore[union-attr]
    assert method.logit_scale.grad is not None
    image = method.encode_image(views.crops[0]).detach()
    assert batch.labels is not None
    expected = ref_clip(image, views.texts["embeddings"], 1 / 0.07, batch.labels.tolist())
    torch.testing.assert_close(out.loss.detach(), expected.float())
    # the cache: each distinct caption goes through MiniLM once
    calls: list[int] = []
    tower.minilm.model.register_forward_hook(lambda m, i, o: calls.append(1))
    misses, hits = tower.cache_misses, tower.cache_hits
    pairs = ["a red car", "a blue car", "a red car", "a red car"]
    first = tower.prepare(pairs, torch.device("cpu"))["embeddings"]
    assert (tower.cache_misses - misses, tower.cache_hits - hits) == (2, 2)
    second = tower.prepare(pairs[::-1], torch.device("cpu"))["embeddings"]
    assert (tower.cache_misses - misses, tower.cache_hits - hits) == (2, 6)
    assert len(calls) == 1
    torch.testing.assert_close(second, first.flip(0))
    torch.testing.assert_close(first[0], first[2])


def test_clip_minilm_unlocked_trains_the_text_side(minilm_clip: Callable[..., CLIP]) -> None:
    method = minilm_clip(lock_text=False)
    tower = method.text
    assert isinstance(tower, MiniLMTower) and isinstance(tower.proj, torch.nn.Linear)
    batch = make_batch()
    views = method.make_views(batch, Augmenter("cpu"))
    assert views.texts is not None and "input_ids" in views.texts
    method.loss(views).loss.backward()
    layer = tower.minilm.model.encoder.layer[0].attention.self.query.weight
    assert layer.grad is not None and float(layer.grad.norm()) > 0


def test_clip_minilm_training_lowers_loss(minilm_clip: Callable[..., CLIP]) -> None:
    method = minilm_clip()
    views = method.make_views(make_batch(), Augmenter("cpu"))
    first, last = train_steps(method, views, 30, lr=2e-3)
    assert last < first - 0.3, (first, last)
