"""`contrastive serve`: one flag per Settings field, then the service under uvicorn."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from contrastkit.service.settings import Settings


def add_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per Settings field; unset flags leave the env/default value alone."""
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_ = field.description or ""
        if name in ("api_keys", "admin_keys"):  # --api-key, --admin-key: repeatable
            p.add_argument(flag[:-1], dest=name, action="append", help="repeatable; " + help_)
            continue
        if name == "model":  # repeatable: the first is the default, the others `models`
            p.add_argument(flag, dest=name, action="append", help=f"repeatable; {help_}")
            continue
        ann = field.annotation
        typ: Any = int if ann is int else float if ann is float else str
        p.add_argument(flag, dest=name, type=typ, default=None, help=f"{help_} [{field.default}]")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The flags given on the command line over the environment and the defaults."""
    overrides = {
        k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None
    }
    refs = overrides.pop("model", None)
    if isinstance(refs, list) and refs:  # --model A --model B: A is the default
        overrides["model"] = refs[0]
        if len(refs) > 1:
            extra = overrides.get("models") or ""
            given = [m.strip() for m in extra.split(",") if m.strip()]
            overrides["models"] = [*refs[1:], *given]
    elif refs is not None:
        overrides["model"] = refs
    return Settings(**overrides)


def run(args: argparse.Namespace) -> int:
    """Check the model reference, then serve until a signal: 0, or 2 for a bad reference."""
    # Before torch loads OpenMP (it reads this once): idle OpenMP threads sleep instead of
    # spinning. A server's model thread works in bursts beside the event loop and decode
    # threads; spinning workers took their cores (bench serve --peer: 0.04-0.32 of
    # infinity-emb's req/s on a loaded 2-core VM spinning, 0.57-0.89 passive).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    settings = settings_from_args(args)
    from contrastkit.service import shutdown
    from contrastkit.service.app import create_app
    from contrastkit.service.observability import logs, tracing
    from contrastkit.training.encoders import UnknownModelError, check_reference
    from contrastkit.training.encoders.exported.onnx_runtime import choose_runtime

    try:  # before anything is loaded: one line that says what to install
        if settings.tracing:
            tracing.require()
    except tracing.TracingError as e:
        print(f"contrastive serve: {e}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format, tracing=settings.tracing)
    # Fail fast on a reference that names nothing; the load itself runs after start-up,
    # with /readyz answering 503 until the model is warm.
    try:
        for ref in settings.model_refs:
            check_reference(ref, settings.device)
            choose_runtime(ref, settings.runtime, settings.device)
    except (UnknownModelError, ValueError) as e:
        print(f"contrastive serve: {e}", file=sys.stderr)
        return 2
    busy = collections_in_use(settings)
    if busy is not None:
        print(f"contrastive serve: {busy}", file=sys.stderr)
        return 2
    try:
        app = create_app(settings)
    except tracing.TracingError as e:  # an exporter that OTEL_TRACES_EXPORTER names wrong
        print(f"contrastive serve: {e}", file=sys.stderr)
        return 2
    # A start-up that failed (the port taken, say) has been logged by uvicorn: not 0.
    return 0 if shutdown.run(app, settings) else 1


def collections_in_use(settings: Settings) -> str | None:
    """What to do when another process holds the embedded store's folder lock, else None.

    The store takes the lock in the app's lifespan, where a refusal would surface as a
    traceback under uvicorn's start-up; probing it here first turns the usual case (a
    second server started in the same folder) into one line that names the way out."""
    from contrastkit.service.index.factory import folder_in_use

    root = Path(settings.collections_dir)
    if not settings.collections or not folder_in_use(settings.collections_backend, root):
        return None
    return (
        f"another server already uses the collections folder {root.resolve()}: stop it, "
        "or pass --collections-dir OTHER_DIR, or serve without collections "
        "(--collections false, or CONTRASTIVE_COLLECTIONS=false)"
    )
