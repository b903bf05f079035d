"""ONNX graphs of an export directory's towers, checked against torch before they are kept.

    export_onnx(export_dir) -> [image.onnx, (text.onnx,) onnx.json]

The torch encoder (contrastkit.training.encoders.load_encoder) is traced with the torch.export-based
exporter, batch (and MiniLM's token) dimension dynamic. Each graph ends in the L2
normalisation, so its output is the embedding the service returns, usable as it is by
anyone who loads the file. Pixel normalisation and tokenising stay outside the graph:
they are shared Python code (contrastkit.training.encoders.preprocess, the tokenizers), so torch and
onnxruntime are fed identical inputs and one implementation serves both.

Parity: the graphs are opened with onnxruntime exactly as the service would open them,
and the embeddings of random and real inputs (two photos that ship with scikit-learn, or
two drawn pictures where it is not installed, as in a serving install; captions, an empty
and an over-long text) must equal the torch encoder's within 1e-4
(max abs difference, fp32); otherwise OnnxParityError and no file is kept. The files and
their sha256 go into onnx.json (encoders.exported.onnx_runtime.Manifest), beside encoder.json.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from contrastkit.training.encoders import IMAGE, TEXT, Encoder, load_encoder
from contrastkit.training.encoders.exported.format import read_meta, sha256_file
from contrastkit.training.encoders.exported.onnx_runtime import (
    MANIFEST_FILE,
    Graph,
    Manifest,
    info_to_dict,
    open_graphs,
)
from contrastkit.training.export.graphs import TextSource, image_module, text_module, text_source

if TYPE_CHECKING:
    from PIL import Image

PARITY_ATOL = 1e-4
CAPTIONS = [
    "a photo of a dog.",
    "a blurry photo of a red car on a street",
    "",
    "zqx vlorp 123 !!",
    "a very long caption that goes on " * 30,  # past every context length: truncation
]


class OnnxParityError(RuntimeError):
    """onnxruntime's embeddings differ from torch's by more than PARITY_ATOL."""


def export_onnx(export_dir: str | Path, opset: int | None = None) -> list[Path]:
    """Add image.onnx (+ text.onnx) and onnx.json to an export directory; -> written paths.

    Raises ExportError for a bad directory, OnnxParityError when a graph disagrees with torch
    (nothing is kept then). The text graph is skipped, with the reason in onnx.json, when the
    text tower cannot be traced; runtime=onnx then refuses the directory.
    """
    folder = Path(export_dir)
    meta = read_meta(folder)
    encoder = load_encoder(str(folder), device="cpu", runtime="torch")
    return export_graphs(encoder, folder, opset, weights_sha256=meta.weights_sha256)


def export_graphs(
    encoder: Encoder, folder: Path, opset: int | None = None, *, weights_sha256: str = ""
) -> list[Path]:
    """Trace `encoder` (on the CPU) into `folder`; parity-check; write the manifest last."""
    if encoder.device.type != "cpu":
        raise ValueError("export ONNX graphs from a CPU encoder (load_encoder(..., device='cpu'))")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST_FILE).unlink(missing_ok=True)  # no manifest names half-replaced files
    tmp: dict[str, Path] = {}
    try:
        manifest = _trace(encoder, folder, opset, tmp)
        manifest.weights_sha256 = weights_sha256
        check_parity(encoder, open_graphs(folder, manifest), manifest)
        written = []
        for kind, path in tmp.items():
            final = folder / f"{kind}.onnx"
            os.replace(path, final)
            manifest.graphs[kind].file = final.name
            written.append(final)
        for kind in {IMAGE, TEXT} - set(tmp):  # a graph an earlier export wrote, not this one
            (folder / f"{kind}.onnx").unlink(missing_ok=True)
        _write_text(folder / MANIFEST_FILE, manifest.to_json())
        return [*written, folder / MANIFEST_FILE]
    finally:
        for path in tmp.values():
            path.unlink(missing_ok=True)


def _trace(encoder: Encoder, folder: Path, opset: int | None, tmp: dict[str, Path]) -> Manifest:
    """Write the graphs under temporary names (recorded in `tmp`) -> manifest naming those."""
    graphs: dict[str, Graph] = {}
    skipped: dict[str, str] = {}
    size = encoder.info.preprocess.size
    tmp[IMAGE] = folder / ".image.onnx.tmp"
    example = (torch.randn(2, 3, size, size),)
    _to_onnx(image_module(encoder), example, tmp[IMAGE], ["pixel_values"], "image_embeds", opset)
    graphs[IMAGE] = Graph(
        tmp[IMAGE].name, sha256_file(tmp[IMAGE]), ["pixel_values"], "image_embeds"
    )
    if TEXT in encoder.capabilities:
        source, why = text_source(encoder)
        if source is None:
            skipped[TEXT] = why
        else:
            tmp[TEXT] = folder / ".text.onnx.tmp"
            try:
                graphs[TEXT] = _trace_text(source, tmp[TEXT], opset)
            except Exception as e:  # the exporter's errors have no common base class
                skipped[TEXT] = f"the text tower could not be traced: {type(e).__name__}"
                warnings.warn(f"no text.onnx: {e}", stacklevel=2)
                tmp.pop(TEXT).unlink(missing_ok=True)
    return Manifest(
        model_id=encoder.model_id,
        info=info_to_dict(encoder.info),
        graphs=graphs,
        opset=_opset(tmp[IMAGE]),
        skipped=skipped,
        versions=_versions(),
    )


def _trace_text(source: TextSource, path: Path, opset: int | None) -> Graph:
    # two captions of different lengths: batch 2 and, for MiniLM, padding in the example
    feeds = source.tokenize(["a photo of a cat", "two dogs playing in the snow, seen from above"])
    example = tuple(torch.from_numpy(feeds[name]) for name in source.inputs)
    _to_onnx(text_module(source), example, path, source.inputs, "text_embeds", opset)
    return Graph(path.name, sha256_file(path), source.inputs, "text_embeds", tokenizer=source.spec)


def _to_onnx(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    inputs: list[str],
    output: str,
    opset: int | None,
) -> None:
    """torch.export-based ONNX export; dim 0 (batch) of every input, and dim 1 of token
    inputs, dynamic. The example batch is 2: torch.export specialises sizes 0 and 1."""
    batch = torch.export.Dim("batch", min=1)
    tokens = torch.export.Dim("tokens", min=1)
    dynamic = tuple({0: batch, 1: tokens} if x.dim() == 2 else {0: batch} for x in example)
    # the exporter reports progress on stdout, its optimiser every step at INFO, and
    # notes about axis names as warnings: none of it is for the user of the export
    with _quiet("onnx_ir", "onnxscript", "torch.onnx"), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(
            module.eval(),
            example,
            str(path),
            input_names=inputs,
            output_names=[output],
            opset_version=opset,
            dynamic_shapes=dynamic,
            dynamo=True,
            external_data=False,  # one self-contained file per tower, one hash
            verbose=False,
        )


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """Loggers at WARNING and warnings filters restored afterwards."""
    saved = [(log, log.level) for log in map(logging.getLogger, loggers)]
    try:
        with warnings.catch_warnings():
            for log, _ in saved:
                log.setLevel(logging.WARNING)
            yield
    finally:
        for log, level in saved:
            log.setLevel(level)


def check_parity(
    torch_encoder: Encoder, onnx_encoder: Encoder, manifest: Manifest | None = None
) -> dict[str, float]:
    """Max abs difference of unit embeddings per modality over random and real inputs,
    each at batch 1 and as one batch; OnnxParityError past PARITY_ATOL. Recorded in
    `manifest` when given."""
    diffs = {IMAGE: _image_diff(torch_encoder, onnx_encoder)}
    if TEXT in onnx_encoder.capabilities:
        diffs[TEXT] = _text_diff(torch_encoder, onnx_encoder)
    bad = {k: v for k, v in diffs.items() if not v <= PARITY_ATOL}  # NaN is bad too
    if bad:
        raise OnnxParityError(
            f"onnxruntime and torch disagree: max abs difference {bad} > {PARITY_ATOL}"
        )
    if manifest is not None:
        for kind, diff in diffs.items():
            manifest.graphs[kind].max_abs_diff = diff
    return diffs


def parity_pixels(encoder: Encoder, n_random: int = 3) -> torch.Tensor:
    """uint8 [n_random + 3, 3, S, S]: seeded noise, two photos, a flat grey image."""
    from PIL import Image

    size = encoder.info.preprocess.size
    gen = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (n_random, 3, size, size), generator=gen, dtype=torch.uint8)
    photos = parity_photos(size)
    photos.append(Image.new("RGB", (size, size), (127, 127, 127)))
    real = torch.stack([encoder.preprocess_image(p) for p in photos])
    return torch.cat([noise, real])


def parity_photos(size: int) -> list[Image.Image]:
    """Two real photos, scikit-learn's china.jpg and flower.jpg (shipped offline), when it
    is installed (the `train` extra); else two drawn pictures of the same shape (landscape,
    larger than `size`) with what photos have and noise lacks: smooth shading, sharp edges,
    saturated colour and fine texture. The ONNX upgrade checks parity in the service too,
    whose install carries no scikit-learn."""
    import numpy as np
    from PIL import Image

    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        pass
    else:
        return [Image.fromarray(a) for a in load_sample_images().images]
    h, w = size + size // 2, 2 * size
    y, x = np.mgrid[0 : 1 : complex(0, h), 0 : 1 : complex(0, w)]
    # a sky over a striped field, with a sun
    scene = np.stack([0.3 + 0.6 * y, 0.5 + 0.4 * np.sin(6 * np.pi * x) * y, 0.9 - 0.7 * y], -1)
    scene[(x - 0.3) ** 2 + (y - 0.3) ** 2 < 0.02] = (0.95, 0.8, 0.2)
    # a colour wheel fading out, over a fine checkerboard
    angle = np.arctan2(y - 0.5, x - 0.5)
    fade = 1 - np.hypot(x - 0.5, y - 0.5)
    wheel = np.stack([0.5 + 0.5 * np.cos(angle + k * 2.094) for k in range(3)], -1)
    checker = ((x * 24).astype(int) + (y * 24).astype(int)) % 2
    pattern = 0.8 * wheel * fade[..., None] + 0.2 * checker[..., None]
    return [
        Image.fromarray((np.clip(p, 0, 1) * 255).round().astype(np.uint8)) for p in (scene, pattern)
    ]


def _image_diff(a: Encoder, b: Encoder) -> float:
    pixels = parity_pixels(a)
    diff = _max_diff(a.encode_image_tensors(pixels), b.encode_image_tensors(pixels))
    one = _max_diff(a.encode_image_tensors(pixels[-3:-2]), b.encode_image_tensors(pixels[-3:-2]))
    return max(diff, one)


def _text_diff(a: Encoder, b: Encoder) -> float:
    diff = _max_diff(a.encode_texts(CAPTIONS), b.encode_texts(CAPTIONS))
    return max(diff, _max_diff(a.encode_texts(CAPTIONS[:1]), b.encode_texts(CAPTIONS[:1])))


def _max_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    if x.shape != y.shape:
        raise OnnxParityError(f"onnxruntime gave shape {tuple(y.shape)}, torch {tuple(x.shape)}")
    return float((x.double() - y.double()).abs().max())


def _opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"torch": torch.__version__, "onnx": onnx.__version__, "ort": onnxruntime.__version__}


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
