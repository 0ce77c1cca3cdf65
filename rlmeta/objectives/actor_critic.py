"""Hand-written actor-critic objectives: A2C, IMPALA's V-trace actor-critic, and PPO.

Each is an :class:`~rlmeta.objectives.base.Objective`: ``objective(params, data, hparams, progress,
context) -> Loss``, a pure function of the parameters (a dict of tensors) and of the
hyperparameters, which may be tensors that require grad (meta-gradients flow through gamma and
lambda inside the returns, and through the loss weights). The network is read through a
``rlmeta.rollout.PolicyValue`` adapter; the ``LossContext`` says whether targets are exact.

References: Mnih et al. (2016), "Asynchronous Methods for Deep RL" (A2C/A3C); Espeholt et al.
(2018), "IMPALA"; Schulman et al. (2017), "Proximal Policy Optimization Algorithms".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rlmeta.catalog import DEFAULTS
from rlmeta.objectives.base import PLAIN, HParams, Loss, LossContext, MinibatchObjective, Objective
from rlmeta.returns import generalized_advantages, lambda_returns, vtrace
from rlmeta.rollout import Evaluation, Params, PolicyValue, Rollout, named_output

# Hyperparameters every objective reads; missing ones take these values (rlmeta.catalog's table).
DEFAULT_HPARAMS: dict[str, float] = DEFAULTS


def _hp(hparams: HParams, name: str) -> float | Tensor:
    return hparams[name] if name in hparams else DEFAULT_HPARAMS[name]


def _is_number(value: float | Tensor, number: float) -> bool:
    """Whether a hyperparameter is the plain number ``number`` (not a tensor, which may carry a gradient)."""
    return isinstance(value, (int, float)) and value == number


def _metrics(context: LossContext, **values: Tensor) -> dict[str, Any]:
    """The values as floats, or as detached tensors (``LossContext.tensor_metrics``)."""
    if context.tensor_metrics:
        return {k: v.detach() for k, v in values.items()}
    return {k: float(v.detach()) for k, v in values.items()}


@dataclass(frozen=True)
class OuterCritic:
    """Train an outer critic alongside the critic (Bonnet, Midgley and Laterre 2022, "Debiasing
    Meta-Gradient Reinforcement Learning by Learning the Outer Value Function").

    The outer loss of a meta-gradient judges the updated agent with fixed reference values of
    gamma and lambda, but its advantages usually bootstrap from the critic, which learns the
    values of the *meta-learned* discount: a bias that can pull the meta-gradient toward myopic
    policies. The fix is a second value head trained with the reference values, which the outer
    loss uses instead. An objective given an ``OuterCritic`` adds ``cost * 0.5 (G' - V'(s))^2``
    to its loss: ``V'`` the outer critic (the output the adapter names ``outer_value``), ``G'`` its
    targets with ``gamma``/``lambda_`` (TD(lambda) returns for A2C and PPO, V-trace targets for
    V-trace), held fixed like the critic's. The meta-learned values never enter this term.

    ``head``: the name prefix of the outer critic's own parameters (``"outer_value_head."`` for
    ``agents.networks.ActorCritic``). Given, the term's gradient reaches only those: the objective
    returns it as a restricted term, so it cannot change the features the outer critic shares
    with the critic and the policy, and the update stays an exact function of all parameters
    (detaching the shared features instead would cut their dependence out of the derivatives
    through later updates). None: the term is part of the loss and trains the shared layers too.
    """

    gamma: float = 0.99
    lambda_: float = 1.0
    cost: float = 0.5
    head: str | None = None

    def __post_init__(self) -> None:
        for name in ("gamma", "lambda_"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"outer critic {name} must be in [0, 1], got {getattr(self, name)!r}")
        if not self.cost > 0:
            raise ValueError(f"outer critic cost must be > 0, got {self.cost!r}")
        if self.head is not None and not (isinstance(self.head, str) and self.head):
            raise ValueError(f"outer critic head must be a non-empty parameter-name prefix or None, got {self.head!r}")

    def add(self, loss: Tensor, term: Tensor, metrics: dict[str, Any], report: bool = True,
            as_tensor: bool = False) -> Loss:
        """``loss`` with ``cost * term`` added, or with ``cost * term`` restricted to ``head`` (see ``head``);
        ``report``: also put the term's value in ``metrics`` (``LossContext.metrics``), a float or, with
        ``as_tensor``, a detached tensor (``LossContext.tensor_metrics``)."""
        if report:
            metrics["outer_value_loss"] = term.detach() if as_tensor else float(term.detach())
        if self.head is None:
            return Loss(loss + self.cost * term, metrics)
        return Loss(loss, metrics, {self.head: self.cost * term})

    def check(self, policy_value: PolicyValue) -> None:
        """Raise ValueError, before any work, unless the adapter names the outer critic's values."""
        if policy_value.outer_value is None:
            raise ValueError("this objective trains an outer critic, but its policy_value reads no outer critic: use "
                             "make_policy_value(net, 'both') with a network built with outer_critic=True")

    def discounts(self, rollout: Rollout) -> Tensor:
        """``gamma * (1 - terminated)`` with the reference discount."""
        return self.gamma * (1.0 - rollout.terminated)

    def loss(self, ev: Evaluation, fixed: Evaluation, rollout: Rollout) -> Tensor:
        """``0.5 (G' - V')^2`` with TD(lambda) targets ``G'`` (A2C)."""
        targets = lambda_returns(rollout.rewards, self.discounts(rollout), fixed.outer_next_values, ev.continues,
                                 self.lambda_)
        return 0.5 * ((targets - ev.outer_values) ** 2).mean()


def _normalized(advantages: Tensor, num_agents: int) -> Tensor:
    """``(A - mean) / (std + 1e-8)`` over ``[T, B]``; a population's agents (``[T, P * B]``) each over its own."""
    if num_agents == 1:
        return (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    per_agent = advantages.reshape(advantages.shape[0], num_agents, -1)
    mean = per_agent.mean(dim=(0, 2), keepdim=True)
    std = per_agent.std(dim=(0, 2), keepdim=True)
    return ((per_agent - mean) / (std + 1e-8)).reshape(advantages.shape)


class A2C(Objective):
    """Advantage actor-critic with lambda-returns (``lambda=1``: n-step returns to the horizon)."""

    def __init__(self, policy_value: PolicyValue, normalize_advantages: bool = False,
                 outer_critic: OuterCritic | None = None):
        if outer_critic is not None:
            outer_critic.check(policy_value)
        self.policy_value = policy_value
        self.normalize_advantages = normalize_advantages
        self.outer_critic = outer_critic
        self.per_env = not normalize_advantages  # normalisation reads the whole batch's statistics

    def __call__(self, params: Params, rollout: Rollout, hparams: HParams, progress: float = 0.0,
                 context: LossContext = PLAIN) -> Loss:
        """Loss ``policy_cost * PG + value_cost * 0.5 (G - V)^2 - entropy_cost * H`` and metrics.

        Targets and baselines are held fixed (detached, or exact: see ``LossContext``); with an
        ``outer_critic``, plus its term (see :class:`OuterCritic`).
        """
        ev, fixed = context.evaluate(self.policy_value, params, rollout, hparams)
        discounts = _hp(hparams, "gamma") * (1.0 - rollout.terminated)
        returns = lambda_returns(rollout.rewards, discounts, fixed.next_values, ev.continues, _hp(hparams, "lambda"))
        advantages = returns - fixed.values
        if self.normalize_advantages:
            advantages = _normalized(advantages, self.policy_value.num_agents)
        policy_loss = -(ev.logp * advantages).mean()
        value_loss = 0.5 * ((returns - ev.values) ** 2).mean()
        entropy = ev.entropy.mean()
        loss = (_hp(hparams, "policy_cost") * policy_loss + _hp(hparams, "value_cost") * value_loss
                - _hp(hparams, "entropy_cost") * entropy)
        metrics = _metrics(context, policy_loss=policy_loss, value_loss=value_loss, entropy=entropy)
        if self.outer_critic is not None:
            return self.outer_critic.add(loss, self.outer_critic.loss(ev, fixed, rollout), metrics,
                                         as_tensor=context.tensor_metrics)
        return Loss(loss, metrics)


class VTraceActorCritic(Objective):
    """IMPALA's actor-critic with V-trace targets (leaky when ``hparams['vtrace_alpha'] < 1``)."""

    def __init__(self, policy_value: PolicyValue, rho_bar: float = 1.0, c_bar: float = 1.0, pg_rho_bar: float = 1.0,
                 outer_critic: OuterCritic | None = None):
        if outer_critic is not None:
            outer_critic.check(policy_value)
        self.policy_value = policy_value
        self.rho_bar, self.c_bar, self.pg_rho_bar = rho_bar, c_bar, pg_rho_bar
        self.outer_critic = outer_critic
        self.per_env = True

    def __call__(self, params: Params, rollout: Rollout, hparams: HParams, progress: float = 0.0,
                 context: LossContext = PLAIN) -> Loss:
        """V-trace policy-gradient, value and entropy losses; metrics include the mean ratio.

        With an ``outer_critic``, plus its term with V-trace targets of the reference gamma and lambda.
        """
        ev, fixed = context.evaluate(self.policy_value, params, rollout, hparams)
        discounts = _hp(hparams, "gamma") * (1.0 - rollout.terminated)
        rhos = torch.exp(fixed.logp - rollout.behaviour_logp)
        out = vtrace(
            fixed.values, fixed.next_values, rollout.rewards, discounts, ev.continues, rhos,
            lambda_=_hp(hparams, "lambda"), rho_bar=self.rho_bar, c_bar=self.c_bar, pg_rho_bar=self.pg_rho_bar,
            alpha=_hp(hparams, "vtrace_alpha"),
        )
        policy_loss = -(ev.logp * out.pg_advantages).mean()
        value_loss = 0.5 * ((out.vs - ev.values) ** 2).mean()
        entropy = ev.entropy.mean()
        loss = (_hp(hparams, "policy_cost") * policy_loss + _hp(hparams, "value_cost") * value_loss
                - _hp(hparams, "entropy_cost") * entropy)
        metrics = _metrics(context, policy_loss=policy_loss, value_loss=value_loss, entropy=entropy,
                           mean_rho=rhos.mean())
        if self.outer_critic is not None:
            oc = self.outer_critic
            outer = vtrace(fixed.outer_values, fixed.outer_next_values, rollout.rewards, oc.discounts(rollout),
                           ev.continues, rhos, lambda_=oc.lambda_, rho_bar=self.rho_bar, c_bar=self.c_bar,
                           pg_rho_bar=self.pg_rho_bar)
            return oc.add(loss, 0.5 * ((outer.vs - ev.outer_values) ** 2).mean(), metrics,
                          as_tensor=context.tensor_metrics)
        return Loss(loss, metrics)


class PPO(MinibatchObjective):
    """PPO's clipped surrogate; advantages (GAE) and returns are fixed once per rollout by ``prepare``.

    The learner calls ``prepare`` once, then the objective on ``epochs x minibatches`` subsets of
    the prepared batch (see ``rlmeta.learner``).
    """

    def __init__(self, policy_value: PolicyValue, clip: float = 0.2, value_clip: float | None = None,
                 normalize_advantages: bool = True, epochs: int = 4, minibatches: int = 4, anneal_clip: bool = False,
                 outer_critic: OuterCritic | None = None):
        if not clip > 0:
            raise ValueError(f"PPO clip must be > 0, got {clip}")
        if epochs < 1 or minibatches < 1:
            raise ValueError(f"PPO epochs and minibatches must be >= 1, got {epochs} and {minibatches}")
        if outer_critic is not None:
            outer_critic.check(policy_value)
        self.policy_value = policy_value
        self.clip, self.value_clip = clip, value_clip
        self.normalize_advantages = normalize_advantages
        self.epochs, self.minibatches = epochs, minibatches
        self.anneal_clip = anneal_clip  # clip * (1 - progress), as RL Zoo's linear schedules
        self.outer_critic = outer_critic

    def prepare(self, params: Params, rollout: Rollout, hparams: HParams, context: LossContext = PLAIN
                ) -> dict[str, Tensor]:
        """Flat ``[T*B]`` batch: obs, actions, old log-probs and values, GAE advantages, returns (and
        with an ``outer_critic``, its TD(lambda) returns ``outer_returns``).

        With ``context.exact`` the advantages and returns stay differentiable functions of
        ``params`` (for exact meta-gradients through PPO's updates); the learner never
        differentiates the minibatch losses through them.
        """
        keep_graph = context.exact
        if not keep_graph and context.memo is None:
            # The network's outputs are held fixed and shared with no other loss: no graph to build
            # (the hyperparameters, which may be meta-learned, keep theirs below).
            with torch.no_grad():
                ev = context.evaluate_once(self.policy_value, params, rollout, hparams)
        else:
            ev = context.evaluate_once(self.policy_value, params, rollout, hparams)
        values = ev.values if keep_graph else ev.values.detach()
        next_values = ev.next_values if keep_graph else ev.next_values.detach()
        discounts = _hp(hparams, "gamma") * (1.0 - rollout.terminated)
        advantages = generalized_advantages(
            rollout.rewards, discounts, values, next_values, ev.continues, _hp(hparams, "lambda")
        )
        returns = advantages + values
        n = rollout.num_steps * rollout.num_envs
        batch = {
            "obs": rollout.obs.reshape(n, *rollout.obs.shape[2:]),
            "actions": rollout.actions.reshape(n, *rollout.actions.shape[2:]),
            "old_logp": rollout.behaviour_logp.reshape(n),
            "old_values": values.reshape(n),
            "advantages": advantages.reshape(n),
            "returns": returns.reshape(n),
        }
        if self.outer_critic is not None:
            oc = self.outer_critic
            outer_next = ev.outer_next_values if keep_graph else ev.outer_next_values.detach()
            outer_returns = lambda_returns(rollout.rewards, oc.discounts(rollout), outer_next, ev.continues, oc.lambda_)
            batch["outer_returns"] = outer_returns.reshape(n)
        return batch

    def clip_range(self, progress: float = 0.0) -> float:
        """The clip range at training progress ``progress``: ``clip``, or ``clip * (1 - progress)`` with ``anneal_clip``."""
        return self.clip * (1.0 - progress) if self.anneal_clip else self.clip

    def surrogate(self, ratio: Tensor, log_ratio: Tensor, advantages: Tensor, hparams: HParams,
                  progress: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
        """The per-sample surrogate to maximise, ``min(r A, clip(r, 1 - eps, 1 + eps) A)``, and extra metrics.

        The one part of the loss the mirror-learning objectives (``rlmeta.objectives.lpo``: LPO, DPO)
        replace, by ``r A - drift(r, A)``; ``advantages`` are normalised if the objective normalises.
        """
        clip = self.clip_range(progress)
        return torch.min(ratio * advantages, torch.clamp(ratio, 1 - clip, 1 + clip) * advantages), {}

    def __call__(self, params: Params, batch: dict[str, Tensor], hparams: HParams, progress: float = 0.0,
                 context: LossContext = PLAIN) -> Loss:
        """Surrogate (:meth:`surrogate`), value and entropy losses on a prepared (mini)batch."""
        pv = self.policy_value
        outputs = pv.outputs(params, batch["obs"], hparams)
        dist, values = pv.distribution(outputs), named_output(outputs, pv.value)
        logp = dist.log_prob(batch["actions"])
        advantages = batch["advantages"]
        if self.normalize_advantages and advantages.numel() > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        log_ratio = logp - batch["old_logp"]
        ratio = torch.exp(log_ratio)
        clip = self.clip_range(progress)
        surrogate, extra = self.surrogate(ratio, log_ratio, advantages, hparams, progress)
        policy_loss = -surrogate.mean()
        if self.value_clip is None:
            value_loss = 0.5 * (batch["returns"] - values).pow(2).mean()
        else:
            clipped = batch["old_values"] + torch.clamp(values - batch["old_values"], -self.value_clip, self.value_clip)
            value_loss = 0.5 * torch.max((batch["returns"] - values) ** 2, (batch["returns"] - clipped) ** 2).mean()
        # The terms as A2C's, with less work where it cannot change the loss or its gradient: a weight
        # that is the number 1 multiplies nothing, and a weight that is the number 0 (PPO's usual
        # entropy cost) drops its term (x - 0 * H is x; its gradient adds zeros).
        policy_cost, entropy_cost = _hp(hparams, "policy_cost"), _hp(hparams, "entropy_cost")
        loss = ((policy_loss if _is_number(policy_cost, 1) else policy_cost * policy_loss)
                + _hp(hparams, "value_cost") * value_loss)
        entropy = None
        if not _is_number(entropy_cost, 0):
            entropy = dist.entropy().mean()
            loss = loss - entropy_cost * entropy
        if not context.metrics:  # nobody reads them (LossContext.metrics)
            metrics: dict[str, float] = {}
        else:
            if entropy is None:
                entropy = dist.entropy().mean()
            clip_fraction = ((ratio.detach() - 1).abs() > clip).float().mean()
            metrics = _metrics(context, policy_loss=policy_loss, value_loss=value_loss, entropy=entropy,
                               clip_fraction=clip_fraction, **extra)
        if self.outer_critic is not None:
            if "outer_returns" not in batch:
                raise ValueError("this PPO trains an outer critic: prepare the batch with it (PPO.prepare)")
            outer_values = named_output(outputs, pv.outer_value)
            return self.outer_critic.add(loss, 0.5 * ((batch["outer_returns"] - outer_values) ** 2).mean(), metrics,
                                         report=context.metrics, as_tensor=context.tensor_metrics)
        return Loss(loss, metrics)
