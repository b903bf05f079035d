#!/usr/bin/env bash
# The GPU checks, as ONE script for a lent GPU machine without network access.
#
# Needs, in the repository root (packed beforehand, on a machine with network):
#   .whl/                 wheels of the runtime packages the GPU image lacks (Python 3.12)
#   .data/fashion-mnist/  the Fashion-MNIST idx files
# made by the shared device/prepare.sh, with orjson added (the service imports it):
#   ../shared/device/prepare.sh orjson          (about 56 MB with the tree: under 64 MiB)
# The copy of the tree there has no .git: pass the commit in, or the results record none:
#   CONTRASTIVE_GIT_COMMIT=<short sha> bash scripts/gpu_check.sh
#
# Runs, in this order (the headline first), each time-boxed, all results under $OUT:
#   train   contrastive bench train at full size (ResNet-18 CIFAR stem, batch 512,
#           Fashion-MNIST), then 20 epochs of SimCLR with online kNN   -> train.json
#   tests   pytest -m gpu                                              -> gpu-tests.xml
#   serve   contrastive bench serve, open_clip ViT-B-32 with random weights (nothing to
#           download; the built-in model's MiniLM weights are too large to carry)
#           640x480 JPEG uploads decoded on the GPU (device_decode auto), with the
#           decode-only row (PIL threads vs nvJPEG)                   -> serve-*.json
#   serve-cpu-decode  the image rows again at concurrency 32 with PIL decoding
#                                                                      -> cpu-decode/
#   search  contrastive bench search on the GPU                        -> search-*.json
# plus gpu_check.log: everything printed, and each step's exit code and seconds.
# Expected: about 7-8 minutes (9 at most), plus the machine's start and the transfers.
#
# Two more steps, only when STEPS names them (neither fits beside the others):
#   finetune contrastive bench finetune: fine-tuning open_clip ViT-B-32 (random weights
#           from a fixed seed, local-dir format: nothing downloads) on Fashion-MNIST pairs,
#           batch 256, bf16 (open_clip: amp_bf16), 20 untimed + FINETUNE_STEPS timed steps
#           (400) with our Trainer and then with open_clip_train's train_one_epoch; img/s
#           of each and ours/open_clip (goal >= 1.0x)                  -> finetune.json
#   About 30-60 s a side, 2-3 minutes in all: STEPS=finetune BUDGET=300 bash scripts/gpu_check.sh
#   open_clip_train.data imports pandas, webdataset and braceexpand: without their wheels
#   (prepare.sh orjson pandas webdataset braceexpand; mind the 64 MiB) a stand-in of its
#   CsvDataset does the same per-image work, and finetune.json's peer.data says so.
#   quality contrastive bench quality: every registered method (ten with moco-tuned and the
#           new barlow, vicreg, simsiam, dino) trained on Fashion-MNIST, ResNet-18, batch
#           256, QUALITY_EPOCHS epochs, online kNN per epoch and a final linear probe; then
#           BYOL and SimCLR at batch 1024 with the old (eta 0.02, unclipped) and the clipped
#           LARS side by side                                         -> quality.json
#   The full run (ten methods x 20 epochs + four LARS runs) needs far more than one
#   15-minute device session: tens of minutes on an H100. quality.json is rewritten after
#   every method, so a time-boxed run keeps what finished. In one session run a subset:
#     STEPS=quality BUDGET=540 QUALITY_METHODS=simclr,byol,barlow QUALITY_EPOCHS=10 \
#       QUALITY_LARS= bash scripts/gpu_check.sh
#   and the LARS comparison alone: STEPS=quality QUALITY_METHODS=simclr QUALITY_EPOCHS=5 ...
#
# Knobs (environment): STEPS (default "train,tests,serve,search"), BUDGET (seconds for the
# whole script, 540: give the run a 600 s limit), KNN_EPOCHS (20), KNN_LIMIT (wall seconds
# for the kNN run, 120), SEARCH_N (vectors, 200000), SERVE_SECONDS (per load level, 3);
# for quality: QUALITY_LIMIT (cap on the step's seconds, 3600; BUDGET still bounds it),
# QUALITY_EPOCHS (20), QUALITY_METHODS (comma list; empty: every registered method),
# QUALITY_LARS (methods of the LARS comparison, "byol,simclr"; empty skips it) and
# QUALITY_RUN_LIMIT (wall seconds per method: it stops at the first epoch end past them);
# for finetune: FINETUNE_STEPS (timed steps a side, 400).
set -uo pipefail

OUT=${OUT:-$PWD/gpu-check-out}
STEPS=${STEPS:-train,tests,serve,serve-cpu-decode,search}
BUDGET=${BUDGET:-540}
KNN_EPOCHS=${KNN_EPOCHS:-20}
KNN_LIMIT=${KNN_LIMIT:-120}
SEARCH_N=${SEARCH_N:-200000}
SERVE_SECONDS=${SERVE_SECONDS:-3}
QUALITY_LIMIT=${QUALITY_LIMIT:-3600}
QUALITY_EPOCHS=${QUALITY_EPOCHS:-20}
QUALITY_METHODS=${QUALITY_METHODS:-}
QUALITY_LARS=${QUALITY_LARS-byol,simclr}
QUALITY_RUN_LIMIT=${QUALITY_RUN_LIMIT:-}
FINETUNE_STEPS=${FINETUNE_STEPS:-400}
DEADLINE=$((SECONDS + BUDGET))
SUMMARY=()

# run NAME CAP CMD...: at most CAP seconds, and never past the deadline (10 s kept back)
run() {
    local name=$1 cap=$2
    shift 2
    [[ ",$STEPS," == *",$name,"* ]] || return 0
    local left=$((DEADLINE - SECONDS - 10))
    local limit=$((cap < left ? cap : left))
    if ((left < 20)); then
        SUMMARY+=("$name: skipped, out of time")
        echo "== $name: skipped, out of time"
        return 0
    fi
    echo "== $name (at most $limit s): $*"
    local t0=$SECONDS rc
    timeout --kill-after=15 "$limit" "$@"
    rc=$?
    local note=""
    ((rc == 124 || rc == 137)) && note=" (timed out)"
    SUMMARY+=("$name: exit $rc after $((SECONDS - t0)) s$note")
    echo "== $name: exit $rc after $((SECONDS - t0)) s$note"
}

preflight() {
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || return 1
    if [[ ! -d .whl || ! -s .data/fashion-mnist/train-images-idx3-ubyte.gz ]]; then
        echo "missing .whl/ or .data/fashion-mnist/: run device/prepare.sh orjson first"
        return 1
    fi
    local site
    site=$(mktemp -d)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" .whl/*.whl || return 1
    # the project's import names (contrastkit.service/.training, which an install maps onto the
    # folders): a folder of two symlinks, as this checkout is not installed here
    python3 training/bench/checkout_path.py "$site"
    export PYTHONPATH="$site" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
    python3 - <<'EOF' || return 1
import sys, torch, torchvision, fastapi, orjson, open_clip, faiss
assert torch.cuda.is_available(), "torch sees no CUDA device"
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"torchvision {torchvision.__version__}, {torch.cuda.get_device_name()}, "
      f"faiss {faiss.__version__}, open_clip {open_clip.__version__}")
EOF
}

main() {
    echo "== gpu_check $(date -u +%FT%TZ), commit ${CONTRASTIVE_GIT_COMMIT:-unknown}, steps $STEPS"
    preflight || { echo "== preflight failed: nothing run"; return 3; }
    # `contrastive bench train` once service/cli.py wires it; the module's own entry otherwise
    local train=(python3 -m contrastkit.service bench train)
    "${train[@]}" --help >/dev/null 2>&1 || train=(python3 -m contrastkit.training.bench.train)

    run train 240 "${train[@]}" --device cuda --data fashion-mnist:.data/fashion-mnist \
        --knn-epochs "$KNN_EPOCHS" --knn-time-limit "$KNN_LIMIT" --json "$OUT/train.json"
    run tests 75 python3 -m pytest -m gpu -q -rs -p no:cacheprovider \
        --junitxml="$OUT/gpu-tests.xml" tests
    run serve 110 python3 -m contrastkit.service bench serve --model open_clip:ViT-B-32 --device cuda \
        --batch 256 --seconds "$SERVE_SECONDS" --out "$OUT"
    # the same image load with the JPEGs decoded by PIL on the CPU: the device decoder's
    # gain, HTTP 640x480 uploads against the raw tower, in one run (target >= 5k img/s)
    run serve-cpu-decode 60 python3 -m contrastkit.service bench serve --model open_clip:ViT-B-32 \
        --device cuda --batch 256 --seconds "$SERVE_SECONDS" --modalities image \
        --concurrency 32 --device-decode off --out "$OUT/cpu-decode"
    run search 110 python3 -m contrastkit.service bench search --device cuda --model open_clip:ViT-B-32 \
        --n "$SEARCH_N" --seconds 2 --add-n 20000 --no-reopen --out "$OUT"
    local quality=(python3 -m contrastkit.service bench quality --device cuda
        --data fashion-mnist:.data/fashion-mnist --backbone resnet18
        --epochs "$QUALITY_EPOCHS" --batch-size 256 --lars-methods "$QUALITY_LARS")
    [[ -n $QUALITY_METHODS ]] && quality+=(--methods "$QUALITY_METHODS")
    [[ -n $QUALITY_RUN_LIMIT ]] && quality+=(--time-limit "$QUALITY_RUN_LIMIT")
    run quality "$QUALITY_LIMIT" "${quality[@]}" --json "$OUT/quality.json"
    run finetune 280 python3 -m contrastkit.service bench finetune --device cuda --arch ViT-B-32 \
        --batch-size 256 --precision bf16 --warmup 20 --steps "$FINETUNE_STEPS" \
        --fashion-mnist .data/fashion-mnist --json "$OUT/finetune.json"

    echo "== summary ($SECONDS s in all)"
    printf '  %s\n' "${SUMMARY[@]}"
    ls -la "$OUT"
}

mkdir -p "$OUT"
main 2>&1 | tee -a "$OUT/gpu_check.log"
