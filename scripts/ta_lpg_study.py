"""TA-LPG vs LPG discovered by evolution strategies at equal budget (issue: learned objectives II).

    python scripts/ta_lpg_study.py train [--parallel 2] [--arms A ...]   # resumable: each arm's es-train run
    python scripts/ta_lpg_study.py test [--parallel 2] [--arms A ...]    # meta-test finished arms at lifetimes 10..1000
    python scripts/ta_lpg_study.py report                 # -> results/ta_lpg/
    python scripts/ta_lpg_study.py initial-population     # both arms' population fitness at the common start
    python scripts/ta_lpg_study.py train|test|report --generations 600   # the arms at another ES length (runs
                                                          # and results tagged: results/ta_lpg/generations-600/)
    python scripts/ta_lpg_study.py train|test --seeds 2 --arms lpg-es ta-lpg-es-unit   # a further ES seed
    python scripts/ta_lpg_study.py report --seeds 0 1 2   # report every seed named (default: 0 and 1)

Arms (``rlmeta es-train``, same settings but the lifetime inputs): ``lpg-es`` (LPG), ``ta-lpg-es``
(TA-LPG: LPG reading n/N and log N) and ``ta-lpg-es-unit`` (the same TA-LPG reading log N mapped to
[0, 1] over lifetimes 10-250, ``--lpg.lifetime-normalised``: the same information on n/N's scale, a
test of whether ES's perturbations of the log-N weights held ``ta-lpg-es`` back); beside them ``ta-lpg-metagrad``, TA-LPG meta-trained by
meta-gradients through K = 5 updates (``rlmeta meta-train``, 2,000 meta-updates, lifetime 250), where
the paper expects no time dependence. Scale, set for a 2-core CPU: 32 candidates (16 antithetic
pairs), 8 tabular agents each on its own ``small`` level, 8 sub-envs per agent, lifetimes drawn
log-uniformly in [10, 250] per generation, a GRU of 16 units (groove's LPG: 256), ``GENERATIONS``
generations. Runs live in ``runs/ta-lpg-study/`` (not committed). ``test`` meta-tests each finished
arm on 64 held-out ``small`` levels at lifetimes 10, 30, 100, 250 (the meta-training range) and
1,000 (out of distribution), recording Spearman's rho of n/N with LPG's RMS pi_hat and with the
policy's entropy over each lifetime, and meta-tests each time-aware arm again with n/N frozen at
0, 0.5 and 1 (``FROZEN``; log N stays true) at lifetimes 100, 250 and 1,000: the counterfactual
that shows whether the learned rule's score rests on its reading of time; ``report`` writes the
fitness curves (CSV), the tables and a plot to ``results/ta_lpg/``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import statistics
import sys
from pathlib import Path

from study_jobs import run_jobs
from study_stats import mean_se

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "ta-lpg-study"
RESULTS = ROOT / "results" / "ta_lpg"
LIFETIMES = (10, 30, 100, 250, 1000)
TEST_LEVELS = 64
GENERATIONS = 300
ARMS = {"lpg-es": [], "ta-lpg-es": ["--lpg.lifetime-conditioning"],
        # The same TA-LPG with log N on n/N's scale (0 to 1 over lifetimes 10-250): tests whether ES's
        # perturbations of the log-N weights (an input of 2.3-5.5) are what held the TA-LPG arm back.
        "ta-lpg-es-unit": ["--lpg.lifetime-conditioning", "--lpg.lifetime-normalised"]}
SEEDS = (0, 1)  # default ES seeds per arm (seed 1: lpg-es and ta-lpg-es-unit only; --seeds adds replicates); missing ones are skipped
FROZEN = (0.0, 0.5, 1.0)
FROZEN_LIFETIMES = (100, 250, 1000)
REFERENCE_ARM = "lpg-es"  # the arm whose meta-tests' A2C and random returns normalise every arm
METAGRAD = {"ta-lpg-metagrad": ["--levels", "small", "--meta-steps", "2000", "--meta-lr", "3e-4", "--lifetime", "250",
                                "--lpg.gru-width", "16", "--lpg.lifetime-conditioning", "--checkpoint-interval", "50",
                                "--no-progress", "--torch-threads", "1"]}
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


def _completed(path: Path) -> bool:
    summary = path / "summary.json"
    return summary.is_file() and json.loads(summary.read_text()).get("status") == "completed"


def train(parallel: int, generations: int, arms: list[str] | None = None) -> None:
    """Run (or resume) every arm x seed (or the ``arms`` named) to ``generations``, ``parallel`` at a time."""
    jobs = []
    for seed in SEEDS:
        for arm, extra in ARMS.items():
            if arms is not None and arm not in arms:
                continue
            path = run_dir(arm, seed)
            if finished(path, generations):
                continue
            args = [sys.executable, "-m", "rlmeta.cli", "es-train", "--run-dir", str(path),
                    "--generations", str(generations)]
            if (path / "checkpoints" / "latest.pt").is_file():
                args += ["--resume"]
            else:
                args += [*COMMON, *extra, "--seed", str(seed)]
            jobs.append((f"{arm}-s{seed}", args, RUNS / f"{arm}-s{seed}.log"))
        for arm, options in METAGRAD.items():
            path = run_dir(arm, seed)
            if _completed(path) or (arms is not None and arm not in arms):
                continue
            args = [sys.executable, "-m", "rlmeta.cli", "meta-train", "--run-dir", str(path)]
            resume = (path / "checkpoints" / "latest.pt").is_file()
            jobs.append((f"{arm}-s{seed}", args + (["--resume"] if resume else [*options, "--seed", str(seed)]),
                         RUNS / f"{arm}-s{seed}.log"))
    RUNS.mkdir(parents=True, exist_ok=True)
    run_jobs(jobs, parallel, ROOT, poll=10)


def test(parallel: int, generations: int, arms: list[str] | None = None) -> None:
    """Meta-test every finished arm (or the ``arms`` named) at every lifetime (skipping results that exist)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    chosen = [arm for arm in (*ARMS, *METAGRAD) if arms is None or arm in arms]
    for lifetime in LIFETIMES:
        jobs = []
        for seed in SEEDS:
            for arm in chosen:
                path, out = run_dir(arm, seed), RESULTS / f"meta_test-{arm}-s{seed}-{lifetime}.json"
                done = finished(path, generations) if arm in ARMS else _completed(path)
                if done and not out.is_file():
                    jobs.append((f"meta-test {arm}-s{seed} at {lifetime}", [
                        sys.executable, "-m", "rlmeta.cli", "meta-test", str(path / "lpg.pt"), "--levels", "small",
                        "--num-levels", str(TEST_LEVELS), "--lifetime", str(lifetime), "--out", str(out),
                        "--torch-threads", "1", "--a2c-cache", str(RUNS / "a2c_cache.json")], None))
        if lifetime in FROZEN_LIFETIMES:
            for seed in SEEDS:
                for arm in (a for a in time_aware() if a in chosen):
                    path = run_dir(arm, seed)
                    done = finished(path, generations) if arm in ARMS else _completed(path)
                    for value in FROZEN:
                        out = RESULTS / f"meta_test-{arm}-s{seed}-{lifetime}-frozen{value:g}.json"
                        if done and not out.is_file():
                            jobs.append((f"meta-test {arm}-s{seed} at {lifetime}, n/N frozen at {value:g}", [
                                sys.executable, "-m", "rlmeta.cli", "meta-test", str(path / "lpg.pt"), "--levels",
                                "small", "--num-levels", str(TEST_LEVELS), "--lifetime", str(lifetime), "--out",
                                str(out), "--torch-threads", "1", "--a2c-cache", str(RUNS / "a2c_cache.json"),
                                "--frozen-progress", str(value)], None))
        run_jobs(jobs[:1], 1, ROOT, poll=2)  # the first of a lifetime fills the A2C cache alone
        run_jobs(jobs[1:], parallel, ROOT, poll=2)


def time_aware() -> list[str]:
    """The arms whose LPG reads n/N and log N."""
    return [arm for arm, extra in {**ARMS, **METAGRAD}.items() if "--lpg.lifetime-conditioning" in extra]


def report() -> None:
    """Fitness curves as CSV, the meta-test table per lifetime with TA-LPG's gain, the schedules, a plot."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    lines = ["# TA-LPG vs LPG discovered by evolution strategies (scaled): results", "",
             "Generated by `python scripts/ta_lpg_study.py report`; setup in the script's docstring.", "",
             "## Meta-test: normalised score (J - J_random) / (J_A2C - J_random) on 64 held-out small levels", "",
             "| arm | " + " | ".join(f"lifetime {n}" for n in LIFETIMES) + " |", "|---|" + "---|" * len(LIFETIMES)]
    scores: dict[str, dict[int, dict]] = {}
    for arm in (*ARMS, *METAGRAD):
        for seed in SEEDS:
            name = f"{arm}-s{seed}"
            if arm in ARMS and (run_dir(arm, seed) / "curve.csv").is_file():
                shutil.copyfile(run_dir(arm, seed) / "curve.csv", RESULTS / f"curve-{name}.csv")
            for lifetime in LIFETIMES:
                path = RESULTS / f"meta_test-{name}-{lifetime}.json"
                if path.is_file():
                    scores.setdefault(name, {})[lifetime] = json.loads(path.read_text())
    reference = scores.get(f"{REFERENCE_ARM}-s{SEEDS[0]}", {})
    for name, row in scores.items():
        for n in row:  # every arm against the same A2C and random returns per lifetime
            if n in reference:
                row[n] = rescored(row[n], reference[n])
    for name, row in scores.items():
        cells = [f"{row[n]['normalized_score']:.2f} +- {row[n]['normalized_score_se']:.2f}" if n in row else ""
                 for n in LIFETIMES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Every arm is normalised by the A2C and random returns of the {REFERENCE_ARM}-s{SEEDS[0]} meta-test at each "
              "lifetime (same levels; A2C's return per level differs between meta-test runs made before and after "
              "meta-test seeded its own random numbers).", "",
              f"## Each arm minus the {REFERENCE_ARM} of its ES seed, paired over the same levels (bootstrap SE)", "",
              "| arm | " + " | ".join(f"lifetime {n}" for n in LIFETIMES) + " | mean |",
              "|---|" + "---|" * (len(LIFETIMES) + 1)]
    gaps: dict[str, list[float]] = {}
    by_lifetime: dict[str, dict[int, list[float]]] = {}  # arm -> lifetime -> one paired gap per ES seed
    for name, row in scores.items():
        arm, seed = name.rsplit("-s", 1)
        base = scores.get(f"{REFERENCE_ARM}-s{seed}")  # the LPG of the same ES seed
        if arm == REFERENCE_ARM or base is None:
            continue
        diffs = {n: paired_difference(row[n], base[n]) for n in LIFETIMES if n in row and n in base}
        cells = [f"{diffs[n][0]:+.2f} +- {diffs[n][1]:.2f}" if n in diffs else "" for n in LIFETIMES]
        mean = sum(d for d, _ in diffs.values()) / len(diffs) if diffs else float("nan")
        if len(diffs) == len(LIFETIMES):
            gaps.setdefault(arm, []).append(mean)
            for n, (d, _) in diffs.items():
                by_lifetime.setdefault(arm, {}).setdefault(n, []).append(d)
        lines.append(f"| {name} (vs {REFERENCE_ARM}-s{seed}) | " + " | ".join(cells) + f" | {mean:+.3f} |")
    if any(len(v) > 1 for v in gaps.values()):
        lines += ["", "Each arm minus the LPG of its ES seed, across ES seeds (mean +- SE over the seeds; the seed is "
                  "the unit, so the SE holds the search's variation as well as the levels'):", "",
                  "| arm | seeds | " + " | ".join(f"lifetime {n}" for n in LIFETIMES) + " | mean |",
                  "|---|---|" + "---|" * (len(LIFETIMES) + 1)]
        for arm, values in gaps.items():
            cells = [mean_se(by_lifetime[arm][n]) for n in LIFETIMES]
            mean, se = mean_se(values)
            lines.append(f"| {arm} | {len(values)} | " + " | ".join(f"{m:+.3f} +- {s:.3f}" for m, s in cells)
                         + f" | {mean:+.3f} +- {se:.3f} |")
        lines += ["", "Mean over lifetimes, per seed: " + "; ".join(
            f"{arm}: " + ", ".join(f"{v:+.3f}" for v in values) for arm, values in gaps.items())]
    lines += ["", "## Spearman's rho of n/N with LPG's RMS pi_hat / with the policy entropy, over each lifetime", "",
              "| arm | " + " | ".join(f"lifetime {n}" for n in LIFETIMES) + " |", "|---|" + "---|" * len(LIFETIMES)]
    for name, row in scores.items():
        cells = [f"{row[n]['spearman_progress']['pi_hat_rms']:+.2f} / {row[n]['spearman_progress']['entropy']:+.2f}"
                 if n in row and "spearman_progress" in row[n] else "" for n in LIFETIMES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Counterfactual: n/N frozen (log N true)", "",
              "Normalised score with the true n/N and with n/N frozen; in brackets, true minus frozen with its "
              "paired bootstrap SE over the same levels (the agents, levels and A2C reference are shared).", "",
              "| arm | lifetime | true n/N | " + " | ".join(f"frozen {v:g}" for v in FROZEN) + " |",
              "|---|---|---|" + "---|" * len(FROZEN)]
    for arm in time_aware():
        for seed in SEEDS:
            name = f"{arm}-s{seed}"
            for lifetime in FROZEN_LIFETIMES:
                paths = [RESULTS / f"meta_test-{name}-{lifetime}-frozen{v:g}.json" for v in FROZEN]
                if lifetime not in scores.get(name, {}) or not all(p.is_file() for p in paths):
                    continue
                true = scores[name][lifetime]
                cells = []
                for path in paths:
                    frozen = json.loads(path.read_text())
                    if lifetime in reference:
                        frozen = rescored(frozen, reference[lifetime])
                    diff, se = paired_difference(true, frozen)
                    cells.append(f"{frozen['normalized_score']:.2f} ({diff:+.2f} +- {se:.2f})")
                lines.append(f"| {name} | {lifetime} | {true['normalized_score']:.2f} +- {true['normalized_score_se']:.2f} | "
                             + " | ".join(cells) + " |")
    (RESULTS / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot()


def rescored(result: dict, reference: dict) -> dict:
    """``result`` normalised by ``reference``'s per-level A2C and random returns (same levels): its
    normalised score and bootstrap SE over levels, the rest as is."""
    import numpy as np  # noqa: PLC0415

    from rlmeta.agents.meta_test import bootstrap_ratio_se  # noqa: PLC0415

    if [lvl["level"] for lvl in result["per_level"]] != [lvl["level"] for lvl in reference["per_level"]]:
        raise ValueError("rescoring a meta-test against one on different levels")
    j = np.array([lvl["return"] for lvl in result["per_level"]])
    rand = np.array([lvl["random"] for lvl in reference["per_level"]])
    a2c = np.array([lvl["a2c"] for lvl in reference["per_level"]])
    per_level = [{**lvl, "random": r, "a2c": a} for lvl, r, a in zip(result["per_level"], rand, a2c)]
    return {**result, "per_level": per_level, "normalized_score": float((j - rand).mean() / (a2c - rand).mean()),
            "normalized_score_se": bootstrap_ratio_se(j - rand, a2c - rand)}


def paired_difference(a: dict, b: dict, samples: int = 2000) -> tuple[float, float]:
    """Normalised score of meta-test ``a`` minus ``b`` (same levels and A2C reference) and its bootstrap SE
    over levels, resampling the levels jointly."""
    import numpy as np  # noqa: PLC0415 - numpy comes with the library

    ja, jb = (np.array([lvl["return"] for lvl in r["per_level"]]) for r in (a, b))
    rand = np.array([lvl["random"] for lvl in a["per_level"]])
    a2c = np.array([lvl["a2c"] for lvl in a["per_level"]])
    if [lvl["level"] for lvl in a["per_level"]] != [lvl["level"] for lvl in b["per_level"]]:
        raise ValueError("paired difference of meta-tests on different levels")
    idx = np.random.default_rng(0).integers(0, len(ja), size=(samples, len(ja)))
    diffs = (ja[idx] - jb[idx]).mean(1) / (a2c[idx] - rand[idx]).mean(1)
    return float((ja - jb).mean() / (a2c - rand).mean()), float(diffs.std(ddof=1))


def _plot() -> None:
    import matplotlib  # noqa: PLC0415 - optional: only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7, 4))
    for path in sorted(RESULTS.glob("curve-*.csv")):
        rows = list(csv.DictReader(open(path)))
        if rows:
            ax.plot([int(r["generation"]) for r in rows], [float(r["fitness_mean"]) for r in rows],
                    label=path.stem[len("curve-"):], lw=0.8)
    ax.set_xlabel("ES generation")
    ax.set_ylabel("population's mean fitness (normalised return)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "fitness.png", dpi=120)


def initial_population(generations: int = 8) -> None:
    """The ES arms' population fitness at their common initial center (each arm's own ``es-train``
    command with lr 1e-12: the center stays), same lifetimes and levels per generation: what the
    time inputs' perturbations cost before any learning, per time-aware arm against LPG's. Writes
    ``results/ta_lpg/initial_population.json``."""
    import statistics  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    fitness = {}
    for arm, extra in ARMS.items():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "rlmeta.cli", "es-train", "--run-dir", f"{tmp}/run", *COMMON, *extra,
                            "--seed", "0", "--generations", str(generations), "--lr", "1e-12"],
                           check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            with open(f"{tmp}/run/curve.csv") as f:
                fitness[arm] = [float(row["fitness_mean"]) for row in csv.DictReader(f)]
    out: dict = {"generations": generations, "fitness": fitness, "minus_lpg": {}}
    for arm in ARMS:
        if arm == "lpg-es":
            continue
        diff = [a - b for a, b in zip(fitness[arm], fitness["lpg-es"])]
        out["minus_lpg"][arm] = {"mean": statistics.mean(diff), "se": statistics.stdev(diff) / math.sqrt(len(diff))}
        print(f"population fitness at the initial center, {arm} minus lpg-es: {out['minus_lpg'][arm]['mean']:+.3f} "
              f"+- {out['minus_lpg'][arm]['se']:.3f} over {generations} generations")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "initial_population.json").write_text(json.dumps(out, indent=2) + "\n")


def tag(generations: int) -> None:
    """Point the runs and results at the variant of ``generations`` ES generations per arm."""
    global RUNS, RESULTS
    RUNS = ROOT / "runs" / "ta-lpg-study" / f"generations-{generations}"
    RESULTS = ROOT / "results" / "ta_lpg" / f"generations-{generations}"


def main() -> None:
    global SEEDS
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=("train", "test", "report", "initial-population"))
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--generations", type=int, default=GENERATIONS)
    parser.add_argument("--arms", nargs="+", choices=(*ARMS, *METAGRAD),
                        help="train or test only these arms (e.g. the ones a previous machine did not finish)")
    parser.add_argument("--seeds", type=int, nargs="+",
                        help=f"ES seeds to train, test or report (default: {' '.join(map(str, SEEDS))}); a further seed "
                             "(e.g. 2) is a further replicate of the arms named")
    args = parser.parse_args()
    if args.seeds:
        if any(seed < 0 for seed in args.seeds) or len(set(args.seeds)) != len(args.seeds):
            parser.error(f"--seeds must be distinct non-negative integers, got {args.seeds}")
        SEEDS = tuple(args.seeds)
    if args.generations < 1:
        parser.error(f"--generations must be >= 1, got {args.generations}")
    if args.generations != GENERATIONS:  # a variant: its own runs and results, the study's left as they are
        tag(args.generations)
    if args.stage == "train":
        train(args.parallel, args.generations, args.arms)
    elif args.stage == "test":
        test(args.parallel, args.generations, args.arms)
    elif args.stage == "initial-population":
        initial_population()
    else:
        report()


if __name__ == "__main__":
    main()
