"""The single-file examples in ``examples/`` run end to end (briefly) and stay short enough to read."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
META_GAMMA_SNAKE = ROOT / "examples" / "meta_gamma_snake.py"


def test_meta_gamma_snake_is_under_150_lines():
    assert len(META_GAMMA_SNAKE.read_text().splitlines()) < 150


def test_meta_gamma_snake_runs_and_moves_gamma():
    # Four rollouts of 64 x 16 steps: three one-step meta-updates. The meta-optimizer is Adam, whose
    # first steps move raw gamma by about the meta learning rate whatever the gradient's size, so a
    # larger rate than the default makes the move plain in the printed 4 decimals.
    init = 0.9
    command = [sys.executable, str(META_GAMMA_SNAKE), "--total-steps", "4096", "--threads", "1",
               "--init-gamma", str(init), "--meta-lr", "0.1", "--log-every", "1", "--seed", "0"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    match = re.search(r"final gamma ([0-9.]+)", done.stdout)
    assert match, done.stdout
    gamma = float(match.group(1))
    assert 0.0 < gamma < 1.0
    assert abs(gamma - init) > 1e-3, done.stdout
    assert re.search(r"mean return of the last \d+ episodes [0-9.]+", done.stdout), done.stdout
