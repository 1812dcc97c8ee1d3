#!/usr/bin/env bash
# Installs the development set-up and runs the whole test suite (the README's test command).
# With COMFYUI_PATH pointing to a ComfyUI checkout (v0.8), the host tests run too: ComfyUI's requirements are
# installed into the venv first (scripts/comfyui-test-env.sh); without it they skip.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
VENV=${IPA_VENV:-.venv}
if [ -n "${COMFYUI_PATH:-}" ]; then
  # shellcheck source=scripts/comfyui-test-env.sh
  source scripts/comfyui-test-env.sh
fi
# The gallery's browser tests drive Debian's Chromium (never a browser downloaded by a test tool). Install it when
# it is missing and apt can run (root or password-less sudo); about a minute on a fresh machine. Without it those
# tests skip and say why.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    as_root=()
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
  else
    as_root=(false)
  fi
  if "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 \
    && "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; then
    echo "installed Debian's chromium for the gallery browser tests"
  else
    echo "could not install chromium (no root or no apt): the gallery browser tests will skip"
  fi
fi
# The linter first (pyproject.toml [tool.ruff]: pyflakes and import order): a finding fails the run.
"$VENV/bin/ruff" check .
exec "$VENV/bin/python" -m pytest -q "$@"
