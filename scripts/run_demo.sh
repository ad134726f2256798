#!/usr/bin/env bash
# The main job: create the environment, make demo data, run the whole pipeline locally.
# Usage: bash scripts/run_demo.sh [DATA_DIR] [OUT_DIR]
source "$(dirname "$0")/env.sh"
DATA="${1:-demo/data}"
OUT="${2:-demo/run}"
if [ ! -f "$DATA/stickerchat/release_test.json" ]; then
  srs data synth --out "$DATA"
fi
srs data validate --stickerchat "$DATA/stickerchat" --ser30k "$DATA/ser30k" --strict
