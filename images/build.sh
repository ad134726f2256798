#!/usr/bin/env bash
# Build, tag (and optionally push) the SRS images from the repository root.
#
#   images/build.sh [--registry REG] [--version VER] [--cuda-archs "80 86 90"] [--push]
#                   [--dry-run] [cpu|cuda|all]        (default: all)
#   images/build.sh lock      # refresh images/constraints.txt from the tested .venv
#
# Tags: REG/srs:VER-cpu and REG/srs:VER-cuda (defaults: ghcr.io/srs-kubeflow and the version in
# pyproject.toml), the names components/_image.py and the manifests' overlays refer to.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REGISTRY="${SRS_REGISTRY:-ghcr.io/srs-kubeflow}"
VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/pyproject.toml" | head -n 1)"
CUDA_ARCHS="80 86 90"
PUSH=0
DRY_RUN=0
TARGETS=()

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --registry) REGISTRY="$2"; shift 2 ;;
    --version) VERSION="$2"; shift 2 ;;
    --cuda-archs) CUDA_ARCHS="$2"; shift 2 ;;
    --push) PUSH=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage 0 ;;
    cpu|cuda|lock) TARGETS+=("$1"); shift ;;
    all) TARGETS+=(cpu cuda); shift ;;
    *) echo "unknown argument: $1" >&2; usage 2 ;;
  esac
done
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(cpu cuda)
[ -n "$VERSION" ] || { echo "no version in pyproject.toml; pass --version" >&2; exit 2; }

run() {
  echo "+ $*"
  if [ "$DRY_RUN" -eq 0 ]; then "$@"; fi
}

lock() {
  local out="$ROOT/images/constraints.txt"
  {
    sed -n '1,/^$/p' "$out" | sed '/^$/d'
    echo
    "$ROOT/.venv/bin/python" -m pip list --format=freeze --exclude-editable
  } > "$out.new"
  mv "$out.new" "$out"
  echo "wrote $out"
}

for target in "${TARGETS[@]}"; do
  if [ "$target" = lock ]; then
    if [ "$DRY_RUN" -eq 0 ]; then lock; else echo "+ lock images/constraints.txt"; fi
    continue
  fi
  tag="$REGISTRY/srs:$VERSION-$target"
  args=(build --file "$ROOT/images/Dockerfile.$target" --tag "$tag")
  if [ "$target" = cuda ]; then args+=(--build-arg "CUDA_ARCHS=$CUDA_ARCHS"); fi
  run docker "${args[@]}" "$ROOT"
  if [ "$PUSH" -eq 1 ]; then run docker push "$tag"; fi
done
