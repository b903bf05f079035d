"""The flags of the service's benchmarks (`contrastive bench serve|overload|search`).

Kept apart from the benchmarks themselves, which import torch and FAISS: `contrastive bench
NAME --help`, and a command line argparse refuses, build their parser from here alone
(the command table's `flags` column, contrastkit.training.cli.Command).
"""

from __future__ import annotations

import argparse


def serve(p: argparse.ArgumentParser) -> None:
    """`contrastive bench serve`'s flags."""
    p.add_argument("--model", default="builtin", help="model reference [builtin]")
    p.add_argument("--pretrained", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated [1,8,32]")
    p.add_argument("--seconds", type=float, default=5.0, help="load time per level [5]")
    p.add_argument("--batch", type=int, default=64, help="batch size, in-process and server [64]")
    p.add_argument("--modalities", default="image,text", help="[image,text]")
    p.add_argument("--out", default="bench-results", help="folder for the JSON result")
    p.add_argument(
        "--peer",
        default=None,
        metavar="URL",
        help="compare /v1/embeddings with this server instead (its API base, "
        "URL + '/embeddings', e.g. http://127.0.0.1:7997)",
    )
    p.add_argument(
        "--peer-image-model",
        default=None,
        help="with --peer: the peer's image model name (image workloads run only with it)",
    )
    p.add_argument(
        "--ours",
        default=None,
        metavar="URL",
        help="with --peer: our server already running at this API base (e.g. "
        "http://127.0.0.1:8000/v1), sent --model as the model name [start one]",
    )
    p.add_argument(
        "--ours-image-model",
        default=None,
        help="with --ours: the model name our server is sent for images [--model]",
    )
    p.add_argument(
        "--warmup", type=float, default=1.0, help="with --peer: seconds of load dropped first [1]"
    )
    p.add_argument("--rounds", type=int, default=3, help="with --peer: rounds per cell [3]")
    p.add_argument("--items", default="1,32", help="with --peer: items a request [1,32]")
    p.add_argument(
        "--device-decode",
        default=None,
        choices=["auto", "on", "off"],
        help="the server's JPEG decoding: auto (on the GPU when the model is), on, off [auto]",
    )
    p.add_argument(
        "--peer-model", default=None, help="model name to send the peer [its GET /models first]"
    )


def overload(p: argparse.ArgumentParser) -> None:
    """`contrastive bench overload`'s flags."""
    p.add_argument("--model", default="builtin", help="model reference [builtin]")
    p.add_argument("--pretrained", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=64, help="the server's max batch size [64]")
    p.add_argument(
        "--max-queue-wait-ms",
        type=float,
        default=3000.0,
        help="the server's limit (with --port: the running server's, for the goal) [3000]",
    )
    p.add_argument("--modalities", default="image,text", help="[image,text]")
    p.add_argument("--factor", type=float, default=4.0, help="offered load / capacity [4]")
    p.add_argument(
        "--rate", type=float, default=None, help="offer this many requests/s instead of a factor"
    )
    p.add_argument("--seconds", type=float, default=10.0, help="open-loop time per modality [10]")
    p.add_argument(
        "--capacity-seconds", type=float, default=5.0, help="closed-loop time per modality [5]"
    )
    p.add_argument("--concurrency", type=int, default=32, help="closed-loop clients [32]")
    p.add_argument("--seed", type=int, default=0, help="of the arrival times [0]")
    p.add_argument(
        "--quick", action="store_true", help="3 s of overload, 2 s of capacity: a smoke run"
    )
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help="measure the server already listening on this loopback port [start one]",
    )
    p.add_argument("--out", default="bench-results", help="folder for the JSON result")


def search(p: argparse.ArgumentParser) -> None:
    """`contrastive bench search`'s flags."""
    p.add_argument("--n", type=int, default=None, help="vectors [200000 on CPU, 1000000 on GPU]")
    p.add_argument("--dim", type=int, default=None, help="dimension [384 on CPU, 512 on GPU]")
    p.add_argument("--k", type=int, default=10, help="hits per query [10]")
    p.add_argument("--queries", type=int, default=1000, help="query vectors (held out) [1000]")
    p.add_argument("--data", choices=["clustered", "random"], default="clustered")
    p.add_argument("--seconds", type=float, default=5.0, help="time per measurement [5]")
    p.add_argument("--add-n", type=int, default=100_000, help="vectors for the add test [100000]")
    p.add_argument("--model", default="builtin", help="the server's model [builtin]")
    p.add_argument("--device", default="auto", help="the collections' device [auto]")
    p.add_argument("--no-http", action="store_true", help="skip the server")
    p.add_argument("--no-reopen", action="store_true", help="skip IVF after a reopen")
    p.add_argument("--no-scale", action="store_true", help="skip restart/upsert/filter rows")
    p.add_argument("--backend-n", type=int, default=20_000,
                   help="vectors for Qdrant against FAISS [20000]; 0 skips it")  # fmt: skip
    p.add_argument("--qdrant-url", default=None, help="a Qdrant server [local mode]")
    p.add_argument("--quick", action="store_true", help="a smoke run: n=20000, 1 s each")
    p.add_argument("--out", default="bench-results", help="folder for the JSON result")
