"""The scaled LPG / GROOVE reproduction: meta-train, meta-test, report. Resumable at every stage.

    python scripts/lpg_study.py train    # meta-train every arm x seed (two at a time, 1 torch thread each)
    python scripts/lpg_study.py test     # meta-test every finished run (and the untrained baseline)
    python scripts/lpg_study.py transfer # CartPole with the learned LPG vs A2C (3 seeds each, same network)
    python scripts/lpg_study.py report   # tables -> results/lpg/report.md, curves -> results/lpg/*.csv, plot

Run directories live in ``runs/lpg-study/`` (not committed); what is committed goes to
``results/lpg/``: each run's ``curve.csv`` and ``summary.json``, every ``meta_test`` JSON, the
report and the plot. ``train`` resumes a run that has a checkpoint and skips a finished one;
``test`` skips results that exist. Scale (documented in the report): 32 agents x 16 envs,
rollouts of 20, K = 5, GRU 64, 2,000 meta-updates on ``small`` levels (lifetime 250 updates).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from study_stats import mean_se

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "lpg-study"
RESULTS = ROOT / "results" / "lpg"
ARMS = {"uniform": (0, 1, 2), "groove": (0, 1)}
UNTRAINED_INITS = (1, 2, 3, 4)  # besides the test seed 1000
COMMON = ["--levels", "small", "--meta-steps", "2000", "--meta-lr", "3e-4", "--num-agents", "32",
          "--envs-per-agent", "16", "--lpg.gru-width", "64", "--checkpoint-interval", "50", "--no-progress",
          "--torch-threads", "1"]
TESTS = {  # name -> (levels, num_levels, lifetime)
    "small-250": ("small", 128, 250),
    **{f"{level}-{life}": (level, 16 if life == 250 else 8, life)  # 8 layouts at the long lifetime (10x the cost)
       for life in (250, 2500) for level in ("dense", "sparse", "long", "longer", "long_dense")},
}


def run_dir(arm: str, seed: int) -> Path:
    return RUNS / f"{arm}-s{seed}"


def finished(path: Path) -> bool:
    summary = path / "summary.json"
    return summary.is_file() and json.loads(summary.read_text()).get("status") == "completed"


def train(parallel: int) -> None:
    """Meta-train every arm x seed not finished yet, ``parallel`` at a time."""
    jobs = [(arm, seed) for arm, seeds in ARMS.items() for seed in seeds if not finished(run_dir(arm, seed))]
    running: list[tuple[subprocess.Popen, str]] = []
    while jobs or running:
        while jobs and len(running) < parallel:
            arm, seed = jobs.pop(0)
            path = run_dir(arm, seed)
            resume = (path / "checkpoints" / "latest.pt").is_file()
            args = [sys.executable, "-m", "rlmeta.cli", "meta-train", "--run-dir", str(path)]
            args += ["--resume"] if resume else [*COMMON, "--curriculum", arm, "--seed", str(seed)]
            log = open(RUNS / f"{arm}-s{seed}.log", "a")
            print(f"{time.strftime('%H:%M:%S')} start {arm} seed {seed}{' (resume)' if resume else ''}", flush=True)
            running.append((subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), f"{arm}-s{seed}"))
        time.sleep(5)
        for process, name in list(running):
            if process.poll() is not None:
                print(f"{time.strftime('%H:%M:%S')} {name} exited {process.returncode}", flush=True)
                running.remove((process, name))


def test(parallel: int, only: list[str] | None = None) -> None:
    """Meta-test every finished run on every test set (skipping results that exist), and the untrained LPG,
    ``parallel`` at a time; A2C references are computed once per test set (``a2c_cache.json``)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    objectives = {f"{arm}-s{seed}": str(run_dir(arm, seed) / "lpg.pt") for arm, seeds in ARMS.items()
                  for seed in seeds if finished(run_dir(arm, seed))}
    objectives["untrained"] = "untrained"  # initialised with the test seed (1000)
    for init in UNTRAINED_INITS:  # more initialisations on the same levels: the baseline is a distribution
        objectives[f"untrained-i{init}"] = f"untrained:{init}"
    jobs = []
    for test_name, (levels, num_levels, lifetime) in TESTS.items():  # one test set at a time: A2C cached first
        if only and test_name not in only:
            continue
        for name, objective in objectives.items():
            if name.startswith("untrained") and test_name != "small-250":
                continue
            if name.startswith("groove") and test_name.endswith("-2500"):
                continue  # the GROOVE comparison is at the meta-training lifetime; 2,500 is the uniform arm's OOD test
            out = RESULTS / f"meta_test-{name}-{test_name}.json"
            if not out.is_file():
                jobs.append((f"{name} on {test_name}", [
                    sys.executable, "-m", "rlmeta.cli", "meta-test", objective, "--levels", levels, "--num-levels",
                    str(num_levels), "--lifetime", str(lifetime), "--out", str(out), "--torch-threads", "1",
                    "--a2c-cache", str(RUNS / "a2c_cache.json")]))
    _run_jobs(jobs, parallel)


def _run_jobs(jobs: list[tuple[str, list[str]]], parallel: int) -> None:
    """Run ``(name, args)`` subprocesses; per test set the first alone (it fills the A2C cache), the rest
    ``parallel`` at a time."""
    by_set: dict[str, list[tuple[str, list[str]]]] = {}
    for name, args in jobs:
        by_set.setdefault(name.split(" on ")[1], []).append((name, args))
    for items in by_set.values():
        _run_parallel(items[:1], 1)
        _run_parallel(items[1:], parallel)


def _run_parallel(jobs: list[tuple[str, list[str]]], parallel: int) -> None:
    jobs = list(jobs)
    running: list[tuple[subprocess.Popen, str]] = []
    while jobs or running:
        while jobs and len(running) < parallel:
            name, args = jobs.pop(0)
            print(f"{time.strftime('%H:%M:%S')} meta-test {name}", flush=True)
            running.append((subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL), name))
        time.sleep(2)
        for process, name in list(running):
            if process.poll() is not None:
                if process.returncode:
                    print(f"{time.strftime('%H:%M:%S')} {name} FAILED ({process.returncode})", flush=True)
                running.remove((process, name))


TRANSFER = ["--env", "envpool:CartPole-v1", "--num-envs", "16", "--num-steps", "20", "--total-steps", "100000",
            "--optimizer.name", "adam", "--optimizer.lr", "1e-3", "--optimizer.max-grad-norm", "0.5",
            "--network.hidden", "64", "64", "--eval-episodes", "20", "--eval-greedy", "--no-progress",
            "--checkpoint-interval", "0", "--torch-threads", "2"]


def transfer(objective: str) -> None:
    """A non-grid env: CartPole trained with the learned LPG and with A2C, same network and optimizer."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "transfer-cartpole.json"
    results = json.loads(out.read_text()) if out.is_file() else {}
    for algo in ("lpg", "a2c"):
        for seed in (0, 1, 2):
            key = f"{algo}-s{seed}"
            if key in results:
                continue
            path = RUNS / f"transfer-{key}"
            args = [sys.executable, "-m", "rlmeta.cli", "train", *TRANSFER, "--algo", algo, "--seed", str(seed),
                    "--run-dir", str(path), "--overwrite"] + (["--objective", objective] if algo == "lpg" else [])
            print(f"{time.strftime('%H:%M:%S')} transfer {key}", flush=True)
            subprocess.run(args, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            summary = json.loads((path / "summary.json").read_text())
            results[key] = {"eval_return": summary["eval"]["return_mean"],
                            "train_return_last_100": summary["train_return_mean_last_100"]}
            out.write_text(json.dumps({**results, "objective": objective, "args": TRANSFER}, indent=2) + "\n")


MIN_SPAN = 0.05  # as rlmeta.agents.meta_train: a level whose optimum beats random by less tells nothing


def _normalized(row: dict) -> float | None:
    """(J_end - J_random) / (J* - J_random) from a curve row, None where undefined or uninformative."""
    end, rand, best = float(row["end_return"]), float(row["random_return"]), float(row["optimal_return"])
    if not math.isfinite(end) or best - rand <= MIN_SPAN:
        return None
    return (end - rand) / (best - rand)


def _mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and SE of the finite ``values``."""
    return mean_se([v for v in values if math.isfinite(v)])


def report() -> None:
    """Copy curves and summaries into results/lpg/, write report.md and the curve plot."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    lines = ["# LPG / GROOVE reproduction (scaled): results", "",
             "Generated by `python scripts/lpg_study.py report`; setup in the script's docstring and README.", ""]
    curves = {}
    lines += ["## Meta-training curves: normalised end-of-lifetime return ((J - J_random) / (J* - J_random))", "",
              "| run | lifetimes | first 10% | last 10% | last - first (SE) |", "|---|---|---|---|---|"]
    for arm, seeds in ARMS.items():
        for seed in seeds:
            path = run_dir(arm, seed)
            if not (path / "curve.csv").is_file():
                continue
            name = f"{arm}-s{seed}"
            shutil.copyfile(path / "curve.csv", RESULTS / f"curve-{name}.csv")
            if (path / "summary.json").is_file():
                shutil.copyfile(path / "summary.json", RESULTS / f"summary-{name}.json")
            rows = [r for r in csv.DictReader(open(path / "curve.csv")) if _normalized(r) is not None]
            for r in rows:
                r["normalized"] = _normalized(r)
            values = [r["normalized"] for r in rows]
            curves[name] = rows
            tenth = max(len(values) // 10, 1)
            (m0, s0), (m1, s1) = _mean_se(values[:tenth]), _mean_se(values[-tenth:])
            diff_se = math.sqrt(s0**2 + s1**2)
            lines.append(f"| {name} | {len(values)} | {m0:.3f} +- {s0:.3f} | {m1:.3f} +- {s1:.3f} | "
                         f"{m1 - m0:+.3f} ({(m1 - m0) / diff_se:.1f} SE) |")
    lines += ["", "## Meta-test: normalised score s = (J - J_random) / (J_A2C - J_random), mean over levels", "",
              "| objective | " + " | ".join(TESTS) + " |", "|---|" + "---|" * len(TESTS)]
    scores: dict[str, dict[str, tuple[float, float]]] = {}
    for path in sorted(RESULTS.glob("meta_test-*.json")):
        data = json.loads(path.read_text())
        name = path.stem[len("meta_test-"):]
        for test_name in TESTS:
            if name.endswith("-" + test_name):
                scores.setdefault(name[: -len(test_name) - 1], {})[test_name] = (
                    data.get("normalized_score", math.nan), data.get("normalized_score_se", math.nan))
    for objective, row in scores.items():
        cells = [f"{row[t][0]:.2f} +- {row[t][1]:.2f}" if t in row else "" for t in TESTS]
        lines.append(f"| {objective} | " + " | ".join(cells) + " |")
    untrained = [row["small-250"][0] for name, row in scores.items() if name.startswith("untrained") and "small-250" in row]
    if len(untrained) >= 2:
        mean, se = _mean_se(untrained)
        lines += ["", f"Untrained LPG over {len(untrained)} initialisations (small-250, same levels): "
                  f"{mean:.3f} +- {se:.3f} (mean +- SE over initialisations; "
                  f"min {min(untrained):.2f}, max {max(untrained):.2f})"]
    lines += ["", "## GROOVE vs uniform levels: mean normalised score over the five LPG levels", ""]
    for life in (250, 2500):
        per_arm = {}
        for arm, seeds in ARMS.items():
            seed_means = []
            for seed in seeds:
                row = scores.get(f"{arm}-s{seed}", {})
                values = [row[f"{lvl}-{life}"][0] for lvl in ("dense", "sparse", "long", "longer", "long_dense")
                          if f"{lvl}-{life}" in row]
                if len(values) == 5:
                    seed_means.append(statistics.fmean(values))
            per_arm[arm] = seed_means
        if all(len(v) >= 2 for v in per_arm.values()):
            (mg, sg), (mu, su) = _mean_se(per_arm["groove"]), _mean_se(per_arm["uniform"])
            lines.append(f"- lifetime {life}: GROOVE {mg:.3f} +- {sg:.3f} ({len(per_arm['groove'])} seeds), uniform "
                         f"{mu:.3f} +- {su:.3f} ({len(per_arm['uniform'])} seeds); difference {mg - mu:+.3f} +- "
                         f"{math.sqrt(sg**2 + su**2):.3f}")
    transfer_file = RESULTS / "transfer-cartpole.json"
    if transfer_file.is_file():
        data = json.loads(transfer_file.read_text())
        lines += ["", "## A non-grid env: CartPole-v1, 100k steps, greedy evaluation over 20 episodes", ""]
        for algo in ("lpg", "a2c"):
            values = [data[k]["eval_return"] for k in data if k.startswith(algo + "-s")]
            m, se = _mean_se(values)
            lines.append(f"- {algo}: {m:.1f} +- {se:.1f} over {len(values)} seeds ({', '.join(f'{v:.0f}' for v in values)})")
    (RESULTS / "report.md").write_text("\n".join(lines) + "\n")
    _plot(curves)
    _plot_scores(scores)
    print("\n".join(lines))


def _plot(curves: dict[str, list[dict]]) -> None:
    try:
        import matplotlib  # noqa: PLC0415 - optional: only the plot needs it

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, rows in curves.items():
        by_step: dict[int, list[float]] = {}
        for r in rows:
            by_step.setdefault(int(r["meta_step"]), []).append(float(r["normalized"]))
        steps = sorted(by_step)
        ax.plot(steps, [statistics.fmean(by_step[s]) for s in steps], label=name,
                linestyle="-" if name.startswith("uniform") else "--")
    ax.set_xlabel("meta-update")
    ax.set_ylabel("normalised end-of-lifetime return")
    ax.set_title("LPG meta-training on small grid worlds (32 agents)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "meta_training.png", dpi=120)


def _plot_scores(scores: dict[str, dict[str, tuple[float, float]]]) -> None:
    """Normalised score per test set (bars: objectives, with standard errors)."""
    try:
        import matplotlib  # noqa: PLC0415 - optional: only the plot needs it

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return
    tests = [t for t in TESTS if any(t in row for row in scores.values())]
    objectives = sorted(scores)
    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / max(len(objectives), 1)
    for i, objective in enumerate(objectives):
        row = scores[objective]
        xs = [j + i * width for j, t in enumerate(tests) if t in row]
        ys = [row[t][0] for t in tests if t in row]
        errs = [row[t][1] for t in tests if t in row]
        ax.bar(xs, ys, width, yerr=errs, label=objective, capsize=2)
    ax.axhline(1.0, color="grey", linewidth=0.8)  # A2C's level
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(tests))], tests, rotation=30, ha="right")
    ax.set_ylabel("normalised score (A2C = 1)")
    ax.set_title("Meta-test per level set and lifetime")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(RESULTS / "meta_test_scores.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=("train", "test", "transfer", "report"))
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="test: only these test sets (e.g. small-250)")
    parser.add_argument("--objective", default=str(run_dir("uniform", 0) / "lpg.pt"),
                        help="transfer: the learned LPG to train CartPole with")
    args = parser.parse_args()
    RUNS.mkdir(parents=True, exist_ok=True)
    {"train": lambda: train(args.parallel), "test": lambda: test(args.parallel, args.only),
     "transfer": lambda: transfer(args.objective),
     "report": report}[args.stage]()


if __name__ == "__main__":
    main()
