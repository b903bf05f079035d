"""`contrastive embed INPUT --out DIR`: embed a whole data set of images, on one machine
or (--ray) on a Ray cluster.

Imports nothing heavy: `contrastive embed --help` builds its parser from here; the work is
in contrastkit.service.commands.embed.command.
"""

from __future__ import annotations

import argparse

CPU_ACTORS = 2  # --actors on a Ray cluster without GPUs

HELP = """\
Embed every image of INPUT into numbered parquet files in DIR (and/or a collection).

    contrastive embed photos/ --out vectors/                    # a folder, recursively
    contrastive embed shards/ --out vectors/                    # tar shards: KEY.jpg [KEY.txt]
    contrastive embed list.csv --out vectors/ --path-column file   # CSV, JSONL or parquet
    contrastive embed photos/ --out vectors/ --collection photos   # also into a collection
    contrastive embed shards/ --out vectors/ --ray                 # on the Ray cluster

INPUT is a folder of images (walked as `index add` walks it; ids are paths relative to
it), webdataset-style tar shards (a .tar, a glob, or a folder of .tar files; ids are
SHARD/KEY, captions from KEY.txt), or a list file with a path column (relative paths are
read against the list's folder; ids from an `id` column, else the path as written;
captions from a `caption` or `text` column).

Each part file (part-00000.parquet, ...) holds --part-rows rows of: id (string), vector
(list<float32>, L2-normalised, as /v1/embed/image returns it), source (the path, or
SHARD:KEY) and metadata (a JSON object: width, height, bytes, caption when given).

Resumable: a part counts once its file is renamed into place and listed in
DIR/manifest.jsonl; run the same command again after a stop or a kill and it skips what
is done. Images that cannot be read are skipped and counted, one line per reason with an
example, also in DIR/embed-summary.json. Needs pyarrow: install contrastkit[embed].

Many machines (--ray; install contrastkit[ray]): the same job on Ray Data. This process
lists INPUT and writes DIR as above; a pool of --actors actors (one GPU each when the
cluster has GPUs) decodes and embeds, one model per actor. Every worker reads the input
files at the paths this process lists, so INPUT must be on a filesystem that every node
mounts at the same path (NFS, a shared volume, an object-store mount). The output is the
same (resume included) but for the order of the rows across parts. Write --ray after
INPUT (or --ray=ADDRESS): its ADDRESS is optional.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = HELP
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("input", metavar="INPUT", help="a folder, tar shards or a list file")
    p.add_argument("--out", required=True, metavar="DIR", help="the output folder")
    p.add_argument("--kind", choices=["auto", "folder", "shards", "list"], default="auto",
                   help="what INPUT is [auto: by its name and contents]")  # fmt: skip
    p.add_argument("--model", default="builtin", help="model reference [builtin]")
    p.add_argument("--pretrained", default=None, help="open_clip pretrained tag or file")
    p.add_argument("--device", default=None,
                   help="auto (CUDA when present), cpu, cuda... (the actors')")  # fmt: skip
    p.add_argument("--batch", type=int, default=None,
                   help="images per model batch [64 on the CPU, 256 on CUDA]")  # fmt: skip
    p.add_argument("--part-rows", type=int, default=10_000, help="rows per part file [10000]")
    p.add_argument("--workers", type=int, default=None,
                   help="decode threads (per actor) [the CPU count, at most 8]")  # fmt: skip
    p.add_argument("--device-decode", choices=["auto", "on", "off"], default="auto",
                   help="decode plain JPEGs on the model's device, batched (nvJPEG on "
                   "CUDA), as the service's device_decode [auto: on with CUDA]")  # fmt: skip
    p.add_argument("--max-image-pixels", type=int, default=None,
                   help="larger images are skipped [as the service: 40000000]")  # fmt: skip
    p.add_argument("--max-parts", type=int, default=None,
                   help="stop after this many parts (a trial run; rerun to go on)")  # fmt: skip
    p.add_argument("--path-column", default=None, help="a list's path column [path, image, ...]")
    p.add_argument("--id-column", default=None, help="a list's id column [id, if any]")
    p.add_argument("--caption-column", default=None, help="a list's caption [caption, text]")
    p.add_argument("--collection", default=None, metavar="NAME",
                   help="also upsert the vectors into this collection, in-process "
                   "(created if missing)")  # fmt: skip
    p.add_argument("--collections-dir", default=None,
                   help="the collections folder for --collection [./collections]")  # fmt: skip
    p.add_argument("--ray", nargs="?", const="auto", default=None, metavar="ADDRESS",
                   help="run on Ray Data; ADDRESS as ray.init takes it [auto: the cluster "
                   "of RAY_ADDRESS or this machine's head; local: start one here; "
                   "ray://HOST:10001]; INPUT must be at the same path on every node")  # fmt: skip
    p.add_argument("--actors", type=int, default=None, metavar="N",
                   help="with --ray: encoder actors [one per GPU of the cluster; "
                   f"{CPU_ACTORS} without GPUs]")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """0 when every item was embedded or skipped (or --max-parts stopped it); 2 with a
    message on stderr for a bad input, model or option."""
    from contrastkit.service.commands.embed.command import embed

    return embed(args)
