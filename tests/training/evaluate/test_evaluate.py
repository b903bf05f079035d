"""Evaluation: pixels, logistic regression, the four tasks and `contrastive eval`."""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from contrastkit.training.commands import eval as cli
from contrastkit.training.encoders import Encoder, EncoderInfo, Preprocess
from contrastkit.training.encoders import preprocess as pp
from contrastkit.training.encoders.templates import DEFAULT_TEMPLATES, SINGLE_TEMPLATE
from contrastkit.training.evaluate.data import load_eval_data
from contrastkit.training.evaluate.knn import knn_accuracy
from contrastkit.training.evaluate.logreg import fit_logreg, select_l2, split_train_val
from contrastkit.training.evaluate.models import default_checkpoint_loader, resolve_model
from contrastkit.training.evaluate.pixels import extract_features, to_model_pixels
from contrastkit.training.evaluate.tasks import few_shot, knn_task, linear_probe, sample_shots
from contrastkit.training.evaluate.zeroshot import zero_shot, zero_shot_classifier
from tests.helpers import FakeEncoder, write_tiny_timm_export


def _pil(image: torch.Tensor) -> Image.Image:
    arr = image.permute(1, 2, 0).numpy()
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)


# -- pixels -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "size", "mode"),
    [((3, 1, 28, 28), 64, "shortest"), ((3, 3, 30, 70), 16, "shortest"),
     ((3, 3, 20, 12), 24, "squash"), ((3, 3, 90, 50), 32, "shortest")],
)  # fmt: skip
def test_model_pixels_match_the_services_pil_path(
    shape: tuple[int, ...], size: int, mode: str
) -> None:
    images = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(1)).to(
        torch.uint8
    )
    cfg = Preprocess(size=size, resize_mode=mode)
    want = torch.stack([pp.to_pixels(_pil(im), cfg) for im in images])
    got = to_model_pixels(images, cfg)
    assert got.dtype == torch.uint8 and got.shape == want.shape
    # PIL's fixed-point filter weights differ from torch's floats by at most a grey level
    assert (got.int() - want.int()).abs().max() <= 1
    if shape[1] == 1:
        assert torch.equal(got[:, 0], got[:, 1]) and torch.equal(got[:, 0], got[:, 2])


def test_features_equal_the_encoders_own_image_path() -> None:
    enc = FakeEncoder()  # input side 16: no resize, so the pixels must agree exactly
    images = torch.randint(0, 256, (7, 3, 16, 16), generator=torch.Generator().manual_seed(2))
    images = images.to(torch.uint8)
    got = extract_features(enc, images, batch_size=3)
    want = enc.encode_images([_pil(im) for im in images])
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(extract_features(enc, [_pil(im) for im in images], 4), want, atol=1e-6)


# -- logistic regression ----------------------------------------------------------------
def _blobs(n: int, d: int, classes: int, spread: float, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=gen) * 3
    y = torch.arange(n) % classes
    return centres[y] + spread * torch.randn(n, d, generator=gen), y


@pytest.mark.parametrize("l2", [1e-3, 1e-1])
def test_fit_logreg_matches_scikit_learn(l2: float) -> None:
    from sklearn.linear_model import LogisticRegression

    x, y = _blobs(150, 6, 3, spread=3.0, seed=0)
    ours = fit_logreg(x, y, 3, l2).logits(x).softmax(1)
    sk = LogisticRegression(C=1 / (len(y) * l2), tol=1e-10, max_iter=10_000)
    theirs = sk.fit(x.numpy(), y.numpy()).predict_proba(x.numpy())
    assert np.abs(ours.numpy() - theirs).max() < 2e-3


def test_linear_probe_recovers_a_linear_separation() -> None:
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(8, 4, generator=gen)
    x = torch.randn(1200, 8, generator=gen)
    logits = x @ w
    keep = (logits.topk(2, dim=1).values.diff(dim=1).abs() > 0.3).flatten()  # a margin
    x, y = x[keep] * 5 + 2, logits[keep].argmax(1)  # scale/shift: standardising undoes it
    out = linear_probe(x[:800], y[:800], x[800:], y[800:], 4)
    assert out.top1 >= 0.97
    assert len(out.val_top1) == 10 and out.n_train + out.n_val == 800


def test_l2_choice_follows_the_validation_split() -> None:
    x, y = _blobs(300, 5, 3, spread=1.0, seed=4)
    # a penalty of 1e3 flattens every weight: the model predicts one class (val ~1/3)
    chosen, scores = select_l2(x, y, 3, grid=(1e3, 1e-4))
    assert chosen == 1e-4 and scores[1e-4] > 0.9 and scores[1e3] < 0.5
    # when all strengths separate the validation rows, the strongest wins the tie
    chosen, scores = select_l2(x, y, 3, grid=(1e-5, 1e-4, 1e-3))
    assert set(scores.values()) == {1.0} and chosen == 1e-3
    # the warm-started path scores each strength as a cold fit does
    x, y = _blobs(200, 10, 4, spread=6.0, seed=5)  # overlapping classes
    grid = (1e-4, 1e-2, 1.0)
    _, scores = select_l2(x, y, 4, grid=grid, seed=7)
    fit_i, val_i = split_train_val(len(y), 0.2, 7)
    cold = {g: fit_logreg(x[fit_i], y[fit_i], 4, g).accuracy(x[val_i], y[val_i]) for g in grid}
    assert scores == pytest.approx(cold, abs=1 / len(val_i) + 1e-9)
    assert len(set(cold.values())) > 1  # the strengths really differ here


# -- few-shot ---------------------------------------------------------------------------
def test_sample_shots_takes_k_of_every_class_reproducibly() -> None:
    labels = torch.tensor([0] * 7 + [1] * 3 + [2] * 10)
    idx = sample_shots(labels, 5, seed=1)
    assert torch.bincount(labels[idx]).tolist() == [5, 3, 5]  # class 1 has only 3
    assert torch.equal(idx, sample_shots(labels, 5, seed=1))
    assert not torch.equal(idx, sample_shots(labels, 5, seed=2))


def test_few_shot_recovers_separated_classes_and_averages_seeds() -> None:
    x, y = _blobs(600, 16, 5, spread=0.2, seed=6)
    tight = few_shot(x[:400], y[:400], x[400:], y[400:], 5, shots=(1,), seeds=3)
    assert tight[0].runs == [1.0, 1.0, 1.0] and tight[0].std == 0.0
    x, y = _blobs(1000, 16, 5, spread=4.0, seed=7)  # overlapping: more shots help
    res = few_shot(x[:600], y[:600], x[600:], y[600:], 5, shots=(1, 10), seeds=5)
    assert [r.shots for r in res] == [1, 10] and all(len(r.runs) == 5 for r in res)
    for r in res:
        assert r.mean == pytest.approx(sum(r.runs) / 5)
        assert r.std == pytest.approx(math.sqrt(sum((a - r.mean) ** 2 for a in r.runs) / 4))
    assert res[1].mean > res[0].mean + 0.05


# -- kNN ----------------------------------------------------------------------------------
def _knn_by_loops(bank: torch.Tensor, bl: torch.Tensor, q: torch.Tensor, ql: torch.Tensor,
                  k: int, t: float) -> float:  # fmt: skip
    bank, q = F.normalize(bank, dim=1), F.normalize(q, dim=1)
    right = 0
    for i in range(len(q)):
        sims = [(float(q[i] @ bank[j]), int(bl[j])) for j in range(len(bank))]
        votes: dict[int, float] = {}
        for s, c in sorted(sims, reverse=True)[:k]:
            votes[c] = votes.get(c, 0.0) + math.exp(s / t)
        right += max(votes, key=lambda c: votes[c]) == int(ql[i])
    return right / len(q)


def test_knn_task_is_the_training_knn() -> None:
    x, y = _blobs(160, 8, 4, spread=3.0, seed=8)
    res = knn_task(x[:120], y[:120], x[120:], y[120:], 4, k=15, t=0.07)
    assert res.top1 == knn_accuracy(x[:120], y[:120], x[120:], y[120:], 4, k=15, t=0.07)
    assert res.top1 == pytest.approx(_knn_by_loops(x[:120], y[:120], x[120:], y[120:], 15, 0.07))


# -- zero-shot ----------------------------------------------------------------------------
NAMES = ["alpha", "beta", "gamma", "delta"]


class ArrangedEncoder(Encoder):
    """Image of grey level 60*c -> near e_c. Text for class c -> e_c plus a template-specific
    wobble, except the single template, which points at the *next* class."""

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        no_norm = Preprocess(size=8, mean=(0.0,) * 3, std=(1.0,) * 3)
        self.info = EncoderInfo("arranged", 4, frozenset({"image", "text"}), 10.0, no_norm)

    def _image_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        cls = (pixels[:, 0].mean(dim=(1, 2)) * 255 / 60).round().long()
        return F.one_hot(cls, 4).float() + 0.05

    def _text_forward(self, texts: list[str]) -> torch.Tensor:
        rows = []
        for text in texts:
            c = next(i for i, n in enumerate(NAMES) if n in text)
            if text == SINGLE_TEMPLATE[0].replace("{}", NAMES[c]):
                c = (c + 1) % 4
            wobble = torch.randn(4, generator=torch.Generator().manual_seed(len(text)))
            rows.append(F.one_hot(torch.tensor(c), 4).float() * 3 + 0.3 * wobble)
        return torch.stack(rows)


def test_zero_shot_known_answer_and_manual_ensemble() -> None:
    enc = ArrangedEncoder()
    labels = torch.tensor([0, 1, 2, 3, 2, 1])
    images = (labels * 60).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 5, 5)
    feats = extract_features(enc, images)
    res = zero_shot(enc, feats, labels, NAMES, ("ensemble", "single"))
    assert res["ensemble"].top1 == 1.0 and res["single"].top1 == 0.0
    # the classifier, one text at a time: normalise, sum over templates, normalise
    rows = []
    for name in NAMES:
        total = torch.zeros(4)
        for tpl in DEFAULT_TEMPLATES:
            total += F.normalize(enc._text_forward([tpl.replace("{}", name)])[0], dim=0)
        rows.append(total / total.norm())
    manual = torch.stack(rows)
    assert torch.allclose(zero_shot_classifier(enc, NAMES, DEFAULT_TEMPLATES), manual, atol=1e-6)
    pred = [max(range(4), key=lambda c: float(f @ manual[c])) for f in feats]
    assert res["ensemble"].top1 == sum(p == int(y) for p, y in zip(pred, labels, strict=True)) / 6


# -- model references and the CLI -----------------------------------------------------
def _args(tmp_path: Path, *argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    return p.parse_args([*argv, "--out", str(tmp_path / "out"), "--device", "cpu"])


def _report(tmp_path: Path) -> dict:  # type: ignore[type-arg]
    (path,) = (tmp_path / "out").glob("eval-*.json")
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def test_checkpoint_refs_go_to_the_checkpoint_loader(tmp_path: Path) -> None:
    ckpt = tmp_path / "step-10.pt"
    ckpt.write_bytes(b"")
    seen: list[tuple[Path, str | None]] = []

    def loader(path: Path, device: str | None) -> Encoder:
        seen.append((path, device))
        return FakeEncoder()

    assert resolve_model(str(ckpt), device="cpu", checkpoint_loader=loader).model_id == "fake:test"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_bytes(b"")
    resolve_model(str(tmp_path / "run"), checkpoint_loader=loader)
    assert seen == [(ckpt, "cpu"), (tmp_path / "run", None)]
    from contrastkit.training.export.build import encoder_from_checkpoint

    assert default_checkpoint_loader() is encoder_from_checkpoint


def test_cli_on_digits_with_a_fake_checkpoint_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "m.pt").write_bytes(b"")
    args = _args(tmp_path, "--model", str(tmp_path / "m.pt"), "--data", "digits",
                 "--limit", "60", "--shots", "1,3", "--seeds", "2", "--k", "10")  # fmt: skip
    assert cli.run(args, checkpoint_loader=lambda p, d: FakeEncoder()) == 0
    rep = _report(tmp_path)
    assert rep["tasks"] == ["knn", "linear", "zeroshot", "fewshot"]
    assert rep["n_bank"] == 60 and rep["n_queries"] == 60 and rep["device"] == "cpu"
    assert rep["model_id"] == "fake:test" and rep["classes"][0] == "zero"
    r = rep["results"]
    assert set(r["zeroshot"]) == {"ensemble", "single"} and r["knn"]["k"] == 10
    assert [f["shots"] for f in r["fewshot"]] == [1, 3]
    assert r["fewshot"][1]["mean"] == pytest.approx(statistics.fmean(r["fewshot"][1]["runs"]))
    assert all(0 <= v <= 1 for v in r["linear"]["val_top1"].values())
    out = capsys.readouterr().out
    assert "| zero-shot | template ensemble (7 prompts) |" in out
    assert (tmp_path / "out").glob("eval-*.md")


def test_cli_zero_shot_alone_embeds_no_train_images(tmp_path: Path) -> None:
    (tmp_path / "m.pt").write_bytes(b"")
    args = _args(tmp_path, "--model", str(tmp_path / "m.pt"), "--data", "digits",
                 "--limit", "30", "--task", "zeroshot", "--templates", "default")  # fmt: skip
    assert cli.run(args, checkpoint_loader=lambda p, d: FakeEncoder()) == 0
    rep = _report(tmp_path)
    assert rep["n_bank"] == 0 and rep["n_queries"] == 30 and "embed_train" not in rep["seconds"]
    assert list(rep["results"]["zeroshot"]) == ["ensemble"]


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export = write_tiny_timm_export(tmp_path / "export")  # image-only
    assert cli.run(_args(tmp_path, "--model", str(export), "--data", "digits",
                         "--task", "zeroshot")) == 2  # fmt: skip
    assert "image-only" in capsys.readouterr().err
    assert cli.run(_args(tmp_path, "--model", "builtin", "--data", "digits",
                         "--task", "knn,cluster")) == 2  # fmt: skip
    assert "unknown task" in capsys.readouterr().err
    assert cli.run(_args(tmp_path, "--model", "no-such-model", "--data", "digits")) == 2
    assert "unknown model" in capsys.readouterr().err
    assert cli.run(_args(tmp_path, "--model", "builtin", "--data", "nowhere:x")) == 2
    assert "unknown data spec" in capsys.readouterr().err
    fake = tmp_path / "f.pt"
    fake.write_bytes(b"")
    bad = _args(tmp_path, "--model", str(fake), "--data", "skimage-photos", "--task", "knn")
    assert cli.run(bad, checkpoint_loader=lambda p, d: FakeEncoder()) == 2
    assert "test images only" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_on_an_image_only_export_skips_zero_shot(tmp_path: Path) -> None:
    export = write_tiny_timm_export(tmp_path / "export")
    args = _args(tmp_path, "--model", str(export), "--data", "digits", "--limit", "40",
                 "--shots", "2", "--seeds", "1")  # fmt: skip
    assert cli.run(args) == 0
    rep = _report(tmp_path)
    assert rep["tasks"] == ["knn", "linear", "fewshot"] and rep["model_id"].startswith("export:")


def test_skimage_photos_are_nine_labelled_queries() -> None:
    data = load_eval_data("skimage-photos", image_size=16)
    assert data.bank is None and len(data.queries) == 9
    assert [data.classes[i] for i in data.query_labels[:2]] == ["cat", "cup of coffee"]


@pytest.mark.slow
def test_cli_builtin_on_digits(tmp_path: Path) -> None:
    args = _args(tmp_path, "--model", "builtin", "--data", "digits", "--limit", "20",
                 "--shots", "1", "--seeds", "2")  # fmt: skip
    assert cli.run(args) == 0
    rep = _report(tmp_path)
    assert rep["model_id"].startswith("builtin:") and rep["embed_dim"] == 384
    assert rep["tasks"] == ["knn", "linear", "zeroshot", "fewshot"]
    assert all(0 <= z["top1"] <= 1 for z in rep["results"]["zeroshot"].values())


@pytest.mark.slow
def test_cli_on_a_clip_run_folder(tmp_path: Path) -> None:
    from contrastkit.training.cli import main as train_main

    run = tmp_path / "run"
    sets = ["image_size=16", "progress=false", "tensorboard=false", "knn_every=0",
            "text_tower=transformer", "text_width=32", "text_layers=1", "text_heads=2",
            "context_length=16"]  # fmt: skip
    train = ["train", "--method", "clip", "--data", "digits", "--backbone", "tiny", "--batch-size",
             "32", "--steps", "1", "--out", str(run), "--device", "cpu"]  # fmt: skip
    assert train_main([*train, *[a for s in sets for a in ("--set", s)]]) == 0
    args = _args(tmp_path, "--model", str(run), "--data", "digits", "--limit", "50",
                 "--task", "knn,zeroshot", "--templates", "single")  # fmt: skip
    assert cli.run(args) == 0
    rep = _report(tmp_path)
    assert rep["model_id"].startswith("checkpoint:") and rep["tasks"] == ["knn", "zeroshot"]
    assert list(rep["results"]["zeroshot"]) == ["single"]
