"""LPO and TA-LPO discovered by evolution strategies with PPO inner loops, against PPO and DPO
(issue: learned objectives II; Lu et al. 2022, Jackson et al. 2024), scaled to a 2-core CPU.

    python scripts/lpo_study.py train [--parallel 2]   # resumable: one es-train run per arm
    python scripts/lpo_study.py test [--parallel 2]    # 32 fresh seeds x horizons 0.5, 1, 2 x objectives
    python scripts/lpo_study.py transfer [--parallel 2] # MinAtar Breakout, 300k steps, 3 seeds (needs [minatar])
    python scripts/lpo_study.py transfer|report --transfer-seeds 10   # the same with seeds 0-9 (the report adds
                                                       # their row beside the 3-seed check)
    python scripts/lpo_study.py transfer --transfer-steps 1000000 --transfer-objectives ppo dpo   # another budget
                                                       # (results/lpo/transfer-1000k.json; the study's report adds it,
                                                       # with each run's entropy and clip fraction from its logs)
    python scripts/lpo_study.py transfer --transfer-envs 64 --transfer-seeds 10   # the reference batch (64 envs x
                                                       # 128 steps, PureJaxRL's) -> results/lpo/transfer-e64.json
    python scripts/lpo_study.py kernel-check [--horizon 4096]  # PPO retested on this machine's kernels where its
                                                       # committed returns ran on others (the report sets them side by side)
    python scripts/lpo_study.py report                 # -> results/lpo/
    python scripts/lpo_study.py train|test|report --es-seed N   # another ES seed (1, 2) of both arms
                                                       # (its tests: the two drifts) -> results/lpo/es-seed-N/
    python scripts/lpo_study.py centers [--parallel 2]  # each arm's ES center every 25 generations vs PPO (checkpoints)
    python scripts/lpo_study.py pooled                 # every ES seed side by side and pooled -> results/lpo/pooled.md
    python scripts/lpo_study.py train|test|transfer|report|pooled --sigma 0.04   # the arms at another ES sigma
                                                       # (runs and results tagged with it) -> results/lpo/sigma-0.04/
    python scripts/lpo_study.py ... --sigma 0.04 --horizon 4096   # and at another lifetime (the same env-step
                                                       # budget: 300 generations) -> results/lpo/sigma-0.04-horizon-4096/
    python scripts/lpo_study.py ... --horizon 4096     # the study's sigma at that lifetime -> results/lpo/horizon-4096/

Meta-training (``rlmeta es-train --objective lpo``): the drift network (128 tanh units, no biases)
starts at its PPO-clip initialisation; a candidate's fitness is the greedy evaluation return (10
episodes, the config's) of a PPO agent trained on CartPole-v1 (``configs/lpo_cartpole_inner.toml``: 8 envs x 128
steps, 10 epochs x 4 minibatches, Adam 2.5e-3) for ``HORIZON`` env steps with the candidate's
drift; popsize 16 (8 antithetic pairs, each pair on one seed), sigma 0.1, Adam 1e-2 on the center,
``GENERATIONS`` generations. Arms: ``lpo`` and ``ta-lpo`` (the drift also reads n/N).

Sigma: the study's 0.1 is groove's OpenES setting (the issue's). At the PPO initialisation it costs
the population most of the center's fitness (``results/lpo/sigma-probe/``: mean fitness of the first
three generations 298 at sigma 0.1, 368 at 0.04, 403 at 0.02, 410 at 0.001, each +- about 12, the
same pairs and seeds), so ES climbs a heavily smoothed landscape. Lu et al.'s LPO runs used evosax's OpenES
defaults (sigma 0.04, decayed by 0.999 per generation to at least 0.01: 0.034 after 150
generations); ``--sigma 0.04`` runs the arms at that scale, held fixed.

Test: each objective (PPO = LPO at its initialisation, DPO, the two learned drifts) trains 32
fresh seeds (never seen in meta-training: 10,000 + i) at 0.5x, 1x and 2x the horizon; the table
gives mean +- standard error of the final greedy return and one-sided Welch p-values for
"learned >= PPO" and "TA-LPO >= LPO". Transfer: the same objectives train on MinAtar Breakout
(``configs/minatar_breakout_ppo.toml``, 300k env steps, 3 seeds); the check is learned (and DPO)
>= PPO - 1 standard error. Runs live in ``runs/lpo-study/`` (not committed); what the tables are made
of is committed: each test's per-seed returns (``results/lpo/returns/``) and each ES seed's learned
drifts (ES seed 0's are the shipped ``lpo-cartpole`` and ``ta-lpo-cartpole``; seed N's in
``results/lpo/es-seed-N/``), which the later stages use where the run directory is gone.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tomllib
from pathlib import Path

from study_jobs import run_jobs, run_scalars
from study_stats import mean_se, welch

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "lpo-study"
RESULTS = ROOT / "results" / "lpo"
RETURNS = RESULTS / "returns"
SHIPPED = ROOT / "rlmeta" / "objectives" / "trained"
ES_SEEDS = (0, 1, 2)
STUDY_HORIZON = 8192  # env steps of one lifetime (1x); --horizon runs a variant at another
STUDY_GENERATIONS = 150
HORIZON = STUDY_HORIZON
GENERATIONS = STUDY_GENERATIONS  # a --horizon variant: the study's env-step budget (150 x 8192 x 16 per arm)
INNER = ROOT / "configs" / "lpo_cartpole_inner.toml"  # frozen: what the shipped drifts were trained in
ARMS = {"lpo": [], "ta-lpo": ["--lpo.lifetime-conditioning"]}
COMMON = ["--objective", "lpo", "--inner-config", str(INNER), "--popsize", "16", "--checkpoint-interval", "5",
          "--no-progress", "--torch-threads", "1"]  # and --inner-steps HORIZON
TEST_SEEDS = tuple(range(10_000, 10_032))
TRANSFER = ROOT / "configs" / "minatar_breakout_ppo.toml"
STUDY_TRANSFER_SEEDS = 3  # the check: >= PPO - 1 SE over seeds 0-2
TRANSFER_SEEDS = tuple(range(STUDY_TRANSFER_SEEDS))  # --transfer-seeds N: seeds 0..N-1
TRANSFER_RESULTS = ROOT / "results" / "lpo" / "transfer.json"  # the study's budget; another's: transfer-<k>k[-e<n>].json
STUDY_TRANSFER_STEPS = 300_000  # the (the config's); --transfer-steps runs another budget
TRANSFER_STEPS = STUDY_TRANSFER_STEPS
LONG_TRANSFER = 1_000_000  # beyond it a transfer run evaluates and checkpoints every tenth of its budget
STUDY_TRANSFER_ENVS = int(tomllib.loads(TRANSFER.read_text())["num_envs"])  # the config's; --transfer-envs: another
TRANSFER_ENVS = STUDY_TRANSFER_ENVS
TRANSFER_ONLY: tuple[str, ...] = ()  # --transfer-objectives: only these (default: every objective)
HORIZONS = (0.5, 1.0, 2.0)
CENTER_POINTS = 6  # `centers`: the ES center's return at this many evenly spaced generations (0: PPO, the start) ...
CENTER_SEEDS = TEST_SEEDS[:16]  # ... on the first test seeds at 1x, paired with PPO's test returns there


ES_SEED = 0  # the ES seed of the arms (--es-seed): 0 is the study's first run, its results in RESULTS itself
STUDY_SIGMA = 0.1  # the study's perturbation scale (groove's OpenES); --sigma runs a variant beside it
SIGMA = STUDY_SIGMA


def variant() -> str:
    """The tag of a --sigma or --horizon variant's runs and results ('' for the study's setting)."""
    return _horizon_tag() if SIGMA == STUDY_SIGMA else f"-sigma{SIGMA:g}{_horizon_tag()}"


def _horizon_tag() -> str:
    """The tag of a --horizon variant ('' at the study's horizon): also on PPO's and DPO's test returns."""
    return "" if HORIZON == STUDY_HORIZON else f"-horizon{HORIZON}"


def _variant_options() -> str:
    """The command-line options of this variant, for the reports ('' for the study's setting)."""
    return ((f" --sigma {SIGMA:g}" if SIGMA != STUDY_SIGMA else "")
            + (f" --horizon {HORIZON}" if HORIZON != STUDY_HORIZON else ""))


def _study_flags() -> list[str]:
    """The options that select this ES seed, sigma and horizon, for the stages' child processes."""
    return ["--es-seed", str(ES_SEED), "--sigma", f"{SIGMA:g}", "--horizon", str(HORIZON)]


def run_dir(arm: str) -> Path:
    return RUNS / f"{arm}{variant()}-s{ES_SEED}"


def variant_dir() -> Path:
    """Where a variant's results go (its ES seed 0's; the study's: ``RESULTS`` itself)."""
    parts = ([f"sigma-{SIGMA:g}"] if SIGMA != STUDY_SIGMA else []) + (
        [f"horizon-{HORIZON}"] if HORIZON != STUDY_HORIZON else [])
    return RESULTS / "-".join(parts) if parts else RESULTS


def results_dir() -> Path:
    return variant_dir() if ES_SEED == 0 else variant_dir() / f"es-seed-{ES_SEED}"


def drift_file(arm: str) -> Path | None:
    """The learned drift of ``arm`` at the current ES seed: its finished run's, else the committed copy
    (ES seed 0: the shipped objective; seed N: ``results/lpo/es-seed-N/<arm>.pt``); None before training."""
    if (run_dir(arm) / "lpo.pt").is_file() and completed(run_dir(arm), GENERATIONS):
        return run_dir(arm) / "lpo.pt"
    kept = SHIPPED / f"{arm}-cartpole.pt" if ES_SEED == 0 and not variant() else results_dir() / f"{arm}.pt"
    return kept if kept.is_file() else None


def completed(path: Path, generations: int) -> bool:
    summary = path / "summary.json"
    if not summary.is_file():
        return False
    data = json.loads(summary.read_text())
    return data.get("status") == "completed" and data.get("generations", 0) >= generations


def train(parallel: int, generations: int, arms: list[str] | None = None) -> None:
    """Run (or resume) each arm's (or only ``arms``') ES meta-training to ``generations``."""
    RUNS.mkdir(parents=True, exist_ok=True)
    jobs = []
    for arm, extra in ARMS.items():
        if arms and arm not in arms:
            continue
        path = run_dir(arm)
        if completed(path, generations):
            continue
        args = [sys.executable, "-m", "rlmeta.cli", "es-train", "--run-dir", str(path), "--generations", str(generations)]
        resume = (path / "checkpoints" / "latest.pt").is_file()
        jobs.append((arm, args + (["--resume"] if resume else [*COMMON, "--inner-steps", str(HORIZON), *extra,
                                                                 "--sigma", f"{SIGMA:g}", "--seed", str(ES_SEED)]),
                     RUNS / f"{path.name}.log"))
    run_jobs(jobs, parallel, ROOT, poll=2)


def objectives() -> dict[str, list[str]]:
    """``rlmeta train`` options of every objective under test (learned drifts where their run finished)."""
    # DPO beside ES seed 0 (a --horizon variant tests it at its own horizon; the study's files serve the rest)
    out = {"ppo": ["--algo", "ppo"], "dpo": ["--algo", "dpo"]} if ES_SEED == 0 else {"ppo": ["--algo", "ppo"]}
    for arm in ARMS:
        path = drift_file(arm)
        if path is not None:
            out[arm] = ["--algo", "lpo", "--objective", str(path)]
    return out


def test(parallel: int) -> None:
    """Every objective on the fresh seeds at every horizon: one process per (objective, horizon), each
    training its 32 agents one after another in process (skipping results that exist)."""
    jobs = []
    for name in objectives():
        for scale in HORIZONS:
            if not test_path(name, scale).is_file():
                jobs.append((f"test {name} at {scale:g}x", [sys.executable, str(Path(__file__).resolve()), "test-one",
                                                              name, f"{scale:g}", *_study_flags()], None))
    RETURNS.mkdir(parents=True, exist_ok=True)
    run_jobs(jobs, parallel, ROOT, poll=2)


def test_path(name: str, scale: float, kernels: str = "") -> Path:
    """Where an objective's test returns go (committed): a learned drift's are named ``<arm>-s<ES seed>``;
    ``kernels``: PPO's retest on other kernels (``kernel-check``), ``returns/kernels/ppo<tag>-<KERNELS>-h<x>.json``."""
    tag = f"{name}{variant()}-s{ES_SEED}" if name in ARMS else f"{name}{_horizon_tag()}"
    if kernels:
        return RETURNS / "kernels" / f"{tag}-{kernels}-h{scale:g}.json"
    return RETURNS / f"{tag}-h{scale:g}.json"


def kernel_check(parallel: int) -> None:
    """PPO retested at every horizon on this machine's kernels, where they differ from those its committed
    returns ran on (a learned drift tested here is then compared with PPO on both): skipping what exists."""
    here = _kernels()["torch"]
    jobs = []
    for scale in HORIZONS:
        committed = test_path("ppo", scale)
        if not committed.is_file():
            raise SystemExit(f"kernel-check compares with PPO's committed returns: run `test` first ({committed})")
        if json.loads(committed.read_text()).get("kernels", {}).get("torch") != here and not test_path(
                "ppo", scale, here).is_file():
            jobs.append((f"ppo at {scale:g}x on {here}", [sys.executable, str(Path(__file__).resolve()), "test-one",
                                                          "ppo", f"{scale:g}", "--kernels-tag", *_study_flags()], None))
    if not jobs:
        print(f"nothing to run: PPO's returns on {here} kernels exist at every horizon (or are the committed ones)")
    run_jobs(jobs, parallel, ROOT, poll=2)


def kernel_rows(table: dict[str, dict[float, list[float]]]) -> list[str]:
    """The kernels each objective's test returns ran on and, where PPO was retested on other kernels
    (``kernel-check``), its returns there beside the committed ones (two-sided Welch p) and each
    objective tested on those kernels against PPO on the same ones."""
    kernels = {name: sorted({json.loads(test_path(name, h).read_text()).get("kernels", {}).get("torch", "?")
                             for h in HORIZONS if test_path(name, h).is_file()}) for name in table}
    lines = ["", "## Kernels", "", "The test returns ran on: " + "; ".join(
        f"{name} {'/'.join(found)}" for name, found in kernels.items() if found) + "."]
    for kernel in sorted({k for found in kernels.values() for k in found}):
        retest = {h: json.loads(test_path("ppo", h, kernel).read_text())["returns"]
                  for h in HORIZONS if test_path("ppo", h, kernel).is_file()}
        if not retest:
            continue
        lines += ["", f"PPO retested on {kernel} kernels (`kernel-check`), the same seeds, against the committed "
                  "PPO (two-sided Welch p: the kernels change each run, not the distribution), and the objectives "
                  f"tested on {kernel} against it (one-sided Welch p of >= PPO):", ""]
        for h, values in retest.items():
            diff, _, _, p = welch(values, table["ppo"][h])
            mean, se = mean_se(values)
            cells = [f"PPO on {kernel} {mean:.1f} +- {se:.1f} (minus committed {diff:+.1f}, p = {min(1.0, 2 * min(p, 1 - p)):.2f})"]
            cells += [f"{name} p = {welch_greater(table[name][h], values):.3f}" for name in table
                      if name != "ppo" and kernels[name] == [kernel] and len(table[name][h]) > 1]
            lines.append(f"- {h:g}x: " + "; ".join(cells))
    return lines


def test_one(name: str, scale: float, kernels_tag: bool = False) -> None:
    """Train ``name``'s agents on every test seed for ``scale`` x the horizon; write their final returns."""
    import dataclasses  # noqa: PLC0415 - the stage's own imports: the library loads torch

    import torch  # noqa: PLC0415

    from rlmeta.agents.config import TrainConfig, load_config  # noqa: PLC0415
    from rlmeta.agents.learned import PPO_INIT, load_lpo  # noqa: PLC0415
    from rlmeta.agents.meta_test import lpo_inner_config, lpo_return  # noqa: PLC0415
    from rlmeta.agents.runs import atomic_json  # noqa: PLC0415

    torch.set_num_threads(1)
    config = lpo_inner_config(load_config(INNER, TrainConfig), str(INNER), int(HORIZON * scale))
    if name == "dpo":
        config, drift = dataclasses.replace(config, algo="dpo"), None
    elif name == "ppo":  # LPO at its initialisation trains exactly as PPO (tests/agents/test_lpo_train.py)
        drift = load_lpo(PPO_INIT, clip=config.ppo.clip)
    else:
        path = drift_file(name)
        if path is None:
            raise SystemExit(f"{name} (ES seed {ES_SEED}) has no learned drift yet: run `train` first")
        drift = load_lpo(str(path))
    returns = [lpo_return(config, drift, seed) for seed in TEST_SEEDS]
    path = test_path(name, scale, _kernels()["torch"] if kernels_tag else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_json({"objective": name, "scale": scale, "steps": config.total_steps, "seeds": list(TEST_SEEDS),
                 "eval_episodes": config.eval_episodes, "kernels": _kernels(), "returns": returns}, path)


def center_path(arm: str, generation: int) -> Path:
    """Where the test returns of ``arm``'s ES center at ``generation`` go (committed)."""
    return RETURNS / "centers" / f"{arm}{variant()}-s{ES_SEED}-g{generation}.json"


def centers(parallel: int) -> None:
    """Each arm's ES center at ``center_generations()`` (from its checkpoints) trained on
    ``CENTER_SEEDS`` at 1x: whether the search moves its center, not only its population, above PPO."""
    jobs = []
    for arm in ARMS:
        for generation in center_generations():
            if not center_path(arm, generation).is_file() and _checkpoint(arm, generation).is_file():
                jobs.append((f"center {arm} at {generation}", [
                    sys.executable, str(Path(__file__).resolve()), "center-one", arm, "--generation", str(generation),
                    *_study_flags()], None))
    run_jobs(jobs, parallel, ROOT, poll=2)


def center_generations() -> range:
    """The generations whose ES centers `centers` trains (every 25 of the study's 150)."""
    every = max(1, GENERATIONS // CENTER_POINTS)
    return range(every, GENERATIONS + 1, every)


def _checkpoint(arm: str, generation: int) -> Path:
    return run_dir(arm) / "checkpoints" / f"ckpt-{generation:012d}.pt"


def center_one(arm: str, generation: int) -> None:
    """Train ``arm``'s ES center at ``generation`` on ``CENTER_SEEDS`` at 1x; write the final returns."""
    import torch  # noqa: PLC0415 - the stage's own imports: the library loads torch

    from rlmeta.agents.config import ESTrainConfig, TrainConfig, load_config  # noqa: PLC0415
    from rlmeta.agents.es_train import es_network  # noqa: PLC0415
    from rlmeta.agents.learned import LearnedLPO  # noqa: PLC0415
    from rlmeta.agents.meta_test import lpo_inner_config, lpo_return  # noqa: PLC0415
    from rlmeta.agents.runs import atomic_json  # noqa: PLC0415
    from rlmeta.es import OpenES  # noqa: PLC0415

    torch.set_num_threads(1)
    es_config = load_config(run_dir(arm) / "config.json", ESTrainConfig)
    config = lpo_inner_config(load_config(INNER, TrainConfig), str(INNER), HORIZON)
    state = torch.load(_checkpoint(arm, generation), weights_only=False)
    center = OpenES.from_state_dict(state["es"]).center
    network = es_network(es_config, config)
    drift = LearnedLPO(network, {k: v.detach().float() for k, v in center.items()}, f"{arm} center g{generation}", {})
    returns = [lpo_return(config, drift, seed) for seed in CENTER_SEEDS]
    center_path(arm, generation).parent.mkdir(parents=True, exist_ok=True)
    atomic_json({"objective": arm, "generation": generation, "sigma": SIGMA, "horizon": HORIZON, "es_seed": ES_SEED,
                 "seeds": list(CENTER_SEEDS), "kernels": _kernels(), "returns": returns}, center_path(arm, generation))


def center_rows() -> list[str]:
    """The report's table of the centers' returns (paired differences to PPO on the same seeds)."""
    ppo = final_returns("ppo", 1.0)[: len(CENTER_SEEDS)]
    found = {arm: {g: json.loads(center_path(arm, g).read_text())["returns"]
                   for g in center_generations() if center_path(arm, g).is_file()}
             for arm in ARMS}
    if len(ppo) < len(CENTER_SEEDS) or not any(found.values()):
        return []
    generations = sorted({g for by in found.values() for g in by})
    lines = ["", f"## The ES center along the run: return at 1x on the first {len(CENTER_SEEDS)} test seeds, "
             "minus PPO's on the same seeds (mean +- SE of the paired differences)", "",
             f"Generation 0 is PPO itself ({statistics.fmean(ppo):.1f} on these seeds). "
             f"`python scripts/lpo_study.py centers{_variant_options()}`.", "",
             "| arm | " + " | ".join(f"g{g}" for g in generations) + " |", "|---|" + "---|" * len(generations)]
    for arm, by in found.items():
        cells = []
        for g in generations:
            if g not in by:
                cells.append("")
                continue
            diff = [a - b for a, b in zip(by[g], ppo)]
            mean, se = mean_se(diff)
            cells.append(f"{mean:+.1f} +- {se:.1f}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines


def transfer_name(name: str) -> str:
    """An objective's name in the transfer runs and ``transfer.json`` (a --sigma variant's drifts tagged)."""
    return f"{name}{variant()}" if name in ARMS else name


def _transfer_tag() -> str:
    """The tag of the Breakout budget this stage runs or reads, in its runs' and results file's names:
    ``-<k>k`` at another --transfer-steps than the study's 300k, ``-e<n>`` at another --transfer-envs
    than the config's ('' at the study's own)."""
    return ("" if TRANSFER_STEPS == STUDY_TRANSFER_STEPS else f"-{TRANSFER_STEPS // 1000}k") + (
        "" if TRANSFER_ENVS == STUDY_TRANSFER_ENVS else f"-e{TRANSFER_ENVS}")


def transfer_file() -> Path:
    """Where the Breakout returns at ``TRANSFER_STEPS`` with ``TRANSFER_ENVS`` envs are kept (committed)."""
    tag = _transfer_tag()
    return TRANSFER_RESULTS.with_name(f"{TRANSFER_RESULTS.stem}{tag}.json") if tag else TRANSFER_RESULTS


def transfer_objectives() -> dict[str, list[str]]:
    """The objectives of the transfer stage (``--transfer-objectives``: a subset)."""
    return {name: options for name, options in objectives().items() if not TRANSFER_ONLY or name in TRANSFER_ONLY}


def transfer(parallel: int) -> None:
    """Every objective on MinAtar Breakout at 300k env steps (``--transfer-steps``: another budget), 3
    seeds (``--transfer-seeds``: more), skipping finished runs and the seeds ``transfer.json`` already
    keeps (run elsewhere, perhaps on other kernels: rerunning them here would replace their record;
    delete it there to rerun). An interrupted run (a checkpoint, no completed summary) resumes from its
    last checkpoint; beyond 1M steps a run evaluates and checkpoints every tenth of its budget."""
    kept = json.loads(transfer_file().read_text()) if transfer_file().is_file() else {}
    steps = [] if TRANSFER_STEPS == STUDY_TRANSFER_STEPS else ["--total-steps", str(TRANSFER_STEPS)]
    if TRANSFER_STEPS > LONG_TRANSFER:  # ten evaluations and checkpoints a run, as at 1M
        steps += ["--eval-interval", str(TRANSFER_STEPS // 10), "--checkpoint-interval", str(TRANSFER_STEPS // 10)]
    if TRANSFER_ENVS != STUDY_TRANSFER_ENVS:
        steps += ["--num-envs", str(TRANSFER_ENVS)]
    train = [sys.executable, "-m", "rlmeta.cli", "train"]
    jobs = []
    for name, options in transfer_objectives().items():
        recorded = set(kept.get(transfer_name(name), {}).get("seeds", []))
        for seed in TRANSFER_SEEDS:
            path = RUNS / "transfer" / f"{transfer_name(name)}{_transfer_tag()}-s{seed}"
            if seed in recorded or _summary_return(path) is not None:
                continue
            if (path / "checkpoints" / "latest.pt").is_file() and (path / "config.json").is_file():
                args = [*train, "--run-dir", str(path), "--resume"]  # an interrupted run continues
            else:
                args = [*train, "--config", str(TRANSFER), *options, *steps, "--seed", str(seed),
                        "--run-dir", str(path), "--overwrite"]
            jobs.append((path.name, [*args, "--no-progress", "--torch-threads", "1"], None))
    run_jobs(jobs, parallel, ROOT, poll=2)


def _summary_return(path: Path) -> float | None:
    summary = path / "summary.json"
    if summary.is_file():
        data = json.loads(summary.read_text())
        if data.get("status") == "completed" and data.get("eval"):
            return float(data["eval"]["return_mean"])
    return None


def _kernels() -> dict:
    """The kernels this machine's processes run (the returns depend on them: README, Reproducibility)."""
    import torch  # noqa: PLC0415 - the stage's own imports: the library loads torch

    return {"torch": torch.backends.cpu.get_cpu_capability(), "MKL_CBWR": os.environ.get("MKL_CBWR")}


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()


def transfer_returns() -> dict[str, dict]:
    """Each objective's Breakout returns over its first seeds: from its finished runs (then kept in
    ``results/lpo/transfer.json``), else as kept there; objectives with fewer than the study's 3 seeds
    are left out. A record holds ``seeds``, ``returns`` and the ``commit`` and ``kernels`` of its
    first runs; seeds added later (``--transfer-seeds``) are stamped in ``added``, one entry per
    reading, and the kept seeds need not have their runs here. Runs whose returns differ from the kept
    ones (rerun elsewhere) replace the record. At ``--transfer-steps`` or ``--transfer-envs``: the same in its own file."""
    path = transfer_file()
    kept = json.loads(path.read_text()) if path.is_file() else {}
    tag = _transfer_tag()

    def finished(name: str, seeds: range | tuple) -> list[float]:  # the finished prefix of these seeds' runs
        values = []
        for seed in seeds:
            value = _summary_return(RUNS / "transfer" / f"{name}{tag}-s{seed}")
            if value is None:
                break
            values.append(value)
        return values

    found = {}
    for name in map(transfer_name, objectives()):
        values = finished(name, TRANSFER_SEEDS)
        before = kept.get(name, {})
        old = before.get("returns", [])
        overlap = min(len(values), len(old))
        same = values[:overlap] == old[:overlap]
        if same and old:  # the kept seeds stand for their runs where those are gone (run elsewhere)
            values = old + finished(name, range(len(old), len(TRANSFER_SEEDS)))
        if len(values) < STUDY_TRANSFER_SEEDS or (same and len(values) <= len(old)):
            continue  # nothing new (the kept record has the commit and kernels it ran on: the runs do not record them)
        stamp = {"commit": _commit(), "kernels": _kernels()}
        if old and same and before.get("seeds") == list(range(len(old))):
            record = dict(before)
            record["added"] = [*before.get("added", []), {"seeds": list(range(len(old), len(values))), **stamp}]
            record["seeds"], record["returns"] = list(range(len(values))), values
        else:
            record = {"seeds": list(range(len(values))), "returns": values, **stamp}
        found[name] = record
    if found:
        kept.update(found)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(kept, indent=2) + "\n")
    return kept


def transfer_lines(rows: dict[str, list[float]]) -> list[str]:
    """The transfer check per objective: over the study's 3 seeds, >= PPO - 1 SE (the issue's), and
    where PPO and the objective have more seeds, over all of them: the difference to PPO with its
    standard error (Welch), its 90% confidence interval and the one-sided Welch p of ">= PPO"."""
    lines = []
    ppo = rows.get("ppo", [])
    three = ppo[:STUDY_TRANSFER_SEEDS]
    ppo_mean, ppo_se = mean_se(three)
    for name, values in rows.items():
        first = values[:STUDY_TRANSFER_SEEDS]
        mean, se = mean_se(first)
        verdict = "" if name == "ppo" or len(first) < 2 or len(three) < 2 else (
            f"; >= PPO - 1 SE ({ppo_mean - ppo_se:.2f}): {'yes' if mean >= ppo_mean - ppo_se else 'no'}")
        lines.append(f"- {name}: {mean:.2f} +- {se:.2f} (seeds 0-{len(first) - 1}: "
                     f"{', '.join(f'{v:.2f}' for v in first)}){verdict}")
    more = {name: values for name, values in rows.items() if len(values) > STUDY_TRANSFER_SEEDS}
    if len(ppo) > STUDY_TRANSFER_SEEDS and len(more) > 1:
        lines += ["", "All seeds kept (the difference to PPO: Welch standard error and 90% interval; p: one-sided "
                  "Welch test of >= PPO):", "",
                  "| objective | seeds | return | minus PPO | 90% interval | p (>= PPO) | >= PPO - 1 SE |",
                  "|---|---|---|---|---|---|---|"]
        pm, ps = mean_se(ppo)
        for name, values in more.items():
            mean, se = mean_se(values)
            if name == "ppo":
                lines.append(f"| ppo | {len(values)} | {mean:.2f} +- {se:.2f} | | | | |")
                continue
            diff, diff_se, (low, high), p = welch(values, ppo, level=0.9)
            lines.append(f"| {name} | {len(values)} | {mean:.2f} +- {se:.2f} | {diff:+.2f} +- {diff_se:.2f} | "
                         f"[{low:+.2f}, {high:+.2f}] | {p:.3f} | "
                         f"{'yes' if mean >= pm - ps else 'no'} |")
    return lines


def transfer_budgets() -> list[tuple[int, int]]:
    """The Breakout budgets (env steps, envs) to report: the study's, and every other one
    (``--transfer-steps``, ``--transfer-envs``) with a results file or a finished run here (a fresh
    ``transfer --transfer-steps N`` writes its file at the first report); a variant's report shows
    another budget only where its own drifts ran there."""
    tagged = r"(?:-(\d+)k)?(?:-e(\d+))?"
    kept = (re.fullmatch(rf"{TRANSFER_RESULTS.stem}{tagged}", p.stem) for p in TRANSFER_RESULTS.parent.glob("*.json"))
    ran = (re.fullmatch(rf".+?{tagged}-s\d+", p.parent.name) for p in (RUNS / "transfer").glob("*/summary.json"))
    study = (STUDY_TRANSFER_STEPS, STUDY_TRANSFER_ENVS)
    found = {(int(m.group(1)) * 1000 if m.group(1) else STUDY_TRANSFER_STEPS,
              int(m.group(2)) if m.group(2) else STUDY_TRANSFER_ENVS) for m in (*kept, *ran) if m}
    return [study, *sorted(found - {study}, key=lambda budget: (budget[1] != STUDY_TRANSFER_ENVS, *budget))]


def transfer_sections() -> list[str]:
    """The report's Breakout sections, one per budget, over this report's objectives."""
    global TRANSFER_STEPS, TRANSFER_ENVS
    lines, chosen = [], (TRANSFER_STEPS, TRANSFER_ENVS)
    try:
        for steps, envs in transfer_budgets():
            TRANSFER_STEPS, TRANSFER_ENVS = steps, envs
            study = (steps, envs) == (STUDY_TRANSFER_STEPS, STUDY_TRANSFER_ENVS)
            transfers = transfer_returns()
            shown = [transfer_name(name) for name in objectives()]  # this report's objectives
            transfers = {name: transfers[name] for name in shown if name in transfers}
            rows = {name: kept["returns"] for name, kept in transfers.items()}
            if not any(rows.values()) or (variant() and not study
                                           and not any(rows.get(transfer_name(arm)) for arm in ARMS)):
                continue
            commits = sorted({stamp["commit"] for kept in transfers.values()
                              for stamp in (kept, *kept.get("added", [])) if "commit" in stamp})
            batch = "" if envs == STUDY_TRANSFER_ENVS else f", {envs} envs (the study's: {STUDY_TRANSFER_ENVS})"
            lines += ["", f"## Transfer: MinAtar Breakout, {steps // 1000}k env steps{batch} (evaluation return, "
                      "mean +- SE over seeds)", "", f"Kept in `{transfer_file().name}`"
                      + (f"; runs of commit {', '.join(commits)}" if commits else "") + ".", ""]
            lines += transfer_lines(rows)
            lines += diagnostic_lines({name: kept for name, kept in transfer_diagnostics().items() if name in shown})
    finally:
        TRANSFER_STEPS, TRANSFER_ENVS = chosen
    return lines


DIAGNOSTIC_TAGS = {"entropy": "loss/entropy", "clip fraction": "loss/clip_fraction"}  # what the runs log


def diagnostics_file() -> Path:
    """Where the Breakout runs' entropy and clip fraction at this budget are kept (committed)."""
    return TRANSFER_RESULTS.with_name(f"{TRANSFER_RESULTS.stem}{_transfer_tag()}-diagnostics.json")


def run_diagnostics(path: Path, steps: int) -> dict[str, list[float]] | None:
    """A Breakout run's mean policy entropy (nats) and clip fraction (the share of samples with
    |r - 1| > 0.2, whatever the objective) over the first and the last third of its ``steps``;
    None where its events lack either third."""
    scalars = run_scalars(path, tuple(DIAGNOSTIC_TAGS.values()))
    out = {}
    for key, tag in DIAGNOSTIC_TAGS.items():
        first = [value for step, value in scalars[tag] if step <= steps / 3]
        last = [value for step, value in scalars[tag] if step > 2 * steps / 3]
        if not first or not last:
            return None
        out[key] = [statistics.fmean(first), statistics.fmean(last)]
    return out


def transfer_diagnostics() -> dict[str, dict]:
    """Each objective's :func:`run_diagnostics` over its finished Breakout runs here (seeds 0, 1, ...
    up to the first missing one or one without its logs), kept in ``transfer[-<k>k][-e<n>]-diagnostics.json``;
    a kept record with more seeds than the runs here (run elsewhere) stays."""
    path = diagnostics_file()
    kept = json.loads(path.read_text()) if path.is_file() else {}
    tag, changed = _transfer_tag(), False
    for name in map(transfer_name, objectives()):
        runs = []
        for seed in itertools.count():
            run = RUNS / "transfer" / f"{name}{tag}-s{seed}"
            found = run_diagnostics(run, TRANSFER_STEPS) if _summary_return(run) is not None else None
            if found is None:
                break
            runs.append(found)
        if len(runs) > len(kept.get(name, {}).get("seeds", [])):
            kept[name] = {"seeds": list(range(len(runs))), **{key: [r[key] for r in runs] for key in DIAGNOSTIC_TAGS}}
            changed = True
    if changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(kept, indent=2) + "\n")
    return kept


def diagnostic_lines(kept: dict[str, dict]) -> list[str]:
    """The table of the Breakout runs' policy entropy and clip fraction, early and late (mean +- SE over seeds)."""
    if not kept:
        return []
    lines = ["", "Policy entropy (nats) and clip fraction (share of samples with |r - 1| > 0.2) over the first and "
             "the last third of training, mean +- SE over seeds "
             f"(`{diagnostics_file().name}`):", "",
             "| objective | seeds | entropy, first third | entropy, last third | clip fraction, first third | "
             "clip fraction, last third |", "|---|---|---|---|---|---|"]
    for name, record in kept.items():
        cells = [f"{m:.3f} +- {e:.3f}" for key in DIAGNOSTIC_TAGS for part in (0, 1)
                 for m, e in [mean_se([pair[part] for pair in record[key]])]]
        lines.append(f"| {name} | {len(record['seeds'])} | " + " | ".join(cells) + " |")
    return lines


def final_returns(name: str, scale: float) -> list[float]:
    """The final greedy evaluation returns of an objective's test agents at one horizon (empty before the test)."""
    path = test_path(name, scale)
    return list(json.loads(path.read_text())["returns"]) if path.is_file() else []


def welch_greater(a: list[float], b: list[float]) -> float:
    """One-sided Welch t-test p-value for mean(a) > mean(b)."""
    from scipy import stats  # noqa: PLC0415 - scipy comes with the es extra; only the report needs it

    return float(stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)


def report() -> None:
    """Fitness curves (CSV), the test table, the p-values and the learned drifts plotted against r."""
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    seed_note = ("" if ES_SEED == 0 else f" --es-seed {ES_SEED}") + _variant_options()
    lines = ["# LPO / TA-LPO by evolution strategies on CartPole-v1 (scaled): results"
             + ("" if ES_SEED == 0 else f", ES seed {ES_SEED}") + (f", ES sigma {SIGMA:g}" if variant() else "")
             + (f", horizon {HORIZON} ({GENERATIONS} generations)" if _horizon_tag() else ""), "",
             f"Generated by `python scripts/lpo_study.py report{seed_note}`; setup in the script's docstring.", "",
             f"## Final greedy return on {len(TEST_SEEDS)} fresh seeds (mean +- SE), horizon {HORIZON} env steps = 1x", "",
             "| objective | " + " | ".join(f"{h:g}x" for h in HORIZONS) + " |", "|---|" + "---|" * len(HORIZONS)]
    table: dict[str, dict[float, list[float]]] = {}
    for name in objectives():
        table[name] = {h: final_returns(name, h) for h in HORIZONS}
        cells = []
        for h in HORIZONS:
            values = table[name][h]
            mean, se = mean_se(values)
            cells.append(f"{mean:.1f} +- {se:.1f} ({len(values)})" if values else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## One-sided Welch tests", ""]
    for learned in ("lpo", "ta-lpo", "dpo"):
        for h in HORIZONS:
            if learned in table and len(table[learned][h]) > 1 and len(table["ppo"][h]) > 1:
                lines.append(f"- {learned} >= ppo at {h:g}x: p = {welch_greater(table[learned][h], table['ppo'][h]):.3f}")
    if "lpo" in table and "ta-lpo" in table:
        ta = [v for h in HORIZONS for v in table["ta-lpo"][h]]
        plain = [v for h in HORIZONS for v in table["lpo"][h]]
        if len(ta) > 1 and len(plain) > 1:
            lines.append(f"- ta-lpo >= lpo over all horizons: mean {statistics.fmean(ta):.1f} vs "
                         f"{statistics.fmean(plain):.1f}, p = {welch_greater(ta, plain):.3f}")
    lines += center_rows()
    if "ppo" in table and all(table["ppo"].values()):
        lines += kernel_rows(table)
    lines += [] if ES_SEED else transfer_sections()
    for arm in ARMS:
        if (ES_SEED or variant()) and drift_file(arm) == run_dir(arm) / "lpo.pt":  # keep the drift with the results
            shutil.copyfile(run_dir(arm) / "lpo.pt", out / f"{arm}.pt")
        if (run_dir(arm) / "curve.csv").is_file():  # without the lifetime column (runs before it was fixed logged LPG's)
            with open(run_dir(arm) / "curve.csv") as f:
                rows = [{k: v for k, v in row.items() if k != "lifetime"} for row in csv.DictReader(f)]
            with open(out / f"curve-{arm}.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["generation"])
                writer.writeheader()
                writer.writerows(rows)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot()


def pooled() -> None:
    """Every ES seed whose two drifts have been tested, side by side and pooled, against PPO and DPO
    (all tested on the same fresh seeds with the same code)."""
    global ES_SEED
    returns: dict[str, dict[float, list[float]]] = {}
    seeds = []
    for seed in ES_SEEDS:
        ES_SEED = seed
        found = {f"{arm}-s{seed}": {h: final_returns(arm, h) for h in HORIZONS} for arm in ARMS}
        if all(values for by in found.values() for values in by.values()):
            seeds.append(seed)
            returns.update(found)
    ES_SEED = 0
    for name in ("ppo", "dpo"):
        returns[name] = {h: final_returns(name, h) for h in HORIZONS}
    missing = [f"{name} at {h:g}x" for name in ("ppo", "dpo") for h in HORIZONS if not returns[name][h]]
    if missing or len(seeds) < 1 or (len(seeds) < 2 and not variant()):
        raise SystemExit(f"pooled needs PPO's and DPO's tests (missing: {missing or 'none'}) and two or more ES "
                         f"seeds with both drifts tested (found: {seeds}); run `test [--es-seed N]` first")
    label = ", ".join(map(str, seeds))
    for arm in ARMS:
        returns[f"{arm} (ES seeds {label})"] = {h: [v for seed in seeds for v in returns[f"{arm}-s{seed}"][h]]
                                                for h in HORIZONS}
    horizon_note = f", horizon {HORIZON}" if _horizon_tag() else ""
    lines = [f"# LPO / TA-LPO, {len(seeds)} ES seed{'s' * (len(seeds) != 1)}, ES sigma {SIGMA:g}{horizon_note}, "
             "tested together", "",
             f"Generated by `python scripts/lpo_study.py pooled{_variant_options()}`: every objective trained on the same "
             f"{len(TEST_SEEDS)} fresh seeds with the same code ("
             + (f"this variant's drifts are in `results/lpo/{variant_dir().relative_to(RESULTS)}/`"
                if variant() else "ES seed 0's drifts are the shipped `lpo-cartpole` and `ta-lpo-cartpole`")
             + "; the per-seed returns are in `returns/`). Final greedy "
             "return, mean +- SE (runs). The pooled rows put the ES seeds' runs together: their Welch "
             "p-values count test seeds, not ES seeds, so they understate the spread between ES runs; "
             "the last section takes the ES seed as the unit.", "",
             "| objective | " + " | ".join(f"{h:g}x" for h in HORIZONS) + " |", "|---|" + "---|" * len(HORIZONS)]
    for name, by in returns.items():
        cells = []
        for h in HORIZONS:
            mean, se = mean_se(by[h])
            cells.append(f"{mean:.1f} +- {se:.1f} ({len(by[h])})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## One-sided Welch tests", ""]
    for arm in ARMS:
        for tag in [f"{arm}-s{seed}" for seed in seeds] + [f"{arm} (ES seeds {label})"]:
            tests = ", ".join(f"{h:g}x p = {welch_greater(returns[tag][h], returns['ppo'][h]):.3f}" for h in HORIZONS)
            lines.append(f"- {tag} >= ppo: {tests}")
    for tag in [f"-s{seed}" for seed in seeds] + [f" (ES seeds {label})"]:
        ta = [v for h in HORIZONS for v in returns[f"ta-lpo{tag}"][h]]
        plain = [v for h in HORIZONS for v in returns[f"lpo{tag}"][h]]
        lines.append(f"- ta-lpo{tag} >= lpo{tag} over all horizons: mean {statistics.fmean(ta):.1f} vs "
                     f"{statistics.fmean(plain):.1f}, p = {welch_greater(ta, plain):.3f}")
    lines += ["", "## The ES seed as the unit", "",
              "Each ES seed's mean gain over the test seeds (the drift's return minus PPO's, or TA-LPO's minus "
              "LPO's, both on the same test seeds), then mean +- SE over the ES seeds and a one-sided one-sample "
              f"t-test of 'gain > 0' with {len(seeds) - 1} degree(s) of freedom: what another ES run would "
              "likely give, with little power at this number of runs.", ""]
    gains: dict[str, dict[str, list[float]]] = {}
    for arm in ARMS:
        for h in HORIZONS:
            gains.setdefault(f"{arm} - ppo", {})[f"{h:g}x"] = [
                statistics.fmean(returns[f"{arm}-s{seed}"][h]) - statistics.fmean(returns["ppo"][h]) for seed in seeds]
    gains["ta-lpo - lpo"] = {"all horizons": [
        statistics.fmean([v for h in HORIZONS for v in returns[f"ta-lpo-s{seed}"][h]])
        - statistics.fmean([v for h in HORIZONS for v in returns[f"lpo-s{seed}"][h]]) for seed in seeds]}
    lines += ["| gain | horizon | per ES seed | mean +- SE | p |", "|---|---|---|---|---|"]
    for what, by in gains.items():
        for horizon, values in by.items():
            mean, se = mean_se(values)
            lines.append(f"| {what} | {horizon} | {', '.join(f'{v:+.1f}' for v in values)} | {mean:+.1f} +- {se:.1f} "
                         f"| {ttest_greater_zero(values):.3f} |")
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    (out / "pooled.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def ttest_greater_zero(values: list[float]) -> float:
    """One-sided one-sample t-test p-value for mean(values) > 0 (nan for fewer than two values)."""
    from scipy import stats  # noqa: PLC0415 - scipy comes with the es extra; only the report needs it

    if len(values) < 2:
        return math.nan
    return float(stats.ttest_1samp(values, 0.0, alternative="greater").pvalue)


def _plot() -> None:
    import matplotlib  # noqa: PLC0415 - optional: only the plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import torch  # noqa: PLC0415 - to evaluate the learned drifts

    from rlmeta.agents.learned import load_lpo  # noqa: PLC0415 - scripts import the library lazily here

    fig, (curve_ax, *drift_axes) = plt.subplots(1, 1 + len(ARMS), figsize=(5 * (1 + len(ARMS)), 4))
    for path in sorted(results_dir().glob("curve-*.csv")):
        rows = list(csv.DictReader(open(path)))
        curve_ax.plot([int(r["generation"]) for r in rows], [float(r["fitness_mean"]) for r in rows],
                      label=path.stem[len("curve-"):], lw=0.8)
    curve_ax.set(xlabel="ES generation", ylabel="population's mean fitness (greedy return)")
    curve_ax.legend()
    r = torch.linspace(0.5, 1.5, 201, dtype=torch.float64)
    for ax, arm in zip(drift_axes, ARMS):
        path = drift_file(arm)
        if path is None:
            continue
        drift = load_lpo(str(path))
        params = {k: v.double() for k, v in drift.params.items()}
        for progress in (0.0, 0.5, 1.0) if drift.network.lifetime_conditioning else (0.0,):
            for advantage in (1.0, -1.0):
                values = drift.network(params, r, torch.log(r), torch.full_like(r, advantage), progress=progress)
                ax.plot(r, values.detach(), label=f"A={advantage:+g}, n/N={progress:g}")
        ax.set(title=f"learned drift ({arm})", xlabel="r = pi / pi_old", ylabel="drift(r, A)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(results_dir() / "lpo.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=("train", "test", "kernel-check", "transfer", "centers", "report", "pooled",
                                          "test-one", "center-one"))
    parser.add_argument("--kernels-tag", action="store_true", help=argparse.SUPPRESS)  # test-one for kernel-check
    parser.add_argument("--generation", type=int, help="center-one: the checkpoint's generation")
    parser.add_argument("name", nargs="?", help="test-one: the objective (ppo, dpo, lpo, ta-lpo)")
    parser.add_argument("scale", nargs="?", type=float, help="test-one: the horizon's multiple")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--transfer-seeds", type=int, default=STUDY_TRANSFER_SEEDS,
                        help=f"transfer|report: Breakout seeds 0..N-1 (the check's: {STUDY_TRANSFER_SEEDS}; more add "
                             "a row over all of them beside it)")
    parser.add_argument("--transfer-steps", type=int, default=STUDY_TRANSFER_STEPS,
                        help=f"transfer: Breakout env steps per run (the check's: {STUDY_TRANSFER_STEPS:,}; another "
                             "budget keeps its returns in results/lpo/transfer-<k>k.json, reported beside)")
    parser.add_argument("--transfer-envs", type=int, default=STUDY_TRANSFER_ENVS,
                        help=f"transfer: Breakout envs per rollout (the config's: {STUDY_TRANSFER_ENVS}; another keeps "
                             "its returns in results/lpo/transfer[-<k>k]-e<n>.json, reported beside)")
    parser.add_argument("--transfer-objectives", nargs="+", choices=("ppo", "dpo", *ARMS), default=None,
                        help="transfer: only these objectives (default: all)")
    parser.add_argument("--generations", type=int, default=None,
                        help=f"ES generations per arm (default: {STUDY_GENERATIONS} at the study's horizon, the same "
                             "env-step budget at another)")
    parser.add_argument("--arm", choices=sorted(ARMS), action="append", help="train only this arm (repeatable)")
    parser.add_argument("--es-seed", type=int, default=0, choices=ES_SEEDS,
                        help="the arms' ES seed (0: the study's first run; 1, 2: replicates, tested against PPO)")
    parser.add_argument("--sigma", type=float, default=STUDY_SIGMA,
                        help=f"ES perturbation scale (the study's: {STUDY_SIGMA:g}; another runs a variant, "
                             "its runs and results tagged with it: results/lpo/sigma-S/)")
    parser.add_argument("--horizon", type=int, default=STUDY_HORIZON,
                        help=f"env steps of one lifetime, 1x (the study's: {STUDY_HORIZON}; another runs a variant "
                             "with the same env-step budget, its runs and results tagged with it)")
    args = parser.parse_args()
    if not (0 < args.sigma < 10):
        parser.error(f"--sigma must be in (0, 10), got {args.sigma:g}")
    if not (1024 <= args.horizon <= 10 * STUDY_HORIZON) or args.horizon % 1024:
        parser.error(f"--horizon must be a multiple of 1024 (one PPO rollout: 8 envs x 128 steps) in "
                     f"[1024, {10 * STUDY_HORIZON}], got {args.horizon}")
    if args.generations is not None and args.generations < 1:
        parser.error(f"--generations must be >= 1, got {args.generations}")
    if not STUDY_TRANSFER_SEEDS <= args.transfer_seeds <= 100:
        parser.error(f"--transfer-seeds must be in [{STUDY_TRANSFER_SEEDS}, 100], got {args.transfer_seeds}")
    if not 100_000 <= args.transfer_steps <= 20_000_000 or args.transfer_steps % 1000:
        parser.error(f"--transfer-steps must be a multiple of 1000 in [100000, 20000000], got {args.transfer_steps}")
    if not 1 <= args.transfer_envs <= 1024:
        parser.error(f"--transfer-envs must be in [1, 1024], got {args.transfer_envs}")
    global ES_SEED, SIGMA, HORIZON, GENERATIONS, TRANSFER_SEEDS, TRANSFER_STEPS, TRANSFER_ENVS, TRANSFER_ONLY
    TRANSFER_SEEDS = tuple(range(args.transfer_seeds))
    TRANSFER_STEPS, TRANSFER_ONLY = args.transfer_steps, tuple(args.transfer_objectives or ())
    TRANSFER_ENVS = args.transfer_envs
    ES_SEED, SIGMA, HORIZON = args.es_seed, args.sigma, args.horizon
    GENERATIONS = max(1, round(STUDY_GENERATIONS * STUDY_HORIZON / HORIZON))
    if args.generations is None:
        args.generations = GENERATIONS
    if args.stage == "train":
        train(args.parallel, args.generations, args.arm)
    elif args.stage == "test":
        test(args.parallel)
    elif args.stage == "test-one":
        if args.name not in ("ppo", "dpo", *ARMS) or args.scale not in HORIZONS:
            parser.error(f"test-one needs an objective of {['ppo', 'dpo', *ARMS]} and a scale of {HORIZONS}")
        test_one(args.name, args.scale, args.kernels_tag)
    elif args.stage == "kernel-check":
        kernel_check(args.parallel)
    elif args.stage == "centers":
        centers(args.parallel)
    elif args.stage == "center-one":
        if args.name not in ARMS or args.generation is None or not _checkpoint(args.name, args.generation).is_file():
            parser.error(f"center-one needs an arm of {list(ARMS)} and --generation of one of its checkpoints")
        center_one(args.name, args.generation)
    elif args.stage == "transfer":
        if ES_SEED:
            parser.error("transfer runs for ES seed 0 only (300k steps per run; the study's budget)")
        transfer(args.parallel)
    elif args.stage == "pooled":
        pooled()
    else:
        report()


if __name__ == "__main__":
    main()
