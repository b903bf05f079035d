"""What `contrastive index` subcommands say on stderr: progress, and how each one fails
(one line, and an exit status).

add, search and repair exit 1 on an error (repair also 2 while a server holds the folder,
said by repair itself); export and import exit 2 on a usage or data error, and every
subcommand 1 when the backend cannot be reached.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def run_reported(
    name: str, command: Callable[[argparse.Namespace], int], args: argparse.Namespace
) -> int:
    """command(args), or the exit status of its error after a message on stderr."""
    import httpx

    from contrastkit.service.client import ServiceError, ServiceUnreachableError
    from contrastkit.service.index.transfer import TransferError
    from contrastkit.service.index.types import CollectionError

    status = 2 if name in ("export", "import") else 1
    try:
        return command(args)
    except TransferError as e:  # import is all or nothing: it has stored nothing
        print(f"contrastive index {name}: {e}; nothing was imported", file=sys.stderr)
        cause = e.__cause__  # an upsert that failed part-way: the backend's error
        if isinstance(cause, CollectionError) and cause.code == "backend_unavailable":
            status = 1
    except (CollectionError, ServiceError) as e:
        print(f"contrastive index {name}: {e}", file=sys.stderr)
        if e.code == "backend_unavailable":
            status = 1
    except ServiceUnreachableError as e:  # the server --url names did not answer
        print(f"contrastive index {name}: {e}", file=sys.stderr)
        status = 1
    except (OSError, ValueError, httpx.HTTPError) as e:
        # ValueError covers bad JSON, an unknown model and a missing CUDA device
        print(f"contrastive index {name}: {e}", file=sys.stderr)
    except Exception as e:
        if not _is_missing_capability(e):
            raise
        print(f"contrastive index {name}: {e}", file=sys.stderr)
    return status


def _is_missing_capability(error: Exception) -> bool:
    """Whether `error` is the encoders' MissingCapabilityError (an image-only model asked
    for text, in this process). Over HTTP the encoders are never loaded, and importing
    them only to name their error would load torch: an error of a module this process
    never imported cannot have been raised."""
    base = sys.modules.get("contrastkit.training.encoders.base")
    return base is not None and isinstance(error, base.MissingCapabilityError)


def progress(verb: str) -> Callable[[int, int], None]:
    """A progress callback printing "contrastive index VERB: DONE/EXPECTED items"."""

    def say(done: int, expected: int) -> None:
        print(f"contrastive index {verb}: {done}/{expected} items", file=sys.stderr, flush=True)

    return say
