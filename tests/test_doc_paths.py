"""Every ``ipa_train.x.y`` name and every ``ipa_train/x/y.py`` path written in the README, a docstring or a comment
exists: a reorganisation that moves a module must not leave readers looking for it under its old name."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from conftest import REPO_ROOT

DOTTED = re.compile(r"(?<![\w/.])ipa_train(?:\.[A-Za-z_]\w*)+")
PATH = re.compile(r"(?<![\w/.])((?:ipa_train|nodes|scripts|benchmarks|web|tests)/[\w./<>-]*[\w>])")
SOURCES = ["README.md", "__init__.py", "ipa_train", "nodes", "scripts", "benchmarks", "tests", "web", ".ci/run"]


def text_files() -> list[Path]:
    files = []
    for name in SOURCES:
        path = REPO_ROOT / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += [p for p in path.rglob("*") if p.suffix in {".py", ".md", ".js", ".sh"} and "__pycache__" not in p.parts]
    return files


def dotted_name_exists(name: str) -> bool:
    """A module, or an attribute defined in the longest module prefix (checked in its source, nothing imported)."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        module = parts[:cut]
        file = REPO_ROOT.joinpath(*module).with_suffix(".py")
        package = REPO_ROOT.joinpath(*module, "__init__.py")
        source = file if file.exists() else package if package.exists() else None
        if source is None:
            continue
        rest = parts[cut:]
        if not rest:
            return True
        return re.search(rf"^\s*(?:def|class|async def)\s+{re.escape(rest[0])}\b|^\s*{re.escape(rest[0])}\s*[:=]", source.read_text(), re.M) is not None
    return False


def path_exists(path: str) -> bool:
    """A file or folder, or ``folder/module.name`` (a module's function written after its path)."""
    path = path.rstrip(".")
    module, _, attribute = path.rpartition(".")
    return (REPO_ROOT / path).exists() or bool(module and attribute != "py" and (REPO_ROOT / f"{module}.py").exists())


def references(pattern: re.Pattern, group: int = 0) -> list[tuple[str, str]]:
    found = []
    for file in text_files():
        if file.name == Path(__file__).name:
            continue
        for number, line in enumerate(file.read_text(errors="replace").splitlines(), 1):
            for match in pattern.finditer(line):
                found.append((match.group(group), f"{file.relative_to(REPO_ROOT)}:{number}"))
    return found


def test_every_ipa_train_name_in_the_docs_exists():
    refs = references(DOTTED)
    assert len(refs) > 20, "the pattern finds no references: it is broken"
    missing = [f"{where}: {name}" for name, where in refs if not dotted_name_exists(name.rstrip("."))]
    assert not missing, "\n".join(missing)


def test_every_repository_path_in_the_docs_exists():
    refs = references(PATH, 1)
    assert len(refs) > 10, "the pattern finds no references: it is broken"
    missing = [f"{where}: {path}" for path, where in refs if "*" not in path and "<" not in path and not path_exists(path)]
    assert not missing, "\n".join(missing)


def test_the_check_catches_a_stale_name():
    assert dotted_name_exists("ipa_train.fileio.atomic_write_json")
    assert not dotted_name_exists("ipa_train.training.launcher")
    assert not dotted_name_exists("ipa_train.fileio.no_such_function")
    assert importlib.util.find_spec("ipa_train") is not None
