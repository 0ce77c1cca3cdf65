"""The outer critic as its own network (Bonnet et al.'s reference code) and semi-gradient targets, on the real
``ActorCritic`` in float64: meta-gradients through K = 1..4 updates against central finite differences."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlmeta.agents.actor import make_policy_value
from rlmeta.agents.networks import ActorCritic
from rlmeta.hparams import MetaParams
from rlmeta.learner import gradient_step
from rlmeta.metagrad import MultiStep, OneStep, OuterObjective
from rlmeta.objectives import A2C, LossContext, Objective, OuterCritic
from rlmeta.optim import rmsprop
from rlmeta.rollout import Rollout

from helpers.finite_differences import directional_check

DT = torch.float64
T, B, D = 4, 3, 4


def make_net(separate: bool = True) -> ActorCritic:
    torch.manual_seed(0)
    net = ActorCritic(gym.spaces.Box(-1, 1, (D,), np.float32), gym.spaces.Discrete(3), hidden=(6,), outer_critic=True,
                      outer_critic_network=separate)
    return net.double()


def make_rollout(seed: int) -> Rollout:
    g = torch.Generator().manual_seed(300 + seed)
    terminated, truncated = torch.zeros(T, B, dtype=DT), torch.zeros(T, B, dtype=DT)
    terminated[1, 0] = 1.0
    truncated[2, 1] = 1.0
    return Rollout(torch.randn(T, B, D, generator=g, dtype=DT), torch.randint(0, 3, (T, B), generator=g),
                   torch.randn(T, B, generator=g, dtype=DT), terminated, truncated,
                   torch.full((T, B), -math.log(3), dtype=DT), torch.randn(B, D, generator=g, dtype=DT),
                   torch.randn(1, D, generator=g, dtype=DT), torch.tensor([2 * B + 1]))


ROLLOUTS = [make_rollout(i) for i in range(8)]


def make_meta() -> MetaParams:
    return MetaParams({"gamma": 0.9, "lambda": 0.8}, fixed={"entropy_cost": 0.02, "value_cost": 0.5}, dtype=DT)


class FrozenTargets(Objective):
    """An objective whose held-fixed terms (its evaluation's targets) are recorded at the base point and then
    replayed as constants: the function a semi-gradient meta-gradient is the exact derivative of."""

    def __init__(self, objective: Objective):
        self.objective, self.policy_value = objective, objective.policy_value
        self.recorded: list = []
        self.replaying, self.calls = False, 0

    def __call__(self, params, rollout, hparams, progress=0.0, context=LossContext()):
        outer = self

        class Context(LossContext):
            def evaluate(self, policy_value, p, r, h):
                predictions, targets = context.evaluate(policy_value, p, r, h)
                if outer.replaying:
                    targets = outer.recorded[outer.calls]
                    outer.calls += 1
                else:
                    outer.recorded.append(targets.detached())
                return predictions, targets

        return self.objective(params, rollout, hparams, progress, Context(exact=False, memo=context.memo))


def run_estimator(estimator, optimizer, net, meta):
    params = {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()}
    rollouts = iter(ROLLOUTS)
    return estimator.estimate(meta, params, optimizer.init(params), lambda _: next(rollouts))


def build(k: int, separate: bool, exact: bool, frozen: bool = False):
    net = make_net(separate)
    learner = make_policy_value(net, "both")
    head = "outer_critic." if separate else "outer_value_head."
    objective = A2C(learner, outer_critic=OuterCritic(0.99, 1.0, 0.5, head=head))
    if frozen:
        objective = FrozenTargets(objective)
    optimizer = rmsprop(0.05, decay=0.9, eps=1e-4, eps_root=1e-12, max_grad_norm=1.0)

    def inner(params, opt_state, rollout, hparams, mode):
        new, state, _ = gradient_step(objective, optimizer, params, opt_state, rollout, hparams, mode=mode)
        return new, state

    outer = OuterObjective(learner.reading(value="outer_value"), gamma=0.99, lambda_=1.0, entropy_cost=0.01)
    estimator = OneStep(inner, outer, exact=exact) if k == 1 else MultiStep(inner, outer, k, exact=exact)
    return estimator, optimizer, net, objective


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_separate_outer_critic_network_meta_gradients_match_finite_differences(k):
    estimator, optimizer, net, _ = build(k, separate=True, exact=True)
    result = directional_check(estimator, make_meta, lambda meta: run_estimator(estimator, optimizer, net, meta),
                               directions=2, rtol=1e-5)
    assert float(result.vector().abs().min()) > 1e-7


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("separate", [True, False])
def test_semi_targets_are_the_derivative_of_the_unroll_with_its_targets_held_constant(k, separate):
    """semi (exact=False) against finite differences of the unroll whose inner targets are the base point's."""
    estimator, optimizer, net, frozen = build(k, separate=separate, exact=False, frozen=True)

    def run(meta):
        frozen.calls = 0
        result = run_estimator(estimator, optimizer, net, meta)
        frozen.replaying = True  # after the base point: every later unroll replays its targets
        return result

    semi = directional_check(estimator, make_meta, run, directions=2, rtol=1e-5)
    exact_estimator, _, _, _ = build(k, separate=separate, exact=True)
    exact = run_estimator(exact_estimator, optimizer, net, make_meta())
    assert not torch.allclose(semi.vector(), exact.vector(), rtol=1e-4)  # the two definitions differ


def test_the_separate_outer_critic_is_trained_by_its_own_loss_only():
    net = make_net(separate=True)
    learner = make_policy_value(net, "both")
    params = {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()}
    hparams = {"gamma": 0.9, "lambda": 0.8}
    with_critic = A2C(learner, outer_critic=OuterCritic(0.99, 1.0, 0.5, head="outer_critic."))
    without = A2C(learner.reading(value="value"))
    optimizer = rmsprop(0.05)
    a, _, _ = gradient_step(with_critic, optimizer, params, optimizer.init(params), ROLLOUTS[0], hparams)
    b, _, _ = gradient_step(without, optimizer, params, optimizer.init(params), ROLLOUTS[0], hparams)
    for name in params:
        if name.startswith("outer_critic."):
            assert not torch.equal(a[name], params[name])  # it learns
        else:
            assert torch.equal(a[name], b[name])  # nothing else feels it
    assert any(n.startswith("outer_critic.torso") for n in params) and "outer_value_head.weight" not in params
