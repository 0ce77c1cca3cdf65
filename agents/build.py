"""Build the parts of an agent from a typed config: network, adapters, objective, optimizers, meta-parameters, estimator.

One builder serves every user of an agent (training, the variance study, benchmarks), so they
cannot drift apart. The configs (``rlmeta.agents.config``) are plain data; this module turns them
into objects, reading the core's tables (``OBJECTIVES``, ``ESTIMATORS``, ``OPTIMIZERS``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import gymnasium as gym
import torch

from rlmeta.agents.actor import make_policy_value
from rlmeta.agents.config import MetaConfig, OptimizerConfig, TrainConfig, VTraceConfig
from rlmeta.agents.learned import LearnedLPO, load_lpg, load_lpo
from rlmeta.agents.networks import ActorCritic
from rlmeta.catalog import learning_start
from rlmeta.hparams import MetaParams
from rlmeta.metagrad import ESTIMATORS, Estimator, InnerUpdate, OuterObjective
from rlmeta.objectives import A2C, DPO, PPO, Objective, OuterCritic, VTraceActorCritic
from rlmeta.objectives.lpg import PREDICTION
from rlmeta.optim import OPTIMIZERS, Optimizer
from rlmeta.rollout import PolicyValue


@dataclass
class Agent:
    """The parts of one agent: its network, the adapters its losses read it through, its objective and optimizer."""

    net: ActorCritic
    policy_value: PolicyValue  # the learner's (both critics where there is an outer critic)
    outer_policy_value: PolicyValue  # the outer loss's (the outer critic's values where there is one)
    objective: Objective
    optimizer: Optimizer


def build_network(config: TrainConfig, observation_space: gym.Space, action_space: gym.Space,
                  prediction: int = 0) -> ActorCritic:
    """The network of ``config.network``, conditioned on the meta-learned values if ``meta.condition``,
    with an outer critic if ``meta.outer_critic``, and a prediction head of ``prediction`` logits (LPG)."""
    n = config.network
    return ActorCritic(observation_space, action_space, hidden=n.hidden, conv_channels=n.conv_channels,
                       activation=n.activation, init_log_std=n.init_log_std, shared_torso=n.shared_torso,
                       channels_first=n.channels_first, conv_kernel=n.conv_kernel, conv_strides=n.conv_strides,
                       value_hidden=n.value_hidden, value_convs=n.value_convs, init=n.init,
                       num_hparams=len(config.meta.learn) if config.meta.condition else 0,
                       outer_critic=outer_critic(config.meta) is not None,
                       outer_critic_network=config.meta.enabled and config.meta.outer_critic
                       and config.meta.outer_critic_network == "separate",
                       extra_outputs={PREDICTION: prediction} if prediction else None)


def build_optimizer(config: OptimizerConfig, differentiable: bool = False) -> Optimizer:
    """The functional optimizer ``config`` describes (``differentiable``: eps_root >= 1e-12, which keeps
    second derivatives finite where a second moment is zero)."""
    eps_root = max(config.eps_root, 1e-12) if differentiable else config.eps_root
    options: dict[str, Any] = {"max_grad_norm": config.max_grad_norm}
    if config.name == "adam":
        options.update(eps=config.eps, eps_root=eps_root)
    elif config.name == "rmsprop":
        options.update(decay=config.rmsprop_decay, eps=config.eps, eps_root=eps_root)
    else:
        options.update(momentum=config.momentum)
    return OPTIMIZERS[config.name](config.lr, **options)


def outer_critic(meta: MetaConfig) -> OuterCritic | None:
    """The :class:`~rlmeta.objectives.OuterCritic` the inner objective trains, or None."""
    if not (meta.enabled and meta.outer_critic):
        return None
    if meta.outer_critic_network == "separate":
        head: str | None = "outer_critic."  # ActorCritic's separate outer-critic network: its loss trains it alone
    else:
        head = None if meta.outer_critic_trains_torso else "outer_value_head."  # ActorCritic's outer critic head
    return OuterCritic(meta.outer_gamma, meta.outer_lambda, meta.outer_critic_cost, head=head)


def policy_values(config: TrainConfig, net: ActorCritic) -> tuple[PolicyValue, PolicyValue]:
    """``(learner's, outer loss's)`` adapters of ``net``; they share forward passes (one ``forward``).

    With an outer critic the learner's reads both critics (its objective trains both) and the outer
    loss's reads the outer critic's values; otherwise both read the critic.
    """
    if outer_critic(config.meta) is None:
        adapter = make_policy_value(net)
        return adapter, adapter
    learner = make_policy_value(net, "both")
    return learner, learner.reading(value="outer_value")


def build_objective(config: TrainConfig, policy_value: PolicyValue, lpo: LearnedLPO | None = None) -> Objective:
    """The objective ``config.algo`` names, from its section of the config (with the outer critic's term
    if ``meta.outer_critic``: pass the learner's adapter of :func:`policy_values`). ``lpo``: for algo
    lpo, this drift instead of ``config.objective``'s (e.g. an evolution-strategies candidate)."""
    critic = outer_critic(config.meta)
    if config.algo == "ppo":
        p = config.ppo
        return PPO(policy_value, clip=p.clip, value_clip=p.value_clip, normalize_advantages=p.normalize_advantages,
                   epochs=p.epochs, minibatches=p.minibatches, anneal_clip=p.anneal_clip, outer_critic=critic)
    if config.algo in ("lpo", "dpo"):  # PPO with a drift: PPO's options but the clip range and its annealing
        p = config.ppo
        options = dict(value_clip=p.value_clip, normalize_advantages=p.normalize_advantages, epochs=p.epochs,
                       minibatches=p.minibatches, outer_critic=critic)
        if config.algo == "dpo":
            return DPO(policy_value, clip=p.clip, **options)
        # TA-LPO reads n/N from the learner's progress; N (total env steps) only for its log N inputs
        drift = lpo if lpo is not None else load_lpo(config.objective, clip=p.clip)
        return drift.objective(policy_value, lifetime=config.total_steps, **options)
    if config.algo == "vtrace":
        v = config.vtrace
        return VTraceActorCritic(policy_value, rho_bar=v.rho_bar, c_bar=v.c_bar, pg_rho_bar=v.pg_rho_bar,
                                 outer_critic=critic)
    return A2C(policy_value, normalize_advantages=config.normalize_advantages, outer_critic=critic)


def updates(config: TrainConfig) -> int:
    """Agent updates in the run, its lifetime N in updates (a TA-LPG reads log N; n/N is the progress)."""
    return max(1, math.ceil(config.total_steps / (config.num_envs * config.num_steps)))


def build_agent(config: TrainConfig, observation_space: gym.Space, action_space: gym.Space,
                device: torch.device | str = "cpu", lpo: LearnedLPO | None = None) -> Agent:
    """Every part of the agent ``config`` describes, for these spaces, on ``device`` (``lpo``: see
    :func:`build_objective`)."""
    if config.algo == "lpg":  # a learned objective: the network needs its prediction head
        lpg = load_lpg(config.objective)
        if not isinstance(action_space, gym.spaces.Discrete):
            raise ValueError(f"algo 'lpg' needs discrete actions (LPG reads pi(a|s)), got {action_space}")
        net = build_network(config, observation_space, action_space, lpg.network.target_width).to(device)
        adapter = make_policy_value(net).reading(extras=(PREDICTION,))
        return Agent(net, adapter, adapter, lpg.objective(adapter, lifetime=updates(config)),
                     build_optimizer(config.optimizer))
    net = build_network(config, observation_space, action_space).to(device)
    learner, outer = policy_values(config, net)
    return Agent(net, learner, outer, build_objective(config, learner, lpo),
                 build_optimizer(config.optimizer, differentiable=config.meta.enabled))


def build_meta_params(config: TrainConfig, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> MetaParams:
    """The :class:`~rlmeta.hparams.MetaParams` of ``config.meta``: learned names, the rest fixed."""
    base = {**config.hparams.as_dict(), "lr": config.optimizer.lr}
    learn = {name: float(learning_start(name, config.meta.init.get(name, base[name]), name in config.meta.init))
             for name in config.meta.learn}
    fixed = {k: v for k, v in config.hparams.as_dict().items() if k not in learn}
    return MetaParams(learn, fixed=fixed, bounds=dict(config.meta.bounds), dtype=dtype, device=device,
                      condition=config.meta.condition)


def outer_correction(config: TrainConfig) -> VTraceConfig | None:
    """V-trace's truncation levels when the outer loss must be importance-corrected (algo 'vtrace')."""
    return config.vtrace if config.algo == "vtrace" else None


def build_estimator(meta: MetaConfig, inner_update: InnerUpdate, policy_value: PolicyValue,
                    estimator: str | None = None, num_updates: int | None = None, vtrace: VTraceConfig | None = None,
                    conditioning: Callable[[], torch.Tensor] | None = None,
                    generator: torch.Generator | None = None, exact: bool | None = None) -> Estimator:
    """The meta-gradient estimator ``meta`` describes (``estimator``/``num_updates`` override its own).

    ``policy_value``: the outer loss's adapter (:func:`policy_values`). ``vtrace``: the outer loss is
    importance-corrected with V-trace (as the V-trace learner is). ``conditioning``: for a
    conditioned agent, ``() -> [H]`` reference input of the outer loss. ``generator``: the inner
    updates' random numbers (PPO's minibatches), replayed by the memory-saving path. ``exact``:
    overrides ``meta.targets`` (True: exact, False: semi-gradient targets).
    """
    name = estimator or meta.estimator
    if name not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {sorted(ESTIMATORS)}, got {name!r}")
    k = num_updates or meta.num_updates
    common: dict[str, Any] = {"recompute": meta.recompute, "generator": generator, "tangent": meta.tangent,
                              "tangent_fraction": meta.tangent_fraction,
                              "exact": (meta.targets == "exact") if exact is None else exact}
    if name == "bootstrapped":
        # The target's last update uses the outer values (BMG's anchor to the meta-objective).
        anchor = {"gamma": meta.outer_gamma, "lambda": meta.outer_lambda}
        return ESTIMATORS[name](inner_update, policy_value, k, meta.target_updates, value_cost=meta.bmg_value_cost,
                                outer_hparams=anchor, **common)
    correction = {} if vtrace is None else {"vtrace": True, "rho_bar": vtrace.rho_bar, "c_bar": vtrace.c_bar,
                                                 "pg_rho_bar": vtrace.pg_rho_bar}
    outer = OuterObjective(policy_value, gamma=meta.outer_gamma, lambda_=meta.outer_lambda,
                           value_cost=meta.outer_value_cost, entropy_cost=meta.outer_entropy_cost,
                           kl_cost=meta.outer_kl_cost, conditioning=conditioning, **correction)
    common["outer_fraction"] = meta.outer_fraction
    if name == "one-step":
        return ESTIMATORS[name](inner_update, outer, **common)
    if name == "multi-step":
        truncation = meta.truncation if meta.truncation and meta.truncation <= k else None
        return ESTIMATORS[name](inner_update, outer, k, truncation=truncation, **common)
    return ESTIMATORS[name](inner_update, outer, k, weights=meta.mixing_weights(), decay=meta.decay, **common)


def build_meta_optimizer(meta: MetaConfig) -> Optimizer:
    """The meta-optimizer that moves the raw meta-parameters (clipped to ``meta.max_grad_norm``)."""
    return OPTIMIZERS[meta.optimizer](meta.lr, max_grad_norm=meta.max_grad_norm)


def learning_rate(config: TrainConfig, step: int) -> float:
    """The inner learning rate at env step ``step``: ``optimizer.lr``, decayed linearly to 0 over
    ``total_steps`` if ``optimizer.anneal_lr`` (the one schedule every loop uses)."""
    lr = config.optimizer.lr
    if config.optimizer.anneal_lr:
        return lr * max(0.0, 1.0 - step / config.total_steps)
    return lr
