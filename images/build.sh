#!/usr/bin/env bash
# Build, tag (and optionally push) the SRS images from the repository root.
#
#   images/build.sh [--registry REG] [--version VER] [--push] [--dry-run]
#                   [--engine docker|buildah] [--base-image IMAGE] [--ca-bundle FILE]
#                   [--torch-index URL] [--pip-index URL]
#                   [--cuda-archs "80 86 90"] [--cuda-toolkit 12.8|13.0]
#                   [cpu|cuda|all]                  (default: all)
#   images/build.sh lock      # refresh images/constraints.txt from the tested .venv
#
# Tags: REG/srs:VER-cpu and REG/srs:VER-cuda, by default the names in components/_image.py
# (the one place the pipeline, the manifests and this script take them from).
#   --engine        docker (BuildKit) when `docker info` reaches a daemon, else buildah
#   --base-image    the Python 3.11 base of every stage (default python:3.11.11-slim-bookworm)
#   --ca-bundle     CA certificates for a TLS-intercepting proxy: mounted into the RUN steps
#                   that download (a build secret), never stored in the image
#   --torch-index   where torch/torchvision come from (default: PyTorch's cpu / cu128 index)
#   --cuda-toolkit  the CUDA wheels that compile libKMCUDA; their major must be torch's
#                   (12.8 for the cu128 index, 13.0 for PyPI's torch)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
constant() { sed -n "s/^$1 = \"\(.*\)\"$/\1/p" "$ROOT/components/_image.py"; }
REGISTRY="${SRS_REGISTRY:-$(constant REGISTRY)}"
NAME="$(constant NAME)"
VERSION="$(constant VERSION)"
CUDA_ARCHS="80 86 90"
CUDA_TOOLKIT=12.8
ENGINE=""
BASE_IMAGE=""
CA_BUNDLE=""
TORCH_INDEX=""
PIP_INDEX=""
PUSH=0
DRY_RUN=0
TARGETS=()

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

# Pinned CUDA wheels per toolkit version (nvcc's nvvm and crt are pinned too: unpinned they
# follow the newest CUDA).
toolkit_wheels() {
  case "$1" in
    12.8) echo "nvidia-cuda-nvcc-cu12==12.8.93 nvidia-cuda-cccl-cu12==12.8.90" \
               "nvidia-cuda-runtime-cu12==12.8.90 nvidia-curand-cu12==10.3.9.90" ;;
    13.0) echo "nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88" \
               "nvidia-cuda-cccl==13.0.85 nvidia-cuda-runtime==13.0.96 nvidia-curand==10.4.0.35" ;;
    *) echo "unknown --cuda-toolkit $1 (12.8 or 13.0)" >&2; exit 2 ;;
  esac
}

while [ $# -gt 0 ]; do
  case "$1" in
    --registry) REGISTRY="$2"; shift 2 ;;
    --version) VERSION="$2"; shift 2 ;;
    --engine) ENGINE="$2"; shift 2 ;;
    --base-image) BASE_IMAGE="$2"; shift 2 ;;
    --ca-bundle) CA_BUNDLE="$2"; shift 2 ;;
    --torch-index) TORCH_INDEX="$2"; shift 2 ;;
    --pip-index) PIP_INDEX="$2"; shift 2 ;;
    --cuda-archs) CUDA_ARCHS="$2"; shift 2 ;;
    --cuda-toolkit) CUDA_TOOLKIT="$2"; shift 2 ;;
    --push) PUSH=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage 0 ;;
    cpu|cuda|lock) TARGETS+=("$1"); shift ;;
    all) TARGETS+=(cpu cuda); shift ;;
    *) echo "unknown argument: $1" >&2; usage 2 ;;
  esac
done
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(cpu cuda)
[ -n "$VERSION" ] || { echo "no VERSION in components/_image.py; pass --version" >&2; exit 2; }
if [ -n "$CA_BUNDLE" ] && [ ! -s "$CA_BUNDLE" ]; then
  echo "--ca-bundle $CA_BUNDLE: no such file" >&2; exit 2
fi
if [ -z "$ENGINE" ]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then ENGINE=docker
  elif command -v buildah >/dev/null; then ENGINE=buildah
  elif [ "$DRY_RUN" -eq 1 ]; then ENGINE=docker
  else echo "no image engine: neither a Docker daemon (docker info) nor buildah" >&2; exit 2
  fi
fi

run() {
  echo "+ $*"
  if [ "$DRY_RUN" -eq 0 ]; then "$@"; fi
}

lock() {
  local out="$ROOT/images/constraints.txt"
  {
    sed -n '1,/^$/p' "$out" | sed '/^$/d'
    echo
    "$ROOT/.venv/bin/python" -m pip list --format=freeze --exclude-editable --exclude pip
  } > "$out.new"
  mv "$out.new" "$out"
  echo "wrote $out"
}

revision="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
source_url="${SRS_IMAGE_SOURCE:-$(git -C "$ROOT" config --get remote.origin.url 2>/dev/null || echo unknown)}"
built=()
for target in "${TARGETS[@]}"; do
  if [ "$target" = lock ]; then
    if [ "$DRY_RUN" -eq 0 ]; then lock; else echo "+ lock images/constraints.txt"; fi
    continue
  fi
  tag="$REGISTRY/$NAME:$VERSION-$target"
  case "$ENGINE" in
    docker) args=(docker build) ;;
    buildah) args=(buildah bud --isolation chroot) ;;
    *) echo "unknown --engine $ENGINE (docker or buildah)" >&2; exit 2 ;;
  esac
  args+=(--file "$ROOT/images/Dockerfile.$target" --tag "$tag"
         --build-arg "VERSION=$VERSION" --build-arg "REVISION=$revision"
         --build-arg "SOURCE=$source_url")
  [ -z "$BASE_IMAGE" ] || args+=(--build-arg "PYTHON_IMAGE=$BASE_IMAGE")
  [ -z "$TORCH_INDEX" ] || args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX")
  [ -z "$PIP_INDEX" ] || args+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX")
  [ -z "$CA_BUNDLE" ] || args+=(--secret "id=ca_bundle,src=$CA_BUNDLE")
  if [ "$target" = cuda ]; then
    args+=(--build-arg "CUDA_ARCHS=$CUDA_ARCHS"
           --build-arg "CUDA_TOOLKIT_WHEELS=$(toolkit_wheels "$CUDA_TOOLKIT")")
  fi
  if [ "$ENGINE" = docker ]; then
    DOCKER_BUILDKIT=1 run "${args[@]}" "$ROOT"
  else
    run "${args[@]}" "$ROOT"
  fi
  if [ "$PUSH" -eq 1 ]; then run "$ENGINE" push "$tag"; fi
  built+=("$tag")
done

if [ "$DRY_RUN" -eq 0 ] && [ ${#built[@]} -gt 0 ]; then
  echo "image sizes (uncompressed):"
  for tag in "${built[@]}"; do
    if [ "$ENGINE" = docker ]; then
      bytes="$(docker image inspect --format '{{.Size}}' "$tag")"
    else
      bytes="$(buildah inspect --type image --format '{{.Size}}' "$tag" 2>/dev/null || echo 0)"
      [ "$bytes" != 0 ] || bytes="$(buildah images --noheading --format '{{.Size}}' "$tag")"
    fi
    echo "  $tag  $bytes"
  done
fi
