"""The trainer on an interpreter like the Windows portable build's embedded Python (issue 19).

The portable build's ``python_embeded/python3XX._pth`` fixes ``sys.path`` (the stdlib, ``.``, ``../ComfyUI``,
``import site``) and puts Python in isolated mode: ``PYTHONPATH`` is ignored and the working directory is not
added. Python 3.11 honours a ``python._pth`` beside a copied interpreter on Linux the same way, so this builds one:
the running interpreter's binary copied into ``python_embeded/`` with a ``python._pth`` listing the stdlib,
``lib-dynload``, ``.``, ``../ComfyUI``, the venv's site-packages and ``import site``.

It first shows the old start (``python -m ipa_train.train`` from the pack's folder with ``PYTHONPATH``) dies there
as it does on Windows, so the interpreter is known to honour the ``._pth``; then it runs two training steps
through the launcher as the train node does (``build_command``, ``build_env``, ``TrainingJob``), in one process
and on two CPU ranks under torchrun (gloo).
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from ipa_train.fileio import load_safetensors
from ipa_train.jobs import launcher
from support.trainer_helpers import make_dataset, tiny_config

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="builds the embedded-like interpreter by copying a POSIX binary"),
    pytest.mark.skipif(sys.version_info < (3, 11), reason="Python reads a ._pth outside Windows from 3.11 on"),
]


def _site_folders() -> list[str]:
    """The running interpreter's (the venv's) site-packages, as the portable build lists its own."""
    paths = sysconfig.get_paths()
    return [folder for folder in dict.fromkeys([paths["purelib"], paths["platlib"], *site.getsitepackages()])
            if os.path.isdir(folder)]


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("portable")
    folder = root / "python_embeded"
    (root / "ComfyUI").mkdir()
    folder.mkdir()
    python = folder / "python"
    shutil.copy2(os.path.realpath(sys.executable), python)  # the real binary: a venv's python is a symlink
    stdlib = sysconfig.get_paths()["stdlib"]
    dynload = sysconfig.get_config_var("DESTSHARED") or os.path.join(stdlib, "lib-dynload")
    lines = [stdlib, dynload, ".", "../ComfyUI", *_site_folders(), "import site"]
    (folder / "python._pth").write_text("\n".join(lines) + "\n")
    probe = subprocess.run([str(python), "-c", "import json, sys; print(json.dumps([sys.flags.isolated, sys.path]))"],
                           capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=launcher.PACKAGE_PARENT), timeout=60)
    assert probe.returncode == 0, f"the copied interpreter does not start: {probe.stderr[-2000:]}"
    isolated, path = json.loads(probe.stdout)
    assert isolated == 1 and launcher.PACKAGE_PARENT not in path  # the ._pth is honoured: PYTHONPATH is ignored
    assert str(root / "ComfyUI") in path and str(folder) in path
    return python


def _env(processes: int = 1, pythonpath=()) -> dict:
    env = launcher.build_env(gpus=[], pythonpath=pythonpath, processes=processes)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _finish(job: launcher.TrainingJob, timeout: float = 180) -> launcher.JobOutcome:
    try:
        job.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        job.kill()
    return job.finish()


def test_the_old_start_fails_there_as_on_windows(embedded, tmp_path):
    env = _env()
    assert env["PYTHONPATH"].split(os.pathsep)[0] == launcher.PACKAGE_PARENT
    old = subprocess.run([str(embedded), "-m", "ipa_train.train", "--config", str(tmp_path / "run.json")],
                         cwd=launcher.PACKAGE_PARENT, env=env, capture_output=True, text=True, timeout=60)
    assert old.returncode == 1 and "No module named 'ipa_train'" in old.stderr, old.stderr[-2000:]


def test_the_start_script_puts_the_pack_and_the_extra_folders_first(embedded, tmp_path):
    """The extra folders (the node's ``extra_pythonpath``: tests' stand-in trainers, stand-in packages) reach the
    trainer without PYTHONPATH, and the stream settings that isolated mode ignores are applied."""
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "probe_module.py").write_text(
        "import json, sys\n"
        "print(json.dumps({'path': sys.path, 'argv': sys.argv[1:], 'encoding': sys.stdout.encoding,\n"
        "                  'line_buffering': sys.stdout.line_buffering, 'name': __name__}))\n"
    )
    env = _env(pythonpath=[str(extra)])
    for encoding, expected in (("utf-8", "utf-8"), ("latin-1", "iso8859-1")):
        env["PYTHONIOENCODING"] = encoding
        command = launcher.build_command(tmp_path / "run.json", 1, module="probe_module", python=str(embedded))
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
        seen = json.loads(done.stdout)
        assert seen["path"][:2] == [launcher.PACKAGE_PARENT, str(extra)] and seen["name"] == "__main__"
        assert seen["argv"] == ["--config", str(tmp_path / "run.json")]
        assert seen["encoding"].replace("_", "-").lower() in (encoding, expected) and seen["line_buffering"] is True


@pytest.mark.parametrize("processes", [1, 2])
def test_two_steps_through_the_launcher(embedded, tmp_path, processes):
    data = make_dataset(tmp_path / "ds", preferred=2)
    config = tiny_config(data, tmp_path / "out", steps=2)
    config.save(tmp_path / "run.json")
    command = launcher.build_command(tmp_path / "run.json", processes, python=str(embedded))
    job = launcher.TrainingJob(command, _env(processes), cwd=launcher.PACKAGE_PARENT, log_path=tmp_path / "train.log",
                               stop_file=config.stop_path)
    outcome = _finish(job)
    assert outcome.status == "finished" and outcome.returncode == 0, outcome.error_text()
    started = next(event for event in outcome.events if event["event"] == "started")
    assert started["world_size"] == processes
    assert [event["step"] for event in outcome.events if event["event"] == "step"] == [1, 2]
    lora, _ = load_safetensors(outcome.final["lora_path"])
    assert "diffusion_model.blocks.0.self_attn.q.lora_B.weight" in lora
