"""The definitions the finite-difference tests cannot see: each loss against a hand computation, the
meta-update's sign, and the mixed estimator's weights.

A finite-difference test checks an estimator against its own meta-loss; a wrongly defined loss, or a
meta-update applied with the wrong sign, passes it. These tests pin the definitions themselves.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical

from rlmeta.catalog import mixing_weights
from rlmeta.hparams import MetaParams
from rlmeta.learner import gradient_step
from rlmeta.metagrad import Bootstrapped, Mixed, OuterObjective
from rlmeta.objectives import A2C
from rlmeta.optim import sgd
from rlmeta.rollout import PolicyValue, Rollout

DT = torch.float64
S, A, T, B = 5, 3, 4, 3


def forward(params, obs, conditioning):
    return {"logits": obs @ params["logits"], "value": obs @ params["values"]}


policy_value = PolicyValue(forward, lambda out: Categorical(logits=out["logits"], validate_args=False))


def make_params(seed):
    g = torch.Generator().manual_seed(seed)
    return {"logits": torch.randn(S, A, generator=g, dtype=DT).requires_grad_(True),
            "values": torch.randn(S, generator=g, dtype=DT).requires_grad_(True)}


def make_rollout(seed=0):
    g = torch.Generator().manual_seed(seed)
    onehot = lambda i: torch.nn.functional.one_hot(i, S).to(DT)  # noqa: E731
    terminated = torch.zeros(T, B, dtype=DT)
    terminated[1, 0] = 1.0
    truncated = torch.zeros(T, B, dtype=DT)
    truncated[2, 1] = 1.0
    return Rollout(onehot(torch.randint(0, S, (T, B), generator=g)), torch.randint(0, A, (T, B), generator=g),
                   torch.randn(T, B, generator=g, dtype=DT), terminated, truncated,
                   torch.full((T, B), -math.log(A), dtype=DT), onehot(torch.randint(0, S, (B,), generator=g)),
                   onehot(torch.randint(0, S, (1,), generator=g)), torch.tensor([2 * B + 1]))


def hand_returns(rollout, values_of, gamma, lam):
    """TD(lambda) returns by a plain loop over each env (bootstrap at the horizon and at truncations)."""
    out = torch.zeros(T, B, dtype=DT)
    for b in range(B):
        following = None
        for t in reversed(range(T)):
            if rollout.truncated[t, b]:
                next_value = values_of(rollout.final_obs[0])
            elif t == T - 1:
                next_value = values_of(rollout.last_obs[b])
            else:
                next_value = values_of(rollout.obs[t + 1, b])
            if rollout.terminated[t, b]:
                g = rollout.rewards[t, b]
            elif t == T - 1 or rollout.truncated[t, b]:
                g = rollout.rewards[t, b] + gamma * next_value
            else:
                g = rollout.rewards[t, b] + gamma * ((1 - lam) * next_value + lam * following)
            out[t, b] = g
            following = g
    return out


def test_the_outer_loss_is_a2c_at_the_reference_values_plus_the_kl_from_the_previous_policy():
    params, previous, rollout = make_params(0), make_params(1), make_rollout()
    outer = OuterObjective(policy_value, gamma=0.97, lambda_=0.8, value_cost=0.3, entropy_cost=0.02, kl_cost=0.4)
    got = outer(params, rollout, {k: v.detach() for k, v in previous.items()})
    with torch.no_grad():
        values_of = lambda o: o @ params["values"]  # noqa: E731
        returns = hand_returns(rollout, values_of, 0.97, 0.8)
        values = rollout.obs @ params["values"]
        logits = rollout.obs @ params["logits"]
        logp = torch.log_softmax(logits, -1).gather(-1, rollout.actions[..., None])[..., 0]
        probs = torch.softmax(logits, -1)
        entropy = -(probs * torch.log_softmax(logits, -1)).sum(-1)
        a2c = (-(logp * (returns - values)).mean() + 0.3 * 0.5 * ((returns - values) ** 2).mean()
               - 0.02 * entropy.mean())
        before = torch.softmax(rollout.obs @ previous["logits"], -1)
        kl = (before * (torch.log(before) - torch.log(probs))).sum(-1).mean()  # KL(pi_prev || pi)
    assert float(got.detach()) == pytest.approx(float(a2c + 0.4 * kl), rel=1e-12)


def test_bmg_matching_loss_is_kl_from_the_target_plus_the_value_term():
    params, target = make_params(0), make_params(2)
    obs = make_rollout().obs.reshape(-1, S)
    estimator = Bootstrapped(lambda *a: None, policy_value, num_updates=1, target_updates=1, value_cost=0.7)
    got = estimator.match(params, {k: v.detach() for k, v in target.items()}, obs, {})
    with torch.no_grad():
        p_target = torch.softmax(obs @ target["logits"], -1)
        log_p = torch.log_softmax(obs @ params["logits"], -1)
        kl = (p_target * (torch.log(p_target) - log_p)).sum(-1).mean()  # KL(pi_target || pi): the target first
        value = 0.5 * ((obs @ target["values"] - obs @ params["values"]) ** 2).mean()
    assert float(got.detach()) == pytest.approx(float(kl + 0.7 * value), rel=1e-12)


def test_an_sgd_meta_step_moves_each_raw_meta_parameter_against_its_meta_gradient():
    """The meta-update descends: with SGD the first change of every raw value is -lr times its meta-gradient."""
    optimizer = sgd(0.3)
    objective = A2C(policy_value)

    def inner(params, opt_state, rollout, hparams, mode):
        new, state, _ = gradient_step(objective, optimizer, params, opt_state, rollout, hparams, mode=mode)
        return new, state

    rollouts = iter([make_rollout(i) for i in range(3)])
    meta = MetaParams({"gamma": 0.9, "lambda": 0.8}, fixed={"entropy_cost": 0.01}, dtype=DT)
    estimator = Mixed(inner, OuterObjective(policy_value, gamma=0.99), 2)
    params = make_params(0)
    result = estimator.estimate(meta, params, optimizer.init(params), lambda _: next(rollouts))
    before = {k: v.detach().clone() for k, v in meta.raw.items()}
    meta_optimizer = sgd(0.05)
    meta.step(meta_optimizer, result.grads, meta_optimizer.init(before))
    for name, grad in result.grads.items():
        change = meta.raw[name].detach() - before[name]
        assert float(grad) != 0.0 and torch.allclose(change, -0.05 * grad)
        assert torch.sign(change) == -torch.sign(grad)


@pytest.mark.parametrize("weights, decay", [("uniform", 0.5), ("geometric", 0.6), ([1.0, 3.0, 0.0, 4.0], 0.5)])
def test_mixing_weights_are_normalised_and_the_estimator_uses_them(weights, decay):
    w = mixing_weights(4, weights, decay)
    assert sum(w) == pytest.approx(1.0) and all(x >= 0 for x in w)
    if weights == "geometric":
        assert w == pytest.approx([0.6**3, 0.6**2, 0.6, 1.0] / torch.tensor(sum([0.6**3, 0.6**2, 0.6, 1.0])).numpy())
    estimator = Mixed(lambda *a: None, lambda *a: None, 4, weights=weights, decay=decay)
    assert estimator.weights() == pytest.approx(w)


def test_bmg_target_ends_with_an_outer_step_and_is_matched_on_its_own_fresh_rollout():
    """Flennerhag et al. 2022: L - 1 target updates with the meta-learned rule, the last with the outer values,
    then the KL on observations the target itself collected."""
    optimizer = sgd(0.3)
    objective = A2C(policy_value)
    used_hparams = []

    def inner(params, opt_state, rollout, hparams, mode):
        used_hparams.append(float(torch.as_tensor(hparams["gamma"]).detach()))
        new, state, _ = gradient_step(objective, optimizer, params, opt_state, rollout, hparams, mode=mode)
        return new, state

    rollouts = [make_rollout(i) for i in range(6)]
    collected = []

    def collect(params):
        collected.append(rollouts[len(collected)])
        return collected[-1]

    estimator = Bootstrapped(inner, policy_value, num_updates=1, target_updates=3, outer_hparams={"gamma": 0.99})
    matched = []
    original = estimator.match
    estimator.match = lambda params, target, obs, hparams: matched.append(obs) or original(params, target, obs, hparams)
    meta = MetaParams({"gamma": 0.9}, fixed={"lambda": 0.8}, dtype=DT)
    params = make_params(0)
    result = estimator.estimate(meta, params, optimizer.init(params), collect)
    # the K = 1 inner update, two target updates with the meta-learned gamma, the last with the outer gamma
    assert used_hparams == pytest.approx([0.9, 0.9, 0.9, 0.99])
    assert result.rollouts_used == len(collected) == 1 + 3 + 1
    assert torch.equal(matched[0], collected[-1].obs.reshape(-1, S))  # the target's own fresh rollout
