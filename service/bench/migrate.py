"""`contrastive bench migrate`: moving a collection to a new model against rebuilding it
by hand, and how long the switch holds writes.

In one run, on the same image files:
1. setup: `index add` fills collection `photos` with the old model (--from-model);
2. reference: `index add` of the same files with the new model (--to-model) into a fresh
   collection: what a rebuild by hand costs, items/s;
3. `index migrate photos --to-model ...`: the same model work from the stored sources,
   plus reading the old collection, the catch-up passes and the switch, items/s;
4. the ratio migrate / reference (1.0: the migration costs nothing beyond the embedding).
Each step is the command a user runs, in-process, and loads the new model itself (inside
its time, the same for both).

Without --images, N Fashion-MNIST test images are written as PNG and JPEG files first.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", default=None, help="a folder of images [Fashion-MNIST files]")
    p.add_argument("--n", type=int, default=500, help="Fashion-MNIST images to write [500]")
    p.add_argument("--from-model", default="builtin", help="the old model [builtin]")
    p.add_argument("--to-model", default="open_clip:ViT-B-32",
                   help="the new model [open_clip:ViT-B-32, random weights offline]")  # fmt: skip
    p.add_argument("--device", default="cpu", help="[cpu]")
    p.add_argument("--batch", type=int, default=32, help="items per model batch [32]")
    p.add_argument("--out", default="bench-results", help="folder for the JSON result")


def _timed(argv: list[str]) -> float:
    """Seconds `contrastive ARGV` took in-process; raises if it did not exit 0."""
    from contrastkit.service.cli import main

    start = time.perf_counter()
    code = main(argv)
    if code != 0:
        raise RuntimeError(f"contrastive {' '.join(argv)} exited {code}")
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> int:
    from contrastkit.service.bench.embed import write_fashion
    from contrastkit.service.bench.serve import environment, write_result

    with tempfile.TemporaryDirectory(prefix="bench-migrate-") as tmp:
        folder = Path(args.images) if args.images else write_fashion(Path(tmp) / "img", args.n)
        n = sum(1 for p in folder.rglob("*") if p.is_file())
        common = ["--collections-dir", f"{tmp}/cols", "--device", args.device]
        common += ["--batch", str(args.batch)]
        _timed(["index", "add", "photos", str(folder), "--model", args.from_model, *common])
        add_s = _timed(["index", "add", "ref", str(folder), "--model", args.to_model, *common])
        migrate = ["index", "migrate", "photos", "--to-model", args.to_model, "--alias", "live"]
        migrate_s = _timed([*migrate, *common, "--report", f"{tmp}/report.json"])
    result = {
        "date": datetime.datetime.now().isoformat(),
        "items": n,
        "from_model": args.from_model,
        "to_model": args.to_model,
        "batch": args.batch,
        "rebuild_by_hand_items_per_s": round(n / add_s, 2),
        "migrate_items_per_s": round(n / migrate_s, 2),
        "ratio": round(add_s / migrate_s, 3),
        "environment": environment(args.device),
    }
    print(
        f"bench migrate: {n} images, {args.from_model} -> {args.to_model}, batch {args.batch}\n"
        f"  rebuild by hand (index add, new model): {n / add_s:.1f} items/s ({add_s:.1f} s)\n"
        f"  index migrate (sources, passes, switch): {n / migrate_s:.1f} items/s "
        f"({migrate_s:.1f} s)\n"
        f"  ratio: {add_s / migrate_s:.3f}"
    )
    print(f"wrote {write_result(args.out, 'migrate', result)}")
    return 0
