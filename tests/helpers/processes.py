"""Runs in subprocesses, stopped by signals: what job schedulers, ``timeout`` and Ctrl-C do to a run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path


def terminate_after_checkpoint(cli_args: list[str], run: Path, settle: float = 0.3) -> tuple[int, str, dict]:
    """Start ``rlmeta <cli_args>``, send SIGTERM once it wrote a checkpoint; ``(exit status, stderr, summary)``."""
    process = subprocess.Popen([sys.executable, "-m", "rlmeta.cli", *cli_args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "checkpoints" / "latest.pt").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(settle)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    return process.returncode, err, summary
