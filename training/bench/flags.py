"""The flags of the training benchmarks (`contrastive bench train|onnx|quality|finetune`),
and the defaults their help texts name.

Kept apart from the benchmarks themselves, which import torch: `contrastive bench NAME
--help`, and a command line argparse refuses, build their parser from here alone (the
command table's `flags` column, contrastkit.training.cli.Command).
"""

from __future__ import annotations

import argparse

# bench train: the methods whose step is timed against SimCLR's
ALL_METHODS = ("moco", "byol", "swav", "clip")
# bench onnx: the models it builds by name (contrastkit.training.bench.onnx.preset)
PRESETS = ("resnet18-cifar", "vit-b-32", "minilm", "builtin")
# bench quality: the methods trained again with the old and the clipped LARS
DEFAULT_LARS_METHODS = "byol,simclr"
# bench quality --quick: lightly's interpreter, as scripts/peer-lightly-env.sh makes it
PEER_PYTHON = "/tmp/lightlyenv/bin/python"
# bench finetune: the tutorial's 32 px ViT (contrastkit.training.bench.finetune_setup)
TINY = "tiny"


# -- flags several benchmarks share -------------------------------------------------------
def _device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N [auto]")
    p.add_argument(
        "--precision", default="auto", help="auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32"
    )


def _threads(
    p: argparse.ArgumentParser,
    help: str = "torch intra-op CPU threads [torch's default]; 1 avoids the stalls of "
    "OpenMP teams on a CPU shared with other processes",
) -> None:
    p.add_argument("--threads", type=int, default=None, help=help)


def _clip_text_tower(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--clip-text-tower",
        default="transformer",
        choices=["transformer", "minilm"],
        help="CLIP's text tower [transformer: from scratch, needs no weights]",
    )


def _results(p: argparse.ArgumentParser, stem: str) -> None:
    p.add_argument("--out", default="bench-results", help="folder for the JSON [bench-results]")
    p.add_argument(
        "--json", default=None, help=f"write the JSON here instead of OUT/{stem}-<timestamp>.json"
    )


# -- the benchmarks ------------------------------------------------------------------------
def train(p: argparse.ArgumentParser) -> None:
    """`contrastive bench train`'s flags."""
    p.add_argument(
        "--data", default=None, help="data spec [fashion-mnist when installed, else digits]"
    )
    p.add_argument("--backbone", default=None, help="[resnet18; tiny with --quick]")
    p.add_argument("--batch-size", type=int, default=None, help="[512 on CUDA, 32 on CPU]")
    p.add_argument("--image-size", type=int, default=32, help="view side [32]")
    _device(p)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    _threads(p)
    p.add_argument(
        "--methods",
        default=",".join(ALL_METHODS),
        help="methods timed against SimCLR's step [moco,byol,swav,clip]",
    )
    _clip_text_tower(p)
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="the peer DataLoader's workers [usable cores - 1, at most 15]",
    )
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds [3 CUDA, 4 CPU]")
    p.add_argument("--warmup", type=int, default=None, help="untimed first steps [10 CUDA, 1 CPU]")
    p.add_argument(
        "--iters", type=int, default=None, help="timed step-only steps per round [20 CUDA, 4 CPU]"
    )
    p.add_argument(
        "--e2e-iters",
        type=int,
        default=None,
        help="timed end-to-end steps per round [60 CUDA, 6 CPU]",
    )
    p.add_argument(
        "--knn-epochs",
        type=int,
        default=None,
        help="SimCLR epochs with kNN after each; 0 skips [20 CUDA, 0 CPU]",
    )
    p.add_argument("--knn-target", type=float, default=0.847, help="kNN top-1 to reach [0.847]")
    p.add_argument(
        "--knn-time-limit",
        type=float,
        default=None,
        help="stop the kNN run at the first epoch end past this many s [none]",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: tiny backbone, digits, batch 16, a few steps (seconds)",
    )
    _results(p, "train")


def onnx(p: argparse.ArgumentParser) -> None:
    """`contrastive bench onnx`'s flags."""
    models = " | ".join(PRESETS)
    p.add_argument("--model", action="append", default=None,
                   help=f"{models} | an export dir (repeatable) [the first three]")  # fmt: skip
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32], help="[1 32]")
    p.add_argument("--rounds", type=int, default=15, help="interleaved timed rounds [15]")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per runtime [2]")
    p.add_argument("--budget", type=float, default=30.0,
                   help="seconds per (model, input, batch) before timing stops [30]")  # fmt: skip
    _threads(p, "CPU threads, torch's and onnxruntime's [torch's default]")
    _results(p, "onnx")


def quality(p: argparse.ArgumentParser) -> None:
    """`contrastive bench quality`'s flags."""
    p.add_argument("--methods", default=None, help="comma list [every registered method]")
    p.add_argument(
        "--data",
        default=None,
        help="a labelled data spec [fashion-mnist on CUDA when installed, else digits]",
    )
    p.add_argument("--backbone", default=None, help="[resnet18 on CUDA, tiny on the CPU]")
    p.add_argument("--epochs", type=int, default=None, help="[20 on CUDA, 3 on the CPU]")
    p.add_argument("--batch-size", type=int, default=None, help="[256 on CUDA, 64 on the CPU]")
    p.add_argument("--image-size", type=int, default=None, help="view side [32; 16 with --quick]")
    _device(p)
    _threads(p)
    p.add_argument(
        "--lars-methods",
        default=None,
        help="methods trained again with the old and the clipped LARS; '' skips "
        f"[{DEFAULT_LARS_METHODS}; none with --quick]",
    )
    p.add_argument(
        "--lars-batch",
        type=int,
        default=None,
        help="batch of the LARS comparison [1024 on CUDA, 256 on the CPU]",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="per run: stop at the first epoch end past this many wall seconds; 0: no limit [none]",
    )
    _clip_text_tower(p)
    p.add_argument(
        "--quick",
        action="store_true",
        help="the CPU benchmark with pass criteria: default recipes, fashion-mnist, tiny at "
        "16 px, batch 256, --epochs [3], against raw pixels, the untrained encoder (seeds "
        "0-2) and lightly; exits 1 when a method fails (training/bench/quality_quick.py)",
    )
    p.add_argument(
        "--peer-python",
        default=PEER_PYTHON,
        help=f"--quick: the python of lightly's environment [{PEER_PYTHON}, made by "
        "scripts/peer-lightly-env.sh]",
    )
    p.add_argument("--no-peer", action="store_true", help="--quick: no lightly runs")
    _results(p, "quality")


def finetune(p: argparse.ArgumentParser) -> None:
    """`contrastive bench finetune`'s flags."""
    p.add_argument(
        "--arch",
        default=None,
        help=f"open_clip architecture, random weights [ViT-B-32 on CUDA; {TINY} (the "
        "tutorial's 32 px ViT) on the CPU or with --quick]",
    )
    p.add_argument(
        "--pairs",
        default=None,
        help="a pairs CSV/JSONL (path,caption) [Fashion-MNIST PNGs written to a temp folder]",
    )
    p.add_argument(
        "--fashion-mnist",
        default=None,
        help="idx folder the PNGs come from [where the Debian package dataset-fashion-mnist "
        "puts them]",
    )
    p.add_argument("--batch-size", type=int, default=None, help="[256 CUDA, 32 CPU, 8 --quick]")
    p.add_argument(
        "--steps", type=int, default=None, help="timed steps, each side [400 CUDA, 20 CPU, 2 quick]"
    )
    p.add_argument(
        "--warmup", type=int, default=None, help="untimed steps first [20 CUDA, 3 CPU, 1 quick]"
    )
    _device(p)
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="data-loading workers, each side [usable cores - 1, at most 15; 1 --quick]",
    )
    p.add_argument("--lr", type=float, default=5e-4, help="lr per 256 images, both [5e-4]")
    p.add_argument("--weight-decay", type=float, default=0.1, help="both sides [0.1]")
    p.add_argument("--seed", type=int, default=0, help="model weights and data order [0]")
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="runs of each side, ABBA order, figures pooled [1 CUDA, 2 CPU, 1 quick]",
    )
    _threads(p, "torch intra-op CPU threads [torch's default]")
    p.add_argument(
        "--quick", action="store_true", help="a smoke run: tiny model, batch 8, 1+2 steps"
    )
    _results(p, "finetune")
