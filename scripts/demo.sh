#!/usr/bin/env bash
# The main job: create the environment, make demo data, run the whole pipeline locally
# (kfp.local: validate -> sentiment -> teacher -> anchors -> SRS training with 2 torchrun
# processes -> evaluation) and print the test metrics as JSON.
# Usage: bash scripts/demo.sh [DATA_DIR] [OUT_DIR] [--param NAME=VALUE ...]
# shellcheck source=scripts/env.sh
source "$(dirname "$0")/env.sh"
DATA="${1:-demo/data}"
OUT="${2:-demo/run}"
shift $(( $# < 2 ? $# : 2 ))
if [ ! -f "$DATA/synth_manifest.json" ]; then
  srs data synth --out "$DATA"
fi
srs data validate --stickerchat "$DATA/stickerchat" --ser30k "$DATA/ser30k" --strict
srs pipeline run --local --data "$DATA" --out "$OUT" --param gpus_per_node=2 "$@"
