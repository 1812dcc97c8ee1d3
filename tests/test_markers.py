"""The markers mean what they say: a test that talks to a real ComfyUI is a host test (so ``-m host`` on a second
ComfyUI version runs it, and a machine without ComfyUI skips it with the reason), a browser test lives in
``tests/browser/``, and every marker used is registered."""

from __future__ import annotations

import re

import pytest

from conftest import TESTS

# Reading COMFYUI_PATH (not removing it from a child's environment), loading the pack, or starting ComfyUI.
HOST_SIGNS = re.compile(r"""\b(load_pack|load_pack_cpu|comfyui_path\(|ComfyServer|comfy_frontend|comfy_server)\b|environ(\.get\(|\[)["']COMFYUI_PATH""")
HOST_MARKS = re.compile(r"requires_comfyui|pytest\.mark\.host")
BROWSER_SIGNS = re.compile(r"\b(chromium|playwright)\b", re.I)


def files_in(folder=None):
    return sorted((TESTS / folder if folder else TESTS).rglob("test_*.py"))


def test_every_test_that_uses_comfyui_is_a_host_test():
    offenders = [
        str(path.relative_to(TESTS)) for path in files_in()
        if path.relative_to(TESTS).parts[0] not in ("host",) and path.name != "test_markers.py"
        and HOST_SIGNS.search(path.read_text()) and not HOST_MARKS.search(path.read_text())
    ]
    assert sum(bool(HOST_SIGNS.search(path.read_text())) for path in files_in("host")) >= 5, "HOST_SIGNS finds nothing: it is broken"
    assert not offenders, f"use ComfyUI without the host marker (move to tests/host/ or mark requires_comfyui): {offenders}"


def test_browser_tests_live_in_the_browser_folder():
    offenders = [str(path.relative_to(TESTS)) for path in files_in()
                 if path.relative_to(TESTS).parts[0] != "browser" and path.name != "test_markers.py" and BROWSER_SIGNS.search(path.read_text())]
    assert not offenders, f"drive a browser outside tests/browser/: {offenders}"
    assert all(BROWSER_SIGNS.search(path.read_text()) or "support.gallery_layout" in path.read_text() or "support.comfy_frontend" in path.read_text()
               for path in files_in("browser")), "a test in tests/browser/ drives no browser"


def test_the_markers_are_registered_and_strict(pytestconfig):
    registered = {line.split(":")[0] for line in pytestconfig.getini("markers")}
    assert {"host", "browser", "slow"} <= registered
    assert "--strict-markers" in pytestconfig.getini("addopts")


@pytest.mark.parametrize("folder, marker", [("host", "host"), ("browser", "browser")])
def test_folder_markers_are_applied(request, folder, marker):
    """Collected items of each folder carry its marker (checked on this session's collection)."""
    items = [item for item in request.session.items if TESTS / folder in item.path.parents]
    if not items:
        pytest.skip(f"no test of tests/{folder}/ was collected in this run")
    assert all(item.get_closest_marker(marker) for item in items)
