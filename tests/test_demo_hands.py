"""`python -m ipa_train demo` (the hand-mask showcase) and the command dispatcher."""

from __future__ import annotations

import subprocess
import sys

from PIL import Image

from conftest import REPO_ROOT
from ipa_train.__main__ import main


def test_demo_writes_the_preview_and_reports_the_loss(tmp_path, capsys):
    assert main(["demo", "--frames", "9", "--width", "160", "--height", "96", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    png = tmp_path / "hand_masks_preview.png"
    assert str(png.resolve()) in out
    assert "latent hand mask (1, 1, 3, 12, 20)" in out
    assert "loss 0.6931" in out  # policy == reference gives log 2
    with Image.open(png) as image:
        assert image.size == (4 * 160, 2 * 96)  # frames 0, 3, 6, 8; pixel row and latent row
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_dispatcher_lists_commands_and_refuses_unknown_ones(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out
    assert main(["train-everything"]) == 2
    assert "unknown command 'train-everything'" in capsys.readouterr().err


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "ipa_train", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "demo" in result.stdout
