"""Running a study's subprocesses a few at a time, and reading their runs' TensorBoard scalars (the
studies' shared job runner)."""

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


def run_scalars(run_dir: Path, tags: Sequence[str]) -> dict[str, list[tuple[int, float]]]:
    """Each tag's (step, value) pairs in a run's TensorBoard events (every event; [] for a tag it never logged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: PLC0415 - heavy

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    logged = set(acc.Tags()["scalars"])
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] if tag in logged else [] for tag in tags}
