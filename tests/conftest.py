"""Shared test set-up: the repository root on sys.path (``import ipa_train``), the markers, and, when
``COMFYUI_PATH`` points to a ComfyUI checkout, a way to import the pack the way ComfyUI does.

The folders mirror the core's rooms (``tests/<room>/``); ``tests/host/`` holds the tests that run against a real
ComfyUI, ``tests/browser/`` the ones that drive Chromium, ``tests/support/`` the shared helpers (``support.<module>``).
Markers (registered in pyproject.toml, ``--strict-markers``):

- ``host``: needs a real ComfyUI (``COMFYUI_PATH``); every test in ``tests/host/``, and any other marked
  ``requires_comfyui``. Skipped, with the reason, when ``COMFYUI_PATH`` is unset. ``-m host`` runs just these (CI
  runs them on a second ComfyUI version this way).
- ``browser``: drives Debian's Chromium; every test in ``tests/browser/``.
- ``slow``: takes more than about 20 s on 2 CPU cores; ``-m "not slow"`` is the quick inner loop."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

PACK_MODULE_NAME = "comfyui_ipa_pack"


def comfyui_path() -> Path | None:
    value = os.environ.get("COMFYUI_PATH")
    return Path(value) if value else None


requires_comfyui = pytest.mark.host
TESTS = Path(__file__).resolve().parent
FOLDER_MARKS = {"host": pytest.mark.host, "browser": pytest.mark.browser}


def pytest_collection_modifyitems(config, items):
    """Marks by folder, and skips host tests where there is no ComfyUI to test against."""
    no_host = pytest.mark.skip(reason="COMFYUI_PATH is not set: no real ComfyUI checkout to test against")
    for item in items:
        parts = Path(str(item.path)).resolve().relative_to(TESTS).parts
        if len(parts) > 1 and parts[0] in FOLDER_MARKS:
            item.add_marker(FOLDER_MARKS[parts[0]])
        if item.get_closest_marker("host") and not os.environ.get("COMFYUI_PATH"):
            item.add_marker(no_host)


def load_pack():
    """Imports the repository as a package the way ComfyUI imports a custom-node folder (needs COMFYUI_PATH)."""
    path = comfyui_path()
    if path is None:
        pytest.skip("COMFYUI_PATH is not set")
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    if PACK_MODULE_NAME in sys.modules:
        return sys.modules[PACK_MODULE_NAME]
    spec = importlib.util.spec_from_file_location(
        PACK_MODULE_NAME, REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_MODULE_NAME] = module
    spec.loader.exec_module(module)
    return module


def _hide_torchvision_stand_in_from_diffusers() -> None:
    """With the import-only torchvision stand-in on PYTHONPATH (CPU set-up for ComfyUI), transformers and
    diffusers believe torchvision exists and fail to import. They decide once, at first import: make that
    decision with the stand-in hidden, then put it back for ComfyUI."""
    import importlib.util

    if "torchvision" in sys.modules:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return
    stub_root = Path(spec.origin).resolve().parents[1]
    if not (stub_root / "_stubbase.py").exists():
        return  # a real torchvision
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != stub_root]
    try:
        import diffusers.utils.import_utils  # noqa: F401  (caches "no torchvision")
        from transformers.utils import import_utils

        import_utils.is_torchvision_available()
    finally:
        sys.path[:] = saved


_hide_torchvision_stand_in_from_diffusers()
