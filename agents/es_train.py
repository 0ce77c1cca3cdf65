"""Meta-training learned objectives by evolution strategies over whole agent lifetimes: ``rlmeta es-train``.

Jackson et al. 2024 ("Discovering Temporally-Aware Reinforcement Learning Algorithms") find that
meta-gradients through a few updates do not discover rules that depend on the agent's training
progress, while evolution strategies over whole lifetimes do. The engine is
:class:`rlmeta.es.OpenES` (antithetic pairs, centered ranks, Adam on the center); the search space
is a learned objective's parameter tree, and a candidate's fitness is one agent lifetime.

``--objective lpg``: LPG's network (``--lpg.lifetime-conditioning``: TA-LPG, which also reads n/N
and log N) on the LPG/GROOVE grid worlds:

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
parameters): the in-process fast path.

``--objective lpo``: LPO's drift network (``--lpo.lifetime-conditioning``: TA-LPO), starting at its
PPO-clip initialisation; a candidate's fitness is the greedy evaluation return of a PPO agent
trained for one lifetime of ``inner_config`` (e.g. ``configs/lpo_cartpole_inner.toml``, ``inner_steps``
env steps) with the candidate's drift in place of the clip, both members of a pair on the pair's
seed (one lifetime after another: PPO populations are not batched yet).

``--ray`` sends the same chunks to Ray workers, so both give identical results; a chunk whose
worker dies is re-run by Ray.

The run directory holds ``config.json``, ``curve.csv`` (one row per generation: its lifetime
and the population's fitness mean, max and min), TensorBoard events, ``checkpoints/`` (the ES
state; ``--resume``; Ctrl-C and SIGTERM write one) and the center as a learned objective:
``lpg.pt`` (``rlmeta meta-test``, ``rlmeta train --algo lpg --objective``) or ``lpo.pt``
(``rlmeta train --algo lpo --objective``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from rlmeta.agents.build import updates
from rlmeta.agents.config import ESTrainConfig, TrainConfig, load_config, save_config, to_dict
from rlmeta.agents.learned import LPG_FORMAT, LearnedLPO, save_lpo
from rlmeta.agents.meta_test import lpo_inner_config, lpo_return
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
from rlmeta.objectives.lpo import LPONetwork

CHECKPOINT_VERSION = 1
OBJECTIVE_FILES = {"lpg": "lpg.pt", "lpo": "lpo.pt"}
PAIR_SPACE = 1 << 20  # an evaluation seed is generation_seed * PAIR_SPACE + pair
MIN_SPAN = 0.05  # levels whose optimum beats random by less count in no fitness (noise / noise), as in meta-train
RESUME_FIXED = ("objective", "levels", "popsize", "lpg", "lpo", "inner_config", "inner_steps", "agents_per_candidate",
                "envs_per_agent", "num_steps", "chunk_size", "sigma", "lr", "sigma_decay", "sigma_limit", "lr_decay",
                "lr_limit")
CURVE_FIELDS = ("generation", "lifetime", "fitness_mean", "fitness_max", "fitness_min", "wall_seconds")


class ESTrainingInterrupted(RuntimeError):
    """Ctrl-C or SIGTERM: a checkpoint was written and the run can be resumed (``exit_code``: 130 or 143)."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


def es_network(config: ESTrainConfig, inner: TrainConfig | None = None) -> LPGNetwork | LPONetwork:
    """The network an ES config searches over: LPG's, or LPO's drift (PPO-clip at ``inner``'s clip)."""
    if config.objective == "lpo":
        clip = (inner or inner_train_config(config)).ppo.clip
        return LPONetwork(hidden=config.lpo.hidden, ppo_clip=clip, lifetime_conditioning=config.lpo.lifetime_conditioning)
    c = config.lpg
    return LPGNetwork(target_width=c.target_width, embedding_width=c.embedding_width, gru_width=c.gru_width,
                      inputs_gamma=c.inputs_gamma, lifetime_conditioning=c.lifetime_conditioning,
                      lifetime_range=(config.lifetime_min, config.lifetime_max) if c.lifetime_normalised else None)


def inner_train_config(config: ESTrainConfig) -> TrainConfig:
    """objective lpo: one lifetime's training config (``inner_config`` with algo lpo, no early stop, no run
    directory, ``inner_steps``); refused with a reason where a lifetime cannot be a fitness."""
    return lpo_inner_config(load_config(config.inner_config, TrainConfig), f"inner_config {config.inner_config!r}",
                            config.inner_steps or None)


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


class LPOLifetimeFitness:
    """The fitness of LPO drift candidates: the greedy evaluation return of a PPO agent trained for one
    lifetime (``inner``) with the candidate's drift in place of PPO's clip (picklable). Both members of
    a pair train with the pair's seed: the same envs, initial network and action-sampling seed."""

    def __init__(self, config: ESTrainConfig, inner: TrainConfig):
        self.config, self.inner = config, inner
        self.network = es_network(config, inner)

    def __call__(self, candidates: Sequence[dict[str, torch.Tensor]], seeds: Sequence[int]) -> list[float]:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the same arithmetic in process and on Ray workers (one thread each)
        try:
            return [self._one(candidate, seed) for candidate, seed in zip(candidates, seeds)]
        finally:
            torch.set_num_threads(threads)

    def _one(self, candidate: dict[str, torch.Tensor], seed: int) -> float:
        drift = LearnedLPO(self.network, {k: v.detach().float() for k, v in candidate.items()}, "es candidate", {})
        return lpo_return(self.inner, drift, seed % (2**31 - 1))


class ESTrainer:
    """One ES meta-training run: the search, its evaluator, and the run directory (see the module docstring)."""

    def __init__(self, config: ESTrainConfig):
        if config.objective == "lpg" and config.levels not in GENERATORS:
            raise ValueError(f"unknown levels {config.levels!r}; known: {sorted(GENERATORS)}")
        check_device(config.device)
        inner = inner_train_config(config) if config.objective == "lpo" else None
        conditioned = config.lpo.lifetime_conditioning if inner else config.lpg.lifetime_conditioning
        name = f"{'ta-' if conditioned else ''}{config.objective}"
        run_dir = Path(config.run_dir) if config.run_dir else default_run_dir(
            f"es-{name}-{Path(config.inner_config).stem if inner else config.levels}-s{config.seed}")
        if config.resume:
            saved = load_config(run_dir / "config.json", ESTrainConfig)
            changed = [k for k in RESUME_FIXED if to_dict(saved).get(k) != to_dict(config).get(k)]
            if changed:
                raise ValueError(f"--resume cannot change {changed} (the run has {[to_dict(saved)[k] for k in changed]})")
        else:
            check_new_run_dir(run_dir, config.overwrite)
        self.config, self.run_dir = config, run_dir
        set_threads(config.torch_threads)
        self.network = es_network(config, inner)
        self.fitness = LPOLifetimeFitness(config, inner) if inner else LifetimeFitness(config)
        self.objective_file = run_dir / OBJECTIVE_FILES[config.objective]
        self.es = OpenES(self.network.init(config.seed), popsize=config.popsize, sigma=config.sigma, lr=config.lr,
                         seed=config.seed, sigma_decay=config.sigma_decay, sigma_limit=config.sigma_limit,
                         lr_decay=config.lr_decay, lr_limit=config.lr_limit)
        self.generation, self.wall_seconds, self.curve = 0, 0.0, []
        if config.resume:
            self._load(torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False))
        chunk = config.chunk_size or None
        if config.ray:  # joined (or started) before the run directory is touched: a bad address writes nothing
            try:
                self.evaluator = RayEvaluator(self.fitness, num_workers=config.ray_workers,
                                              address=config.ray_address, chunk_size=chunk)
            except ConnectionError as error:
                raise ValueError(str(error)) from None
        else:
            self.evaluator = InProcessEvaluator(self.fitness, chunk_size=chunk)
        try:
            prepare_run_dir(run_dir, config.overwrite, config.resume)
            save_config(config, run_dir / "config.json")
            self.writer = SummaryWriter(str(run_dir / "tb"))
        except BaseException:
            self.evaluator.close()  # a Ray this run started goes with it
            raise

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
        # LPG: the generation's drawn lifetime; LPO: the inner config's updates (fixed)
        lifetime = (updates(self.fitness.inner) if isinstance(self.fitness, LPOLifetimeFitness)
                    else generation_lifetime(self.config, generation_seed))
        self.generation += 1
        row = {"generation": self.generation, "lifetime": lifetime, "fitness_mean": float(fitness.mean()),
               "fitness_max": float(fitness.max()), "fitness_min": float(fitness.min()), "wall_seconds": math.nan}
        self.curve.append(row)
        return {"es/fitness_mean": row["fitness_mean"], "es/fitness_max": row["fitness_max"],
                "es/lifetime": float(lifetime), **{f"es/{k}": float(v) for k, v in metrics.items()}}

    def save_checkpoint(self) -> Path:
        """``checkpoints/ckpt-<generation>.pt``, ``latest.pt``, ``curve.csv`` and the objective file (all atomic)."""
        state = {"version": CHECKPOINT_VERSION, "generation": self.generation, "wall_seconds": self.wall_seconds,
                 "es": self.es.state_dict(), "curve": self.curve}
        path = save_checkpoint(state, self.run_dir / "checkpoints", self.generation)
        out = io.StringIO()
        writer = csv.DictWriter(out, CURVE_FIELDS)
        writer.writeheader()
        writer.writerows(self.curve)
        atomic_text(out.getvalue(), self.run_dir / "curve.csv")
        self.save_objective()
        return path

    def save_objective(self) -> None:
        """The center of the search as a learned objective: ``lpg.pt`` (``rlmeta meta-test``, ``rlmeta train
        --algo lpg --objective``) or ``lpo.pt`` (``rlmeta train --algo lpo --objective``)."""
        center = {k: v.detach().float().cpu() for k, v in self.es.center.items()}
        if self.config.objective == "lpo":
            partial = self.objective_file.with_name(self.objective_file.name + ".tmp")
            save_lpo(partial, self.network, center, generation=self.generation, config=to_dict(self.config),
                     inner=to_dict(self.fitness.inner))
            partial.replace(self.objective_file)
            return
        atomic_save({"format": LPG_FORMAT, "network": to_dict(self.network), "params": center,
                     "target_cost": self.config.lpg.target_cost, "meta_step": self.generation,
                     "config": to_dict(self.config)}, self.objective_file)

    def summary(self, status: str, message: str = "") -> dict[str, Any]:
        """``summary.json``: status, generations, wall clock, first and last tenth of the fitness curve."""
        out: dict[str, Any] = {"status": status, "generations": self.generation,
                               "wall_clock_seconds": round(self.wall_seconds, 1), "run_dir": str(self.run_dir),
                               "objective_file": str(self.objective_file)}
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
