#!/usr/bin/env bash
# Create the environment if needed, lint, and run the whole test suite.
source "$(dirname "$0")/env.sh"
ruff check .
python -m pytest -q "$@"
