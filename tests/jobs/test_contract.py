"""The run contract (``ipa_train.jobs.contract``) is defined once: no other module of the trainer, the launcher, the
node or the fake trainer assigns its names or spells its environment variables; it imports nothing; and
``python -m ipa_train.train`` keeps to it even when the trainer's own imports fail."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from ipa_train.jobs import contract
from support.trainer_helpers import REPO_ROOT

CONTRACT = Path(contract.__file__).resolve()
NAMES = {name for name in vars(contract) if name.isupper()}
ENV_VALUES = {contract.JOB_ENV, contract.LAUNCHER_PID_ENV, contract.FAILURES_ENV, contract.GRACE_ENV}


def _sources() -> list[Path]:
    roots = [REPO_ROOT / "ipa_train", REPO_ROOT / "nodes", REPO_ROOT / "tests" / "support" / "fake_trainer_pkg"]
    return [path for root in roots for path in sorted(root.rglob("*.py")) if path.resolve() != CONTRACT]


def test_contract_names_are_assigned_only_in_the_contract():
    assigned = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            assigned += [f"{path.relative_to(REPO_ROOT)}: {t.id}" for t in targets if isinstance(t, ast.Name) and t.id in NAMES]
    assert assigned == []


def test_environment_variable_names_are_spelled_only_in_the_contract():
    spelled = [f"{path.relative_to(REPO_ROOT)}: {value}" for path in _sources() for value in ENV_VALUES
               if f'"{value}"' in path.read_text(encoding="utf-8")]
    assert spelled == []


def test_the_contract_imports_nothing():
    tree = ast.parse(CONTRACT.read_text(encoding="utf-8"))
    assert not [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert set(contract.FINAL_EVENTS) <= set(contract.EVENTS) and len(set(contract.EVENTS)) == len(contract.EVENTS)
    assert len({contract.EXIT_OK, contract.EXIT_ERROR, contract.EXIT_STOPPED}) == 3


def test_the_entry_point_reports_a_broken_import_as_an_error_event(tmp_path):
    """A torch that cannot import (what a mismatched torchvision does to diffusers): still one ``error`` event
    with the cause and a hint on stdout, and the contract's error status."""
    broken = tmp_path / "torch"
    broken.mkdir()
    (broken / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{tmp_path}:{REPO_ROOT}", "PYTHONNOUSERSITE": "1"}
    done = subprocess.run([sys.executable, "-m", "ipa_train.train", "--config", str(tmp_path / "run.json")], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == contract.EXIT_ERROR, done.stderr[-2000:]
    (event,) = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert event["event"] == contract.ERROR and event["rank"] == 0
    assert event["message"] == "RuntimeError: operator torchvision::nms does not exist"
    assert "install the torchvision made for this torch" in event["hint"]
