"""Shared test material: a tiny deterministic encoder, tiny exports, image bytes, random
unit vectors."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import open_clip
import timm
import torch
from fastapi.testclient import TestClient
from PIL import Image

from contrastkit.training.encoders.base import Encoder, EncoderInfo, Preprocess
from contrastkit.training.encoders.exported.format import ExportMeta, write_export

TINY_CLIP_CFG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


class FakeEncoder(Encoder):
    """8-d, deterministic: images by mean colour, texts by a hash of their content."""

    def __init__(
        self,
        capabilities: frozenset[str] = frozenset({"image", "text"}),
        default_templates: tuple[str, ...] = ("a photo of a {}.",),
    ) -> None:
        self.device = torch.device("cpu")
        self.calls: list[int] = []  # batch sizes seen, for batching tests
        self.info = EncoderInfo(
            model_id="fake:test",
            embed_dim=8,
            capabilities=capabilities,
            logit_scale=10.0,
            preprocess=Preprocess(size=16),
            context_length=32,
            default_templates=default_templates,
        )
        gen = torch.Generator().manual_seed(0)
        self.proj = torch.randn(3, 8, generator=gen)

    def _image_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        self.calls.append(len(pixels))
        return pixels.mean(dim=(2, 3)) @ self.proj + 1e-3

    def _text_forward(self, texts: list[str]) -> torch.Tensor:
        self.calls.append(len(texts))
        rows = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:4], "little")
            rows.append(torch.randn(8, generator=torch.Generator().manual_seed(seed)))
        return torch.stack(rows)


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """n random rows of unit L2 norm, float32 [n, dim]: the same rows for the same seed
    (normal draws of numpy's default generator, so every direction is equally likely)."""
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def fill_collections(client: TestClient, names: tuple[str, ...], rows: list[list[float]]) -> None:
    """Create each collection of `names` (8-d, FakeEncoder's) and add `rows` as NAME-i."""
    for name in names:
        assert client.post("/v1/collections", json={"name": name}).status_code == 201
        items = [{"id": f"{name}-{i}", "vector": v} for i, v in enumerate(rows)]
        r = client.post(f"/v1/collections/{name}/items", json={"items": items})
        assert r.status_code == 200, r.text


def image_bytes(image: Image.Image | np.ndarray, fmt: str = "PNG", **save: Any) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, fmt, **save)
    return buf.getvalue()


def wait_ready(client: TestClient, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"not ready: {client.get('/readyz').json()}")


def tiny_clip(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return open_clip.CLIP(**TINY_CLIP_CFG).eval()


def write_tiny_clip_export(out: Path, model: torch.nn.Module | None = None) -> Path:
    model = model or tiny_clip()
    meta = ExportMeta(
        family="open_clip",
        architecture={"name": "tiny-clip", "model_cfg": TINY_CLIP_CFG},
        preprocess=Preprocess(size=32).to_dict(),
        embed_dim=TINY_CLIP_CFG["embed_dim"],
        capabilities=["image", "text"],
        logit_scale=float(model.logit_scale.detach().exp()),
        tokenizer={"kind": "open_clip", "context_length": 16},
        method="clip",
    )
    return write_export(out, model.state_dict(), meta)


def old_and_new_exports(root: Path) -> tuple[Path, Path]:
    """Two tiny CLIP exports with different weights, in root/old and root/new: the old
    model of a collection and the new one it moves to (migrations)."""
    return (
        write_tiny_clip_export(root / "old", tiny_clip(0)),
        write_tiny_clip_export(root / "new", tiny_clip(1)),
    )


def write_tiny_timm_export(out: Path) -> Path:
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    dim = int(model.num_features)
    meta = ExportMeta(
        family="timm",
        architecture={"name": "test_resnet", "kwargs": {}},
        preprocess=Preprocess(size=32, mean=(0.5,) * 3, std=(0.5,) * 3).to_dict(),
        embed_dim=dim,
        capabilities=["image"],
        method="simclr",
    )
    return write_export(out, model.state_dict(), meta)


def free_port() -> int:
    """A TCP port that was free a moment ago (for servers and process groups in tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def serve_argv(port: int, collections: Path, *flags: str, model: str = "builtin") -> list[str]:
    """The command of a test's server: `contrastive serve` of `model` on the CPU at
    127.0.0.1:`port`, its collections in `collections`, then `flags`."""
    return [
        sys.executable,
        "-m",
        "contrastkit.service",
        "serve",
        f"--model={model}",
        "--device=cpu",
        f"--port={port}",
        f"--collections-dir={collections}",
        *flags,
    ]


def wait_server_ready(
    url: str, proc: subprocess.Popen, output: Callable[[], str], timeout: float = 300
) -> dict[str, Any]:
    """Poll a server process's /readyz until 200 -> its body; fails the test with the
    process's output when it exits or times out first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited {proc.returncode}:\n{output()}"
        try:
            r = httpx.get(f"{url}/readyz", timeout=5)
            if r.status_code == 200:
                body: dict[str, Any] = r.json()
                return body
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the server never became ready:\n{output()}")


def timing_scale() -> float:
    """The multiplier of every wall-clock bound a `timing` test asserts: 1 on a quiet
    machine, more on a busy one (.ci/run sets CONTRASTIVE_TIMING_SCALE=3)."""
    return float(os.environ.get("CONTRASTIVE_TIMING_SCALE", "1"))


def wait_until(done: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    """Poll `done` until true; fail the test after `timeout` s (a readiness wait, generous
    so that a busy machine only makes it slower, never red)."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"{what} never met in {timeout:g} s"
        time.sleep(0.01)


async def wait_until_async(
    done: Callable[[], bool], timeout: float = 60.0, what: str = "condition"
) -> None:
    """wait_until for a coroutine: polls `done` on the event loop, which runs meanwhile."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"{what} never met in {timeout:g} s"
        await asyncio.sleep(0.005)


def item_rows(items: list[int]) -> torch.Tensor:
    """n ints -> [n, 1]: each row says which item it came from (a Batcher's fn under test)."""
    return torch.tensor(items, dtype=torch.float32)[:, None]
