#!/usr/bin/env bash
# Installs the development set-up and runs the whole test suite (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
VENV=${IPA_VENV:-.venv}
exec "$VENV/bin/python" -m pytest -q "$@"
