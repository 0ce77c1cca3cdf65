"""Populations of tabular agents on grid-world levels: the setting LPG and GROOVE learn and are tested in.

P agents, each on its own level with B sub-envs, are one vector env of ``P * B`` sub-envs
(``grid`` with ``obs="index"``; sub-env ``b`` belongs to agent ``b // B``) and one set of
parameters ``[P, ...]`` (``rlmeta.rollout.Population``). The agents are groove's tabular ones:
tables of policy logits, prediction logits (for LPG) and values, trained by SGD with per-table
rates and clipping (``rlmeta.optim.Partitioned``).

* :class:`GridPopulation`: the env, its actor, and restarting some agents on new levels.
* :func:`train_population`: whole lifetimes of a population with a fixed objective (A2C as the
  reference, or a trained LPG); :func:`evaluate_population` and :func:`random_returns`: returns
  of first episodes, the normalised score's ingredients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from rlmeta.agents.actor import Actor
from rlmeta.agents.networks import TabularAgent, named_distribution
from rlmeta.envs.gridworld import GridVectorEnv, make_grid
from rlmeta.envs.levels import Level
from rlmeta.learner import update
from rlmeta.objectives import A2C, Objective
from rlmeta.optim import Optimizer, Partitioned, sgd
from rlmeta.rollout import PolicyValue, Rollout

PREDICTION = "prediction"


@dataclass(frozen=True)
class TabularHypers:
    """groove's tabular agents: SGD rates per table, clipping, rollout shape, discount (defaults: groove's)."""

    policy_lr: float = 40.0
    prediction_lr: float = 4.0
    value_lr: float = 4.0
    max_grad_norm: float = 0.5
    envs_per_agent: int = 16
    num_steps: int = 20
    gamma: float = 0.99
    gae_lambda: float = 0.95
    entropy_cost: float = 0.01  # A2C's

    def optimizer(self, prediction: bool) -> Optimizer:
        """One agent's optimizer: each table its own SGD rate, clipped by its own gradient norm."""
        groups = {"policy": sgd(self.policy_lr, max_grad_norm=self.max_grad_norm),
                  "value": sgd(self.value_lr, max_grad_norm=self.max_grad_norm)}
        if prediction:
            groups["prediction"] = sgd(self.prediction_lr, max_grad_norm=self.max_grad_norm)
        return Partitioned(groups)

    def a2c_hparams(self) -> dict[str, float]:
        """A2C's hyperparameters (groove's ``A2CHyperparams``: gamma, GAE lambda, entropy)."""
        return {"gamma": self.gamma, "lambda": self.gae_lambda, "entropy_cost": self.entropy_cost, "value_cost": 0.5,
                "policy_cost": 1.0}


def level_bounds(levels: Sequence[Level]) -> tuple[int, int]:
    """``(max_grid_size, max_objects)`` that fit every level."""
    return max(level.size for level in levels), max(level.num_objects for level in levels)


def num_states(max_grid_size: int, max_objects: int) -> int:
    """States of the ``index`` observation with this padding: cells x object-existence patterns."""
    return max_grid_size * max_grid_size * (1 << max_objects)


def initial_params(num_agents: int, states: int, actions: int, prediction: int, generator: torch.Generator,
                   dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Fresh tables ``[P, ...]`` as :class:`TabularAgent` initialises them (seeded by ``generator``)."""
    scale = states ** -0.5
    params = {"policy": torch.randn(num_agents, states, actions, generator=generator, dtype=dtype) * scale,
              "value": torch.zeros(num_agents, states, dtype=dtype)}
    if prediction:
        params["prediction"] = torch.randn(num_agents, states, prediction, generator=generator, dtype=dtype) * scale
    return {k: v.requires_grad_(True) for k, v in params.items()}


def adapter(net: TabularAgent, num_agents: int, envs_per_agent: int) -> PolicyValue:
    """The population's adapter: the tables' outputs, the critic as ``value`` (also the outer critic a
    learned objective trains), the prediction as an extra output where the agent has one."""
    extras = (PREDICTION,) if net.prediction is not None else ()
    pv = PolicyValue(net.named_outputs, named_distribution, value="value", outer_value="value", extras=extras)
    return pv.for_population(num_agents, envs_per_agent)


class GridPopulation:
    """P agents on their own levels, B sub-envs each, acting in one ``grid`` vector env (``obs="index"``)."""

    def __init__(self, levels: Sequence[Level], envs_per_agent: int, num_steps: int, policy_value: PolicyValue,
                 seed: int, max_grid_size: int, max_objects: int, device: str = "cpu"):
        self.num_agents, self.envs_per_agent = len(levels), envs_per_agent
        self.levels = list(levels)
        self.env: GridVectorEnv = make_grid(num_envs=len(levels) * envs_per_agent, seed=seed, obs="index",
                                            levels=[lvl for lvl in levels for _ in range(envs_per_agent)],
                                            max_grid_size=max_grid_size, max_objects=max_objects)
        self.policy_value = policy_value
        self.actor = Actor(self.env, None, num_steps, device, policy=lambda p, o, h: policy_value(p, o, h)[0])

    def collect(self, params: dict[str, Tensor], hparams: dict | None = None) -> Rollout:
        """One rollout ``[T, P * B]`` of every agent with its own parameters."""
        return self.actor.collect(params, hparams or {})

    def pop_episodes(self) -> list[tuple[int, float]]:
        """``(agent, return)`` of every episode that ended since the last call."""
        return [(e["env"] // self.envs_per_agent, e["return"]) for e in self.actor.pop_episodes()]

    def restart(self, agents: Sequence[int], levels: Sequence[Level]) -> None:
        """Put ``agents`` on new ``levels`` now (their sub-envs start fresh episodes; the others go on)."""
        if not agents:
            return
        rows = [a * self.envs_per_agent + b for a in agents for b in range(self.envs_per_agent)]
        first = self.env.replace_levels(rows, [lvl for lvl in levels for _ in range(self.envs_per_agent)])
        self.actor.obs[rows] = first
        for agent, level in zip(agents, levels):
            self.levels[agent] = level

    def close(self) -> None:
        """Close the env."""
        self.env.close()


@torch.no_grad()
def evaluate_population(policy_value: PolicyValue, params: dict[str, Tensor], levels: Sequence[Level],
                        episodes: int, seed: int, max_grid_size: int, max_objects: int,
                        max_steps: int = 100_000) -> np.ndarray:
    """``[P]`` mean undiscounted return of ``episodes`` first episodes of each agent on its level,
    sampling actions from its policy (groove's ``eval_agent``: fresh envs, one episode per worker)."""
    num_agents = len(levels)
    env = make_grid(num_envs=num_agents * episodes, seed=seed, obs="index",
                    levels=[lvl for lvl in levels for _ in range(episodes)], max_grid_size=max_grid_size,
                    max_objects=max_objects)
    pv = policy_value.for_population(num_agents, episodes)
    try:
        return _first_episode_returns(env, lambda obs: pv(params, obs, {})[0].sample(), episodes, max_steps)
    finally:
        env.close()


def random_returns(levels: Sequence[Level], episodes: int, seed: int, max_grid_size: int, max_objects: int
                   ) -> np.ndarray:
    """``[len(levels)]`` mean return of ``episodes`` first episodes of the uniform random policy on each level."""
    env = make_grid(num_envs=len(levels) * episodes, seed=seed, obs="index",
                    levels=[lvl for lvl in levels for _ in range(episodes)], max_grid_size=max_grid_size,
                    max_objects=max_objects)
    rng = np.random.default_rng(seed)
    try:
        return _first_episode_returns(env, lambda obs: torch.as_tensor(rng.integers(0, 5, obs.shape[0])), episodes,
                                      100_000)
    finally:
        env.close()


def _first_episode_returns(env: GridVectorEnv, act: Callable[[Tensor], Tensor], episodes: int, max_steps: int
                           ) -> np.ndarray:
    obs, _ = env.reset()
    returns = np.full(env.num_envs, np.nan)
    for _ in range(max_steps):
        obs, _, _, _, info = env.step(act(torch.as_tensor(obs)).numpy())
        if "episode" in info:
            fresh = info["_episode"] & np.isnan(returns)
            returns[fresh] = info["episode"]["return"][fresh]
        if not np.isnan(returns).any():
            return returns.reshape(-1, episodes).mean(axis=1)
    raise RuntimeError(f"evaluation: episodes still running after {max_steps} steps")


def train_population(objective_for: Callable[[PolicyValue], Objective], levels: Sequence[Level], lifetime: int,
                     hypers: TabularHypers, hparams: dict[str, Any], prediction: int, seed: int,
                     max_grid_size: int, max_objects: int, device: str = "cpu",
                     progress_inputs: bool = False,
                     on_update: Callable[[int, dict[str, float]], None] | None = None,
                     frozen_progress: float | None = None) -> dict[str, Tensor]:
    """Train one fresh agent per level for ``lifetime`` updates with a fixed objective; its final tables.

    ``objective_for(adapter)`` builds the objective (``A2C`` for the reference agents, ``LPG`` with
    trained parameters for a meta-test); ``hparams`` are its hyperparameters. ``on_update(n, metrics)``
    receives each update's loss metrics (e.g. LPG's ``pi_hat_l2`` and ``entropy`` over a lifetime).
    ``progress_inputs``: the objective reads the training progress n/N (TA-LPG); ``frozen_progress``
    feeds it this fixed value at every update instead (a counterfactual: does the rule use time?).
    """
    if frozen_progress is not None and not (progress_inputs and 0.0 <= frozen_progress <= 1.0):
        raise ValueError(f"frozen_progress {frozen_progress!r}: needs an objective that reads n/N (progress_inputs) "
                         "and a value in [0, 1]")
    num_agents = len(levels)
    states = num_states(max_grid_size, max_objects)
    net = TabularAgent(states, 5, prediction)
    pv = adapter(net, num_agents, hypers.envs_per_agent)
    objective = objective_for(pv)
    optimizer = hypers.optimizer(prediction > 0).for_population()
    generator = torch.Generator().manual_seed(seed)
    params = initial_params(num_agents, states, 5, prediction, generator)
    state = optimizer.init(params)
    population = GridPopulation(levels, hypers.envs_per_agent, hypers.num_steps, pv, seed, max_grid_size, max_objects,
                                device)
    try:
        for step in range(lifetime):
            rollout = population.collect(params)
            params, state, metrics = update(objective, optimizer, params, state, rollout, hparams,
                                            progress=(step / lifetime if frozen_progress is None else frozen_progress)
                                            if progress_inputs else 0.0)
            if on_update is not None:
                on_update(step, metrics)
    finally:
        population.close()
    return {k: v.detach() for k, v in params.items()}


def a2c_objective(policy_value: PolicyValue) -> A2C:
    """groove's reference A2C for tabular agents (plain advantages, critic from the value table)."""
    return A2C(policy_value.reading(value="value"))
