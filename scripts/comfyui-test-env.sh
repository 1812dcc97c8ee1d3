#!/usr/bin/env bash
# Makes the development environment ready for the host tests against the ComfyUI checkout in $COMFYUI_PATH.
# Sourced by scripts/test.sh when COMFYUI_PATH is set; safe to run again (each step is skipped when done).
#   1. installs ComfyUI's own requirements into the venv, with torch held at the installed version; torch,
#      torchvision and torchaudio are never installed, nor spandrel (upscale models), which pulls a torchvision
#      built for CUDA torch and breaks the CPU torch's imports in transformers and diffusers;
#   2. when `import torchvision` fails, writes import-only stand-ins into the venv and puts them on PYTHONPATH
#      (ComfyUI only imports torchvision at start-up; the tests keep them away from diffusers and the trainer).
# Expects VENV (the venv folder) to be set.
set -euo pipefail
: "${COMFYUI_PATH:?COMFYUI_PATH must point to a ComfyUI checkout}"
: "${VENV:?}"
PY="$VENV/bin/python"
if [ ! -f "$COMFYUI_PATH/main.py" ] || [ ! -f "$COMFYUI_PATH/requirements.txt" ]; then
  echo "COMFYUI_PATH=$COMFYUI_PATH is not a ComfyUI checkout (no main.py / requirements.txt there)" >&2
  exit 1
fi
torch_version=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
stamp="$VENV/.comfyui-requirements-$( (cat "$COMFYUI_PATH/requirements.txt"; echo "$torch_version") | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  work=$(mktemp -d)
  grep -v -E '^\s*(torch|torchvision|torchaudio|spandrel)\s*([<>=~!;[ ].*)?$' "$COMFYUI_PATH/requirements.txt" > "$work/requirements.txt"
  echo "torch==$torch_version" > "$work/constraints.txt"
  echo "installing ComfyUI's requirements into $VENV (torch held at $torch_version)" >&2
  "$PY" -m pip install -q -c "$work/constraints.txt" -r "$work/requirements.txt" >&2
  rm -rf "$work"
  touch "$stamp"
fi
if ! "$PY" -c 'import torchvision' >/dev/null 2>&1; then
  if env -u PYTHONPATH "$PY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torchvision") is None)' 2>/dev/null; then
    echo "a torchvision package is installed in $VENV but does not import next to its torch (a CUDA build beside CPU torch?);" \
      "uninstall it: $PY -m pip uninstall -y torchvision" >&2
    exit 1
  fi
  stubs="$(cd "$VENV" && pwd)/torchvision-stand-ins"  # absolute: the tests start ComfyUI from its own folder
  if [ ! -f "$stubs/_stubbase.py" ]; then
    "$PY" - "$stubs" <<'PY'
import sys
from pathlib import Path

root = Path(sys.argv[1])
root.mkdir(parents=True, exist_ok=True)
(root / "_stubbase.py").write_text('''class _Missing:
    """Any attribute of an import-only stand-in: calling it says the package is not installed."""
    def __init__(self, name): self._name = name
    def __call__(self, *a, **k): raise ImportError(f"{self._name} is an import-only stand-in (package not installed)")
    def __getattr__(self, n):
        if n.startswith("__"): raise AttributeError(n)
        return _Missing(self._name + "." + n)
    def __mro_entries__(self, bases): return (object,)


def make_getattr(modname):
    def __getattr__(n):
        if n.startswith("__"): raise AttributeError(n)
        return _Missing(modname + "." + n)
    return __getattr__
''')
for module in ["torchvision", "torchvision.transforms", "torchvision.transforms.functional", "torchvision.models", "torchvision.ops", "torchvision.io"]:
    folder = root.joinpath(*module.split("."))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "__init__.py").write_text(f'from _stubbase import make_getattr\n__getattr__ = make_getattr("{module}")\n__version__ = "0.0.0+stand-in"\n')
PY
  fi
  export PYTHONPATH="$stubs${PYTHONPATH:+:$PYTHONPATH}"
  echo "torchvision is not installed: import-only stand-ins from $stubs are on PYTHONPATH for ComfyUI" >&2
fi
