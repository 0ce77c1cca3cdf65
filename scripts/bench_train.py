"""Training benchmark: wall-clock time to solve CartPole, our PPO vs Stable-Baselines3, and A2C on Snake.

Run with ``python scripts/bench_train.py`` (``.venv/bin/python scripts/bench_train.py --seeds 3``).

**CartPole: time to an evaluation return of 475.** Every contender trains on CartPole-v1 for at
most ``budget`` env steps, one seed after another, the contenders interleaved per seed (seed 0 of
each, then seed 1 of each, ...) in the same process, with the same number of torch threads:

* ``sb3``: Stable-Baselines3 PPO with RL Zoo's tuned CartPole-v1 hyperparameters (8 envs,
  n_steps 32, batch 256, 20 epochs, gamma 0.98, GAE lambda 0.8, no entropy bonus, learning rate
  linear from 1e-3 and clip range linear from 0.2, both to 0 over the budget; SB3's defaults for
  the rest: Adam eps 1e-5, max_grad_norm 0.5, vf_coef 0.5, (64, 64) tanh MLPs) on
  ``make_vec_env("CartPole-v1", n_envs=8)`` (gymnasium, DummyVecEnv), on the CPU.
* ``ours``: our PPO (``agents.train``) with its shipped CartPole config,
  ``configs/cartpole_ppo.toml`` (8 envs x 128 steps, 10 epochs x 4 minibatches, Adam 2.5e-3,
  gamma 0.99, lambda 0.95, no entropy bonus, separate (64, 64) tanh torsos), on gymnasium's
  numpy-vectorized CartPole (``gym:CartPole-v1``, ``vectorization = "vector"``). The headline ratio compares ``sb3`` with ``ours``: each library with
  the hyperparameters its users would run.
* ``ours-zoo``: our PPO with RL Zoo's hyperparameters and SB3's network shape, so the per-step
  cost of the two libraries is compared too (printed, not the headline).

Evaluation is the same for all: after the update that brings the step count to a multiple of
``eval_interval`` (or past it), ``eval_episodes`` greedy (deterministic) episodes run on a fresh,
separately seeded env of ``eval_episodes`` sub-envs (one episode each); the run stops once their
mean return reaches ``target_return``. For SB3 a callback evaluates at the start of each rollout
(right after an update) and stops training on the next step; for ours ``TrainConfig.eval_interval``
and ``target_return`` do the same inside the training loop. The clock runs from after the
contender's env and model are built until its ``learn``/``run`` call returns, so it includes the
evaluations (and, for ours, the TensorBoard logging and the final checkpoint and summary).

A run that does not reach the target within the budget is reported as a lower bound ("> X s").
In the medians, our unreached runs count as infinitely slow (so they fail the check) and SB3's as
their lower bound (so the ratio is then a lower bound too). The check passes when every ``ours``
run reached the target and median(sb3) / median(ours) >= ``required_speedup``.

**Snake: steps/second of A2C.** ``train`` on ``snake`` (12x12, grid observations, our small CNN)
with ``snake_num_envs`` sub-envs x ``snake_num_steps`` steps per update for ``snake_iterations``
updates, after a short untimed warm-up run (numba compilation, torch's first calls). The rate is
env steps / wall-clock of the training loop from the end of its first update to the end of its
last (end-of-run checkpoint, summary and evaluation excluded; the evaluation is skipped).

Run directories go to a temporary directory that is removed at the end.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from rlmeta.heap import keep_freed_memory

Contender = Literal["sb3", "ours", "ours-zoo"]
LABELS: dict[str, str] = {
    "sb3": "SB3 PPO, RL Zoo hyperparameters",
    "ours": "ours PPO, configs/cartpole_ppo.toml",
    "ours-zoo": "ours PPO, RL Zoo hyperparameters",
}
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cartpole_ppo.toml"
# RL Zoo's hyperparams/ppo.yml, CartPole-v1 (n_timesteps 1e5).
ZOO = dict(n_envs=8, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20, ent_coef=0.0,
           learning_rate=1e-3, clip_range=0.2)


@dataclass
class BenchTrainConfig:
    """What to run; the defaults are the full benchmark (minutes on 2 cores)."""

    seeds: int = 3
    """Seeds per contender (0, 1, ... from first_seed)."""
    first_seed: int = 0
    budget: int = 100_000
    """Env steps at most per CartPole run; the learning rate and clip range anneal to 0 over it
    (RL Zoo's n_timesteps is 1e5)."""
    eval_interval: int = 4096
    """Evaluate every this many env steps (the same for all contenders)."""
    eval_episodes: int = 10
    target_return: float = 475.0
    threads: int = 1
    """torch.set_num_threads for every contender (0: leave torch's default)."""
    contenders: tuple[Contender, ...] = ("sb3", "ours", "ours-zoo")
    """Which CartPole contenders to run (none: skip CartPole)."""
    warmup: bool = True
    """Run each contender briefly, untimed, before the timed runs (first-call costs)."""
    config: str = str(CONFIG)
    """The config file of the ``ours`` contender (default: the shipped CartPole config)."""
    required_speedup: float = 3.0
    """The check: median SB3 time / median ours time must reach this."""
    snake: bool = True
    """Also measure A2C's steps/second on Snake 12x12."""
    snake_num_envs: int = 512
    snake_num_steps: int = 20
    snake_iterations: int = 30
    """Timed updates of the Snake run (the first is excluded from the rate)."""
    snake_threads: int = 0
    """torch threads for the Snake run (0: torch's default, all cores: the CNN is the work there)."""
    json_out: str | None = None
    """Write the results as JSON to this path."""

    def __post_init__(self) -> None:
        self.contenders = tuple(self.contenders)
        if not Path(self.config).is_file():
            raise ValueError(f"config {self.config!r} is not a file")
        for name in ("seeds", "budget", "eval_interval", "eval_episodes", "snake_num_envs", "snake_num_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.snake_iterations < 2:
            raise ValueError(f"snake_iterations must be >= 2 (the first is excluded), got {self.snake_iterations}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")
        unknown = [c for c in self.contenders if c not in LABELS]
        if unknown:
            raise ValueError(f"unknown contender(s) {unknown}; choose from {list(LABELS)}")
        if len(set(self.contenders)) != len(self.contenders):
            raise ValueError(f"contenders must not repeat, got {self.contenders}")
        if not math.isfinite(self.target_return):
            raise ValueError(f"target_return must be finite, got {self.target_return}")
        if not self.required_speedup > 0:
            raise ValueError(f"required_speedup must be > 0, got {self.required_speedup}")
        if not self.contenders and not self.snake:
            raise ValueError("nothing to run: give some contenders or keep snake on")


@dataclass
class RunResult:
    """One CartPole run: whether and when it reached the target."""

    contender: str
    seed: int
    reached: bool
    seconds: float
    """Wall-clock to the target, or of the whole run (a lower bound) when not reached."""
    steps: int
    """Env steps when the target was reached (or at the end)."""
    evaluations: list[dict[str, float]] = field(default_factory=list)


@dataclass
class Summary:
    """A contender's median over seeds (unreached: inf for ours, the lower bound for SB3)."""

    contender: str
    label: str
    median_seconds: float
    lower_bound: bool
    reached: int
    runs: int
    median_steps: float


# --------------------------------------------------------------------------------------------
# Contenders.


def _ours_config(contender: str, seed: int, cfg: BenchTrainConfig, run_dir: Path, budget: int):
    from rlmeta.agents.config import HParamsConfig, NetworkConfig, OptimizerConfig, PPOConfig, TrainConfig, load_config

    common = dict(total_steps=budget, seed=seed, run_dir=str(run_dir), eval_interval=cfg.eval_interval,
                  eval_episodes=cfg.eval_episodes, eval_greedy=True, target_return=cfg.target_return, progress=False,
                  checkpoint_interval=0, torch_threads=cfg.threads)
    if contender == "ours":  # what a user of ours runs: the shipped CartPole config
        shipped = load_config(cfg.config)
        return TrainConfig(**{**shipped.__dict__, **common})
    # SB3's MlpPolicy: separate (64, 64) tanh MLPs for policy and value.
    return TrainConfig(
        env="envpool:CartPole-v1", algo="ppo", num_envs=ZOO["n_envs"], num_steps=ZOO["n_steps"],
        network=NetworkConfig(hidden=(64, 64), activation="tanh", shared_torso=False),
        optimizer=OptimizerConfig(name="adam", lr=ZOO["learning_rate"], eps=1e-5, max_grad_norm=0.5, anneal_lr=True),
        hparams=HParamsConfig(gamma=ZOO["gamma"], td_lambda=ZOO["gae_lambda"], entropy_cost=ZOO["ent_coef"],
                              value_cost=0.5),
        ppo=PPOConfig(clip=ZOO["clip_range"], anneal_clip=True, epochs=ZOO["n_epochs"],
                      minibatches=ZOO["n_envs"] * ZOO["n_steps"] // ZOO["batch_size"], normalize_advantages=True,
                      value_clip=None),
        **common,
    )


def _run_ours(contender: str, seed: int, cfg: BenchTrainConfig, tmp: Path, budget: int) -> RunResult:
    from rlmeta.agents.train import Trainer

    run_dir = tmp / f"{contender}-s{seed}-{budget}"
    trainer = Trainer(_ours_config(contender, seed, cfg, run_dir, budget))
    start = time.perf_counter()
    summary = trainer.run()
    seconds = time.perf_counter() - start
    shutil.rmtree(run_dir, ignore_errors=True)
    evaluations = summary["evaluations"]
    reached = bool(summary.get("target_reached"))
    steps = next((e["step"] for e in evaluations if e["return_mean"] >= cfg.target_return), summary["total_steps"])
    return RunResult(contender, seed, reached, seconds, int(steps), evaluations)


class _Linear:
    """RL Zoo's ``lin_<x>`` schedule: ``progress_remaining * initial``."""

    def __init__(self, initial: float):
        self.initial = initial

    def __call__(self, progress_remaining: float) -> float:
        return progress_remaining * self.initial


def _sb3_evaluate(model: Any, seed: int, cfg: BenchTrainConfig, step: int) -> dict[str, float]:
    """``eval_episodes`` deterministic episodes, one per sub-env of a fresh, seeded DummyVecEnv."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    env = make_vec_env("CartPole-v1", n_envs=cfg.eval_episodes, seed=seed + 1_000_003)
    try:
        returns, lengths = evaluate_policy(model, env, n_eval_episodes=cfg.eval_episodes, deterministic=True,
                                           return_episode_rewards=True)
    finally:
        env.close()
    return {"step": step, "return_mean": statistics.fmean(returns), "return_std": statistics.pstdev(returns),
            "length_mean": statistics.fmean(lengths)}


def _run_sb3(seed: int, cfg: BenchTrainConfig, budget: int) -> RunResult:
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    class EvalCallback(BaseCallback):
        """Evaluate right after the update that passes each multiple of eval_interval; stop at the target."""

        def __init__(self) -> None:
            super().__init__()
            self.evaluations: list[dict[str, float]] = []
            self.next_eval = cfg.eval_interval
            self.reached = False

        def _on_rollout_start(self) -> None:  # called after each update (and before the first rollout)
            if self.num_timesteps >= self.next_eval and not self.reached:
                stats = _sb3_evaluate(self.model, seed, cfg, self.num_timesteps)
                self.evaluations.append(stats)
                self.next_eval = (self.num_timesteps // cfg.eval_interval + 1) * cfg.eval_interval
                self.reached = stats["return_mean"] >= cfg.target_return

        def _on_step(self) -> bool:
            return not self.reached

    env = make_vec_env("CartPole-v1", n_envs=ZOO["n_envs"], seed=seed)
    model = PPO("MlpPolicy", env, n_steps=ZOO["n_steps"], batch_size=ZOO["batch_size"], gae_lambda=ZOO["gae_lambda"],
                gamma=ZOO["gamma"], n_epochs=ZOO["n_epochs"], ent_coef=ZOO["ent_coef"],
                learning_rate=_Linear(ZOO["learning_rate"]), clip_range=_Linear(ZOO["clip_range"]),
                seed=seed, device="cpu", verbose=0)
    callback = EvalCallback()
    start = time.perf_counter()
    model.learn(total_timesteps=budget, callback=callback)
    # Like ours: a run that ends without reaching the target gets a last evaluation at its end
    # (the update after the last rollout start is not evaluated by the callback).
    if not callback.reached and not (callback.evaluations and callback.evaluations[-1]["step"] == model.num_timesteps):
        stats = _sb3_evaluate(model, seed, cfg, model.num_timesteps)
        callback.evaluations.append(stats)
        callback.reached = stats["return_mean"] >= cfg.target_return
    seconds = time.perf_counter() - start
    env.close()
    steps = callback.evaluations[-1]["step"] if callback.reached else model.num_timesteps
    return RunResult("sb3", seed, callback.reached, seconds, int(steps), callback.evaluations)


def _run(contender: str, seed: int, cfg: BenchTrainConfig, tmp: Path, budget: int | None = None) -> RunResult:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    budget = budget or cfg.budget
    if contender == "sb3":
        return _run_sb3(seed, cfg, budget)
    return _run_ours(contender, seed, cfg, tmp, budget)


def _summarize(contender: str, results: list[RunResult], cfg: BenchTrainConfig) -> Summary:
    times = [r.seconds if r.reached else (r.seconds if contender == "sb3" else math.inf) for r in results]
    steps = [r.steps for r in results if r.reached]
    label = f"ours PPO, {Path(cfg.config).name}" if contender == "ours" else LABELS[contender]
    return Summary(contender, label, statistics.median(times),
                   lower_bound=contender == "sb3" and not all(r.reached for r in results),
                   reached=sum(r.reached for r in results), runs=len(results),
                   median_steps=statistics.median(steps) if steps else math.nan)


# --------------------------------------------------------------------------------------------
# Snake.


def _default_threads() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _snake_rate(cfg: BenchTrainConfig, tmp: Path) -> dict[str, Any]:
    """Steps/second of A2C's training loop on Snake 12x12, first update excluded (see module docstring)."""
    from rlmeta.agents.config import NetworkConfig, TrainConfig
    from rlmeta.agents.train import Trainer

    batch = cfg.snake_num_envs * cfg.snake_num_steps
    network = NetworkConfig(hidden=(64,), conv_channels=(16, 16), activation="relu")  # as configs/snake6_a2c.toml

    def make(name: str, iterations: int) -> Trainer:
        config = TrainConfig(env="snake", num_envs=cfg.snake_num_envs, num_steps=cfg.snake_num_steps, algo="a2c",
                             total_steps=batch * iterations, seed=0, run_dir=str(tmp / name), progress=False,
                             checkpoint_interval=0, eval_interval=0, eval_episodes=1, network=network,
                             torch_threads=cfg.snake_threads)
        trainer = Trainer(config)
        trainer.evaluate = lambda: {}  # type: ignore[method-assign]  # the rate is the training loop's
        return trainer

    if cfg.snake_threads:
        torch.set_num_threads(cfg.snake_threads)
    else:
        torch.set_num_threads(_default_threads())
    make("snake-warmup", 2).run()
    trainer = make("snake", cfg.snake_iterations)
    marks: list[tuple[float, int]] = []  # (time, env steps) at the end of each update
    publish = trainer.loop.publish

    def timed_publish(*args: Any, **kwargs: Any) -> None:
        marks.append((time.perf_counter(), trainer.step))
        publish(*args, **kwargs)

    trainer.loop.publish = timed_publish  # type: ignore[method-assign]
    summary = trainer.run()
    # marks[0] is before the first update, marks[1] at its end.
    (t1, s1), (tn, sn) = marks[1], marks[-1]
    return {"num_envs": cfg.snake_num_envs, "num_steps": cfg.snake_num_steps, "updates": summary["updates"],
            "threads": torch.get_num_threads(),
            "timed_steps": sn - s1, "timed_seconds": tn - t1, "steps_per_second": (sn - s1) / (tn - t1),
            "run_steps_per_second": summary["steps_per_second"]}


# --------------------------------------------------------------------------------------------
# The benchmark.


def run(cfg: BenchTrainConfig) -> dict[str, Any]:
    """Run the benchmark, print its tables and return (and optionally write) the results."""
    import importlib.util

    if "sb3" in cfg.contenders and importlib.util.find_spec("stable_baselines3") is None:
        raise SystemExit("the 'sb3' contender needs Stable-Baselines3: pip install -e '.[bench]' "
                         "(or leave it out: --contenders ours ours-zoo)")
    threads = cfg.threads or torch.get_num_threads()
    # Our runs set up their process this way (rlmeta.agents.runs.set_threads): set it before any
    # contender runs, so that all of them share it (RLMETA_KEEP_FREED_MEMORY=0: glibc's defaults).
    keep_freed_memory()
    print(f"torch threads: {threads}{'' if cfg.threads else ' (torch default)'}; budget {cfg.budget:,} steps; "
          f"eval every {cfg.eval_interval:,} steps, {cfg.eval_episodes} greedy episodes, target {cfg.target_return}; "
          f"seeds {cfg.first_seed}..{cfg.first_seed + cfg.seeds - 1}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="rlmeta-bench-train-"))
    results: dict[str, list[RunResult]] = {c: [] for c in cfg.contenders}
    snake: dict[str, Any] | None = None
    try:
        if cfg.warmup:
            for contender in cfg.contenders:
                _run(contender, cfg.first_seed + 10_000, cfg, tmp, budget=1024)
        for seed in range(cfg.first_seed, cfg.first_seed + cfg.seeds):
            for contender in cfg.contenders:
                result = _run(contender, seed, cfg, tmp)
                results[contender].append(result)
                status = "reached" if result.reached else "NOT reached"
                print(f"  {contender:<11} seed {seed}: {_time(result)} s, {status} at {result.steps:,} steps "
                      f"(last eval {result.evaluations[-1]['return_mean']:.1f})", flush=True)
        if cfg.snake:
            snake = _snake_rate(cfg, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summaries = {c: _summarize(c, rs, cfg) for c, rs in results.items()}
    check = _check(summaries, results, cfg)
    print()
    print(format_report(cfg, results, summaries, check, snake, threads))
    out = {"config": asdict(cfg), "torch_threads": threads,
           "runs": {c: [asdict(r) for r in rs] for c, rs in results.items()},
           "summaries": {c: asdict(s) for c, s in summaries.items()}, "check": check, "snake": snake}
    if cfg.json_out:
        write_json(out, cfg.json_out)
    return out


def write_json(results: Any, path: str) -> None:
    """Write benchmark results as standard JSON (non-finite floats, e.g. unreached medians, as null)."""
    with open(path, "w") as f:
        json.dump(_finite(results), f, indent=2)


def _finite(tree: Any) -> Any:
    """``tree`` with non-finite floats (unreached medians) as None, so the JSON is standard."""
    if isinstance(tree, float):
        return tree if math.isfinite(tree) else None
    if isinstance(tree, dict):
        return {k: _finite(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_finite(v) for v in tree]
    return tree


def _check(summaries: dict[str, Summary], results: dict[str, list[RunResult]], cfg: BenchTrainConfig) -> dict[str, Any]:
    """The headline: median SB3 time / median ours time (shipped config) against the requirement."""
    if "sb3" not in summaries or "ours" not in summaries:
        return {"ratio": None, "passed": None, "note": "needs both 'sb3' and 'ours' contenders"}
    sb3, ours = summaries["sb3"], summaries["ours"]
    ratio = sb3.median_seconds / ours.median_seconds  # 0 when ours' median is inf
    all_reached = all(r.reached for r in results["ours"])
    notes = []
    if not all_reached:
        notes.append(f"{ours.runs - ours.reached} of our runs did not reach {cfg.target_return}: counted as failing")
    if sb3.lower_bound:
        notes.append(f"{sb3.runs - sb3.reached} SB3 runs did not reach {cfg.target_return}: their time is a lower "
                     "bound, so the ratio is too")
    return {"ratio": ratio, "ratio_is_lower_bound": sb3.lower_bound, "required": cfg.required_speedup,
            "passed": all_reached and ratio >= cfg.required_speedup, "note": "; ".join(notes)}


def _time(r: RunResult) -> str:
    return f"{r.seconds:.1f}" if r.reached else f"> {r.seconds:.1f}"


def format_report(cfg: BenchTrainConfig, results: dict[str, list[RunResult]], summaries: dict[str, Summary],
                  check: dict[str, Any], snake: dict[str, Any] | None, threads: int) -> str:
    """Markdown tables: per-seed times, medians, the check, and the Snake rate."""
    lines: list[str] = []
    if results:
        seeds = list(range(cfg.first_seed, cfg.first_seed + cfg.seeds))
        lines.append(f"### CartPole-v1: wall-clock seconds to a greedy eval return >= {cfg.target_return:g} "
                     f"(budget {cfg.budget:,} steps, {threads} torch thread{'s' if threads != 1 else ''})")
        lines.append("")
        header = " | ".join(f"seed {s}" for s in seeds)
        lines.append(f"| contender | {header} | median s | reached | median steps |")
        lines.append("|---|" + "---:|" * (len(seeds) + 3))
        for c, rs in results.items():
            s = summaries[c]
            median = ("inf" if math.isinf(s.median_seconds) else
                      f"{'>= ' if s.lower_bound else ''}{s.median_seconds:.1f}")
            steps = "-" if math.isnan(s.median_steps) else f"{s.median_steps:,.0f}"
            lines.append(f"| {s.label} | " + " | ".join(_time(r) for r in rs) +
                         f" | {median} | {s.reached}/{s.runs} | {steps} |")
        lines.append("")
        if check["ratio"] is None:
            lines.append(f"Speed-up: n/a ({check['note']}).")
        else:
            bound = ">= " if check["ratio_is_lower_bound"] else ""
            verdict = "PASS" if check["passed"] else "FAIL"
            lines.append(f"Speed-up (SB3 with RL Zoo's tuned hyperparameters vs ours with its shipped config; "
                         f"SB3 median / ours median): {bound}{check['ratio']:.2f}x; "
                         f"required >= {check['required']:g}x: **{verdict}**"
                         + (f" ({check['note']})" if check["note"] else ""))
            if "ours-zoo" in summaries and math.isfinite(summaries["ours-zoo"].median_seconds):
                same = summaries["sb3"].median_seconds / summaries["ours-zoo"].median_seconds
                lines.append(f"Same hyperparameters as SB3 (RL Zoo's; per-step cost only): SB3 median / ours median "
                             f"{bound}{same:.2f}x.")
    if snake is not None:
        if lines:
            lines.append("")
        lines.append(f"### Snake 12x12, A2C, {snake['num_envs']} envs x {snake['num_steps']} steps per update "
                     f"({snake['threads']} torch threads)")
        lines.append("")
        lines.append("| updates | timed steps | timed s | steps/s (first update excluded) | steps/s (whole run) |")
        lines.append("|---:|---:|---:|---:|---:|")
        lines.append(f"| {snake['updates']} | {snake['timed_steps']:,} | {snake['timed_seconds']:.2f} | "
                     f"{snake['steps_per_second']:,.0f} | {snake['run_steps_per_second']:,.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import tyro

    run(tyro.cli(BenchTrainConfig))
