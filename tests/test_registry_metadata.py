"""The Registry metadata (issue 19): pyproject's ComfyUI range, classifiers and dependencies, and the
``.comfyignore`` that ``comfy node publish`` applies to the git-tracked files (gitignore syntax, matched here by git
itself): the tests and benchmarks stay out, everything the nodes, ``ipa_train``, ``web/`` and ``scripts/demo.sh``
need stays in."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ipa_train.jobs import launcher

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_FOLDERS = ("ipa_train", "nodes", "web", "example_workflows")  # the pack as ComfyUI and the demo load it
DEV_FOLDERS = ("tests", "benchmarks", ".ci")


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _tracked() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout: the archive is the git-tracked files minus .comfyignore")
    listing = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True)
    return [name for name in listing.stdout.decode("utf-8").split("\0") if name]


def _ignored(paths: list[str], tmp_path: Path) -> set[str]:
    """The paths ``.comfyignore`` leaves out, by git's own gitwildmatch (an empty repository, so only that file counts)."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    done = subprocess.run(["git", "-C", str(tmp_path), "-c", f"core.excludesFile={ROOT / '.comfyignore'}", "check-ignore",
                           "--no-index", "--stdin", "-z"], input="\0".join(paths).encode("utf-8"), capture_output=True)
    assert done.returncode in (0, 1), done.stderr.decode()  # 1: nothing ignored
    return {name for name in done.stdout.decode("utf-8").split("\0") if name}


def _needed_by_scripts(start: str) -> set[str]:
    """``start`` and every script and requirements file it names outside comments, followed through what those name
    in turn."""
    needed, queue = set(), [start]
    while queue:
        name = queue.pop()
        if name in needed or not (ROOT / name).is_file():
            continue
        needed.add(name)
        lines = (ROOT / name).read_text(encoding="utf-8").splitlines()
        text = "\n".join(re.sub(r"(^|\s)#.*", "", line) for line in lines)  # a comment: '#' first or after a space
        queue += re.findall(r"\bscripts/[\w.-]+\.(?:sh|py)\b", text)
        queue += re.findall(r"(?<![\w/.-])(requirements[\w-]*\.txt)\b", text)
    return needed


def test_the_archive_keeps_what_the_pack_needs_and_leaves_the_tests_out(tmp_path):
    tracked = _tracked()
    ignored = _ignored(tracked, tmp_path)
    demo = _needed_by_scripts("scripts/demo.sh")
    assert {"scripts/setup-venv.sh", "requirements.txt", "requirements-dev.txt"} <= demo  # what demo.sh installs with
    top = {"__init__.py", Path(launcher.START_SCRIPT).name, "pyproject.toml", "requirements.txt", "LICENSE", "README.md"}
    needed = demo | top | {name for name in tracked if name.split("/")[0] in RUNTIME_FOLDERS}
    assert needed <= set(tracked), f"not tracked, so never in the archive: {sorted(needed - set(tracked))}"
    assert not needed & ignored, f".comfyignore leaves out files the pack needs: {sorted(needed & ignored)}"
    dev = {name for name in tracked if name.split("/")[0] in DEV_FOLDERS}
    assert any(name.startswith("tests/") for name in dev) and any(name.startswith("benchmarks/") for name in dev)
    assert dev <= ignored, f".comfyignore lets development files into the archive: {sorted(dev - ignored)}"
    archive = set(tracked) - ignored
    assert not {name for name in archive if name.startswith("scripts/")} - demo  # developer scripts stay out


def test_pyproject_states_the_comfyui_range_the_platforms_and_every_requirement():
    project = _pyproject()
    floor = project["tool"]["comfy"]["requires-comfyui"]
    assert re.fullmatch(r">=\d+\.\d+\.\d+", floor), floor
    classifiers = project["project"]["classifiers"]
    assert any(c.startswith("Operating System :: Microsoft :: Windows") for c in classifiers)
    assert any(c.startswith("Environment :: GPU ::") for c in classifiers)
    # ComfyUI-Manager installs requirements.txt, the Registry reads the dependencies: the same list either way
    lines = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    required = {line.split("#")[0].strip().replace(" ", "") for line in lines} - {""}
    assert {dependency.replace(" ", "") for dependency in project["project"]["dependencies"]} == required


@pytest.mark.host
def test_the_host_under_test_is_inside_the_stated_range():
    comfyui = os.environ.get("COMFYUI_PATH")
    if not comfyui:
        pytest.skip("COMFYUI_PATH is not set (no ComfyUI to compare against)")
    text = (Path(comfyui) / "comfyui_version.py").read_text(encoding="utf-8")
    version = tuple(int(part) for part in re.search(r"__version__\s*=\s*['\"](\d+)\.(\d+)\.(\d+)", text).groups())
    floor = tuple(int(part) for part in _pyproject()["tool"]["comfy"]["requires-comfyui"].lstrip(">=").split("."))
    assert version >= floor, f"ComfyUI {version} under test is older than requires-comfyui {floor}"
