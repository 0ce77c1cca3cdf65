"""Running a study's subprocesses a few at a time (the studies' shared job runner)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Sequence

Job = tuple[str, list[str], "Path | None"]  # (name, command line, log file or None for no output)


def run_jobs(jobs: Sequence[Job], parallel: int, cwd: Path, poll: float = 5.0) -> None:
    """Run ``jobs`` in order, ``parallel`` at a time, each logging to its file (appended); prints when each
    starts and ends."""
    pending, running = list(jobs), []
    while pending or running:
        while pending and len(running) < parallel:
            name, args, log = pending.pop(0)
            out = open(log, "a") if log is not None else subprocess.DEVNULL
            print(f"{time.strftime('%H:%M:%S')} start {name}", flush=True)
            running.append((subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=cwd), name))
        time.sleep(poll)
        for process, name in list(running):
            if process.poll() is not None:
                print(f"{time.strftime('%H:%M:%S')} {name} exited {process.returncode}", flush=True)
                running.remove((process, name))
