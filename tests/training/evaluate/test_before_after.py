"""The before/after report of a fine-tuning run, its held-out metrics, and MethodEncoder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from contrastkit.training.augment import IMAGENET_MEAN, IMAGENET_STD, Augmenter
from contrastkit.training.encoders import Encoder, EncoderInfo, Preprocess
from contrastkit.training.encoders import preprocess as pp
from contrastkit.training.evaluate.before_after import (
    JSON_NAME,
    MARKDOWN_NAME,
    MethodEncoder,
    before_after_lines,
    before_after_markdown,
    before_after_report,
    evaluate_heldout,
    write_before_after,
)
from contrastkit.training.evaluate.data import EvalData
from contrastkit.training.evaluate.method_encoder import eval_mode
from tests.training.methods.test_swav_clip import clip, make_batch

RECALLS = [f"{side}_recall@{k}" for side in ("i2t", "t2i") for k in (1, 5, 10)]
RUN_PREPROCESS = Preprocess(size=16, mean=IMAGENET_MEAN, std=IMAGENET_STD)


# -- the report -----------------------------------------------------------------------------
def _report(after_a: float = 0.7, after_b: float = 0.1) -> dict[str, Any]:
    before = {"i2t_recall@1": 0.5, "t2i_recall@1": 0.2}
    after = {"i2t_recall@1": after_a, "t2i_recall@1": after_b}
    return before_after_report(before, after, start="step 0", end="step 100")


def test_report_diffs_signs_and_better_flag() -> None:
    report = _report()
    assert json.loads(json.dumps(report)) == report  # JSON-able as it is
    assert (report["start"], report["end"]) == ("step 0", "step 100")
    assert [m["name"] for m in report["metrics"]] == ["i2t_recall@1", "t2i_recall@1"]
    assert [m["diff"] for m in report["metrics"]] == pytest.approx([0.2, -0.1])
    head = report["headline"]
    assert (head["before"], head["after"], head["diff"]) == pytest.approx((0.35, 0.4, 0.05))
    assert report["better"] is True  # one metric fell, but the mean rose
    assert _report(0.5, 0.1)["better"] is False  # the mean fell
    assert _report(0.5, 0.2)["better"] is False  # no change is no improvement


def test_report_refuses_different_or_no_metrics() -> None:
    with pytest.raises(ValueError, match="before has"):
        before_after_report({"a": 0.1}, {"b": 0.1}, start="s", end="e")
    with pytest.raises(ValueError, match="no metrics"):
        before_after_report({}, {}, start="s", end="e")


def test_markdown_has_every_metric_the_signs_and_the_verdict() -> None:
    text = before_after_markdown(_report())
    for piece in ("i2t_recall@1", "t2i_recall@1", "mean of 2 metrics", "+0.2000", "-0.1000"):
        assert piece in text
    assert "| metric | start: step 0 | end: step 100 | difference |" in text
    assert text.splitlines()[-1].startswith("`step 100` improved on `step 0`")
    assert "did not improve" in before_after_markdown(_report(0.5, 0.1))


def test_console_lines_are_an_aligned_table_and_the_verdict() -> None:
    lines = before_after_lines(_report())
    table, sentence = lines[:-1], lines[-1]
    assert len(table) == 4  # header, two metrics, the mean
    assert len({len(line) for line in table}) == 1  # numbers right-aligned to one width
    assert table[1].startswith("i2t_recall@1") and table[1].endswith("+0.2000")
    assert sentence.startswith("step 100 improved on step 0") and "`" not in sentence


def test_write_before_after(tmp_path: Path) -> None:
    report = _report()
    json_path, md_path = write_before_after(tmp_path / "run", report)
    assert (json_path.name, md_path.name) == (JSON_NAME, MARKDOWN_NAME)
    assert json.loads(json_path.read_text()) == report
    assert md_path.read_text() == before_after_markdown(report) + "\n"
    written = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert written == sorted([JSON_NAME, MARKDOWN_NAME])  # no temporary file is left


# -- evaluate_heldout -------------------------------------------------------------------------
class OneHotEncoder(Encoder):
    """Image of grey level 40*i -> e_(i + shift); a text containing keys[j] -> e_j."""

    def __init__(self, keys: list[str], shift: int = 0) -> None:
        self.device = torch.device("cpu")
        self.keys, self.shift = keys, shift
        no_norm = Preprocess(size=8, mean=(0.0,) * 3, std=(1.0,) * 3)
        self.info = EncoderInfo("one-hot", 8, frozenset({"image", "text"}), 10.0, no_norm)

    def _image_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        index = (pixels[:, 0].mean(dim=(1, 2)) * 255 / 40).round().long()
        return F.one_hot((index + self.shift) % len(self.keys), 8).float()

    def _text_forward(self, texts: list[str]) -> torch.Tensor:
        index = [next(j for j, key in enumerate(self.keys) if key in t) for t in texts]
        return F.one_hot(torch.tensor(index), 8).float()


def _grey(levels: list[int], size: int = 5) -> torch.Tensor:
    """uint8 [n, 3, size, size], image i uniformly grey at 40 * levels[i]."""
    return (torch.tensor(levels) * 40).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, size, size)


def _pairs(images: Any, n: int) -> EvalData:
    captions = [f"picture {i}" for i in range(n)]
    return EvalData("pairs:test", captions, images, torch.arange(n), captions=captions)


def _labelled(images: Any, labels: list[int], classes: list[str]) -> EvalData:
    return EvalData("test", classes, images, torch.tensor(labels))


def test_heldout_recall_known_exactly() -> None:
    data = _pairs(_grey(list(range(6))), 6)
    keys = data.classes
    assert evaluate_heldout(OneHotEncoder(keys), data) == dict.fromkeys(RECALLS, 1.0)
    # every image points at the next caption: its own caption ties with four other wrong
    # ones at cosine 0 behind one wrong one at 1, so it is found only at K = 10
    shifted = evaluate_heldout(OneHotEncoder(keys, shift=1), data, batch_size=4)
    assert shifted == {f"{side}_recall@{k}": float(k == 10) for side in ("i2t", "t2i")
                       for k in (1, 5, 10)}  # fmt: skip


def test_heldout_zero_shot_known_exactly_and_class_names_with_spaces() -> None:
    # the encoder knows "green apple" only: "green_apple" must reach it with a space
    labels = [0, 1, 2, 1, 0, 2]
    classes = ["red", "green_apple", "blue"]
    data = _labelled(_grey(labels), labels, classes)
    encoder = OneHotEncoder(["red", "green apple", "blue"])
    assert evaluate_heldout(encoder, data) == {"zeroshot_top1": 1.0}
    wrong = OneHotEncoder(["red", "green apple", "blue"], shift=1)
    assert evaluate_heldout(wrong, data) == {"zeroshot_top1": 0.0}


def test_heldout_with_a_tiny_clip_run() -> None:
    encoder = MethodEncoder(clip(), RUN_PREPROCESS)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 20, 20), generator=gen, dtype=torch.uint8)
    found = evaluate_heldout(encoder, _pairs(images, 6))
    assert list(found) == RECALLS
    assert all(0.0 <= v <= 1.0 for v in found.values())
    assert found["i2t_recall@10"] == found["t2i_recall@10"] == 1.0  # 6 < 10: all found
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(rng.integers(0, 256, (24, 18, 3), dtype=np.uint8)) for _ in range(9)]
    labelled = _labelled(photos, [0, 1, 2] * 3, ["cat", "golden_retriever", "truck"])
    top1 = evaluate_heldout(encoder, labelled)["zeroshot_top1"]
    assert list(evaluate_heldout(encoder, labelled)) == ["zeroshot_top1"] and 0 <= top1 <= 1


# -- MethodEncoder ------------------------------------------------------------------------------
def _modes(module: torch.nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in module.named_modules()}


def test_method_encoder_equals_the_towers_in_eval_mode_and_restores_modes() -> None:
    method = clip()
    method.train()
    method.text.eval()  # a mixed state: each module's own flag must come back
    before = _modes(method)
    seen: list[bool] = []
    for tower in (method.backbone, method.text):
        tower.register_forward_pre_hook(lambda m, args: seen.append(m.training))
    encoder = MethodEncoder(method, RUN_PREPROCESS, model_id="run:test")
    assert (encoder.model_id, encoder.embed_dim) == ("run:test", method.embed_dim)
    assert encoder.info.default_templates == tuple(method.templates)
    pixels = torch.randint(0, 256, (5, 3, 16, 16), generator=torch.Generator().manual_seed(1),
                           dtype=torch.uint8)  # fmt: skip
    texts = ["a photo of a cat.", "a truck", "two dogs"]
    images, captions = encoder.encode_image_tensors(pixels), encoder.encode_texts(texts)
    assert seen and not any(seen)  # both towers ran in eval mode
    assert _modes(method) == before
    assert not images.requires_grad and not captions.requires_grad
    with eval_mode(method), torch.no_grad():
        want_images = method.encode_image(pp.normalize(pixels, RUN_PREPROCESS))
        want_captions = method.encode_text(texts)
    torch.testing.assert_close(images, F.normalize(want_images, dim=-1))
    torch.testing.assert_close(captions, F.normalize(want_captions, dim=-1))


def test_eval_mode_restores_after_an_error() -> None:
    method = clip()
    method.train()
    with pytest.raises(RuntimeError), eval_mode(method):
        assert not method.training
        raise RuntimeError("evaluation failed")
    assert all(_modes(method).values())


def test_a_locked_minilm_run_trains_on_after_evaluation() -> None:
    """MiniLM's caption cache filled during evaluation is updated in place by the next
    training step: under inference_mode (the Encoder default) that step would fail."""
    method = clip(text_tower="minilm", embed_dim=0)
    method.train()
    MethodEncoder(method, RUN_PREPROCESS).encode_texts(["a held-out caption", "another one"])
    captions = [f"training caption {i}" for i in range(8)]
    views = method.make_views(make_batch(texts=captions, labelled=False), Augmenter("cpu"))
    method.loss(views).loss.backward()
    assert method.image_proj.weight.grad is not None
