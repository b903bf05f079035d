"""An export directory's ONNX graphs run with onnxruntime on the CPU, behind the Encoder API.

`contrastkit.training.export.onnx.export_onnx` adds to an export directory:

    image.onnx   float32 pixel_values [N, 3, S, S] (normalised as `Preprocess` says)
                 -> float32 image_embeds [N, d], L2-normalised
    text.onnx    int64 input_ids [N, T] (+ attention_mask [N, T] for MiniLM)
                 -> float32 text_embeds [N, d], L2-normalised
    onnx.json    the manifest (`Manifest`): file names, their sha256, the tokenizer, the
                 torch encoder's EncoderInfo and the weights hash the graphs came from

Decoding, resizing, pixel normalisation and tokenising stay in Python, shared with the
torch encoders (one implementation, no second copy of mean/std to drift); the graphs
hold only the networks. A graph is hashed before onnxruntime parses it, from the very
bytes it then parses, so a changed file is refused, as `exported.format` does for weights.

onnxruntime is an optional dependency (`pip install 'contrastkit[onnx]'`): nothing here
imports it until a graph is opened.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contrastkit.training.encoders.base import (
    TEXT,
    Encoder,
    EncoderInfo,
    Preprocess,
    resolve_device,
)
from contrastkit.training.encoders.exported.format import ExportError, read_meta

MANIFEST_FILE = "onnx.json"
MANIFEST_VERSION = 1
RUNTIMES = ("torch", "onnx", "auto")
# `contrastive bench onnx` on a 2-core AMD EPYC (torch 2.14, onnxruntime 1.32), median of
# 15 interleaved calls, batch 1 and 32: with 1 thread onnxruntime took 1.2x (ResNet-18 at
# 32 px, batch 32) to 2.1x less time than torch, for ResNet-18/CIFAR, ViT-B-32 image and
# text, MiniLM; with 2 threads on the shared machine 1.8x to 80x (torch's OpenMP team
# stalls when another process holds a core; onnxruntime's caller thread keeps working).
# Faster in every case measured, so "auto" picks onnxruntime on the CPU.
ONNX_FASTER_ON_CPU = True

Tokenize = Callable[[list[str]], dict[str, np.ndarray]]
TensorFn = Callable[[dict[str, torch.Tensor]], torch.Tensor]


@dataclass
class TextSource:
    """A text tower split at the tokens: `forward(tokens)` = `_text_forward(texts)` when
    tokens = `tokenize(texts)` (as torch tensors)."""

    forward: TensorFn  # {input name: int64 [n, T]} -> float [n, d], not normalised
    spec: dict[str, Any]  # tokenizer record for onnx.json (see `make_tokenizer`)
    inputs: list[str]  # graph input names, in order
    modules: list[torch.nn.Module]  # where the parameters live

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        return make_tokenizer(self.spec)(texts)


@dataclass
class Graph:
    """One ONNX file: what goes in, what comes out, its hash, and its parity at export."""

    file: str
    sha256: str
    inputs: list[str]
    output: str
    max_abs_diff: float = 0.0  # ONNX vs torch on the parity inputs, unit embeddings
    tokenizer: dict[str, Any] | None = None  # text only: {"kind": "open_clip"|"minilm", ...}


@dataclass
class Manifest:
    """The contents of onnx.json."""

    model_id: str
    info: dict[str, Any]  # the torch encoder's EncoderInfo (see `info_to_dict`)
    graphs: dict[str, Graph]  # "image" and, when traced, "text"
    weights_sha256: str = ""  # encoder.json's weights hash: the graphs belong to those weights
    opset: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # modality -> why it has no graph
    versions: dict[str, str] = field(default_factory=dict)  # torch, onnx, onnxruntime
    format_version: int = MANIFEST_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, raw: Any) -> Manifest:
        if not isinstance(raw, dict) or raw.get("format_version") != MANIFEST_VERSION:
            raise ExportError(f"{MANIFEST_FILE} is not a version-{MANIFEST_VERSION} manifest")
        try:
            graphs = {k: Graph(**g) for k, g in raw["graphs"].items()}
            known = set(cls.__dataclass_fields__) - {"graphs"}
            return cls(graphs=graphs, **{k: v for k, v in raw.items() if k in known})
        except (KeyError, TypeError, AttributeError) as e:
            raise ExportError(f"{MANIFEST_FILE} is malformed: {e}") from e


def info_to_dict(info: EncoderInfo) -> dict[str, Any]:
    d = asdict(info)
    d["capabilities"] = sorted(info.capabilities)
    d["preprocess"] = info.preprocess.to_dict()
    d["default_templates"] = list(info.default_templates)
    return d


def info_from_dict(d: dict[str, Any]) -> EncoderInfo:
    return EncoderInfo(
        model_id=str(d["model_id"]),
        embed_dim=int(d["embed_dim"]),
        capabilities=frozenset(d["capabilities"]),
        logit_scale=float(d["logit_scale"]),
        preprocess=Preprocess.from_dict(d["preprocess"]),
        context_length=d.get("context_length"),
        default_templates=tuple(d.get("default_templates", ())),
    )


def read_manifest(folder: str | Path) -> Manifest:
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise ExportError(
            f"{folder} has no ONNX files ({MANIFEST_FILE} not found): add them with "
            f"`contrastive export ... --onnx` (contrastkit.training.export.onnx.export_onnx), "
            "or serve with runtime=torch"
        )
    try:
        return Manifest.from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{path} is not valid JSON: {e}") from e


def has_onnx(folder: str | Path) -> bool:
    return (Path(folder) / MANIFEST_FILE).is_file()


class OnnxEncoder(Encoder):
    """The Encoder API over onnxruntime sessions on the CPU; outputs match the torch encoder
    the graphs were exported from (within 1e-4, checked at export)."""

    runtime = "onnxruntime"

    def __init__(
        self, info: EncoderInfo, image: Any, text: Any = None, tokenize: Tokenize | None = None
    ) -> None:
        self.device = torch.device("cpu")
        self.info = info
        self.image_session, self.text_session, self.tokenize = image, text, tokenize
        self._image_in = image.get_inputs()[0].name

    def _image_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """float32 [n, 3, S, S] normalised -> [n, d] (already unit length)."""
        x = pixels.float().contiguous().numpy()
        return torch.from_numpy(self.image_session.run(None, {self._image_in: x})[0])

    def _text_forward(self, texts: list[str]) -> torch.Tensor:
        if self.text_session is None or self.tokenize is None:
            return super()._text_forward(texts)  # raises MissingCapabilityError
        return torch.from_numpy(self.text_session.run(None, self.tokenize(texts))[0])


def open_graphs(folder: str | Path, manifest: Manifest, threads: int | None = None) -> OnnxEncoder:
    """Manifest's graphs in `folder` -> OnnxEncoder; ExportError when a file is missing, changed,
    or a capability of the model has no graph."""
    info = info_from_dict({**manifest.info, "model_id": manifest.model_id})
    missing = [c for c in sorted(info.capabilities) if c not in manifest.graphs]
    if missing:
        why = "; ".join(f"{c}: {manifest.skipped.get(c, 'not exported')}" for c in missing)
        raise ExportError(
            f"{folder} has no ONNX graph for {missing} ({why}); serve it with runtime=torch"
        )
    sessions = {k: _session(Path(folder), g, threads) for k, g in manifest.graphs.items()}
    text = manifest.graphs.get(TEXT)
    tokenize = make_tokenizer(text.tokenizer or {}) if text is not None else None
    return OnnxEncoder(info, sessions["image"], sessions.get(TEXT), tokenize)


def load_onnx_encoder(path: str | Path, threads: int | None = None) -> OnnxEncoder:
    """Export directory with onnx.json -> OnnxEncoder. The graphs must have been made from the
    weights encoder.json names now (a re-export without --onnx would leave stale graphs)."""
    meta = read_meta(path)
    manifest = read_manifest(path)
    if manifest.weights_sha256 != meta.weights_sha256:
        raise ExportError(
            f"the ONNX files in {path} were made from other weights than encoder.json names "
            f"(sha256 {manifest.weights_sha256[:12] or 'none'}… vs "
            f"{meta.weights_sha256[:12]}…): export them again"
        )
    return open_graphs(path, manifest, threads)


def choose_runtime(ref: str, runtime: str, device: str | None) -> str:
    """ "torch" | "onnx" | "auto" -> "torch" or "onnx" for model reference `ref`.

    "onnx" needs an export directory with ONNX files and runs on the CPU; "auto" picks onnx
    only where it applies (CPU device, ONNX files present, onnxruntime installed) and
    `ONNX_FASTER_ON_CPU` says it is the faster one.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime == "torch":
        return "torch"
    is_dir = Path(ref).is_dir()
    if runtime == "auto":
        usable = is_dir and has_onnx(ref) and _ort_installed()
        cpu = resolve_device(device).type == "cpu"
        return "onnx" if usable and cpu and ONNX_FASTER_ON_CPU else "torch"
    if not is_dir:
        raise ValueError(f"runtime 'onnx' needs an export directory with ONNX files, not {ref!r}")
    if device not in (None, "", "auto", "cpu"):
        raise ValueError(f"runtime 'onnx' runs on the CPU; device {device!r} needs runtime=torch")
    read_manifest(ref)  # a clear error now when the files are not there
    return "onnx"


def make_tokenizer(spec: dict[str, Any]) -> Tokenize:
    """Tokenizer record from onnx.json -> texts -> int64 arrays named as the graph's inputs,
    exactly as the torch encoder tokenises (same class, same settings)."""
    kind = spec.get("kind")
    if kind == "open_clip":
        from open_clip import SimpleTokenizer

        simple = SimpleTokenizer(context_length=int(spec["context_length"]))
        return lambda texts: {"input_ids": simple(texts).numpy()}
    if kind == "minilm":
        from transformers import AutoTokenizer

        from contrastkit.training.encoders.nets.minilm import MAX_TOKENS, package_path

        hf = AutoTokenizer.from_pretrained(str(package_path()), local_files_only=True)
        limit = int(spec.get("max_length", MAX_TOKENS))

        def tokenize(texts: list[str]) -> dict[str, np.ndarray]:
            enc = hf(texts, padding=True, truncation=True, max_length=limit, return_tensors="np")
            return {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")}

        return tokenize
    raise ExportError(f"{MANIFEST_FILE} names an unknown tokenizer {spec!r}")


def _session(folder: Path, graph: Graph, threads: int | None) -> Any:
    ort = _import_ort()
    if Path(graph.file).name != graph.file:
        raise ExportError(f"{MANIFEST_FILE}: {graph.file!r} must be a plain file name")
    path = folder / graph.file
    if not path.is_file():
        raise ExportError(f"{path} not found ({MANIFEST_FILE} lists it)")
    data = path.read_bytes()  # hashed and parsed from one read: no swap in between
    actual = hashlib.sha256(data).hexdigest()
    if actual != graph.sha256:
        raise ExportError(
            f"{path} does not match {MANIFEST_FILE} (sha256 {actual[:12]}…, expected "
            f"{graph.sha256[:12]}…): the file was changed or replaced"
        )
    opts = ort.SessionOptions()
    # The service runs one model thread; give onnxruntime the cores torch would use.
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    # No busy-waiting between calls: the decode threads (and torch, in a benchmark) need
    # those cores; on the 2-core CPU it cost nothing measurable per call.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise RuntimeError(
            "the ONNX runtime needs onnxruntime: pip install 'contrastkit[onnx]'"
        ) from e
    return onnxruntime


def _ort_installed() -> bool:
    try:
        _import_ort()
    except RuntimeError:
        return False
    return True
