#!/usr/bin/env bash
# Installs the development set-up and runs the main job on an embedded tiny model (the README's main command).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
VENV=${IPA_VENV:-.venv}
exec "$VENV/bin/python" -m ipa_train demo "$@"
