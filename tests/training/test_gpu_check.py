"""``benchmarks/gpu_check.py --dry-run``, as CI runs it: on the CPU it imports what the GPU run needs, prints the
planner's prediction for every memory mode it would measure, and writes nothing."""

from __future__ import annotations

import subprocess
import sys

from support.trainer_helpers import REPO_ROOT, subprocess_env


def test_gpu_check_dry_run_imports_plans_and_writes_nothing(tmp_path):
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    out = tmp_path / "results"
    env = {k: v for k, v in subprocess_env().items() if k != "COMFYUI_PATH"}
    done = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    for mode in gpu_check.MODES:
        assert any(line.strip().startswith(mode) and "predicted peak" in line for line in lines), (mode, done.stdout)
    assert "COMFYUI_PATH unset" in done.stdout and f"writes {out}/gpu-" in done.stdout
    assert not out.exists() and list(tmp_path.iterdir()) == [], list(tmp_path.iterdir())
