"""Retrieval recall@K, `--task retrieval` on pairs data, and `--model A --model B`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from contrastkit.training.commands import eval as cli
from contrastkit.training.encoders import Encoder
from contrastkit.training.evaluate.compare import headline, serve_command
from contrastkit.training.evaluate.retrieval import caption_ids, recall_at_k
from tests.helpers import FakeEncoder
from tests.training.evaluate.test_evaluate import NAMES, ArrangedEncoder, _args, _report


# -- the metric -------------------------------------------------------------------------
def _recall_by_loops(
    sim: torch.Tensor, query_ids: list[int], gallery_ids: list[int], k: int
) -> float:
    """Sort each query's gallery by similarity, wrong items first among equals (ties count
    against the query); a hit when a right item is among the first k."""
    hits = 0
    for q, qid in enumerate(query_ids):
        order = sorted(
            range(len(gallery_ids)),
            key=lambda g: (-float(sim[q, g]), gallery_ids[g] == qid),
        )
        hits += any(gallery_ids[g] == qid for g in order[:k])
    return hits / len(query_ids)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_at_k_equals_a_loop_reference_with_ties_and_duplicates(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    n_img, n_txt = 23, 17
    # few distinct values: many ties; few ids: shared captions, and some images whose
    # caption is not among the texts at all
    sim = torch.randint(0, 4, (n_img, n_txt), generator=gen).float() / 4
    img_ids = torch.randint(0, 8, (n_img,), generator=gen)
    txt_ids = torch.randint(0, 9, (n_txt,), generator=gen)
    ks = (1, 2, 5, 10, 40)
    got = recall_at_k(sim, img_ids, txt_ids, ks)
    for k in ks:
        assert got["i2t"][k] == pytest.approx(
            _recall_by_loops(sim, img_ids.tolist(), txt_ids.tolist(), k)
        )
        assert got["t2i"][k] == pytest.approx(
            _recall_by_loops(sim.T, txt_ids.tolist(), img_ids.tolist(), k)
        )


def test_recall_at_k_known_answers() -> None:
    ids = torch.arange(3)
    assert recall_at_k(torch.eye(3), ids, ids, (1,)) == {"i2t": {1: 1.0}, "t2i": {1: 1.0}}
    # a collapsed model (every similarity equal) finds nothing at K=1, everything at K=3
    flat = recall_at_k(torch.ones(3, 3), ids, ids, (1, 3))
    assert flat == {"i2t": {1: 0.0, 3: 1.0}, "t2i": {1: 0.0, 3: 1.0}}
    # two images share caption 0: either answers it, and it answers both
    shared = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.4]])
    got = recall_at_k(shared, torch.tensor([0, 1, 0]), torch.tensor([0, 1]), (1,))
    assert got == {"i2t": {1: 1.0}, "t2i": {1: 1.0}}
    with pytest.raises(ValueError, match="sim is"):
        recall_at_k(torch.ones(2, 3), ids, ids)


def test_caption_ids_keep_first_seen_order() -> None:
    distinct, index = caption_ids(["b", "a", "b", "c"])
    assert distinct == ["b", "a", "c"] and index.tolist() == [0, 1, 0, 2]


# -- the CLI ----------------------------------------------------------------------------
def _pairs(tmp_path: Path) -> Path:
    """Five flat grey PNGs of assorted sizes, grey 60*c for class c; two share a caption."""
    rows = ["image,caption"]
    for i, c in enumerate([0, 1, 2, 3, 0]):
        Image.new("L", (12 + 3 * i, 10), 60 * c).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,the {NAMES[c]} square")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "pairs.csv"


def _loader(encoders: dict[str, Encoder]) -> cli.CheckpointLoader:
    return lambda path, device: encoders[path.name]


def _checkpoints(tmp_path: Path, *names: str) -> list[str]:
    for name in names:
        (tmp_path / name).write_bytes(b"")
    return [str(tmp_path / n) for n in names]


def test_retrieval_on_pairs_finds_every_matching_caption(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (ckpt,) = _checkpoints(tmp_path, "a.pt")
    args = _args(tmp_path, "--model", ckpt, "--data", f"pairs:{_pairs(tmp_path)}")
    assert cli.run(args, _loader({"a.pt": ArrangedEncoder()})) == 0
    rep = _report(tmp_path)
    r = rep["results"]["retrieval"]
    assert rep["tasks"] == ["retrieval"] and r["n_images"] == 5 and r["n_texts"] == 4
    for side in ("i2t", "t2i"):
        assert r[side] == {"recall@1": 1.0, "recall@5": 1.0, "recall@10": 1.0}
    assert r["mean"] == {"k": 1, "recall": 1.0}
    out = capsys.readouterr().out
    assert "| retrieval | image→text recall@1 | 1.0000 |" in out and "4 distinct captions" in out


def test_retrieval_recalls_are_fractions_for_any_model(tmp_path: Path) -> None:
    (ckpt,) = _checkpoints(tmp_path, "f.pt")
    args = _args(tmp_path, "--model", ckpt, "--data", f"pairs:{_pairs(tmp_path)}",
                 "--task", "retrieval", "--recall-at", "2,1")  # fmt: skip
    assert cli.run(args, _loader({"f.pt": FakeEncoder()})) == 0
    r = _report(tmp_path)["results"]["retrieval"]
    assert list(r["i2t"]) == ["recall@1", "recall@2"]
    assert all(0 <= v <= 1 for side in ("i2t", "t2i") for v in r[side].values())
    assert r["i2t"]["recall@1"] <= r["i2t"]["recall@2"]


def test_retrieval_on_labelled_data_captions_the_class_names(tmp_path: Path) -> None:
    (ckpt,) = _checkpoints(tmp_path, "f.pt")
    args = _args(tmp_path, "--model", ckpt, "--data", "digits", "--limit", "40",
                 "--task", "zeroshot,retrieval", "--templates", "single")  # fmt: skip
    assert cli.run(args, _loader({"f.pt": FakeEncoder()})) == 0
    r = _report(tmp_path)["results"]["retrieval"]
    assert r["n_images"] == 40 and r["n_texts"] <= 10


def test_retrieval_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = f"pairs:{_pairs(tmp_path)}"
    (ckpt,) = _checkpoints(tmp_path, "img.pt")
    image_only = _loader({"img.pt": FakeEncoder(capabilities=frozenset({"image"}))})
    assert cli.run(_args(tmp_path, "--model", ckpt, "--data", pairs), image_only) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "retrieval needs a text tower" in err and "fake:test" in err
    fake = _loader({"img.pt": FakeEncoder()})
    for bad in ("0", "1,x", "-5", ""):
        assert cli.run(_args(tmp_path, "--model", ckpt, "--data", pairs,
                             "--recall-at", bad), fake) == 2  # fmt: skip
        assert "--recall-at" in capsys.readouterr().err
    assert cli.run(_args(tmp_path, "--model", ckpt, "--data", pairs, "--task", "knn"), fake) == 2
    assert "use --task retrieval" in capsys.readouterr().err
    (tmp_path / "2.png").write_bytes(b"not a png")
    assert cli.run(_args(tmp_path, "--model", ckpt, "--data", pairs), fake) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot read image {tmp_path / '2.png'}" in err
    assert not (tmp_path / "out").exists()


# -- several models -----------------------------------------------------------------------
def test_two_models_give_one_table_and_name_the_better(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = _checkpoints(tmp_path, "fake.pt", "arranged.pt")
    models = _loader({"fake.pt": FakeEncoder(), "arranged.pt": ArrangedEncoder()})
    args = _args(tmp_path, "--model", a, "--model", b, "--data", f"pairs:{_pairs(tmp_path)}")
    assert cli.run(args, models) == 0
    rep = _report(tmp_path)
    assert [r["model"] for r in rep["models"]] == [a, b]
    v = rep["verdict"]
    assert v["better"] == b and v["scores"][1] == 1.0 and v["scores"][0] < 1.0
    export = tmp_path / "export"
    assert v["serve"] == f"contrastive export {b} {export} && contrastive serve --model {export}"
    out = capsys.readouterr().out
    assert f"| task | setting | `{a}` | `{b}` | B − A |" in out
    assert out.count("| retrieval |") == 6
    assert f"Better: `{b}` on mean of image→text and text→image recall@1" in out
    assert "contrastive serve --model" in out.splitlines()[-3]  # then a blank and "wrote"


def test_a_tie_names_no_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = _checkpoints(tmp_path, "a.pt", "b.pt")
    same = _loader({"a.pt": FakeEncoder(), "b.pt": FakeEncoder()})
    args = _args(tmp_path, "--model", a, "--model", b, "--data", "digits", "--limit", "30",
                 "--task", "knn,zeroshot", "--templates", "default", "--k", "5")  # fmt: skip
    assert cli.run(args, same) == 0
    assert _report(tmp_path)["verdict"]["better"] is None
    out = capsys.readouterr().out
    assert "Tie on zero-shot top-1 (template ensemble)" in out and "| +0.0000 |" in out


def test_models_with_different_tasks_are_weighed_on_shared_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = _checkpoints(tmp_path, "img.pt", "clip.pt")
    models = _loader({"img.pt": FakeEncoder(frozenset({"image"})), "clip.pt": FakeEncoder()})
    args = _args(tmp_path, "--model", a, "--model", b, "--data", "digits", "--limit", "30",
                 "--shots", "1", "--seeds", "1", "--k", "5")  # fmt: skip
    assert cli.run(args, models) == 0
    assert _report(tmp_path)["verdict"]["rule"] == "kNN top-1"  # a has no zero-shot
    out = capsys.readouterr().out
    assert "| zero-shot | template ensemble | — | " in out  # b's row, blank for a


def test_a_bad_model_fails_before_any_model_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (a,) = _checkpoints(tmp_path, "a.pt")
    loaded: list[Path] = []

    def loader(path: Path, device: str | None) -> Encoder:
        loaded.append(path)
        return FakeEncoder()

    args = _args(tmp_path, "--model", a, "--model", "no-such-model", "--data", "digits")
    assert cli.run(args, loader) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err and loaded == []
    assert cli.run(_args(tmp_path, "--model", a, "--model", a, "--data", "digits"), loader) == 2
    assert "given twice" in capsys.readouterr().err


def test_headline_rule_and_serve_commands() -> None:
    retrieval = {"mean": {"k": 1, "recall": 0.5}}
    zs = {"ensemble": {"top1": 0.4}, "single": {"top1": 0.3}}
    knn = {"top1": 0.2, "k": 5, "t": 0.1}
    assert headline({"retrieval": retrieval, "zeroshot": zs, "knn": knn})[1] == 0.5  # type: ignore[index]
    assert headline({"zeroshot": zs, "knn": knn}) == ("zero-shot top-1 (template ensemble)", 0.4)
    assert headline({"knn": knn}) == ("kNN top-1", 0.2)
    assert headline({}) is None
    assert serve_command("builtin") == "contrastive serve --model builtin"
    assert (
        serve_command("open_clip:ViT-B-32", "laion2b_s34b_b79k")
        == "contrastive serve --model open_clip:ViT-B-32 --pretrained laion2b_s34b_b79k"
    )


def test_pretrained_pairs_with_the_open_clip_models() -> None:
    models = ["builtin", "open_clip:A", "open_clip:B"]
    assert cli.pretrained_per_model(models, None) == [None] * 3
    assert cli.pretrained_per_model(models, ["x"]) == ["x"] * 3
    assert cli.pretrained_per_model(models, ["x", "y"]) == [None, "x", "y"]
    with pytest.raises(cli.EvalError, match="3 --pretrained values for 2 open_clip models"):
        cli.pretrained_per_model(models, ["x", "y", "z"])


@pytest.mark.slow
def test_builtin_retrieval_on_pairs(tmp_path: Path) -> None:
    args = _args(tmp_path, "--model", "builtin", "--data", f"pairs:{_pairs(tmp_path)}",
                 "--batch-size", "2")  # fmt: skip
    assert cli.run(args) == 0
    r = _report(tmp_path)["results"]["retrieval"]
    assert all(0 <= v <= 1 for side in ("i2t", "t2i") for v in r[side].values())
    assert r["i2t"]["recall@5"] == 1.0  # 4 distinct captions: all of them are in the top 5
