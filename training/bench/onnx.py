"""`contrastive bench onnx`: the same encoder with torch and with onnxruntime, on the CPU.

For each model, both runtimes go through the Encoder API the service calls
(`encode_image_tensors` on uint8 pixels, `encode_texts` on captions), so pixel
normalisation, tokenising and the final L2 normalisation are in both figures. Batch
sizes are timed in interleaved rounds (torch, onnx, then onnx, torch, ...) so that
drift of a shared machine hits both alike; the figure is the median call. Models:

    resnet18-cifar   ResNet-18 with the CIFAR stem at 32 px (what SimCLR trains here)
    vit-b-32         open_clip ViT-B-32 (random weights; speed does not depend on them),
                     224 px images and 77-token texts
    minilm           the packaged MiniLM as a CLIP text tower (texts only)
    builtin          the built-in model (EfficientNet-Lite0 + MiniLM), as `serve` loads it
    PATH             an export directory (its onnx files when it has them, else
                     graphs exported to a scratch folder: the directory is not changed)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contrastkit.training.bench import flags
from contrastkit.training.bench.flags import PRESETS
from contrastkit.training.encoders import (
    IMAGE,
    TEXT,
    Encoder,
    EncoderInfo,
    Preprocess,
    load_encoder,
)
from contrastkit.training.encoders.environment import (
    environment,
    markdown_table,
    timestamp,
    write_json,
)
from contrastkit.training.encoders.exported.onnx_runtime import (
    has_onnx,
    load_onnx_encoder,
    open_graphs,
    read_manifest,
)
from contrastkit.training.export.onnx import export_graphs

NOUNS = ["dog", "cat", "red car", "bowl of soup", "mountain lake at dawn", "tabby kitten"]

# its flags live in contrastkit.training.bench.flags, which `--help` imports without torch
add_arguments = flags.onnx


class TowersEncoder(Encoder):
    """An image module (+ a training text tower) as an Encoder, as a trained export serves it."""

    def __init__(self, image: nn.Module, size: int, text: nn.Module | None, dim: int) -> None:
        self.device = torch.device("cpu")
        self.image, self.text = image.eval(), text.eval() if text is not None else None
        self.info = EncoderInfo(
            model_id="bench:towers",
            embed_dim=dim,
            capabilities=frozenset({IMAGE} | ({TEXT} if text is not None else set())),
            logit_scale=100.0,
            preprocess=Preprocess(size=size),
        )

    def _image_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image(pixels)  # type: ignore[no-any-return]

    def _text_forward(self, texts: list[str]) -> torch.Tensor:
        assert self.text is not None
        return self.text(self.text.prepare(texts, self.device))  # type: ignore[no-any-return,operator]


def preset(name: str) -> tuple[Encoder, tuple[str, ...]]:
    """Preset name -> (torch encoder on the CPU, modalities to time)."""
    from contrastkit.training.encoders.nets.backbones import BackboneSpec, build_backbone

    torch.manual_seed(0)
    if name == "resnet18-cifar":
        net, dim = build_backbone(BackboneSpec("resnet18", cifar_stem=True))
        return TowersEncoder(net, 32, None, dim), (IMAGE,)
    if name == "vit-b-32":
        from contrastkit.training.encoders.openclip import from_name

        return from_name("ViT-B-32", None, torch.device("cpu")), (IMAGE, TEXT)
    if name == "minilm":
        from contrastkit.training.encoders.nets.text_towers import MiniLMTower

        net, _ = build_backbone(BackboneSpec("tiny"))
        # unlocked: no caption cache, so torch runs MiniLM on every call, as onnx does
        return TowersEncoder(net, 32, MiniLMTower(384, lock=False), 384), (TEXT,)
    if name == "builtin":
        return load_encoder("builtin", device="cpu", runtime="torch"), (IMAGE, TEXT)
    raise ValueError(f"unknown model {name!r}: use one of {PRESETS} or an export directory")


def _pair(model: str, scratch: Path) -> tuple[Encoder, Encoder, tuple[str, ...]]:
    """-> (torch encoder, onnxruntime encoder, modalities)."""
    if Path(model).is_dir():
        enc = load_encoder(model, device="cpu", runtime="torch")
        modalities = tuple(m for m in (IMAGE, TEXT) if m in enc.capabilities)
        if has_onnx(model):
            return enc, load_onnx_encoder(model), modalities
    else:
        enc, modalities = preset(model)
    folder = scratch / model.replace("/", "_")
    export_graphs(enc, folder)
    return enc, open_graphs(folder, read_manifest(folder)), modalities


def _inputs(enc: Encoder, modality: str, batch: int) -> Any:
    if modality == IMAGE:
        size = enc.info.preprocess.size
        gen = torch.Generator().manual_seed(batch)
        return torch.randint(0, 256, (batch, 3, size, size), generator=gen, dtype=torch.uint8)
    return [f"a photo of a {NOUNS[i % len(NOUNS)]}, number {i}." for i in range(batch)]


def _calls(
    encoders: dict[str, Encoder], modality: str, batch: int
) -> dict[str, Callable[[], torch.Tensor]]:
    """One argument-free call per runtime, on the same inputs."""
    x = _inputs(next(iter(encoders.values())), modality, batch)

    def call(enc: Encoder) -> Callable[[], torch.Tensor]:
        if modality == IMAGE:
            return lambda: enc.encode_image_tensors(x)
        return lambda: enc.encode_texts(x)

    return {name: call(enc) for name, enc in encoders.items()}


def time_cell(
    fns: dict[str, Callable[[], torch.Tensor]], rounds: int, warmup: int, budget_s: float
) -> dict[str, list[float]]:
    """Interleaved timing: each round calls every fn once, the order reversed every other
    round; stops after `rounds`, or after 3 rounds once `budget_s` is spent."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    for r in range(rounds):
        for name in list(fns) if r % 2 == 0 else list(fns)[::-1]:
            t = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t)
        if r >= 2 and time.perf_counter() - start > budget_s:
            break
    return times


def bench_onnx(
    models: list[str],
    batch_sizes: tuple[int, ...] = (1, 32),
    rounds: int = 15,
    warmup: int = 2,
    budget_s: float = 30.0,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """-> {"environment", "rows": one per (model, modality, batch), "onnx_faster": bool}.

    Each row: median seconds per call and items/s for both runtimes, speedup
    (torch median / onnx median; > 1: onnxruntime is faster) and the max abs difference
    of the two runtimes' embeddings on the timed inputs.
    """
    import onnxruntime

    rows = []
    load_before = os.getloadavg()[0]  # a busy machine slows torch's OpenMP threads most
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as scratch:
        for model in models:
            say(f"{model}: exporting")
            torch_enc, onnx_enc, modalities = _pair(model, Path(scratch))
            for modality in modalities:
                for batch in batch_sizes:
                    fns = _calls({"torch": torch_enc, "onnx": onnx_enc}, modality, batch)
                    diff = float((fns["torch"]() - fns["onnx"]()).abs().max())
                    t = time_cell(fns, rounds, warmup, budget_s)
                    rows.append(_row(model, modality, batch, t, diff))
                    say(_describe(rows[-1]))
    env = environment("cpu")
    env.update(onnxruntime=onnxruntime.__version__, threads=torch.get_num_threads())
    env["load_avg_1min"] = {"before": load_before, "after": os.getloadavg()[0]}
    return {"environment": env, "rows": rows, "onnx_faster": all(r["speedup"] > 1 for r in rows)}


def _row(model: str, modality: str, batch: int, t: dict[str, list[float]], diff: float) -> dict:  # type: ignore[type-arg]
    med = {k: statistics.median(v) for k, v in t.items()}
    return {
        "model": model,
        "input": modality,
        "batch": batch,
        "torch_ms": 1000 * med["torch"],
        "onnx_ms": 1000 * med["onnx"],
        "torch_per_s": batch / med["torch"],
        "onnx_per_s": batch / med["onnx"],
        "speedup": med["torch"] / med["onnx"],
        # the fastest call: what each runtime does when the machine leaves it alone
        "torch_min_ms": 1000 * min(t["torch"]),
        "onnx_min_ms": 1000 * min(t["onnx"]),
        "rounds": len(t["torch"]),
        "max_abs_diff": diff,
    }


def _describe(r: dict[str, Any]) -> str:
    return (
        f"{r['model']} {r['input']} b{r['batch']}: torch {r['torch_ms']:.2f} ms, "
        f"onnx {r['onnx_ms']:.2f} ms, x{r['speedup']:.2f}"
    )


def table(result: dict[str, Any]) -> str:
    cols = ["model", "input", "batch", "torch ms", "onnx ms", "torch /s", "onnx /s", "speed-up"]
    rows = [
        [r["model"], r["input"], r["batch"], f"{r['torch_ms']:.2f}", f"{r['onnx_ms']:.2f}",
         f"{r['torch_per_s']:.0f}", f"{r['onnx_per_s']:.0f}", f"{r['speedup']:.2f}x"]
        for r in result["rows"]
    ]  # fmt: skip
    return markdown_table(cols, rows)


def run(args: argparse.Namespace) -> int:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("bench onnx: needs onnxruntime: pip install 'contrastkit[onnx]'", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    say = lambda m: print(f"bench onnx: {m}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        result = bench_onnx(
            args.model or list(PRESETS[:3]), tuple(args.batch_sizes), args.rounds, args.warmup,
            args.budget, say,
        )  # fmt: skip
    except (ValueError, OSError) as e:
        print(f"bench onnx: {e}", file=sys.stderr)
        return 2
    path = args.json or Path(args.out) / f"onnx-{timestamp(result['environment'])}.json"
    write_json(path, result)
    print(table(result))
    print(f"\nonnxruntime faster everywhere: {result['onnx_faster']}; written to {path}")
    return 0
