#!/usr/bin/env bash
# Create the environment if needed, lint, and run the whole test suite.
# shellcheck source=scripts/env.sh
source "$(dirname "$0")/env.sh"
ruff check .
python -m pytest -q "$@"
