"""Write a ViT-B/32 CLIP with random weights in Hugging Face's format, for a peer server
(e.g. infinity-emb) to serve images beside `contrastive serve --model open_clip:ViT-B-32`
(random weights too) in `contrastive bench serve --peer`: the same architecture and input
size on both sides, so their speeds compare; their vectors do not (different weights).

No download: the tokenizer's vocabulary and merges are built from the BPE file that
open_clip ships, the way CLIP's own tokenizer builds them.

    python scripts/make_random_hf_clip.py OUT_DIR
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map of the 256 bytes onto printable characters."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    chars = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(keep, map(chr, chars), strict=True))


def write_tokenizer(out: Path) -> None:
    import open_clip.tokenizer as tok

    bpe = Path(tok.default_bpe())
    with gzip.open(bpe, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")[1 : 49152 - 256 - 2 + 1]  # CLIP's 48,894 merges
    merges = [tuple(line.split()) for line in lines]
    base = list(bytes_to_unicode().values())
    vocab = base + [v + "</w>" for v in base] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (out / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges))


def main(out_dir: str) -> None:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig()).save_pretrained(out)  # the defaults are ViT-B/32, 512-d
    CLIPImageProcessor().save_pretrained(out)  # 224 px, CLIP's mean and std
    write_tokenizer(out)
    CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt")).save_pretrained(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1])
