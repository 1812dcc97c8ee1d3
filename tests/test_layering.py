"""The core's architecture, checked from the imports themselves (parsed with ast, nothing is imported):

- ``ipa_train`` never imports ComfyUI (the trainer runs in its own process, without the host);
- its rooms depend one way: demo -> study -> training -> jobs, memory, gallery -> data -> pose, wan -> fileio
  (README, Layout). Rooms on one level do not import each other, and there are no import cycles between modules;
- ``jobs`` (the host side of a training job, run in ComfyUI's process) imports no torch, not even lazily or
  through the modules it uses.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from conftest import REPO_ROOT

CORE = REPO_ROOT / "ipa_train"
HOST_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "server", "nodes", "execution", "latent_preview"}
# A module may import modules of its own room and of rooms on a strictly lower level.
LEVELS = {
    "demo": 6, "study": 5, "training": 4, "jobs": 3, "memory": 3, "gallery": 3, "data": 2, "pose": 1, "wan": 1,
    "fileio": 0, "choices": 0, "__init__": 0,
}
# Libraries the host side of a job must never import: ComfyUI's process may hold a broken or CUDA-less torch, and a
# job is launched, watched and cancelled without loading it.
HEAVY_LIBRARIES = {"torch", "diffusers", "peft", "safetensors", "transformers", "numpy", "onnxruntime"}
# Top-level entry points (the command dispatcher and the ``python -m ipa_train.train`` alias) sit above every room.
ENTRY_POINTS = {"__main__", "train", "plan"}


def core_modules(core: Path) -> dict[str, Path]:
    """``room.module`` (``room.__init__`` for a package, ``__init__`` for the core itself) -> file."""
    return {".".join(path.relative_to(core).with_suffix("").parts): path for path in core.rglob("*.py")}


def room_of(module: str) -> str:
    return module.split(".")[0]


def module_level_nodes(tree: ast.Module):
    """The statements that run when a module is imported: not function bodies, not ``if TYPE_CHECKING:`` blocks."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


def imports_of(module: str, path: Path, known: set[str], on_import_only: bool = False) -> list[tuple[str, int]]:
    """(imported module, line): core modules as ``room.module``, anything else by its absolute name. With
    ``on_import_only``, only the imports that run when the module is imported (no lazy ones inside functions)."""
    package = module.split(".")[:-1]  # the package this file is in (``room.__init__`` is in ``room``)
    found = []

    def core_target(parts: list[str]) -> str:
        name = ".".join(parts)
        return name if name in known else (f"{name}.__init__" if name else "__init__")

    tree = ast.parse(path.read_text(), str(path))
    for node in (module_level_nodes(tree) if on_import_only else ast.walk(tree)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                found.append((core_target(parts[1:]) if parts[0] == "ipa_train" else alias.name, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and not (node.module or "").startswith("ipa_train"):
                found.append((node.module or "", node.lineno))
                continue
            if node.level == 0:
                base = node.module.split(".")[1:]
            else:
                base = package[: len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            for alias in node.names:  # ``from pkg import name``: the module pkg.name if there is one, else pkg
                candidate = ".".join(base + [alias.name])
                found.append((candidate if candidate in known else core_target(base), node.lineno))
    return found


def internal_edges(core: Path):
    modules = core_modules(core)
    known = set(modules)
    for module, path in modules.items():
        for target, line in imports_of(module, path, known):
            if target in known:
                yield module, target, f"{path.relative_to(core.parent)}:{line}"


def layering_violations(core: Path) -> list[str]:
    offenders = []
    for source, target, where in internal_edges(core):
        src_room, dst_room = room_of(source), room_of(target)
        if src_room in ENTRY_POINTS or src_room == dst_room:
            continue
        if dst_room in ENTRY_POINTS:
            offenders.append(f"{where}: {source} imports the entry point {target}")
        elif LEVELS[dst_room] >= LEVELS[src_room]:
            offenders.append(f"{where}: {source} ({src_room}, level {LEVELS[src_room]}) imports {target} ({dst_room}, level {LEVELS[dst_room]})")
    return offenders


def import_cycle(core: Path) -> list[str]:
    graph: dict[str, set[str]] = {}
    for source, target, _ in internal_edges(core):
        if target != source:
            graph.setdefault(source, set()).add(target)
    done: set[str] = set()

    def visit(node: str, trail: list[str]) -> list[str]:
        for nxt in sorted(graph.get(node, ())):
            if nxt in trail:
                return trail[trail.index(nxt):] + [nxt]
            if nxt not in done:
                found = visit(nxt, trail + [nxt])
                if found:
                    return found
        done.add(node)
        return []

    for node in sorted(graph):
        if node not in done:
            found = visit(node, [node])
            if found:
                return found
    return []


def test_the_core_never_imports_comfyui():
    modules = core_modules(CORE)
    offenders = [
        f"{path.relative_to(REPO_ROOT)}:{line} imports {target}"
        for module, path in modules.items()
        for target, line in imports_of(module, path, set(modules))
        if target.split(".")[0] in HOST_MODULES
    ]
    assert not offenders, offenders


def test_every_module_lives_in_a_room():
    stray = [m for m in core_modules(CORE) if room_of(m) not in LEVELS and room_of(m) not in ENTRY_POINTS]
    assert not stray, f"modules outside the rooms {sorted(LEVELS)}: {stray}"


def test_rooms_depend_one_way():
    edges = {(source, target) for source, target, _ in internal_edges(CORE)}
    assert ("training.loop", "training.objective") in edges and ("data.hand_masks", "pose.hands") in edges, "the import parser misses known imports"
    offenders = layering_violations(CORE)
    assert not offenders, "\n".join(offenders)


def heavy_imports_reached_from(core: Path, room: str) -> list[str]:
    """Every heavy library a module of ``room`` imports: its own imports, lazy ones inside functions included (they
    run when the function does), and what the core modules it uses import when they are imported, at any depth.
    (A function of such a module that imports torch lazily, e.g. ``fileio.load_safetensors``, is the caller's
    choice: the room's own code shows it, and this test then fails.)"""
    modules = core_modules(core)
    known = set(modules)
    imports = {module: imports_of(module, path, known, on_import_only=room_of(module) != room) for module, path in modules.items()}
    found, seen = [], set()
    todo = [(module, module) for module in modules if room_of(module) == room]
    while todo:
        module, trail = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for target, line in imports[module]:
            if target in known:
                todo.append((target, f"{trail} -> {target}"))
            elif target.split(".")[0] in HEAVY_LIBRARIES:
                found.append(f"{trail} imports {target} ({modules[module].relative_to(core.parent)}:{line})")
    return found


def test_jobs_imports_no_torch():
    assert any(room_of(m) == "jobs" for m in core_modules(CORE)), "no jobs room"
    offenders = heavy_imports_reached_from(CORE, "jobs")
    assert not offenders, "\n".join(offenders)


def test_the_torch_check_catches_a_lazy_import_of_a_torch_module(tmp_path):
    fake = tmp_path / "ipa_train"
    shutil.copytree(CORE, fake, ignore=shutil.ignore_patterns("__pycache__", "configs", "weights"))
    (fake / "jobs" / "curves.py").write_text((fake / "jobs" / "curves.py").read_text() + "\n\ndef _late():\n    from ..wan import latents\n")
    (fake / "fileio.py").write_text((fake / "fileio.py").read_text() + "\n\ndef _late():\n    import torch.nn\n")
    offenders = heavy_imports_reached_from(fake, "jobs")
    assert any("jobs.curves -> wan.latents imports torch" in offender for offender in offenders), offenders
    assert not any("torch.nn" in offender for offender in offenders), offenders


def test_the_jobs_room_runs_without_torch_in_a_fresh_interpreter():
    """The same rule, run: importing every jobs module leaves torch out of ``sys.modules``."""
    import subprocess
    import sys

    names = sorted(m for m in core_modules(CORE) if room_of(m) == "jobs" and not m.endswith("__init__"))
    code = "import importlib, sys\n" + "".join(f"importlib.import_module('ipa_train.{name}')\n" for name in names)
    code += "heavy = sorted(m for m in sys.modules if m.split('.')[0] in %r)\nprint(heavy)\nsys.exit(1 if heavy else 0)\n" % HEAVY_LIBRARIES
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert names and result.returncode == 0, result.stdout + result.stderr


def test_no_import_cycles():
    cycle = import_cycle(CORE)
    assert not cycle, " -> ".join(cycle)


@pytest.mark.parametrize(
    "module, line, expected",
    [
        ("pose/hands.py", "from ..training.loop import Trainer", "pose.hands (pose, level 1) imports training.loop"),
        ("wan/model.py", "from ..data import samples", "wan.model (wan, level 1) imports data.samples"),
        ("pose/render.py", "from ipa_train.wan import latents", "pose.render (pose, level 1) imports wan.latents"),
        ("data/samples.py", "from .. import train", "data.samples imports the entry point train"),
    ],
)
def test_the_check_catches_a_wrong_way_import(tmp_path, module, line, expected):
    fake = tmp_path / "ipa_train"
    shutil.copytree(CORE, fake, ignore=shutil.ignore_patterns("__pycache__", "configs"))
    (fake / module).write_text((fake / module).read_text() + f"\n{line}\n")
    assert any(expected in offender for offender in layering_violations(fake)), layering_violations(fake)


def test_the_check_catches_a_cycle(tmp_path):
    fake = tmp_path / "ipa_train"
    shutil.copytree(CORE, fake, ignore=shutil.ignore_patterns("__pycache__", "configs"))
    (fake / "data" / "previews.py").write_text((fake / "data" / "previews.py").read_text() + "\nfrom .collect import Candidate\n")
    cycle = import_cycle(fake)
    assert cycle and {"data.collect", "data.previews"} <= set(cycle), cycle
