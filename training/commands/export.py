"""`contrastive export CHECKPOINT OUT_DIR [--projector] [--onnx] [--force]`.

Writes the export directory the service loads (`contrastive serve --model OUT_DIR`).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

ONNX_MODULE = "contrastkit.training.export.onnx"
ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")  # the `onnx` extra: trace, then check


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, help="a run folder (uses its last.pt) or a .pt file")
    p.add_argument("out_dir", type=Path, help="the export directory to write")
    p.add_argument("--projector", action="store_true",
                   help="image-only methods: export backbone + projector (default: backbone, "
                        "the features kNN and linear probes use)")  # fmt: skip
    p.add_argument("--onnx", action="store_true",
                   help="also write ONNX files of each tower (checked against torch)")  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace an existing export in OUT_DIR")


def run(args: argparse.Namespace) -> int:
    """-> 0 on success, 2 for a bad checkpoint / OUT_DIR / option, 1 if ONNX export fails."""
    problem = check_command_line(args)
    if problem:
        return _fail(problem)
    from contrastkit.training.encoders.exported.format import ExportError, read_meta
    from contrastkit.training.engine.checkpoint import CheckpointError
    from contrastkit.training.export.build import export_checkpoint

    try:
        out = export_checkpoint(
            args.checkpoint, args.out_dir, projector=args.projector, overwrite=args.force
        )
    except (CheckpointError, ExportError, OSError) as e:
        return _fail(str(e))
    meta = read_meta(out)
    print(
        f"exported {meta.method} ({meta.architecture['name']}, {meta.embed_dim}-d, "
        f"{' + '.join(meta.capabilities)}) to {out}; serve it with: "
        f"contrastive serve --model {out}"
    )
    if args.onnx:
        return _onnx(out)
    return 0


def check_command_line(args: argparse.Namespace) -> str | None:
    """What is wrong before torch loads (a missing checkpoint, --onnx without the `onnx`
    extra), or None; the export itself checks the rest."""
    if not args.checkpoint.exists():
        return f"no checkpoint at {args.checkpoint}: pass a run folder or its last.pt"
    if args.onnx:
        if importlib.util.find_spec(ONNX_MODULE) is None:
            return "--onnx needs training/export/onnx.py, which this installation lacks"
        missing = [m for m in ONNX_PACKAGES if importlib.util.find_spec(m) is None]
        if missing:
            return f"--onnx needs {', '.join(missing)}: pip install 'contrastkit[onnx]'"
    return None


def _onnx(out: Path) -> int:
    from contrastkit.training.export.onnx import export_onnx  # type: ignore[import-not-found,unused-ignore]

    try:
        result = export_onnx(out)
    except Exception as e:  # its parity check or the exporter itself: report, keep the export
        print(f"contrastive export: ONNX export failed ({e}); {out} is complete without it",
              file=sys.stderr)  # fmt: skip
        return 1
    files = result if isinstance(result, list | tuple) else [result] if result else []
    print(f"ONNX: wrote {', '.join(Path(f).name for f in files) or 'nothing'} in {out}")
    return 0


def _fail(message: str) -> int:
    print(f"contrastive export: {message}", file=sys.stderr)
    return 2
