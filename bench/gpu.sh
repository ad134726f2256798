#!/usr/bin/env bash
# Every GPU throughput figure in one run (bench/gpu.py): SRS training fp32/bf16 at batch 4 and
# the largest batch that fits, MFU, loader workers vs the GPU's step rate, evaluation fp32 vs
# bf16, teacher images/s, anchors (libKMCUDA vs CPU vs scikit-learn), peak memory of each.
#
# On a GPU machine, from the repository root (the CUDA image, or a clone with a CUDA torch):
#     bash bench/gpu.sh                  # ~7 minutes; prints one JSON document and writes it
#                                        # to bench/results/gpu-<device>.json
#     bash bench/gpu.sh --out FILE       # write it to FILE instead
# Without a GPU it runs the same code at the tiny preset on the CPU in under a minute (what CI
# does, to keep it working) and writes only with --out. Other options: --device auto|cuda|cpu,
# --budget-s SECONDS (default 420 on a GPU). The run is stopped after 8 minutes; a stopped run
# still prints what it measured.
#
# The project's virtualenv comes from scripts/env.sh; SRS_PYTHON=/path/to/python uses that
# interpreter instead, as it is (the tests do).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${SRS_PYTHON:-}" ]; then
  # shellcheck source=scripts/env.sh
  source "$ROOT/scripts/env.sh"
fi
cd "$ROOT"
exec timeout --kill-after=30 480 "${SRS_PYTHON:-python}" bench/gpu.py "$@"
