#!/usr/bin/env bash
# Creates .venv (or $IPA_VENV) with the development set-up; re-installs only when requirements change.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${IPA_VENV:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.ipa-requirements.sha256"
want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch first and pinned, so nothing later pulls a CUDA build.
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  "$VENV/bin/python" -m pip install -q -r requirements-dev.txt
  echo "$want" > "$stamp"
fi
