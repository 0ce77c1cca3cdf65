"""The Snake 6x6 meta-gradient reproduction in the reference setup of Bonnet et al. (issue: Snake science).

    python scripts/snake_reference_study.py train [--parallel 2] [--steps 20000000]   # resumable
    python scripts/snake_reference_study.py variance                                # resumable
    python scripts/snake_reference_study.py report                                  # -> results/snake/

Variants (``configs/snake6_reference*.toml``), 3 seeds each: fixed gamma 0.8 A2C; one-step meta-gradient
with the separate outer critic; mixed K = 4 and multi-step K = 4 (semi targets) with the outer critic.
Each run checkpoints every 500k env steps; ``train`` resumes a run with a checkpoint, skips a finished
one, and runs ``parallel`` at a time with one torch thread each. Run directories live in
``runs/snake-reference-lecun/`` (not committed); ``report`` writes per-run curves (evaluation return and
gamma against env steps) as CSV, a table at the last common step (mean +- standard error over
seeds) and a plot to ``results/snake/``.

The configs initialise every layer as the reference's Haiku networks (``network.init = "lecun_normal"``).
The first edition of this study used torch's default initialisation (orthogonal heads, policy gain
0.01): every variant stalled near a return of 6.5 after 5M steps; its results stay in
``results/snake/torch-default-init/``.

``variance`` runs the meta-gradient variance study (``rlmeta variance``, resumable) on seed 0 of the
one-step + outer critic run, at its checkpoints at 1M, 10M and 20M env steps: K 1/2/4/8, mixed and
multi-step, exact and semi targets; ``report`` copies its summary, table, samples and plots to
``results/snake/variance/``.
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
from pathlib import Path

from study_jobs import run_jobs, run_scalars
from study_stats import welch

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "snake-reference-lecun"  # the runs with Haiku's initialisation (network.init)
RESULTS = ROOT / "results" / "snake"
VARIANTS = {
    "a2c-gamma0.8": "snake6_reference_a2c.toml",
    "one-step+oc": "snake6_reference.toml",
    "mixed-K4+oc": "snake6_reference_mixed.toml",
    "multi-step-K4+oc": "snake6_reference_multistep.toml",
}
SEEDS = (0, 1, 2)
VARIANCE_RUN = "one-step+oc-s0"
VARIANCE_CHECKPOINTS = ("ckpt-000001003520.pt", "ckpt-000010004480.pt", "ckpt-000020003840.pt")
VARIANCE_FILES = ("summary.md", "variance.csv", "samples.npz", "variance.png", "cosine_mean.png")


def run_dir(variant: str, seed: int) -> Path:
    return RUNS / f"{variant}-s{seed}"


def status(path: Path) -> str | None:
    summary = path / "summary.json"
    return json.loads(summary.read_text()).get("status") if summary.is_file() else None


def train(parallel: int, steps: int, seeds: tuple[int, ...] = SEEDS) -> None:
    """Run (or resume) every variant x seed to ``steps`` env steps, ``parallel`` at a time."""
    jobs = []
    for seed in seeds:  # seed-major: every variant gets its first seed first
        for variant, config in VARIANTS.items():
            path = run_dir(variant, seed)
            if status(path) == "completed":
                saved = json.loads((path / "summary.json").read_text())
                if saved["total_steps"] >= steps:
                    continue
            resume = (path / "checkpoints" / "latest.pt").is_file()
            args = [sys.executable, "-m", "rlmeta.cli", "train"]
            if resume:
                args += ["--run-dir", str(path), "--resume"]
            else:
                args += ["--config", str(ROOT / "configs" / config), "--run-dir", str(path), "--seed", str(seed)]
            args += ["--total-steps", str(steps), "--torch-threads", "1", "--no-progress"]
            jobs.append((f"{variant}-s{seed}", args, RUNS / f"{variant}-s{seed}.log"))
    RUNS.mkdir(parents=True, exist_ok=True)
    run_jobs(jobs, parallel, ROOT, poll=10)


def _gamma_curve(path: Path) -> list[tuple[int, float]]:
    events = run_scalars(path, ("hparams/gamma",))["hparams/gamma"]
    stride = max(len(events) // 400, 1)  # about 400 points per run
    return events[::stride]


def variance() -> None:
    """Run (or resume) the variance study on the reference-regime checkpoints of ``VARIANCE_RUN``."""
    args = [sys.executable, "-m", "rlmeta.cli", "variance", "--run-dir", str(RUNS / VARIANCE_RUN),
            "--out-dir", str(RUNS / f"variance-{VARIANCE_RUN}"), "--checkpoints", *VARIANCE_CHECKPOINTS,
            "--targets", "exact", "semi", "--torch-threads", "1"]
    if (RUNS / f"variance-{VARIANCE_RUN}" / "progress.pt").is_file():
        args.append("--resume")  # a study that started before; a fresh one has nothing to resume
    subprocess.run(args, check=True, cwd=ROOT)


def report() -> None:
    """Curves as CSV, the table at the last step every run of a variant reached, a plot, and the
    variance study's outputs (if it ran)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    study = RUNS / f"variance-{VARIANCE_RUN}"
    if (study / "summary.md").is_file():
        (RESULTS / "variance").mkdir(exist_ok=True)
        for name in VARIANCE_FILES:
            if (study / name).is_file():
                shutil.copyfile(study / name, RESULTS / "variance" / name)
    for variant in VARIANTS:  # a run on this machine refreshes its committed curve
        for seed in SEEDS:
            path = run_dir(variant, seed)
            if not (path / "checkpoints" / "latest.pt").is_file():
                continue
            import torch  # noqa: PLC0415 - heavy, only to read checkpoints

            ckpt = torch.load(path / "checkpoints" / "latest.pt", weights_only=True)
            with open(RESULTS / f"curve-{variant}-s{seed}.csv", "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["kind", "env_step", "value"])
                writer.writerows(("eval_return", e["step"], e["return_mean"]) for e in ckpt["evaluations"])
                writer.writerows(("gamma", step, value) for step, value in _gamma_curve(path))
    # The table reads the committed curves, so runs finished on another machine (whose run
    # directories are gone) still count.
    curves: dict[str, list[list[tuple[int, float]]]] = {}
    gamma_curves: dict[str, list[list[tuple[int, float]]]] = {}
    for variant in VARIANTS:
        for seed in SEEDS:
            csv_path = RESULTS / f"curve-{variant}-s{seed}.csv"
            if not csv_path.is_file():
                continue
            returns, gammas = _read_curve(csv_path)
            if returns:
                curves.setdefault(variant, []).append(returns)
                gamma_curves.setdefault(variant, []).append(gammas)
    lines = ["# Snake 6x6, reference setup (Bonnet et al.): evaluation return and gamma", "",
             "Each cell: mean +- standard error over the seeds that reached the milestone (n), of each run's",
             f"evaluation returns averaged over the last {WINDOW:,} env steps before it (greedy policy, its",
             "evaluations every 500k steps), and gamma at the milestone. `-`: no run there yet.", "",
             "| variant | " + " | ".join(f"{m / 1e6:g}M return (n)" for m in MILESTONES) + " | "
             + " | ".join(f"{m / 1e6:g}M gamma" for m in MILESTONES) + " |",
             "|---|" + "---|" * (2 * len(MILESTONES))]
    for variant in VARIANTS:
        if variant not in curves:
            continue
        cells, gcells = [], []
        for milestone in MILESTONES:
            reached = [run for run in curves[variant] if run and run[-1][0] >= milestone - 10_000]
            values = [statistics.fmean([v for s, v in run if milestone - WINDOW < s <= milestone + 10_000])
                      for run in reached]
            cells.append(f"{_fmt(values)} ({len(values)})" if values else "-")
            gs = [[v for s, v in g if s <= milestone + 10_000][-1] for g in gamma_curves[variant]
                  if g and g[-1][0] >= milestone - 50_000]
            gcells.append(_fmt(gs) if gs else "-")
        lines.append(f"| {variant} | " + " | ".join(cells) + " | " + " | ".join(gcells) + " |")
    lines += verdicts(curves, gamma_curves)
    (RESULTS / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(curves, gamma_curves)


def _window_mean(run: list[tuple[int, float]], milestone: int) -> float | None:
    """A run's evaluation returns averaged over the ``WINDOW`` env steps before ``milestone`` (None if short)."""
    if not run or run[-1][0] < milestone - 10_000:
        return None
    return statistics.fmean([v for s, v in run if milestone - WINDOW < s <= milestone + 10_000])


def verdicts(curves: dict[str, list[list[tuple[int, float]]]],
             gammas: dict[str, list[list[tuple[int, float]]]]) -> list[str]:
    """The issue's three questions at the last milestone, with Welch intervals over seeds."""
    final = MILESTONES[-1]
    returns = {v: [r for r in (_window_mean(run, final) for run in runs) if r is not None] for v, runs in curves.items()}
    if any(len(returns.get(v, [])) < 2 for v in VARIANTS):
        return ["", "Verdicts: not yet (every variant needs at least 2 runs at the last milestone)."]
    n = {v: len(r) for v, r in returns.items()}
    out = ["", f"## Verdicts at {final / 1e6:g}M env steps (Welch: difference, SE, 95% CI, one-sided p)", ""]
    diff, se, (lo, hi), p = welch(returns["one-step+oc"], returns["a2c-gamma0.8"])
    out.append(f"- **One-step + outer critic vs fixed gamma 0.8 A2C** ({n['one-step+oc']} vs {n['a2c-gamma0.8']} "
               f"seeds): {diff:+.3f} +- {se:.3f}, CI [{lo:+.3f}, {hi:+.3f}], p(one-step > A2C) = {p:.2f}: "
               + ("beats it." if lo > 0 else "does not beat it (the interval includes 0)." if hi > 0
                  else "worse (the interval is below 0)."))
    out.append(f"- **At equal inner updates** (the reference's x axis, which counts the inner rollouts only; "
               f"ours counts every rollout, and these configs do not reuse the outer one): each meta variant at "
               f"{final / 1e6:g}M env steps against A2C at as many inner steps:")
    for variant, fraction in INNER_FRACTION.items():
        inner = round(fraction * final)
        a2c = [r for r in (_window_mean(run, inner) for run in curves["a2c-gamma0.8"]) if r is not None]
        if len(a2c) < 2:
            continue
        diff, se, (lo, hi), p = welch(returns[variant], a2c)
        out.append(f"  - {variant} ({inner / 1e6:g}M inner steps, {statistics.fmean(returns[variant]):.3f}) vs A2C at "
                   f"{inner / 1e6:g}M ({statistics.fmean(a2c):.3f}): {diff:+.3f} +- {se:.3f}, CI [{lo:+.3f}, {hi:+.3f}], "
                   f"p(variant > A2C) = {p:.2f}: "
                   + ("beats it." if lo > 0 else "does not beat it (the interval includes 0)." if hi > 0
                      else "worse (the interval is below 0)."))
    for variant in ("one-step+oc", "mixed-K4+oc", "multi-step-K4+oc"):
        done = [run for run in gammas.get(variant, []) if run and run[-1][0] >= final - 50_000]
        finals = [[g for s, g in run if s <= final + 10_000][-1] for run in done]
        peaks = [max(g for s, g in run if s <= final + 10_000) for run in done]
        if len(finals) > 1:
            mean, se = statistics.fmean(finals), statistics.stdev(finals) / math.sqrt(len(finals))
            out.append(f"- **gamma, {variant}**: {mean:.3f} +- {se:.3f} at {final / 1e6:g}M (every run "
                       f"{'above' if min(finals) > 0.8 else 'not all above'} 0.8: {', '.join(f'{g:.3f}' for g in finals)}; "
                       f"peak {', '.join(f'{g:.3f}' for g in peaks)}).")
    diff, se, (lo, hi), p = welch(returns["mixed-K4+oc"], returns["multi-step-K4+oc"])
    out.append(f"- **Mixed K=4 vs multi-step K=4, score** ({n['mixed-K4+oc']} vs {n['multi-step-K4+oc']} seeds): "
               f"{diff:+.3f} +- {se:.3f}, CI [{lo:+.3f}, {hi:+.3f}], p(mixed > multi-step) = {p:.2f}: "
               + ("higher." if lo > 0 else "lower (the interval is below 0)." if hi < 0
                  else "not resolved: neither similar-or-higher nor lower is established."))
    return out


MILESTONES = (2_500_000, 5_000_000, 10_000_000, 20_000_000)
# The fraction of a meta variant's env steps that its inner updates learn from: each meta-update
# collects K inner rollouts and one outer rollout (not reused in the reference configs), and the
# reference's x axis counts the inner ones only (its env_steps grow by one rollout per meta-update).
INNER_FRACTION = {"one-step+oc": 1 / 2, "mixed-K4+oc": 4 / 5, "multi-step-K4+oc": 4 / 5}
WINDOW = 1_000_000


def _read_curve(path: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """A committed curve CSV as (evaluation returns, gamma), each a list of (env step, value)."""
    kinds: dict[str, list[tuple[int, float]]] = {"eval_return": [], "gamma": []}
    with open(path) as f:
        for r in csv.DictReader(f):
            kinds[r["kind"]].append((int(r["env_step"]), float(r["value"])))
    return kinds["eval_return"], kinds["gamma"]


def _fmt(values: list[float]) -> str:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.3f}"
    return f"{mean:.3f} +- {statistics.stdev(values) / math.sqrt(len(values)):.3f}"


def _mean_se(runs: list[list[tuple[int, float]]], grid: list[int]) -> tuple[list[int], list[float], list[float]]:
    """Mean and standard error over the runs at each grid step every run has reached (the value at or just
    before it), so a curve's seed count does not change along it."""
    xs, means, ses = [], [], []
    runs = [run for run in runs if run]
    for x in grid:
        if not runs or any(not run[0][0] <= x <= run[-1][0] + 1 for run in runs):
            continue
        values = [[v for s, v in run if s <= x][-1] for run in runs]
        if values:
            xs.append(x)
            means.append(statistics.fmean(values))
            ses.append(statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0)
    return xs, means, ses


def _plot(curves: dict[str, list[list[tuple[int, float]]]], gammas: dict[str, list[list[tuple[int, float]]]]) -> None:
    try:
        import matplotlib  # noqa: PLC0415 - optional

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return
    fig, (ax, ix, gx) = plt.subplots(1, 3, figsize=(18, 4))
    grid = list(range(500_000, 40_000_001, 250_000))
    for variant, runs in curves.items():
        xs, mean, se = _mean_se(runs, grid)
        line, = ax.plot(xs, mean, label=f"{variant} ({len(runs)} seeds)")
        ax.fill_between(xs, [m - e for m, e in zip(mean, se)], [m + e for m, e in zip(mean, se)], alpha=0.2,
                        color=line.get_color())
        inner = [x * INNER_FRACTION.get(variant, 1.0) for x in xs]  # the reference's x axis
        ix.plot(inner, mean, color=line.get_color(), label=variant)
        ix.fill_between(inner, [m - e for m, e in zip(mean, se)], [m + e for m, e in zip(mean, se)], alpha=0.2,
                        color=line.get_color())
        if gammas.get(variant):
            xs, mean, se = _mean_se(gammas[variant], grid)
            gx.plot(xs, mean, color=line.get_color(), label=variant)
            gx.fill_between(xs, [m - e for m, e in zip(mean, se)], [m + e for m, e in zip(mean, se)], alpha=0.2,
                            color=line.get_color())
    ax.set_xlabel("env steps")
    ax.set_ylabel("evaluation return (greedy)")
    ax.set_title("Snake 6x6, reference setup: mean +- SE over seeds")
    ax.legend()
    ix.set_xlabel("inner env steps (the reference's x axis: outer rollouts not counted)")
    ix.set_ylabel("evaluation return (greedy)")
    ix.set_title("the same at equal inner updates")
    gx.set_xlabel("env steps")
    gx.set_ylabel("gamma (inner discount)")
    gx.set_title("meta-learned gamma (outer gamma 1.0)")
    fig.tight_layout()
    fig.savefig(RESULTS / "returns.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=("train", "variance", "report"))
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20_000_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), choices=SEEDS,
                        help="train only these seeds (e.g. the ones a previous machine did not finish)")
    args = parser.parse_args()
    if args.stage == "train":
        train(args.parallel, args.steps, tuple(args.seeds))
    elif args.stage == "variance":
        variance()
    else:
        report()


if __name__ == "__main__":
    main()
