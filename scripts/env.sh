# shellcheck shell=bash
# Sourced by the entry scripts: create/refresh the project's virtualenv in .venv.
# Re-installs only when pyproject.toml, the lock (images/constraints.txt) or this file changed.
# Every package is pinned by images/constraints.txt, so the tests run on exactly what the
# images install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SRS_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[srs] creating virtualenv $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
STAMP="$VENV/.srs-installed"
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/env.sh" "$ROOT/images/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[srs] installing dependencies (first run takes a few minutes)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  # torch first, pinned to the CPU-capable release served for Python 3.11 (timm needs torchvision).
  "$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1" >&2
  "$VENV/bin/python" -m pip install -q -c "$ROOT/images/constraints.txt" -e "${ROOT}[test]" >&2
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
