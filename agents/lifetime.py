"""One agent's lifetime as a function: build, then learn iteration by iteration; no files, no logging.

    result = lifetime(TrainConfig(env="snake-6x6", total_steps=50_000))
    result.state.params, result.state.meta_raw, result.iterations[-1].metrics

The pieces, from the bottom:

* :class:`AgentState`: everything one agent's learning changes (parameters, optimizer state,
  meta-parameters and their optimizer state, counters, the rollout carried to the next meta-update).
  A checkpoint is this state plus the run's bookkeeping (``rlmeta.agents.train``).
* :class:`Learning`: the learning rule of a config, built once (objective, optimizer, estimator,
  meta-optimizer). ``state, iteration = learning.iterate(state, loop)`` is one update (or one
  meta-update of K inner updates): the state in, the next state and what happened out. It keeps no
  counters of its own, so nothing depends on how often it was called.
* :func:`build_loop`: the sync or async loop that feeds it rollouts.
* :func:`lifetime`: all of it from a config, to ``total_steps``: what a population member, an
  evolution-strategies fitness evaluation or a meta-test calls.
* :func:`evaluate`: evaluation episodes in a fresh env.

The run (``rlmeta.agents.train.Trainer``) sits on top and adds the run directory, checkpoints,
TensorBoard, the summary and signal handling.
"""

from __future__ import annotations

import copy
import math
import statistics
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
from torch import Tensor

from rlmeta import envs
from rlmeta.agents.actor import Actor, evaluate_policy
from rlmeta.agents.build import (
    Agent, build_agent, build_estimator, build_meta_optimizer, build_meta_params, learning_rate, outer_correction,
)
from rlmeta.agents.config import TrainConfig
from rlmeta.agents.loops import AsyncLoop, Batch, SyncLoop
from rlmeta.capture import CapturedUpdate
from rlmeta.catalog import CONDITIONING
from rlmeta.learner import UpdateMode, update
from rlmeta.rollout import Rollout

Loop = SyncLoop | AsyncLoop


@dataclass
class AgentState:
    """What one agent's learning changes; a checkpoint holds it (tensors detached, on the CPU)."""

    params: dict[str, Tensor]
    opt_state: Any
    step: int = 0  # env steps learned from
    updates: int = 0  # inner updates done
    meta_raw: dict[str, Tensor] | None = None  # the meta-parameters' raw (unbounded) values, if meta-learning
    meta_state: Any = None  # the meta-optimizer's state
    next_rollout: Rollout | None = None  # the last outer rollout: the next meta-update's first inner one
    meta_grads: tuple[Tensor, ...] = ()  # the latest meta-gradients (for meta/grad_variance), newest last


@dataclass
class Iteration:
    """What one iteration did: the losses and meta-gradient statistics, the episodes that ended,
    the env steps it learned from, the policy lag of its rollouts, the hyperparameters it used."""

    metrics: dict[str, float]
    episodes: list[dict[str, float]]
    steps: int
    lag: int
    hparams: dict[str, Any]
    progress: float = 0.0  # the training progress the (last) update received: env steps learned from before it / total


class Learning:
    """The learning rule of a config (plain updates or meta-updates), as a function of an :class:`AgentState`.

    ``agent``: the parts :func:`~rlmeta.agents.build.build_agent` made. ``generator``: the random
    numbers of the updates (PPO's minibatches), part of what a checkpoint saves.
    """

    def __init__(self, config: TrainConfig, agent: Agent, device: torch.device | str = "cpu",
                 generator: torch.Generator | None = None):
        self.config, self.agent, self.device = config, agent, torch.device(device)
        self.objective, self.optimizer = agent.objective, agent.optimizer
        self.generator = generator if generator is not None else torch.Generator().manual_seed(config.seed)
        self.meta = build_meta_params(config, device=str(self.device)) if config.meta.enabled else None
        # Scratch of one meta-iteration (set at its start): env steps learned from so far, the rollouts
        # seen with the steps learned before each, the last progress, the inner updates' metrics. The
        # estimator calls the inner update back, so they cannot be arguments.
        self._learned = 0
        self._learned_before: dict[int, tuple[Rollout, int]] = {}
        self._last_progress = 0.0
        self._inner_metrics: list[dict[str, float]] = []
        self._plain_mode = UpdateMode(compile=config.compile)
        self._captured = CapturedUpdate(agent.objective, agent.optimizer) if config.capture else None
        if self.meta is not None:
            m = config.meta
            meta = self.meta
            conditioning = (lambda: meta.reference_vector(m.reference())) if m.condition else None
            self.estimator = build_estimator(m, self._inner_update, agent.outer_policy_value,
                                             vtrace=outer_correction(config), conditioning=conditioning,
                                             generator=self.generator)
            self.meta_optimizer = build_meta_optimizer(m)

    # ----------------------------------------------------------------------------------------

    def initial_state(self, params: dict[str, Tensor] | None = None) -> AgentState:
        """A fresh agent: ``params`` (default: the network's initial parameters), a new optimizer state,
        the config's initial meta-parameters."""
        source = params if params is not None else dict(self.agent.net.named_parameters())
        params = {k: v.detach().clone().to(self.device).requires_grad_(True) for k, v in source.items()}
        state = AgentState(params, self.agent.optimizer.init(params))
        if self.meta is not None:
            fresh = build_meta_params(self.config, device=str(self.device))
            state.meta_raw = dict(fresh.raw)
            state.meta_state = self.meta_optimizer.init({k: v.detach() for k, v in fresh.raw.items()})
        return state

    def _use_meta(self, state: AgentState) -> None:
        """Point the meta-parameters at ``state``'s values (fresh leaves, so the state is never mutated)."""
        if self.meta is not None:
            if state.meta_raw is None:
                raise ValueError("this config meta-learns, but the state has no meta-parameters")
            self.meta.raw = {k: v.detach().requires_grad_(True) for k, v in state.meta_raw.items()}

    def hparams(self, state: AgentState) -> dict[str, Any]:
        """The hyperparameters the agent acts and learns with in ``state`` (the learning rate annealed if asked)."""
        out: dict[str, Any] = self.config.hparams.as_dict()
        if self.meta is not None:
            self._use_meta(state)
            out.update({k: float(v.detach()) for k, v in self.meta.values().items()})
            if self.meta.condition:  # the network's input: the values it acts and learns with
                out[CONDITIONING] = self.meta.vector().detach()
            if "lr" in out:
                return out
        if self.config.optimizer.anneal_lr:
            out["lr"] = learning_rate(self.config, state.step)
        return out

    def start(self, state: AgentState, loop: Loop) -> None:
        """Give ``loop`` the parameters of ``state`` to act with (once, before the first iterate)."""
        loop.publish(state.params, self.hparams(state), state.updates)

    def iterate(self, state: AgentState, loop: Loop) -> tuple[AgentState, Iteration]:
        """One update (or meta-update) from rollouts of ``loop``; publishes the new parameters to it.

        Raises ``FloatingPointError`` on a non-finite loss, gradient or meta-gradient.
        """
        hparams = self.hparams(state)
        if self.meta is None:
            batch = loop.next()
            progress = self.progress(state.step)
            if self._captured is not None:
                params, opt_state, metrics = self._captured(state.params, state.opt_state, batch.rollout, hparams,
                                                            progress)
            else:
                params, opt_state, metrics = update(
                    self.objective, self.optimizer, state.params, state.opt_state, batch.rollout, hparams,
                    progress=progress, mode=self._plain_mode, generator=self.generator,
                )
            new = replace(state, params=params, opt_state=opt_state, updates=state.updates + 1,
                          step=state.step + batch.steps)
        else:
            new, batch, metrics = self._meta_iteration(state, loop, hparams)
            progress = self._last_progress
        loop.publish(new.params, self.hparams(new), new.updates)
        return new, Iteration(metrics, batch.episodes, batch.steps, batch.lag, hparams, progress)

    def progress(self, learned: int) -> float:
        """The fraction of training done after learning from ``learned`` env steps (what an update receives)."""
        return min(1.0, learned / self.config.total_steps)

    # ----------------------------------------------------------------------------------------

    def _inner_update(self, params: dict, opt_state: Any, rollout: Rollout, hparams: dict,
                      mode: UpdateMode) -> tuple[dict, Any]:
        """The estimator's inner update: the learner's, with the progress and lr schedule of the env steps
        learned from before it (per rollout, so a recomputed update gets exactly the same)."""
        key = id(rollout)
        if key not in self._learned_before:
            self._learned_before[key] = (rollout, self._learned)  # the rollout is kept: its id stays its own
            self._learned += rollout.num_steps * rollout.num_envs
        learned = self._learned_before[key][1]
        self._last_progress = progress = self.progress(learned)
        if self.config.optimizer.anneal_lr and "lr" not in hparams:
            hparams = {**hparams, "lr": learning_rate(self.config, learned)}
        new, opt, metrics = update(self.objective, self.optimizer, params, opt_state, rollout, hparams,
                                   progress=progress, mode=mode, generator=self.generator)
        self._inner_metrics.append(metrics)
        return new, opt

    def _meta_iteration(self, state: AgentState, loop: Loop,
                        acting: dict[str, Any]) -> tuple[AgentState, Batch, dict[str, float]]:
        """One meta-update: K inner updates inside the estimator, then the meta-optimizer's step.

        Rollouts come from the loop: in sync mode collected on demand with the unroll's current
        parameters; in async mode each inner parameter set is published to the actor threads and
        the learner takes the next queued rollout (collected by slightly older parameters, which
        the V-trace inner and outer losses correct for).
        """
        assert self.meta is not None
        self._use_meta(state)
        self._inner_metrics = []
        episodes: list[dict[str, float]] = []
        steps, lags, calls = 0, [], 0
        reused = state.next_rollout is not None
        # Env steps learned from before the first inner update: a reused rollout is counted in state.step.
        self._learned = state.step - (state.next_rollout.num_steps * state.next_rollout.num_envs if reused else 0)
        self._learned_before: dict[int, tuple[Rollout, int]] = {}

        def collect(params: dict) -> Rollout:
            nonlocal steps, calls
            if isinstance(loop, SyncLoop):
                rollout = loop.actor.collect(params, acting)
                episodes.extend(loop.actor.pop_episodes())
                steps += rollout.num_steps * rollout.num_envs
                lags.append(0)
                return rollout
            # The k-th rollout of the unroll is asked for after k updates (k+1 with a reused first one).
            loop.publish(params, acting, state.updates + calls + int(reused))
            calls += 1
            batch = loop.next()
            episodes.extend(batch.episodes)
            steps += batch.steps
            lags.append(batch.lag)
            return batch.rollout

        result = self.estimator.estimate(self.meta, state.params, state.opt_state, collect, state.next_rollout)
        norm = result.norm()
        if not (math.isfinite(result.meta_loss) and math.isfinite(norm)):
            raise FloatingPointError(f"non-finite meta-gradient (meta-loss {result.meta_loss}, norm {norm})")
        meta_state = self.meta.step(self.meta_optimizer, result.grads, state.meta_state)
        # The losses of the K-th inner update (the last of the forward unroll, recomputed or not).
        metrics = dict(self._inner_metrics[self.estimator.num_updates - 1])
        metrics.update({"meta_loss": result.meta_loss, "meta_grad_norm": norm,
                        "meta_outer_loss": result.outer_losses[-1]})
        metrics.update({f"meta_grad_{k}": float(g) if g.numel() == 1 else float(g.norm())
                        for k, g in result.grads.items()})
        window = self.config.meta.variance_window
        meta_grads = (*state.meta_grads, result.vector())[-window:] if window else ()
        if len(meta_grads) >= 2:
            metrics["meta_grad_variance"] = float(torch.stack(meta_grads).var(dim=0).sum())
        # The outer loss's fresh rollout was collected with the new parameters: it is the next
        # iteration's first inner rollout (Xu et al. 2018), so each env step is learned from.
        new = replace(state, params=result.params, opt_state=result.opt_state,
                      updates=state.updates + self.estimator.num_updates, step=state.step + steps,
                      meta_raw=dict(self.meta.raw), meta_state=meta_state,
                      next_rollout=result.next_rollout if self.config.meta.reuse_outer_rollout else None,
                      meta_grads=meta_grads)
        lag = round(statistics.fmean(lags)) if lags else 0
        return new, Batch(None, episodes, steps, lag, 0), metrics  # type: ignore[arg-type]


def make_env(config: TrainConfig, seed: int, num_envs: int | None = None) -> envs.VectorEnv:
    """The config's env with ``num_envs`` sub-envs (default ``config.num_envs``), seeded ``seed``."""
    return envs.make(config.env, num_envs=num_envs or config.num_envs, seed=seed, **config.env_options)


def build_loop(config: TrainConfig, agent: Agent, env: envs.VectorEnv, device: torch.device | str,
               env_seed: int) -> Loop:
    """The loop of ``config.mode`` acting with ``agent``'s network; ``env`` is the first actor's env
    (in async mode the other actors make their own, seeded apart from ``env_seed``)."""
    if config.mode == "sync":
        return SyncLoop(Actor(env, agent.net, config.num_steps, str(device), config.reward_scale))
    made = [env]

    def make_actor(i: int) -> Actor:
        actor_env = made.pop() if made else make_env(config, env_seed + 10_007 * i)
        # functional_call swaps a module's tensors while it runs: one network copy per thread.
        return Actor(actor_env, copy.deepcopy(agent.net), config.num_steps, str(device), config.reward_scale)

    return AsyncLoop(make_actor, config.num_actors, config.queue_size)


def evaluate(config: TrainConfig, agent: Agent, params: dict[str, Tensor], hparams: dict[str, Any],
             device: torch.device | str = "cpu") -> dict[str, float]:
    """Evaluation episodes (``config.eval_episodes``, one per sub-env) in a fresh env seeded apart
    from training: mean and spread of the return, mean length, success rate where the env has one."""
    env = make_env(config, config.seed + 1_000_003, num_envs=config.eval_episodes)
    try:
        records = evaluate_policy(env, agent.net, params, hparams, config.eval_greedy, str(device))
    finally:
        env.close()
    returns = [r["return"] for r in records]
    stats = {
        "return_mean": statistics.fmean(returns),
        "return_std": statistics.pstdev(returns),
        "length_mean": statistics.fmean(r["length"] for r in records),
    }
    if any("success" in r for r in records):  # decided by what the episodes report, not before they run
        stats["success_rate"] = statistics.fmean(r.get("success", 0.0) for r in records)
    return stats


@dataclass
class LifetimeResult:
    """The agent at the end of its lifetime and what each iteration did."""

    state: AgentState
    iterations: list[Iteration] = field(default_factory=list)
    evaluation: dict[str, float] | None = None  # of the final parameters, if asked

    def episode_returns(self) -> list[float]:
        """The returns of every training episode that ended, in order."""
        return [e["return"] for it in self.iterations for e in it.episodes]


def lifetime(config: TrainConfig, state: AgentState | None = None, *, agent: Agent | None = None,
             until: int | None = None, evaluate_at_end: bool = False,
             on_iteration: Callable[[AgentState, Iteration], None] | None = None) -> LifetimeResult:
    """Learn with ``config`` from ``state`` (default: a fresh agent) until ``until`` env steps
    (default ``config.total_steps``); writes no files.

    ``agent``: parts to learn with (default: built from ``config``; pass one to share a network or
    to swap in an objective). ``on_iteration(state, iteration)`` is called after each iteration.
    Deterministic for a config's seed: the torch RNG (action sampling) is seeded here, so run
    lifetimes one after another, not interleaved, when comparing them.
    """
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    start = state.step if state is not None else 0
    env_seed = config.seed + start
    env = make_env(config, env_seed)
    if agent is None:
        agent = build_agent(config, env.single_observation_space, env.single_action_space, device)
    learning = Learning(config, agent, device)
    state = state if state is not None else learning.initial_state()
    loop = build_loop(config, agent, env, device, env_seed)
    result = LifetimeResult(state)
    until = config.total_steps if until is None else until
    try:
        learning.start(state, loop)
        while state.step < until:
            state, iteration = learning.iterate(state, loop)
            result.iterations.append(iteration)
            if on_iteration is not None:
                on_iteration(state, iteration)
    finally:
        loop.close()
    result.state = state
    if evaluate_at_end:
        result.evaluation = evaluate(config, agent, state.params, learning.hparams(state), device)
    return result
