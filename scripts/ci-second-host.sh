#!/usr/bin/env bash
# CI's second host: runs the pack's host tests against ComfyUI v0.28.0 (or $COMFYUI_VERSION), next to the default
# run against v0.8.0 (the oldest supported). Why a second venv: ComfyUI v0.28's requirements (comfy-aimdo,
# comfy-kitchen, frontend 1.45) must not change the main venv that the v0.8.0 run uses, and installing torch again
# would take minutes; an overlay venv sees the main venv's packages through a .pth file and gets only what v0.28
# adds or pins differently.
#
#   scripts/ci-second-host.sh                              # the host tests (marker host)
#   scripts/ci-second-host.sh tests/host/test_graph_comfy.py -k parity    # pytest arguments instead
#
# Environment: IPA_VENV (the main venv, default .venv, made by scripts/setup-venv.sh), SECOND_HOST_VENV (the overlay
# venv, default $IPA_VENV-comfyui-<version>), COMFYUI_VERSION (default v0.28.0), SHARED_TOOLS (the folder with
# comfyui-for-tests.sh, default ../shared/tools). Each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${COMFYUI_VERSION:-v0.28.0}
MAIN=${IPA_VENV:-.venv}
OVERLAY=${SECOND_HOST_VENV:-$MAIN-comfyui-$VERSION}
TOOLS=${SHARED_TOOLS:-../shared/tools}
[ -x "$MAIN/bin/python" ] || { echo "ci-second-host: no main venv at $MAIN: run scripts/setup-venv.sh first (or set IPA_VENV)" >&2; exit 1; }
[ -f "$TOOLS/comfyui-for-tests.sh" ] || { echo "ci-second-host: $TOOLS/comfyui-for-tests.sh is missing: set SHARED_TOOLS to the folder that has it" >&2; exit 1; }
if [ ! -x "$OVERLAY/bin/python" ]; then
  python3 -m venv "$OVERLAY"
fi
main_site=$("$MAIN/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
overlay_site=$("$OVERLAY/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if ! cat "$overlay_site"/*.pth 2>/dev/null | grep -qxF "$main_site"; then
  echo "$main_site" > "$overlay_site/ipa-main-venv.pth"  # the main venv's packages, after the overlay's own
fi
env_lines=$(COMFYUI_VERSION=$VERSION bash "$TOOLS/comfyui-for-tests.sh" "$OVERLAY/bin/python")
eval "$env_lines"
echo "ci-second-host: ComfyUI $VERSION at $COMFYUI_PATH, python $OVERLAY/bin/python" >&2
if [ $# -eq 0 ]; then
  set -- -m host  # every test that needs a real ComfyUI (tests/host/, and the marked ones elsewhere)
fi
start=$SECONDS
status=0
"$OVERLAY/bin/python" -m pytest -q -rs -p no:cacheprovider "$@" || status=$?
echo "ci-second-host: ComfyUI $VERSION host tests took $((SECONDS - start)) s (exit status $status)" >&2
exit $status
