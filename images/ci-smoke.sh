#!/usr/bin/env bash
# CI: build the images without a Docker daemon and run the pipeline's components in them.
#   images/ci-smoke.sh [--ca-bundle FILE] [--cuda-archs "80 86 90"] [--no-cuda]
# 1. apt: buildah and debootstrap (if missing); 2. a Debian 12 Python base (images/debian-base.sh,
# no registry needed); 3. the CPU image, then tests/test_image_smoke.py: the compiled
# components inside it against a loopback S3 server; 4. the CUDA image (libKMCUDA for each
# architecture), then tests/test_image_cuda.py: imports as uid 1000, no build tools left.
# Torch comes from PyPI (the machine reaches no PyTorch index). Root only; idempotent.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CA_BUNDLE="${PIP_CERT:-${SSL_CERT_FILE:-}}"  # a TLS-intercepting proxy's CA, if the host has one
CUDA_ARCHS="80 86 90"
CUDA=1
while [ $# -gt 0 ]; do
  case "$1" in
    --ca-bundle) CA_BUNDLE="$2"; shift 2 ;;
    --cuda-archs) CUDA_ARCHS="$2"; shift 2 ;;
    --no-cuda) CUDA=0; shift ;;
    *) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
done
BASE=localhost/srs-python:3.11-bookworm
REGISTRY=localhost/srs-ci
start=$SECONDS
phase() { echo "[ci-smoke] $(( SECONDS - start ))s: $*"; }

phase "tools"
if ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends buildah debootstrap
fi
phase "base image"
"$ROOT/images/debian-base.sh" "$BASE"

build=("$ROOT/images/build.sh" --engine buildah --registry "$REGISTRY" --base-image "$BASE"
       --torch-index https://pypi.org/simple)
if [ -n "$CA_BUNDLE" ]; then build+=(--ca-bundle "$CA_BUNDLE"); fi
version="$(sed -n 's/^VERSION = "\(.*\)"$/\1/p' "$ROOT/components/_image.py")"

# shellcheck source=scripts/env.sh
source "$ROOT/scripts/env.sh"
phase "CPU image"
"${build[@]}" cpu
phase "CPU image: components smoke"
SRS_SMOKE_IMAGE="$REGISTRY/srs:$version-cpu" python -m pytest -q -p no:cacheprovider \
  tests/test_image_smoke.py
SRS_SMOKE_CPU_IMAGE="$REGISTRY/srs:$version-cpu" SRS_SMOKE_CUDA_IMAGE=none \
  python -m pytest -q -p no:cacheprovider tests/test_image_cuda.py
# Each image is several GB while building (PyPI's torch brings CUDA): one at a time on disk.
buildah rmi "$REGISTRY/srs:$version-cpu" >/dev/null
if [ "$CUDA" -eq 1 ]; then
  phase "CUDA image (libKMCUDA for sm_${CUDA_ARCHS// /, sm_})"
  "${build[@]}" --cuda-toolkit 13.0 --cuda-archs "$CUDA_ARCHS" cuda
  phase "CUDA image: imports and hygiene"
  SRS_SMOKE_CPU_IMAGE=none SRS_SMOKE_CUDA_IMAGE="$REGISTRY/srs:$version-cuda" \
  SRS_SMOKE_CUDA_ARCHS="$CUDA_ARCHS" python -m pytest -q -p no:cacheprovider tests/test_image_cuda.py
  buildah rmi "$REGISTRY/srs:$version-cuda" >/dev/null
fi
phase "done"
