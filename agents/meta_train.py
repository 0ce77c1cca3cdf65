"""Meta-training LPG by meta-gradients on a population of tabular grid-world agents: ``rlmeta meta-train``.

Oh et al. (2020, LPG) and Jackson et al. (2023, GROOVE; its ``groove`` repository is the
reference implementation): P agents, each on its own level, learn with the LPG objective. One
meta-update runs K agent updates of every agent (one batched population update each), judges the
updated agents on a fresh rollout (:class:`~rlmeta.objectives.lpg.LPGMetaObjective`: policy
gradient with the agents' own critics' advantages, entropy and L2 regularisers), and moves LPG's
parameters along the meta-gradient through the K updates (any of the package's estimators:
multi-step, as groove, or mixed, one-step). An agent whose lifetime is over (``lifetime`` agent
updates) starts again from fresh tables on a new level from the curriculum:

* ``uniform``: a fresh level from the generator (domain randomisation);
* ``groove``: prioritised level replay (``rlmeta.curriculum.LevelBuffer``) scored by algorithmic
  regret: the return of an A2C agent trained on the level for a lifetime (computed once per level
  and cached) minus the LPG agent's return at the end of its lifetime.

The run directory holds ``config.json``, TensorBoard events, ``checkpoints/``, ``curve.csv`` (one
row per finished agent lifetime: its level, its end-of-life return, the level's random and optimal
returns and the normalised return between them), ``lpg.pt`` (the learned LPG, loadable by
``rlmeta train --algo lpg`` and ``rlmeta meta-test``) and ``summary.json``. Ctrl-C and SIGTERM
write a checkpoint; ``--resume`` continues (envs restart, agents keep their tables and ages).
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from rlmeta.agents.config import MetaTrainConfig, load_config, save_config, to_dict
from rlmeta.agents.networks import TabularAgent
from rlmeta.agents.population import (
    GridPopulation, TabularHypers, a2c_objective, adapter, evaluate_population, initial_params, num_states,
    random_returns, train_population,
)
from rlmeta.agents.runs import (
    atomic_json, atomic_save, atomic_text, check_device, check_new_run_dir, default_run_dir, exit_code,
    prepare_run_dir, save_checkpoint, set_threads, sigterm_as_interrupt, to_device,
)
from rlmeta.curriculum import LevelBuffer
from rlmeta.envs.levels import GENERATORS, Level, optimal_return, sample_levels
from rlmeta.hparams import MetaParams
from rlmeta.learner import update
from rlmeta.metagrad import ESTIMATORS, OuterObjective
from rlmeta.objectives import OuterCritic
from rlmeta.objectives.lpg import LPG, LPGMetaObjective, LPGNetwork
from rlmeta.optim import adam

CHECKPOINT_VERSION = 1
LPG_FILE = "lpg.pt"
RESUME_FIXED = ("levels", "curriculum", "num_agents", "envs_per_agent", "lpg")
MIN_SPAN = 0.05  # levels whose optimum beats random by less are left out of the normalised curve (noise / noise)
EVAL_EPISODES = 8  # first episodes per agent in end-of-life evaluations (the groove curriculum's scores)
CURVE_FIELDS = ("meta_step", "agent", "level", "end_return", "random_return", "optimal_return", "normalized")


class MetaTrainingInterrupted(RuntimeError):
    """Ctrl-C or SIGTERM: a checkpoint was written and the run can be resumed (``exit_code``: 130 or 143)."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


def lpg_network(config: MetaTrainConfig) -> LPGNetwork:
    """The LPG network a meta-training config describes."""
    c = config.lpg
    return LPGNetwork(target_width=c.target_width, embedding_width=c.embedding_width, gru_width=c.gru_width,
                      inputs_gamma=c.inputs_gamma, lifetime_conditioning=c.lifetime_conditioning)


def tabular_hypers(config: MetaTrainConfig) -> TabularHypers:
    """The tabular agents' hyperparameters of a meta-training config."""
    return TabularHypers(policy_lr=config.agent_lr, prediction_lr=config.prediction_lr, value_lr=config.value_lr,
                         max_grad_norm=config.agent_max_grad_norm, envs_per_agent=config.envs_per_agent,
                         num_steps=config.num_steps, gamma=config.gamma, gae_lambda=config.critic_lambda)


@dataclass
class Lifetime:
    """One agent's lifetime in progress: its level (and that level's reference returns), age, late episodes."""

    level: Level
    random_return: float
    optimal_return: float
    age: int = 0  # agent updates done
    late_returns: list[float] | None = None  # returns of episodes ended in the last 10% of the lifetime

    def state(self) -> dict[str, Any]:
        return {"level": self.level.to_dict(), "random_return": self.random_return,
                "optimal_return": self.optimal_return, "age": self.age, "late_returns": list(self.late_returns or [])}

    @classmethod
    def from_state(cls, data: dict[str, Any]) -> "Lifetime":
        return cls(Level.from_dict(data["level"]), data["random_return"], data["optimal_return"], data["age"],
                   list(data["late_returns"]))


class MetaTrainer:
    """One meta-training run (see the module docstring)."""

    def __init__(self, config: MetaTrainConfig):
        self.config = c = config
        if c.levels not in GENERATORS:
            raise ValueError(f"unknown level generator {c.levels!r}; known: {sorted(GENERATORS)}")
        self.device = check_device(c.device)
        self.run_dir = self._check_run_dir()
        set_threads(c.torch_threads)
        torch.manual_seed(c.seed)
        self.lifetime = c.total_lifetime()
        self.max_grid_size, self.max_objects, _ = GENERATORS[c.levels].bounds()
        self.num_states = num_states(self.max_grid_size, self.max_objects)
        self.hypers = tabular_hypers(c)
        self.network = lpg_network(c)
        self.meta = MetaParams({}, fixed={"gamma": c.gamma}, trees={"lpg": self.network.init(c.seed)},
                               device=self.device)
        self.agent = TabularAgent(self.num_states, 5, c.lpg.target_width)
        self.policy_value = adapter(self.agent, c.num_agents, c.envs_per_agent)
        critic = OuterCritic(c.gamma, c.critic_lambda, 1.0, head="value")
        self.objective = LPG(self.policy_value, self.network, tree="lpg", target_cost=c.lpg.target_cost,
                             outer_critic=critic, lifetime=self.lifetime)
        self.optimizer = self.hypers.optimizer(prediction=True).for_population()
        outer = OuterObjective(self.policy_value.reading(value="value"), gamma=c.gamma, lambda_=c.critic_lambda,
                               entropy_cost=c.policy_entropy_cost)
        self.meta_objective = LPGMetaObjective(outer, self.objective, self.meta.hparams, c.target_entropy_cost,
                                               c.pi_l2_cost, c.y_l2_cost)
        self.estimator = self._estimator()
        self.meta_optimizer = adam(c.meta_lr, max_grad_norm=c.meta_max_grad_norm)
        self.level_rng = np.random.default_rng([c.seed, 1])
        self.generator = torch.Generator().manual_seed(c.seed)  # fresh agents' tables
        self.buffer = LevelBuffer(c.buffer_size, c.score_temperature, c.staleness_weight) if c.curriculum == "groove" \
            else None
        self.a2c_cache: dict[Level, float] = {}  # level -> the A2C reference's return after a lifetime
        self._restore()
        prepare_run_dir(self.run_dir, c.overwrite, c.resume)
        save_config(replace(c, run_dir=str(self.run_dir), resume=False, overwrite=False), self.run_dir / "config.json")
        self.writer = SummaryWriter(str(self.run_dir), purge_step=self.meta_step + 1 if c.resume else None)

    # ----------------------------------------------------------------------------------------
    # Setup.

    def _check_run_dir(self) -> Path:
        c = self.config
        run_dir = Path(c.run_dir) if c.run_dir else default_run_dir("lpg", c.levels, c.curriculum, f"s{c.seed}")
        if c.resume:
            if not (run_dir / "checkpoints" / "latest.pt").is_file():
                raise ValueError(f"cannot resume {str(run_dir)!r}: it has no checkpoints/latest.pt")
            saved = load_config(run_dir / "config.json", MetaTrainConfig)
            for name in RESUME_FIXED:
                if getattr(saved, name) != getattr(c, name):
                    raise ValueError(f"cannot resume with a different {name}: the run has {getattr(saved, name)!r}, "
                                     f"got {getattr(c, name)!r}")
        else:
            check_new_run_dir(run_dir, c.overwrite)
        return run_dir

    def _estimator(self):
        c = self.config

        def inner_update(params, opt_state, rollout, hparams, mode):
            new, state, metrics = update(self.objective, self.optimizer, params, opt_state, rollout, hparams,
                                         progress=self._progress, mode=mode)
            self._inner_metrics.append(metrics)
            return new, state

        self._inner_metrics: list[dict[str, float]] = []
        self._progress = 0.0
        kind = ESTIMATORS[c.estimator]
        if c.estimator == "one-step":
            return kind(inner_update, self.meta_objective, exact=c.exact)
        return kind(inner_update, self.meta_objective, c.num_updates, exact=c.exact)

    def _new_levels(self, count: int) -> list[Level]:
        """``count`` levels for agents starting a lifetime: fresh ones, or (groove) replayed ones."""
        fresh = lambda: sample_levels(self.config.levels, 1, int(self.level_rng.integers(2**62)))[0]  # noqa: E731
        if self.buffer is None:
            return [fresh() for _ in range(count)]
        return [self.buffer.next(fresh, self.level_rng, self.config.replay_probability) for _ in range(count)]

    def _lifetimes(self, levels: list[Level]) -> list[Lifetime]:
        """Lifetimes starting on ``levels``, with each level's random and optimal returns."""
        seed = int(self.level_rng.integers(2**31))
        rand = random_returns(levels, 16, seed, self.max_grid_size, self.max_objects)
        return [Lifetime(level, float(r), optimal_return(level), late_returns=[]) for level, r in zip(levels, rand)]

    def _restore(self) -> None:
        c = self.config
        self.curve: list[dict[str, Any]] = []
        self.meta_step, self.wall_seconds = 0, 0.0
        if not c.resume:
            levels = self._new_levels(c.num_agents)
            self.agents = self._lifetimes(levels)
            self.params = initial_params(c.num_agents, self.num_states, 5, c.lpg.target_width, self.generator)
            self.opt_state = self.optimizer.init(self.params)
            self.meta_state = self.meta_optimizer.init({k: v.detach() for k, v in self.meta.raw.items()})
        else:
            ckpt = torch.load(self.run_dir / "checkpoints" / "latest.pt", map_location=self.device, weights_only=False)
            if ckpt.get("version") != CHECKPOINT_VERSION:
                raise ValueError(f"checkpoint format {ckpt.get('version')!r} is not {CHECKPOINT_VERSION}")
            self.meta.load_state_dict({"raw": ckpt["meta"]})
            self.meta_state = to_device(ckpt["meta_state"], self.device)
            self.params = {k: v.to(self.device).requires_grad_(True) for k, v in ckpt["params"].items()}
            self.opt_state = to_device(ckpt["opt_state"], self.device)
            self.agents = [Lifetime.from_state(a) for a in ckpt["agents"]]
            self.meta_step, self.wall_seconds, self.curve = ckpt["meta_step"], ckpt["wall_seconds"], ckpt["curve"]
            self.level_rng.bit_generator.state = ckpt["level_rng"]
            self.generator.set_state(ckpt["generator"])
            torch.set_rng_state(ckpt["torch_rng"])
            self.a2c_cache = {Level.from_dict(d): r for d, r in ckpt["a2c_cache"]}
            if self.buffer is not None:
                self.buffer.load_state_dict(ckpt["buffer"], Level.from_dict)
        self.population = GridPopulation([a.level for a in self.agents], c.envs_per_agent, c.num_steps,
                                         self.policy_value, c.seed + self.meta_step, self.max_grid_size,
                                         self.max_objects, str(self.device))

    # ----------------------------------------------------------------------------------------
    # One meta-update.

    def meta_update(self) -> dict[str, float]:
        """K agent updates of every agent, the meta-gradient through them, LPG's step, lifetimes ended."""
        c = self.config
        ages = np.array([a.age for a in self.agents])
        self._progress = float(ages.mean()) / self.lifetime
        self._inner_metrics = []
        episodes: list[tuple[int, float]] = []

        def collect(params: dict) -> Any:
            rollout = self.population.collect(params)
            episodes.extend(self.population.pop_episodes())
            return rollout

        result = self.estimator.estimate(self.meta, self.params, self.opt_state, collect)
        norm = result.norm()
        if not (math.isfinite(result.meta_loss) and math.isfinite(norm)):
            raise FloatingPointError(f"non-finite meta-gradient at meta-step {self.meta_step} "
                                     f"(meta-loss {result.meta_loss}, norm {norm})")
        self.meta_state = self.meta.step(self.meta_optimizer, result.grads, self.meta_state)
        self.params, self.opt_state = result.params, result.opt_state
        for agent, ret in episodes:  # episodes of this meta-update's K updates, ages [age, age + K)
            if self.agents[agent].age + c.num_updates > 0.9 * self.lifetime:
                self.agents[agent].late_returns.append(ret)
        for lifetime in self.agents:
            lifetime.age += c.num_updates
        metrics = {f"lpg/{k}": statistics.fmean(m[k] for m in self._inner_metrics) for k in self._inner_metrics[0]}
        metrics.update({"meta/loss": result.meta_loss, "meta/grad_norm": norm,
                        "episode/return": statistics.fmean(r for _, r in episodes) if episodes else math.nan})
        self.meta_step += 1
        ended = [i for i, a in enumerate(self.agents) if a.age >= self.lifetime]
        if ended:
            metrics.update(self._end_lifetimes(ended))
        return metrics

    def _end_lifetimes(self, ended: list[int]) -> dict[str, float]:
        """Record the ended lifetimes (curve and, for groove, their levels' scores); restart those agents."""
        rows = []
        for i in ended:
            a = self.agents[i]
            end = statistics.fmean(a.late_returns) if a.late_returns else math.nan
            span = a.optimal_return - a.random_return
            normalized = (end - a.random_return) / span if span > MIN_SPAN and math.isfinite(end) else math.nan
            rows.append({"meta_step": self.meta_step, "agent": i, "level": a.level.name, "end_return": end,
                         "random_return": a.random_return, "optimal_return": a.optimal_return,
                         "normalized": normalized})
        self.curve.extend(rows)
        metrics = {"lifetimes/normalized_return": statistics.fmean(r["normalized"] for r in rows
                                                                     if math.isfinite(r["normalized"]))
                   if any(math.isfinite(r["normalized"]) for r in rows) else math.nan}
        if self.buffer is not None:
            metrics.update(self._score_levels(ended))
        levels = self._new_levels(len(ended))
        fresh = self._lifetimes(levels)
        for i, lifetime in zip(ended, fresh):
            self.agents[i] = lifetime
        new = initial_params(len(ended), self.num_states, 5, self.config.lpg.target_width, self.generator)
        index = torch.tensor(ended, device=self.device)
        with torch.no_grad():
            self.params = {k: v.detach().index_copy(0, index, new[k].to(v.dtype)).requires_grad_(True)
                           for k, v in self.params.items()}
        self.opt_state = _zero_rows(self.opt_state, index, self.config.num_agents)
        self.population.restart(ended, levels)
        return metrics

    def _score_levels(self, ended: list[int]) -> dict[str, float]:
        """groove: each ended agent's level gets its algorithmic regret (A2C reference minus LPG agent)."""
        levels = [self.agents[i].level for i in ended]
        seed = int(self.level_rng.integers(2**31))
        rows = torch.tensor(ended, device=self.device)
        agent_params = {k: v.detach()[rows] for k, v in self.params.items()}
        lpg_returns = evaluate_population(self.policy_value, agent_params, levels, EVAL_EPISODES, seed,
                                          self.max_grid_size, self.max_objects)
        missing = [lvl for lvl in dict.fromkeys(levels) if lvl not in self.a2c_cache]
        if missing:
            a2c_params = train_population(a2c_objective, missing, self.lifetime, self.hypers, self.hypers.a2c_hparams(),
                                          0, seed, self.max_grid_size, self.max_objects, str(self.device))
            net = TabularAgent(self.num_states, 5, 0)
            returns = evaluate_population(adapter(net, len(missing), 1), a2c_params, missing, EVAL_EPISODES, seed + 1,
                                          self.max_grid_size, self.max_objects)
            self.a2c_cache.update(zip(missing, map(float, returns)))
        regrets = [self.a2c_cache[lvl] - float(r) for lvl, r in zip(levels, lpg_returns)]
        for level, regret in zip(levels, regrets):
            self.buffer.score(level, regret)
        return {"curriculum/regret": statistics.fmean(regrets), "curriculum/buffer_levels": float(len(self.buffer)),
                "curriculum/a2c_cached_levels": float(len(self.a2c_cache))}

    # ----------------------------------------------------------------------------------------
    # The run.

    def save_checkpoint(self) -> Path:
        """``checkpoints/ckpt-<meta_step>.pt``, ``latest.pt``, ``curve.csv`` and ``lpg.pt`` (all atomic)."""
        cpu = torch.device("cpu")
        state = {
            "version": CHECKPOINT_VERSION,
            "meta_step": self.meta_step,
            "wall_seconds": self.wall_seconds,
            "meta": to_device(self.meta.state_dict()["raw"], cpu),
            "meta_state": to_device(self.meta_state, cpu),
            "params": to_device(self.params, cpu),
            "opt_state": to_device(self.opt_state, cpu),
            "agents": [a.state() for a in self.agents],
            "curve": self.curve,
            "level_rng": self.level_rng.bit_generator.state,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "a2c_cache": [(lvl.to_dict(), r) for lvl, r in self.a2c_cache.items()],
            "buffer": None if self.buffer is None else self.buffer.state_dict(lambda lvl: lvl.to_dict()),
        }
        path = save_checkpoint(state, self.run_dir / "checkpoints", self.meta_step)
        self.write_curve()
        self.save_lpg(self.run_dir / LPG_FILE)
        return path

    def write_curve(self) -> None:
        """``curve.csv``: one row per finished agent lifetime."""
        out = io.StringIO()
        writer = csv.DictWriter(out, CURVE_FIELDS)
        writer.writeheader()
        writer.writerows(self.curve)
        atomic_text(out.getvalue(), self.run_dir / "curve.csv")

    def save_lpg(self, path: Path) -> None:
        """The learned LPG: its parameters, network shape and the config that trained it."""
        atomic_save({"format": "rlmeta-lpg-1", "network": to_dict(self.network),
                     "params": to_device(self.meta.tree("lpg"), torch.device("cpu")),
                     "target_cost": self.config.lpg.target_cost, "meta_step": self.meta_step,
                     "config": to_dict(self.config)}, path)

    def summary(self, status: str, message: str = "") -> dict[str, Any]:
        """``summary.json``: status, meta-steps, wall clock, and the normalised end-of-life returns by tenth."""
        curve = [r["normalized"] for r in self.curve if math.isfinite(r["normalized"])]
        tenth = max(len(curve) // 10, 1)
        out: dict[str, Any] = {
            "status": status, "levels": self.config.levels, "curriculum": self.config.curriculum,
            "meta_steps": self.meta_step, "wall_clock_seconds": round(self.wall_seconds, 1),
            "lifetimes_finished": len(self.curve), "run_dir": str(self.run_dir), "lpg": str(self.run_dir / LPG_FILE),
        }
        if len(curve) >= 2:
            first, last = curve[:tenth], curve[-tenth:]
            out["normalized_return_first_tenth"] = _mean_se(first)
            out["normalized_return_last_tenth"] = _mean_se(last)
        if message:
            out["message"] = message
        atomic_json(out, self.run_dir / "summary.json")
        return out

    def run(self) -> dict[str, Any]:
        """Meta-train to ``meta_steps``; Ctrl-C and SIGTERM write a checkpoint (:class:`MetaTrainingInterrupted`)."""
        c = self.config
        bar = tqdm(total=c.meta_steps, initial=min(self.meta_step, c.meta_steps), unit="meta-step",
                   disable=not c.progress, dynamic_ncols=True, desc=self.run_dir.name[:40])
        started, base = time.perf_counter(), self.wall_seconds
        try:
            with sigterm_as_interrupt():
                while self.meta_step < c.meta_steps:
                    metrics = self.meta_update()
                    self.wall_seconds = base + time.perf_counter() - started
                    for key, value in metrics.items():
                        if math.isfinite(value):
                            self.writer.add_scalar(key, value, self.meta_step)
                    if c.checkpoint_interval and self.meta_step % c.checkpoint_interval == 0:
                        self.save_checkpoint()
                    bar.update(1)
                    if "lifetimes/normalized_return" in metrics:
                        bar.set_postfix(norm_return=f"{metrics['lifetimes/normalized_return']:.3f}", refresh=False)
        except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (Terminated)
            path = self.save_checkpoint()
            self.summary("interrupted", f"interrupted at meta-step {self.meta_step}; checkpoint {path}")
            raise MetaTrainingInterrupted(
                f"interrupted at meta-step {self.meta_step}; checkpoint written to {path}. "
                f"Continue with: rlmeta meta-train --run-dir {self.run_dir} --resume", exit_code(stop)) from None
        except FloatingPointError as error:
            self.summary("failed", str(error))
            raise
        finally:
            bar.close()
            self.population.close()
        self.save_checkpoint()
        self.writer.close()
        return self.summary("completed")


def _zero_rows(tree: Any, index: torch.Tensor, num_agents: int) -> Any:
    """An optimizer state with the rows ``index`` of its per-agent tensors zeroed (fresh agents' moments).

    A step count shared by the population (Adam's) is left alone: the tabular agents use SGD.
    """
    if isinstance(tree, torch.Tensor):
        return tree.detach().index_fill(0, index, 0.0) if tree.dim() and tree.shape[0] == num_agents else tree
    if isinstance(tree, dict):
        return {k: _zero_rows(v, index, num_agents) for k, v in tree.items()}
    return tree


def _mean_se(values: list[float]) -> dict[str, float]:
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return {"mean": mean, "se": se, "n": len(values)}


def meta_train(config: MetaTrainConfig) -> dict[str, Any]:
    """Run ``config`` to the end and return its summary."""
    return MetaTrainer(config).run()
