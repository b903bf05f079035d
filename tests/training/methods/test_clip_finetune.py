"""Fine-tuning a whole pretrained open_clip model (`train --method clip --init-from
open_clip:...`, contrastkit.training.engine.clip_start) end to end on the CPU.

The "pretrained" model is a tiny ViT + text transformer CLIP with random weights, saved as
open_clip's local-dir folder (open_clip_config.json + open_clip_model.safetensors), so
nothing is downloaded. It loads through every reference kind; fine-tuning it on digits
raises held-out zero-shot accuracy; LiT locking freezes exactly the tensors it should; the
export reproduces the training model in process, in a fresh process without the training
loop, and through the service; a crashed run resumes bit for bit; gradient checkpointing
gives the same losses. (2-process DDP: the `clip_ft` case of test_ddp_equivalence.py.)
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import open_clip.factory
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import load_file, save_file

from contrastkit.service.app import create_app
from contrastkit.service.settings import Settings
from contrastkit.training.cli import main as train_main
from contrastkit.training.config import TrainConfig
from contrastkit.training.encoders import load_encoder
from contrastkit.training.encoders.base import Encoder, Preprocess
from contrastkit.training.encoders.exported.format import ExportMeta, read_export, write_export
from contrastkit.training.encoders.preprocess import normalize
from contrastkit.training.engine.clip_start import StartModel, load_start, start_model
from contrastkit.training.evaluate.before_after import MethodEncoder, evaluate_heldout
from contrastkit.training.evaluate.data import load_eval_data
from contrastkit.training.export.build import load_method
from contrastkit.training.methods import MethodContext
from contrastkit.training.methods.clip import CLIP, CLIPParams
from tests.helpers import image_bytes, wait_ready, write_tiny_timm_export
from tests.training.engine.test_train_e2e import assert_crash_and_resume_repeat_the_run, losses

REPO = Path(__file__).resolve().parents[3]
SIZE = 32
CFG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": SIZE, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
MEAN = STD = (0.5, 0.5, 0.5)  # not CLIP's: shows that the model's own preprocessing is used
# The random towers embed every digit (and every caption) almost alike (cosine ~0.99); at
# CLIP's initial scale 1/0.07 that noise costs more than uniform logits, and the first
# steps collapse the embeddings to a constant that 40 steps do not leave. At 3 they don't.
START_SCALE = 3.0
ARCH = "tiny-finetune-test"  # registered with open_clip only inside a test (registered_arch)
CAPTIONS = ["a photo of a zero.", "seven", "an origami three."]


@dataclass(frozen=True)
class Pretrained:
    """The stand-in for a pretrained checkpoint: open_clip's local-dir folder."""

    folder: Path
    state: dict[str, torch.Tensor]

    @property
    def ref(self) -> str:
        return f"open_clip:local-dir:{self.folder}"

    @property
    def weights(self) -> Path:
        return self.folder / "open_clip_model.safetensors"

    def model(self) -> Any:
        """A fresh open_clip.CLIP with the original weights (eval mode)."""
        model = open_clip.CLIP(**CFG)
        model.load_state_dict(self.state)
        return model.eval()


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Pretrained:
    folder = tmp_path_factory.mktemp("tiny-open-clip")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = open_clip.CLIP(**CFG)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(START_SCALE))
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, folder / "open_clip_model.safetensors")
    config = {"model_cfg": CFG, "preprocess_cfg": {"mean": list(MEAN), "std": list(STD)}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    return Pretrained(folder, state)


@pytest.fixture
def registered_arch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """ARCH registered with open_clip.add_model_config for this test only: the registry's
    list and dict are copies that monkeypatch puts back afterwards."""
    factory = open_clip.factory
    monkeypatch.setattr(factory, "_MODEL_CONFIG_PATHS", list(factory._MODEL_CONFIG_PATHS))
    monkeypatch.setattr(factory, "_MODEL_CONFIGS", dict(factory._MODEL_CONFIGS))
    config = tmp_path / f"{ARCH}.json"
    config.write_text(json.dumps(CFG))
    open_clip.add_model_config(config)
    assert ARCH in open_clip.list_models()
    return ARCH


def ft_argv(
    out: Path, ref: str, *sets: str, steps: int, batch: int = 16, lr: float = 1e-3
) -> list[str]:
    """`train --method clip --init-from REF` on digits, on the CPU, quiet and exact."""
    args = ["train", "--method", "clip", "--data", "digits", "--init-from", ref,
            "--steps", str(steps), "--batch-size", str(batch), "--out", str(out),
            "--device", "cpu", "--lr", str(lr)]  # fmt: skip
    for s in ("progress=false", "tensorboard=false", "knn_every=0", "log_every=1",
              "deterministic=true", "warmup_epochs=0", *sets):  # fmt: skip
        args += ["--set", s]
    return args


def method_of(start: StartModel, **params: Any) -> CLIP:
    """The CLIP method adopting `start`'s model, as a run builds it (eval mode)."""
    ctx = MethodContext(torch.device("cpu"), start.preprocess.size, 1, 1, 8, start=start)
    visual = start.model.get_submodule("visual")
    return CLIP(visual, start.embed_dim, CLIPParams(**params), ctx).eval()


def probe_pixels(n: int = 4) -> torch.Tensor:
    """uint8 [n, 3, SIZE, SIZE], the same in every process."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)


def unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)


# -- 1. every reference loads the very model; bad ones are refused ----------------------------


def _write_open_clip_export(out: Path, pretrained: Pretrained) -> Path:
    """The original weights as an export of family open_clip, written as a run from a
    local-dir folder writes one: the architecture named after a folder that is gone."""
    meta = ExportMeta(
        family="open_clip",
        architecture={"name": f"local-dir:{out.parent / 'gone'}", "model_cfg": CFG},
        preprocess=Preprocess(size=SIZE, mean=MEAN, std=STD).to_dict(),
        embed_dim=CFG["embed_dim"],
        capabilities=["image", "text"],
        logit_scale=START_SCALE,
        tokenizer={"kind": "open_clip", "name": None, "context_length": 16},
        method="clip",
    )
    return write_export(out, pretrained.state, meta)


@pytest.mark.parametrize("kind", ["local-dir", "export", "arch-file"])
def test_every_reference_gives_the_original_towers(
    kind: str, pretrained: Pretrained, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "local-dir":
        ref = pretrained.ref
    elif kind == "export":
        ref = str(_write_open_clip_export(tmp_path / "export", pretrained))
    else:
        ref = f"open_clip:{request.getfixturevalue('registered_arch')}:{pretrained.weights}"
    start = load_start(ref)
    original = pretrained.model()
    assert start.embed_dim == CFG["embed_dim"] and start.context_length == 16
    assert start.preprocess.size == SIZE
    if kind != "arch-file":  # a bare architecture has open_clip's default mean and std
        assert (start.preprocess.mean, start.preprocess.std) == (MEAN, STD)
    saved = start.model.state_dict()
    assert sorted(saved) == sorted(pretrained.state)
    assert all(torch.equal(saved[k], v) for k, v in pretrained.state.items())
    method = method_of(start)
    x = normalize(probe_pixels(), start.preprocess)
    tokens = open_clip.SimpleTokenizer(context_length=16)(CAPTIONS)
    with torch.no_grad():
        assert torch.equal(method.encode_image(x), original.encode_image(x))
        assert torch.equal(method.encode_text(CAPTIONS), original.encode_text(tokens))
        assert torch.equal(method.scale(), original.logit_scale.exp())


@pytest.mark.parametrize(
    "case", ["unknown-arch", "missing-folder", "missing-export", "not-open-clip", "wrong-weights",
             "wrong-weights-in-folder"],
)  # fmt: skip
def test_bad_references_are_refused_with_a_clear_message(
    case: str, pretrained: Pretrained, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    other = open_clip.CLIP(**(CFG | {"embed_dim": 16})).state_dict()  # another architecture
    if case == "unknown-arch":
        ref, match = "open_clip:no-such-arch-for-tests", "unknown open_clip architecture"
    elif case == "missing-folder":
        ref, match = f"open_clip:local-dir:{tmp_path / 'nowhere'}", "no open_clip_config.json in"
    elif case == "missing-export":
        ref, match = str(tmp_path / "nowhere"), "not an export directory"
    elif case == "not-open-clip":
        ref = str(write_tiny_timm_export(tmp_path / "timm"))
        match = "an export of family 'timm', not an open_clip model"
    elif case == "wrong-weights":
        save_file(other, tmp_path / "other.safetensors")
        arch = request.getfixturevalue("registered_arch")
        ref, match = f"open_clip:{arch}:{tmp_path / 'other.safetensors'}", "do not fit"
    else:
        folder = tmp_path / "folder"
        folder.mkdir()
        (folder / "open_clip_config.json").write_text(
            (pretrained.folder / "open_clip_config.json").read_text()
        )
        save_file(other, folder / "open_clip_model.safetensors")
        ref, match = f"open_clip:local-dir:{folder}", "open_clip could not load it"
    with pytest.raises(ValueError, match=match) as caught:
        load_start(ref)
    assert ref in str(caught.value)  # names what it refused


def test_a_run_refuses_what_the_pretrained_model_cannot_do(
    pretrained: Pretrained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match="whole image-text model: it starts a --method clip"):
        start_model(TrainConfig(method="simclr", init_from=pretrained.ref))
    with pytest.raises(ValueError, match="image_size 64: the pretrained model takes 32 px"):
        start_model(TrainConfig(method="clip", init_from=pretrained.ref, image_size=64))
    cfg = TrainConfig(method="clip", init_from=pretrained.ref)
    start = start_model(cfg)
    assert start is not None and cfg.image_size == SIZE  # the model's size, written in
    # the CLI says so in one line (exit 2), not with a traceback
    missing = f"open_clip:local-dir:{tmp_path / 'nowhere'}"
    assert train_main(ft_argv(tmp_path / "run", missing, steps=1)) == 2
    assert "no open_clip_config.json in" in capsys.readouterr().err
    assert not (tmp_path / "run" / "last.pt").exists()


# -- 2. fine-tuning helps on held-out data ---------------------------------------------------


@pytest.mark.slow  # ~100 s on a busy 2-core machine (30 steps of batch 64, deterministic)
def test_finetuning_raises_heldout_zero_shot_accuracy(
    pretrained: Pretrained, tmp_path: Path
) -> None:
    """30 steps of batch 64 on digits' training split: zero-shot top-1 on its held-out
    split (captions "a photo of a {class}.", as in training) rises well above the start's
    (0.09 -> 0.28-0.29 measured with seeds 0-2; 10 classes, chance 0.1)."""
    data = load_eval_data("digits", image_size=SIZE)
    start = load_start(pretrained.ref)
    before = evaluate_heldout(MethodEncoder(method_of(start, templates="single"),
                                            start.preprocess), data)  # fmt: skip
    run = tmp_path / "run"
    sets = ("templates=single", "warmup_epochs=0.2", "log_every=10")
    # lr 4e-3 per 256 images: 1e-3 at batch 64
    assert train_main(ft_argv(run, pretrained.ref, *sets, steps=30, batch=64, lr=4e-3)) == 0
    method, _ = load_method(run)
    assert isinstance(method, CLIP)
    after = evaluate_heldout(MethodEncoder(method, start.preprocess), data)
    assert after["zeroshot_top1"] >= before["zeroshot_top1"] + 0.1, (before, after)


# -- 3. LiT: locked towers stay as they were -------------------------------------------------


def _last_image_groups(n: int) -> Callable[[str], bool]:
    """What trains with lock_image and image_unlocked_groups=n (1 or 2): the text tower,
    the temperature, and the ViT's last n groups; open_clip's groups end with
    ..., [the last block, ln_post], proj."""
    groups = [("visual.proj",), ("visual.transformer.resblocks.1.", "visual.ln_post.")]
    last = tuple(prefix for group in groups[:n] for prefix in group)
    return lambda key: not key.startswith("visual.") or key.startswith(last)


LIT: dict[str, tuple[tuple[str, ...], Callable[[str], bool]]] = {
    "lock_image": (("lock_image=true",), lambda k: not k.startswith("visual.")),
    "lock_text": (("lock_text=true",), lambda k: k.startswith("visual.") or k == "logit_scale"),
    # the temperature is a parameter too: with both towers locked only lr 0 keeps it
    "both_locked": (("lock_image=true", "lock_text=true", "logit_lr_scale=0"), lambda k: False),
    "last_image_group": (("lock_image=true", "image_unlocked_groups=1"), _last_image_groups(1)),
    "last_two_image_groups": (
        ("lock_image=true", "image_unlocked_groups=2"),
        _last_image_groups(2),
    ),
}


@pytest.mark.parametrize("case", list(LIT))
def test_locked_tensors_stay_bit_identical_and_the_rest_train(
    case: str, pretrained: Pretrained, tmp_path: Path
) -> None:
    """The exported model after 3 steps against the original file: exactly the tensors
    that train changed (all of them), every other one is bit for bit the original."""
    sets, trains = LIT[case]
    run = tmp_path / "run"
    assert train_main(ft_argv(run, pretrained.ref, *sets, steps=3)) == 0
    assert train_main(["export", str(run), str(run / "export")]) == 0
    _, state = read_export(run / "export")
    original = load_file(pretrained.weights)
    assert sorted(state) == sorted(original)
    changed = {k for k, v in original.items() if not torch.equal(state[k], v)}
    assert changed == {k for k in original if trains(k)}
    if case == "both_locked":
        for key, value in original.items():
            torch.testing.assert_close(state[key], value, rtol=0, atol=1e-6, msg=key)


# -- 4. the export is the training model, in process, in a fresh process, served -----------


@dataclass(frozen=True)
class Finetuned:
    run: Path
    export: Path
    method: CLIP
    preprocess: Preprocess


@pytest.fixture(scope="module")
def finetuned(pretrained: Pretrained, tmp_path_factory: pytest.TempPathFactory) -> Finetuned:
    """4 steps of fine-tuning, exported with `contrastive export`; the method rebuilt from
    its checkpoint as export and evaluation do (load_method)."""
    run = tmp_path_factory.mktemp("finetuned") / "run"
    assert train_main(ft_argv(run, pretrained.ref, steps=4)) == 0
    assert train_main(["export", str(run), str(run / "export")]) == 0
    method, ckpt = load_method(run)
    assert isinstance(method, CLIP) and method.start is not None and ckpt.step == 4
    return Finetuned(run, run / "export", method, method.start.preprocess)


def _in_training(f: Finetuned, pixels: torch.Tensor, texts: list[str]) -> tuple[Any, Any]:
    """Unit embeddings of uint8 pixels and captions as the training model computes them."""
    with torch.no_grad():
        images = f.method.encode_image(normalize(pixels, f.preprocess))
        return unit(images), unit(f.method.encode_text(texts))


def test_the_export_reproduces_the_training_model(
    finetuned: Finetuned, pretrained: Pretrained
) -> None:
    meta, state = read_export(finetuned.export)
    assert meta.family == "open_clip" and meta.architecture["model_cfg"] == CFG
    assert any(not torch.equal(state[k], v) for k, v in pretrained.state.items())  # trained
    enc = load_encoder(str(finetuned.export), device="cpu")
    assert enc.info.preprocess == finetuned.preprocess  # the model's own size, mean, std
    assert enc.info.default_templates == tuple(finetuned.method.templates)
    pixels = probe_pixels()
    want_images, want_texts = _in_training(finetuned, pixels, CAPTIONS)
    torch.testing.assert_close(enc.encode_image_tensors(pixels), want_images, rtol=0, atol=1e-5)
    torch.testing.assert_close(enc.encode_texts(CAPTIONS), want_texts, rtol=0, atol=1e-5)
    assert float((want_images @ want_images.T).min()) < 0.999  # distinct rows, not a constant


_FRESH_PROCESS = """
import json, sys, torch
from contrastkit.training.encoders import load_encoder
enc = load_encoder(sys.argv[1], device="cpu")
assert "contrastkit.training.engine.trainer" not in sys.modules, "loading an export imported it"
pixels = torch.randint(0, 256, (4, 3, 32, 32), generator=torch.Generator().manual_seed(0),
                       dtype=torch.uint8)
print(json.dumps({"image": enc.encode_image_tensors(pixels).tolist(),
                  "text": enc.encode_texts(json.loads(sys.argv[2])).tolist()}))
"""


def test_the_export_loads_in_a_process_without_the_training_loop(finetuned: Finetuned) -> None:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    args = [sys.executable, "-c", _FRESH_PROCESS, str(finetuned.export), json.dumps(CAPTIONS)]
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    want_images, want_texts = _in_training(finetuned, probe_pixels(), CAPTIONS)
    torch.testing.assert_close(torch.tensor(got["image"]), want_images, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.tensor(got["text"]), want_texts, rtol=0, atol=1e-5)


@pytest.fixture
def served(finetuned: Finetuned) -> Iterator[TestClient]:
    app = create_app(Settings(model=str(finetuned.export), device="cpu"))
    with TestClient(app) as client:
        wait_ready(client)
        yield client


def test_the_service_serves_the_training_models_embeddings(
    served: TestClient, finetuned: Finetuned
) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)  # resized
    png = image_bytes(rgb, "PNG")
    r = served.post("/v1/embed/image", files=[("files", ("digit.png", png, "image/png"))])
    assert r.status_code == 200, r.text
    got_image = torch.tensor(r.json()["embeddings"])
    r = served.post("/v1/embed/text", json={"texts": CAPTIONS})
    assert r.status_code == 200, r.text
    got_texts = torch.tensor(r.json()["embeddings"])
    enc: Encoder = load_encoder(str(finetuned.export), device="cpu")
    pixels = enc.preprocess_image(Image.open(io.BytesIO(png)).convert("RGB"))[None]
    want_image, want_texts = _in_training(finetuned, pixels, CAPTIONS)
    torch.testing.assert_close(got_image, want_image, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_texts, want_texts, rtol=0, atol=1e-5)


# -- 5. resume, 7. gradient checkpointing ----------------------------------------------------


def test_a_crashed_finetuning_run_resumes_bit_for_bit(
    pretrained: Pretrained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """7 steps whole, against a run that crashes at step 5 (checkpoint at 3) and resumes
    from the checkpoint's recorded architecture: the same losses and weights."""
    assert_crash_and_resume_repeat_the_run(
        lambda out: ft_argv(out, pretrained.ref, "checkpoint_every_steps=3", steps=7),
        tmp_path,
        monkeypatch,
    )


def test_gradient_checkpointing_gives_the_same_losses(
    pretrained: Pretrained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = open_clip.transformer.checkpoint

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(open_clip.transformer, "checkpoint", counted)
    plain, checkpointed = tmp_path / "plain", tmp_path / "checkpointed"
    assert train_main(ft_argv(plain, pretrained.ref, steps=2)) == 0
    assert not calls
    assert train_main(ft_argv(checkpointed, pretrained.ref, "grad_checkpointing=true",
                              steps=2)) == 0  # fmt: skip
    assert calls  # both towers' blocks ran under torch.utils.checkpoint
    assert len(losses(plain)) == 2
    assert losses(checkpointed) == pytest.approx(losses(plain), rel=1e-6, abs=0)
