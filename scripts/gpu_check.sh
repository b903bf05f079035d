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
#                                                                      -> serve-*.json
#   search  contrastive bench search on the GPU                        -> search-*.json
# plus gpu_check.log: everything printed, and each step's exit code and seconds.
# Expected: about 7-8 minutes (9 at most), plus the machine's start and the transfers.
#
# Knobs (environment): STEPS (default "train,tests,serve,search"), BUDGET (seconds for the
# whole script, 540: give the run a 600 s limit), KNN_EPOCHS (20), KNN_LIMIT (wall seconds
# for the kNN run, 120), SEARCH_N (vectors, 200000), SERVE_SECONDS (per load level, 3).
set -uo pipefail

OUT=${OUT:-$PWD/gpu-check-out}
STEPS=${STEPS:-train,tests,serve,search}
BUDGET=${BUDGET:-540}
KNN_EPOCHS=${KNN_EPOCHS:-20}
KNN_LIMIT=${KNN_LIMIT:-120}
SEARCH_N=${SEARCH_N:-200000}
SERVE_SECONDS=${SERVE_SECONDS:-3}
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
    export PYTHONPATH="$site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
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
    local train=(python3 -m service bench train)
    "${train[@]}" --help >/dev/null 2>&1 || train=(python3 -m training.bench.train)

    run train 240 "${train[@]}" --device cuda --data fashion-mnist:.data/fashion-mnist \
        --knn-epochs "$KNN_EPOCHS" --knn-time-limit "$KNN_LIMIT" --json "$OUT/train.json"
    run tests 75 python3 -m pytest -m gpu -q -rs -p no:cacheprovider \
        --junitxml="$OUT/gpu-tests.xml" tests
    run serve 110 python3 -m service bench serve --model open_clip:ViT-B-32 --device cuda \
        --batch 256 --seconds "$SERVE_SECONDS" --out "$OUT"
    run search 110 python3 -m service bench search --device cuda --model open_clip:ViT-B-32 \
        --n "$SEARCH_N" --seconds 2 --add-n 20000 --no-reopen --out "$OUT"

    echo "== summary ($SECONDS s in all)"
    printf '  %s\n' "${SUMMARY[@]}"
    ls -la "$OUT"
}

mkdir -p "$OUT"
main 2>&1 | tee -a "$OUT/gpu_check.log"
