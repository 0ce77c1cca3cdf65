"""TA-LPG vs LPG discovered by evolution strategies at equal budget (issue: learned objectives II).

    python scripts/ta_lpg_study.py train [--parallel 2]   # resumable: each arm's es-train run

Arms (``rlmeta es-train``, same settings but the lifetime inputs): ``lpg-es`` (LPG) and ``ta-lpg-es``
(TA-LPG: LPG reading n/N and log N). Scale, set for a 2-core CPU: 32 candidates (16 antithetic
pairs), 8 tabular agents each on its own ``small`` level, 8 sub-envs per agent, lifetimes drawn
log-uniformly in [10, 250] per generation, a GRU of 16 units (groove's LPG: 256), ``GENERATIONS``
generations. Runs live in ``runs/ta-lpg-study/`` (not committed). The meta-test stage (lifetimes
10, 30, 100, 250 and 1,000) and the report are the next step of this study.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "ta-lpg-study"
GENERATIONS = 300
ARMS = {"lpg-es": [], "ta-lpg-es": ["--lpg.lifetime-conditioning"]}
SEEDS = (0,)
COMMON = ["--levels", "small", "--popsize", "32", "--agents-per-candidate", "8", "--envs-per-agent", "8",
          "--lifetime-min", "10", "--lifetime-max", "250", "--lpg.gru-width", "16", "--checkpoint-interval", "5",
          "--no-progress", "--torch-threads", "1"]


def run_dir(arm: str, seed: int) -> Path:
    return RUNS / f"{arm}-s{seed}"


def finished(path: Path, generations: int) -> bool:
    summary = path / "summary.json"
    if not summary.is_file():
        return False
    data = json.loads(summary.read_text())
    return data.get("status") == "completed" and data.get("generations", 0) >= generations


def train(parallel: int, generations: int) -> None:
    """Run (or resume) every arm x seed to ``generations``, ``parallel`` at a time."""
    jobs = []
    for seed in SEEDS:
        for arm, extra in ARMS.items():
            path = run_dir(arm, seed)
            if finished(path, generations):
                continue
            args = [sys.executable, "-m", "rlmeta.cli", "es-train", "--run-dir", str(path),
                    "--generations", str(generations)]
            if (path / "checkpoints" / "latest.pt").is_file():
                args += ["--resume"]
            else:
                args += [*COMMON, *extra, "--seed", str(seed)]
            jobs.append((f"{arm}-s{seed}", args))
    RUNS.mkdir(parents=True, exist_ok=True)
    running: list[tuple[subprocess.Popen, str]] = []
    while jobs or running:
        while jobs and len(running) < parallel:
            name, args = jobs.pop(0)
            log = open(RUNS / f"{name}.log", "a")
            print(f"{time.strftime('%H:%M:%S')} start {name}", flush=True)
            running.append((subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), name))
        time.sleep(10)
        for process, name in list(running):
            if process.poll() is not None:
                print(f"{time.strftime('%H:%M:%S')} {name} exited {process.returncode}", flush=True)
                running.remove((process, name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=("train",))
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--generations", type=int, default=GENERATIONS)
    args = parser.parse_args()
    train(args.parallel, args.generations)


if __name__ == "__main__":
    main()
