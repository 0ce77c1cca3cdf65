"""Meta-training LPG or TA-LPG by evolution strategies over whole agent lifetimes: ``rlmeta es-train``.

Jackson et al. 2024 ("Discovering Temporally-Aware Reinforcement Learning Algorithms") find that
meta-gradients through a few updates do not discover rules that depend on the agent's training
progress, while evolution strategies over whole lifetimes do. Here the search space is an LPG
network's parameter tree (``--lpg.lifetime-conditioning``: TA-LPG, which also reads n/N and log N),
the engine is :class:`rlmeta.es.OpenES` (antithetic pairs, centered ranks, Adam on the center), and
a candidate's fitness is one agent lifetime:

* every generation draws one lifetime N log-uniformly from ``[lifetime_min, lifetime_max]``;
* each candidate trains ``agents_per_candidate`` fresh tabular agents (groove's), each on its own
  level from ``levels``, for N updates with the candidate as its objective; both members of an
  antithetic pair get the same levels and the same initial agents (common random numbers);
* its fitness is the agents' mean normalised return after the lifetime,
  ``(J - J_random) / (J* - J_random)`` with ``J*`` the level's optimum by dynamic programming
  (levels whose optimum beats random by less than 0.05 are left out, for both members of a pair).
  The env's and the policies' randomness are seeded per call, so a fitness call is deterministic.

Candidates are evaluated in chunks (``chunk_size``), each chunk one batched population whose
agents are split among its candidates (:class:`~rlmeta.objectives.lpg.LPG` with grouped
parameters): the in-process fast path. ``--ray`` sends the same chunks to Ray workers, so both
give identical results; a chunk whose worker dies is re-run by Ray.

The run directory holds ``config.json``, ``curve.csv`` (one row per generation: its lifetime
and the population's fitness mean, max and min), TensorBoard events,
``checkpoints/`` (the ES state; ``--resume``; Ctrl-C and SIGTERM write one) and ``lpg.pt`` (the
center: ``rlmeta meta-test``, ``rlmeta train --algo lpg --objective``).
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from rlmeta.agents.config import ESTrainConfig, load_config, save_config, to_dict
from rlmeta.agents.learned import LPG_FORMAT
from rlmeta.agents.networks import TabularAgent
from rlmeta.agents.population import (
    GridPopulation, TabularHypers, adapter, evaluate_population, initial_params, num_states,
    random_returns,
)
from rlmeta.agents.runs import (
    atomic_json, atomic_save, atomic_text, check_device, check_new_run_dir, default_run_dir, exit_code, prepare_run_dir,
    save_checkpoint, set_threads, sigterm_as_interrupt,
)
from rlmeta.envs.levels import GENERATORS, optimal_return, sample_levels
from rlmeta.es import InProcessEvaluator, OpenES, RayEvaluator
from rlmeta.learner import update
from rlmeta.objectives.lpg import LPG, LPGNetwork

CHECKPOINT_VERSION = 1
LPG_FILE = "lpg.pt"
PAIR_SPACE = 1 << 20  # an evaluation seed is generation_seed * PAIR_SPACE + pair
MIN_SPAN = 0.05  # levels whose optimum beats random by less count in no fitness (noise / noise), as in meta-train
RESUME_FIXED = ("levels", "popsize", "lpg", "agents_per_candidate", "envs_per_agent", "num_steps", "chunk_size")
CURVE_FIELDS = ("generation", "lifetime", "fitness_mean", "fitness_max", "fitness_min", "wall_seconds")


class ESTrainingInterrupted(RuntimeError):
    """Ctrl-C or SIGTERM: a checkpoint was written and the run can be resumed (``exit_code``: 130 or 143)."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


def es_network(config: ESTrainConfig) -> LPGNetwork:
    """The LPG network an ES config searches over."""
    c = config.lpg
    return LPGNetwork(target_width=c.target_width, embedding_width=c.embedding_width, gru_width=c.gru_width,
                      inputs_gamma=c.inputs_gamma, lifetime_conditioning=c.lifetime_conditioning)


def es_hypers(config: ESTrainConfig) -> TabularHypers:
    """The tabular agents' hyperparameters of an ES config."""
    return TabularHypers(policy_lr=config.agent_lr, prediction_lr=config.prediction_lr, value_lr=config.value_lr,
                         max_grad_norm=config.agent_max_grad_norm, envs_per_agent=config.envs_per_agent,
                         num_steps=config.num_steps, gamma=config.gamma, gae_lambda=config.critic_lambda)


def generation_lifetime(config: ESTrainConfig, generation_seed: int) -> int:
    """The agents' lifetime N of one generation: log-uniform in ``[lifetime_min, lifetime_max]``."""
    low, high = math.log(config.lifetime_min), math.log(config.lifetime_max)
    draw = np.random.default_rng([config.seed, generation_seed, 0x11fe]).uniform(low, high)
    return int(min(config.lifetime_max, max(config.lifetime_min, round(math.exp(draw)))))


class LifetimeFitness:
    """The fitness of LPG candidates: one lifetime of fresh tabular agents learning with each (picklable,
    so Ray can ship it). ``seeds[i]`` = ``generation_seed * PAIR_SPACE + pair``; a call's candidates
    share the generation (its lifetime), pairs share levels and initial agents."""

    def __init__(self, config: ESTrainConfig):
        self.config = config

    def __call__(self, candidates: Sequence[dict[str, torch.Tensor]], seeds: Sequence[int]) -> list[float]:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the same arithmetic in process and on Ray workers (one thread each)
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                torch.manual_seed(seeds[0])  # the agents sample their actions from torch's global generator
                return self._fitness(candidates, seeds)
        finally:
            torch.set_num_threads(threads)

    def setup(self, seeds: Sequence[int]) -> tuple[list, dict[str, torch.Tensor]]:
        """The agents' levels and initial tables of a call: ``agents_per_candidate`` of each, drawn from
        the candidate's seed (so both members of an antithetic pair get the same)."""
        c, network = self.config, es_network(self.config)
        grid, objects, _ = GENERATORS[c.levels].bounds()
        levels = [level for seed in seeds for level in sample_levels(c.levels, c.agents_per_candidate, seed)]
        params = _stack([initial_params(c.agents_per_candidate, num_states(grid, objects), 5, network.target_width,
                                        torch.Generator().manual_seed(seed)) for seed in seeds])
        return levels, params

    def _fitness(self, candidates: Sequence[dict[str, torch.Tensor]], seeds: Sequence[int]) -> list[float]:
        c, network, hypers = self.config, es_network(self.config), es_hypers(self.config)
        generations = {seed // PAIR_SPACE for seed in seeds}
        if len(generations) != 1:
            raise ValueError(f"one fitness call evaluates one generation's candidates, got generations {generations}")
        lifetime = generation_lifetime(c, generations.pop())
        agents = c.agents_per_candidate
        levels, params = self.setup(seeds)
        grid, objects, _ = GENERATORS[c.levels].bounds()
        states, m = num_states(grid, objects), network.target_width
        params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        pv = adapter(TabularAgent(states, 5, m), len(levels), hypers.envs_per_agent)
        grouped = {k: torch.stack([torch.as_tensor(cand[k], dtype=torch.float32) for cand in candidates])
                   for k in candidates[0]}
        objective = LPG(pv, network, params=grouped, grouped=True, target_cost=c.lpg.target_cost, lifetime=lifetime)
        optimizer = hypers.optimizer(prediction=True).for_population()
        state = optimizer.init(params)
        population = GridPopulation(levels, hypers.envs_per_agent, hypers.num_steps, pv, seeds[0] % (1 << 31), grid,
                                    objects, c.device)
        hparams = {"gamma": hypers.gamma}
        try:
            for step in range(lifetime):
                with torch.enable_grad():
                    rollout = population.collect(params)
                    params, state, _ = update(objective, optimizer, params, state, rollout, hparams,
                                              progress=step / lifetime)
        finally:
            population.close()
        eval_seed = (seeds[0] + 1) % (1 << 31)
        j = evaluate_population(adapter(TabularAgent(states, 5, m), len(levels), 1), params, levels, c.eval_episodes,
                                eval_seed, grid, objects)
        j_rand = random_returns(levels, c.eval_episodes, eval_seed, grid, objects)
        j_opt = np.array([optimal_return(level) for level in levels])
        span = j_opt - j_rand
        counted = (span >= MIN_SPAN).reshape(len(candidates), agents)  # the same levels for both members of a pair
        normalized = ((j - j_rand) / np.maximum(span, MIN_SPAN)).reshape(len(candidates), agents)
        return [float(v[k].mean()) if k.any() else 0.0 for v, k in zip(normalized, counted)]


def _stack(trees: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([t[k].detach() for t in trees]) for k in trees[0]}


class ESTrainer:
    """One ES meta-training run: the search, its evaluator, and the run directory (see the module docstring)."""

    def __init__(self, config: ESTrainConfig):
        if config.levels not in GENERATORS:
            raise ValueError(f"unknown levels {config.levels!r}; known: {sorted(GENERATORS)}")
        check_device(config.device)
        run_dir = Path(config.run_dir) if config.run_dir else default_run_dir(
            f"es-{'ta-lpg' if config.lpg.lifetime_conditioning else 'lpg'}-{config.levels}-s{config.seed}")
        if config.resume:
            saved = load_config(run_dir / "config.json", ESTrainConfig)
            changed = [k for k in RESUME_FIXED if to_dict(saved).get(k) != to_dict(config).get(k)]
            if changed:
                raise ValueError(f"--resume cannot change {changed} (the run has {[to_dict(saved)[k] for k in changed]})")
        else:
            check_new_run_dir(run_dir, config.overwrite)
        self.config, self.run_dir = config, run_dir
        set_threads(config.torch_threads)
        self.network = es_network(config)
        self.fitness = LifetimeFitness(config)
        self.es = OpenES(self.network.init(config.seed), popsize=config.popsize, sigma=config.sigma, lr=config.lr,
                         seed=config.seed)
        self.generation, self.wall_seconds, self.curve = 0, 0.0, []
        if config.resume:
            self._load(torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False))
        prepare_run_dir(run_dir, config.overwrite, config.resume)
        save_config(config, run_dir / "config.json")
        chunk = config.chunk_size or None
        if config.ray:
            self.evaluator = RayEvaluator(self.fitness, num_workers=config.ray_workers, address=config.ray_address,
                                          chunk_size=chunk)
        else:
            self.evaluator = InProcessEvaluator(self.fitness, chunk_size=chunk)
        self.writer = SummaryWriter(str(run_dir / "tb"))

    def _load(self, state: dict[str, Any]) -> None:
        if state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"checkpoint version {state.get('version')} is not {CHECKPOINT_VERSION}")
        self.es.load_state_dict(state["es"])
        self.generation, self.wall_seconds, self.curve = state["generation"], state["wall_seconds"], state["curve"]

    def step(self) -> dict[str, float]:
        """One generation: ask, evaluate every candidate for one lifetime, tell."""
        candidates, _ = self.es.ask()
        generation_seed = self.config.seed * PAIR_SPACE + self.generation
        seeds = [generation_seed * PAIR_SPACE + i // 2 for i in range(len(candidates))]
        fitness = np.asarray(self.evaluator(candidates, seeds), dtype=np.float64)
        metrics = self.es.tell(torch.as_tensor(fitness))
        lifetime = generation_lifetime(self.config, generation_seed)
        self.generation += 1
        row = {"generation": self.generation, "lifetime": lifetime, "fitness_mean": float(fitness.mean()),
               "fitness_max": float(fitness.max()), "fitness_min": float(fitness.min()), "wall_seconds": math.nan}
        self.curve.append(row)
        return {"es/fitness_mean": row["fitness_mean"], "es/fitness_max": row["fitness_max"],
                "es/lifetime": float(lifetime), **{f"es/{k}": float(v) for k, v in metrics.items()}}

    def save_checkpoint(self) -> Path:
        """``checkpoints/ckpt-<generation>.pt``, ``latest.pt``, ``curve.csv`` and ``lpg.pt`` (all atomic)."""
        state = {"version": CHECKPOINT_VERSION, "generation": self.generation, "wall_seconds": self.wall_seconds,
                 "es": self.es.state_dict(), "curve": self.curve}
        path = save_checkpoint(state, self.run_dir / "checkpoints", self.generation)
        out = io.StringIO()
        writer = csv.DictWriter(out, CURVE_FIELDS)
        writer.writeheader()
        writer.writerows(self.curve)
        atomic_text(out.getvalue(), self.run_dir / "curve.csv")
        self.save_lpg(self.run_dir / LPG_FILE)
        return path

    def save_lpg(self, path: Path) -> None:
        """The center of the search as a learned LPG (``rlmeta meta-test``, ``rlmeta train --algo lpg``)."""
        atomic_save({"format": LPG_FORMAT, "network": to_dict(self.network),
                     "params": {k: v.detach().float().cpu() for k, v in self.es.center.items()},
                     "target_cost": self.config.lpg.target_cost, "meta_step": self.generation,
                     "config": to_dict(self.config)}, path)

    def summary(self, status: str, message: str = "") -> dict[str, Any]:
        """``summary.json``: status, generations, wall clock, first and last tenth of the fitness curve."""
        out: dict[str, Any] = {"status": status, "generations": self.generation,
                               "wall_clock_seconds": round(self.wall_seconds, 1), "run_dir": str(self.run_dir),
                               "lpg": str(self.run_dir / LPG_FILE)}
        if len(self.curve) >= 2:
            tenth = max(len(self.curve) // 10, 1)
            for name, rows in (("first", self.curve[:tenth]), ("last", self.curve[-tenth:])):
                values = [r["fitness_mean"] for r in rows]
                out[f"fitness_{name}_tenth"] = float(np.mean(values))
        if message:
            out["message"] = message
        atomic_json(out, self.run_dir / "summary.json")
        return out

    def run(self) -> dict[str, Any]:
        """Run to ``generations``; Ctrl-C and SIGTERM write a checkpoint (:class:`ESTrainingInterrupted`)."""
        c = self.config
        bar = tqdm(total=c.generations, initial=min(self.generation, c.generations), unit="generation",
                   disable=not c.progress, dynamic_ncols=True, desc=self.run_dir.name[:40])
        started, base = time.perf_counter(), self.wall_seconds
        try:
            with sigterm_as_interrupt():
                while self.generation < c.generations:
                    metrics = self.step()
                    self.wall_seconds = base + time.perf_counter() - started
                    self.curve[-1]["wall_seconds"] = round(self.wall_seconds, 1)
                    for key, value in metrics.items():
                        if math.isfinite(value):
                            self.writer.add_scalar(key, value, self.generation)
                    if c.checkpoint_interval and self.generation % c.checkpoint_interval == 0:
                        self.save_checkpoint()
                    bar.update(1)
                    bar.set_postfix(fitness=f"{metrics['es/fitness_mean']:.3f}", refresh=False)
        except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM
            path = self.save_checkpoint()
            self.summary("interrupted", f"interrupted at generation {self.generation}; checkpoint {path}")
            raise ESTrainingInterrupted(
                f"interrupted at generation {self.generation}; checkpoint written to {path}. "
                f"Continue with: rlmeta es-train --run-dir {self.run_dir} --resume", exit_code(stop)) from None
        finally:
            bar.close()
            self.evaluator.close()
        self.save_checkpoint()
        self.writer.close()
        return self.summary("completed")


def es_train(config: ESTrainConfig) -> dict[str, Any]:
    """Run ``config`` to the end and return its summary."""
    return ESTrainer(config).run()
