"""The outer objective of meta-gradient RL: how good the updated agent is, judged with fixed references.

Xu, van Hasselt and Silver (2018) evaluate the updated parameters with an actor-critic loss whose
discount and bootstrapping use *reference* values (gamma', lambda'), not the meta-learned ones, on
a rollout the update has not seen. Optional terms: a value loss, an entropy bonus, and (STAC,
Zahavy et al. 2020, "A Self-Tuning Actor-Critic Algorithm") a KL from the policy before the last
update to the updated one, which keeps meta-steps small. With ``vtrace=True`` the actor-critic
loss is IMPALA's V-trace one (reference gamma and lambda inside the V-trace targets), as Xu et al.
(2018) use with IMPALA: rollouts from an asynchronous loop were collected by older parameters, and
the outer loss of the updated agent is then importance-corrected like the inner one.

A conditioned agent (``MetaParams(condition=True)``) is evaluated here with the *reference* values
as its input, as Xu et al. (2018, section 1.4) do: ``conditioning()`` returns that ``[H]`` vector
(e.g. ``lambda: meta.reference_vector({"gamma": 0.99, "lambda": 1.0})``).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from rlmeta.catalog import CONDITIONING
from rlmeta.objectives.actor_critic import A2C, VTraceActorCritic
from rlmeta.objectives.base import PLAIN, LossContext
from rlmeta.rollout import Params, PolicyValue, Rollout


class OuterObjective:
    """``outer(params, rollout, previous=None, context) -> loss`` with reference hyperparameters.

    The protocol of an outer loss (what the estimators call): the parameters after an inner
    update, the rollout it is judged on, the parameters before that update (None where there are
    none), and a ``LossContext`` whose memo shares forward passes with the inner updates.
    """

    def __init__(self, policy_value: PolicyValue, gamma: float = 0.99, lambda_: float = 1.0,
                 value_cost: float = 0.0, entropy_cost: float = 0.0, kl_cost: float = 0.0, vtrace: bool = False,
                 rho_bar: float = 1.0, c_bar: float = 1.0, pg_rho_bar: float = 1.0,
                 conditioning: Callable[[], Tensor] | None = None):
        for name, value in (("gamma", gamma), ("lambda_", lambda_)):
            if not 0 <= value <= 1:
                raise ValueError(f"outer {name} must be in [0, 1], got {value!r}")
        for name, value in (("value_cost", value_cost), ("entropy_cost", entropy_cost), ("kl_cost", kl_cost)):
            if not value >= 0:
                raise ValueError(f"outer {name} must be >= 0, got {value!r}")
        self.policy_value = policy_value
        self.reference = {"gamma": gamma, "lambda": lambda_, "policy_cost": 1.0, "value_cost": value_cost,
                          "entropy_cost": entropy_cost}
        self.kl_cost = kl_cost
        self.vtrace = vtrace
        self.conditioning = conditioning
        self._actor_critic = (VTraceActorCritic(policy_value, rho_bar=rho_bar, c_bar=c_bar, pg_rho_bar=pg_rho_bar)
                              if vtrace else A2C(policy_value))
        # A mean over the rollout's sub-envs of each one's own loss (the KL term too): on a random subset of
        # them, an unbiased estimate (the estimators' ``outer_fraction``).
        self.per_env = self._actor_critic.per_env

    def __call__(self, params: Params, rollout: Rollout, previous: Params | None = None,
                 context: LossContext = PLAIN) -> Tensor:
        """The outer loss of ``params`` on ``rollout`` (``previous``: parameters before the last update)."""
        reference = self.reference
        if self.conditioning is not None:
            reference = {**reference, CONDITIONING: self.conditioning()}
        loss = self._actor_critic(params, rollout, reference, 0.0, context).total
        if self.kl_cost and previous is not None:
            obs = rollout.obs.reshape(-1, *rollout.obs.shape[2:])
            with torch.no_grad():
                before, _ = self.policy_value(previous, obs, reference)
            # The updated policy on the rollout's states: the loss's own forward pass where the
            # context has a memo (rlmeta.rollout.ForwardMemo), a new one otherwise.
            after = context.evaluate_once(self.policy_value, params, rollout, reference).dist
            loss = loss + self.kl_cost * torch.distributions.kl_divergence(before, after).mean()
        return loss


__all__ = ["OuterObjective"]
