"""LPO, TA-LPO and DPO (rlmeta.objectives.lpo): PPO-init is PPO-clip (loss and gradient), the drift
constraints for any weights, TA-LPO's progress inputs, DPO against hand-computed values, and the
objectives against PPO on the same batches (everything but the surrogate is PPO's)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical

from rlmeta.objectives import DPO, LPO, OBJECTIVES, PPO, LPONetwork, MirrorLearning
from rlmeta.objectives.lpo import dpo_drift, drift_features, ppo_drift
from rlmeta.rollout import PolicyValue

DT = torch.float64
torch.set_num_threads(1)


def ppo_clip_surrogate(ratio, advantages, eps):
    """PPO's clipped surrogate, written out: min(r A, clip(r, 1 - eps, 1 + eps) A)."""
    return torch.min(ratio * advantages, torch.clamp(ratio, 1 - eps, 1 + eps) * advantages)


def samples(n: int = 4000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-ratios spread far inside and outside a 0.2 clip range (r from about 0.05 to 20), and advantages."""
    g = torch.Generator().manual_seed(seed)
    log_ratio = torch.cat([torch.randn(n // 2, generator=g, dtype=DT) * 0.1,  # mostly inside the clip range
                           torch.randn(n - n // 2, generator=g, dtype=DT) * 1.0])  # mostly far outside
    advantages = torch.randn(n, generator=g, dtype=DT) * 2
    return log_ratio, advantages


def random_weights(network: LPONetwork, seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Weights with a non-zero output layer (init zeroes it), so the learned part is active."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g, dtype=DT) * scale for k, s in network.shapes().items()}


# ------------------------------------------------------------------------------------------------
# PPO-init is PPO-clip


@pytest.mark.parametrize("eps", [0.1, 0.2, 0.3])
@pytest.mark.parametrize("lifetime_conditioning", [False, True])
def test_ppo_init_is_ppo_clip_loss_and_gradient(eps, lifetime_conditioning):
    network = LPONetwork(ppo_clip=eps, lifetime_conditioning=lifetime_conditioning)
    params = network.init(seed=3, dtype=DT)
    assert torch.all(params["out.weight"] == 0) and torch.any(params["hidden.weight"] != 0)
    log_ratio, advantages = samples()
    ratio_ = log_ratio.exp()
    outside = ((ratio_ - 1).abs() > eps).double().mean()
    assert 0.3 < outside < 0.8  # both regimes well represented
    for progress in (0.0, 0.7):
        lr_a = log_ratio.clone().requires_grad_(True)
        lr_b = log_ratio.clone().requires_grad_(True)
        ratio_a, ratio_b = lr_a.exp(), lr_b.exp()
        lpo = -(ratio_a * advantages - network(params, ratio_a, lr_a, advantages, progress))  # per sample
        ppo = -ppo_clip_surrogate(ratio_b, advantages, eps)
        (grad_a,), (grad_b,) = torch.autograd.grad(lpo.sum(), lr_a), torch.autograd.grad(ppo.sum(), lr_b)
        assert torch.allclose(lpo.detach(), ppo.detach(), atol=1e-12, rtol=0)
        assert torch.allclose(grad_a, grad_b, atol=1e-12, rtol=0)  # per-sample gradients in log r
        assert (grad_a == 0).double().mean() > 0.1 and grad_a.abs().max() > 1  # clipped samples, and others


def test_ppo_drift_is_the_clipped_surrogate():
    log_ratio, advantages = samples()
    ratio = log_ratio.exp()
    assert torch.allclose(ratio * advantages - ppo_drift(ratio, advantages, 0.2), ppo_clip_surrogate(ratio, advantages, 0.2),
                          atol=1e-12, rtol=0)


# A tabular agent (params = per-state logits and values) and a prepared PPO batch whose old
# log-probabilities are perturbed, so the ratios lie far inside and outside the clip range.

S, NA, N = 12, 3, 64


def tabular_forward(params, obs, conditioning):
    idx = obs.long()
    return {"logits": params["logits"][idx], "value": params["values"][idx]}


TABULAR = PolicyValue(tabular_forward, lambda outputs: Categorical(logits=outputs["logits"]))


def tabular_batch(seed: int = 0) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    params = {"logits": torch.randn(S, NA, generator=g, dtype=DT).requires_grad_(True),
              "values": torch.randn(S, generator=g, dtype=DT).requires_grad_(True)}
    obs = torch.randint(0, S, (N,), generator=g)
    actions = torch.randint(0, NA, (N,), generator=g)
    with torch.no_grad():
        logp = Categorical(logits=params["logits"][obs]).log_prob(actions)
    batch = {"obs": obs.to(DT), "actions": actions, "old_logp": logp + torch.randn(N, generator=g, dtype=DT) * 0.6,
             "old_values": torch.randn(N, generator=g, dtype=DT), "advantages": torch.randn(N, generator=g, dtype=DT),
             "returns": torch.randn(N, generator=g, dtype=DT)}
    return params, batch


HP = {"gamma": 0.99, "lambda": 0.95, "policy_cost": 1.0, "value_cost": 0.5, "entropy_cost": 0.01}


def loss_and_grads(objective, params, batch, progress=0.0):
    result = objective(params, batch, HP, progress)
    grads = torch.autograd.grad(result.total, list(params.values()))
    return result, dict(zip(params, grads))


@pytest.mark.parametrize("options", [dict(), dict(value_clip=0.3), dict(normalize_advantages=False)])
def test_lpo_at_ppo_init_is_ppo_loss_and_gradient(options):
    params, batch = tabular_batch()
    network = LPONetwork(ppo_clip=0.2, lifetime_conditioning=True, horizon_conditioning=True)
    lpo = LPO(TABULAR, network, params=network.init(1, DT), lifetime=1e6, **options)
    ppo = PPO(TABULAR, clip=0.2, **options)
    for progress in (0.0, 0.4):
        a, grads_a = loss_and_grads(lpo, params, batch, progress)
        b, grads_b = loss_and_grads(ppo, params, batch, progress)
        assert abs(float(a.total.detach() - b.total.detach())) < 1e-6
        for k in params:
            assert torch.allclose(grads_a[k], grads_b[k], atol=1e-6, rtol=0), k
        shared = {k: v for k, v in b.metrics.items()}
        assert {k: a.metrics[k] for k in shared} == pytest.approx(shared, abs=1e-6)
        assert 0.2 < b.metrics["clip_fraction"] < 0.9
        assert a.metrics["drift"] > 0


def test_everything_but_the_surrogate_is_ppo():
    """LPO and DPO share PPO's prepare, value loss and entropy: their loss minus their policy term is PPO's minus its."""
    params, batch = tabular_batch(1)
    network = LPONetwork()
    weights = random_weights(network, 2, 0.3)
    for objective in (DPO(TABULAR, value_clip=0.5), LPO(TABULAR, network, params=weights, value_clip=0.5)):
        assert isinstance(objective, MirrorLearning) and isinstance(objective, PPO)
        ppo = PPO(TABULAR, value_clip=0.5)
        a, b = objective(params, batch, HP), ppo(params, batch, HP)
        rest_a = float(a.total.detach()) - a.metrics["policy_loss"]
        rest_b = float(b.total.detach()) - b.metrics["policy_loss"]
        assert rest_a == pytest.approx(rest_b, abs=1e-12)
        assert a.metrics["value_loss"] == b.metrics["value_loss"] and a.metrics["entropy"] == b.metrics["entropy"]
        assert a.metrics["policy_loss"] != pytest.approx(b.metrics["policy_loss"], abs=1e-6)  # a different surrogate


# ------------------------------------------------------------------------------------------------
# Drift constraints for any weights


@pytest.mark.parametrize("ppo_clip", [None, 0.2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_drift_is_nonnegative_and_zero_with_zero_gradient_at_ratio_one(ppo_clip, seed):
    network = LPONetwork(ppo_clip=ppo_clip, lifetime_conditioning=True, horizon_conditioning=True)
    params = random_weights(network, seed, scale=2.0)
    log_ratio, advantages = samples(seed=seed + 10)
    for progress in (0.0, 0.5, 1.0):
        drift = network(params, log_ratio.exp(), log_ratio, advantages, progress, lifetime=1e5)
        assert torch.all(drift >= 0)
        assert (drift > 0).double().mean() > 0.05  # the learned part is active somewhere
        # At r = 1 (log r = 0) for every advantage: drift 0 and zero gradient in r.
        at_one = torch.zeros_like(log_ratio, requires_grad=True)
        d = network(params, at_one.exp(), at_one, advantages, progress, lifetime=1e5)
        (grad,) = torch.autograd.grad(d.sum(), at_one)
        assert torch.all(d == 0) and torch.all(grad == 0)
        # and on a neighbourhood of r = 1 (the dead zone of width delta)
        near = torch.linspace(-1e-10, 1e-10, 21, dtype=DT)  # its width: delta over the slope of g
        for a in (-3.0, 0.5, 3.0):
            adv = torch.full_like(near, a)
            assert torch.all(network(params, near.exp(), near, adv, progress, lifetime=1e5) == 0)


def test_learned_part_is_zero_at_ratio_one_for_any_weights():
    network = LPONetwork(lifetime_conditioning=True)
    params = random_weights(network, 5, 3.0)
    zero = torch.zeros(7, dtype=DT)
    x = network.inputs(zero.exp(), zero, torch.randn(7, dtype=DT), progress=0.3)
    assert torch.all(x == 0) and torch.all(network.learned(params, x) == 0)


def test_learned_drift_can_go_below_ppo():
    """The PPO base does not bound the drift from below: a negative learned part removes PPO's penalty."""
    network = LPONetwork(hidden=1)
    params = {"hidden.weight": torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0]], dtype=DT),  # tanh(-A (1 - r))
              "out.weight": torch.tensor([[-100.0]], dtype=DT)}
    ratio, adv = torch.tensor([2.0], dtype=DT), torch.tensor([1.0], dtype=DT)  # PPO drift (2 - 1.2) * 1 = 0.8
    assert float(ppo_drift(ratio, adv, 0.2)) == pytest.approx(0.8)
    drift = network(params, ratio, ratio.log(), adv)
    assert 0 <= float(drift) <= network.delta


# ------------------------------------------------------------------------------------------------
# Inputs, TA-LPO, the parameter tree


def test_inputs_are_the_reference_features():
    log_ratio = torch.tensor([0.3, -0.5], dtype=DT)
    adv = torch.tensor([1.5, -2.0], dtype=DT)
    r = log_ratio.exp()
    x = drift_features(r, log_ratio, adv)
    for i in range(2):
        lr, a, ri = float(log_ratio[i]), float(adv[i]), float(r[i])
        base = [lr, lr * lr, 1 - ri, (1 - ri) ** 2]
        assert x[i].tolist() == pytest.approx(base + [a * v for v in base], abs=1e-14)


def test_ta_lpo_inputs_use_the_training_fraction_and_log_horizon():
    log_ratio = torch.tensor([0.3, -0.5, 0.1], dtype=DT)
    adv = torch.tensor([1.5, -2.0, 0.2], dtype=DT)
    r = log_ratio.exp()
    x = drift_features(r, log_ratio, adv)
    plain = LPONetwork()
    assert plain.input_size == 8 and torch.equal(plain.inputs(r, log_ratio, adv, progress=0.9), x)
    ta = LPONetwork(lifetime_conditioning=True)
    assert ta.input_size == 16
    assert torch.allclose(ta.inputs(r, log_ratio, adv, progress=0.25), torch.cat([x, 0.25 * x], -1), atol=0, rtol=0)
    both = LPONetwork(lifetime_conditioning=True, horizon_conditioning=True)
    assert both.input_size == 24
    got = both.inputs(r, log_ratio, adv, progress=0.5, lifetime=1000)
    assert torch.allclose(got, torch.cat([x, 0.5 * x, math.log(1000) * x], -1), atol=1e-14, rtol=0)
    # the drift changes with the fraction, and the objective passes its progress on
    params = random_weights(ta, 0)
    assert not torch.allclose(ta(params, r, log_ratio, adv, 0.0), ta(params, r, log_ratio, adv, 1.0))
    tab_params, batch = tabular_batch(2)
    lpo = LPO(TABULAR, ta, params=params)
    early, late = lpo(tab_params, batch, HP, 0.0), lpo(tab_params, batch, HP, 0.8)
    assert early.metrics["drift"] != pytest.approx(late.metrics["drift"])
    assert late.metrics == lpo(tab_params, batch, HP, 0.8).metrics


def test_parameter_tree_shapes_check_and_flat_vector():
    network = LPONetwork(lifetime_conditioning=True)
    params = network.init(4)
    assert network.shapes() == {"hidden.weight": (128, 16), "out.weight": (1, 128)}
    assert {k: tuple(v.shape) for k, v in params.items()} == network.shapes()
    assert network.num_params == 128 * 16 + 128
    vector = network.flatten(params)
    assert vector.shape == (network.num_params,)
    back = network.unflatten(vector)
    assert all(torch.equal(back[k], params[k]) for k in params)
    assert torch.equal(network.init(4)["hidden.weight"], params["hidden.weight"])  # seeded
    assert not torch.equal(network.init(5)["hidden.weight"], params["hidden.weight"])
    with pytest.raises(ValueError, match="LPO parameters do not fit"):
        LPONetwork().check(params)  # 8 inputs, not 16
    with pytest.raises(ValueError, match="an LPO parameter vector has"):
        network.unflatten(vector[:-1])
    with pytest.raises(ValueError, match="LPO parameters do not fit"):
        LPO(TABULAR, LPONetwork(), params=params)


@pytest.mark.parametrize("kwargs, message", [
    (dict(hidden=0), "LPONetwork.hidden must be an integer >= 1"),
    (dict(ppo_clip=0.0), r"LPONetwork.ppo_clip must be in \(0, 1\) or None"),
    (dict(ppo_clip=1.5), r"LPONetwork.ppo_clip must be in \(0, 1\) or None"),
    (dict(delta=0.0), "LPONetwork.delta must be > 0"),
])
def test_bad_network_shapes_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LPONetwork(**kwargs)


def test_bad_objective_arguments_are_rejected():
    with pytest.raises(ValueError, match="LPO has no parameters"):
        LPO(TABULAR, LPONetwork())(*tabular_batch(), HP)
    with pytest.raises(ValueError, match="DPO alpha must be > 0"):
        DPO(TABULAR, alpha=0.0)
    with pytest.raises(ValueError, match="DPO beta must be > 0"):
        DPO(TABULAR, beta=-1.0)
    with pytest.raises(ValueError, match="lifetime"):
        LPO(TABULAR, LPONetwork(), params=LPONetwork().init(), lifetime=0.5)


def test_meta_learned_tree_gets_a_gradient_at_ppo_init():
    """The drift network read from hparams["lpo"] (a meta-parameter tree) takes precedence and is differentiable:
    at PPO-init the output layer's gradient is non-zero where PPO's drift is active; the hidden layer's is 0."""
    network = LPONetwork()
    tree = {k: v.requires_grad_(True) for k, v in network.init(0, DT).items()}
    own = {k: torch.full_like(v, 7.0) for k, v in network.init(0, DT).items()}  # not used: the tree wins
    params, batch = tabular_batch(3)
    lpo = LPO(TABULAR, network, params=own)
    loss = lpo(params, batch, {**HP, "lpo": tree}).total
    g_hidden, g_out = torch.autograd.grad(loss, [tree["hidden.weight"], tree["out.weight"]])
    assert g_out.abs().max() > 1e-3 and torch.all(g_hidden == 0)
    ppo = PPO(TABULAR)(params, batch, HP).total
    assert float(loss.detach()) == pytest.approx(float(ppo.detach()), abs=1e-12)


# ------------------------------------------------------------------------------------------------
# DPO


def dpo_by_hand(r: float, a: float, alpha: float = 2.0, beta: float = 0.6) -> float:
    """DPO's drift written out from the paper for one (r, A)."""
    if a >= 0:
        x = (r - 1) * a
        return max(0.0, x - alpha * math.tanh(x / alpha))
    y = math.log(r) * a
    return max(0.0, y - beta * math.tanh(y / beta))


DPO_POINTS = [
    # (r, A, drift computed by hand with alpha = 2, beta = 0.6)
    (1.5, 1.0, 0.5 - 2 * math.tanh(0.25)),  # A >= 0, r > 1: (r - 1) A = 0.5
    (3.0, 2.0, 4.0 - 2 * math.tanh(2.0)),  # A >= 0, far outside: (r - 1) A = 4
    (0.5, 1.0, 0.0),  # A >= 0, r < 1: (r - 1) A < 0, the relu cuts it
    (0.5, -1.0, math.log(2) - 0.6 * math.tanh(math.log(2) / 0.6)),  # A < 0, r < 1: log(r) A = log 2
    (0.2, -3.0, 3 * math.log(5) - 0.6 * math.tanh(3 * math.log(5) / 0.6)),  # A < 0, far outside
    (2.0, -1.0, 0.0),  # A < 0, r > 1: log(r) A < 0
    (1.0, 2.5, 0.0),
    (1.0, -2.5, 0.0),
    (1.7, 0.0, 0.0),  # A = 0 takes the A >= 0 branch: 0
]


def test_dpo_drift_matches_hand_computed_values():
    for r, a, expected in DPO_POINTS:
        assert dpo_by_hand(r, a) == pytest.approx(expected, abs=1e-15)
    ratio = torch.tensor([p[0] for p in DPO_POINTS], dtype=DT)
    adv = torch.tensor([p[1] for p in DPO_POINTS], dtype=DT)
    got = dpo_drift(ratio, ratio.log(), adv)
    assert got.tolist() == pytest.approx([p[2] for p in DPO_POINTS], abs=1e-12)
    assert float(got[0]) == pytest.approx(0.5 - 2 * 0.24491866240370913, abs=1e-12)  # tanh(0.25), a number
    # other alpha, beta
    got = dpo_drift(ratio, ratio.log(), adv, alpha=1.0, beta=0.3)
    assert got.tolist() == pytest.approx([dpo_by_hand(r, a, 1.0, 0.3) for r, a, _ in DPO_POINTS], abs=1e-12)


def test_dpo_drift_constraints():
    log_ratio, advantages = samples()
    assert torch.all(dpo_drift(log_ratio.exp(), log_ratio, advantages) >= 0)
    at_one = torch.zeros_like(log_ratio, requires_grad=True)
    d = dpo_drift(at_one.exp(), at_one, advantages)
    (grad,) = torch.autograd.grad(d.sum(), at_one)
    assert torch.all(d == 0) and torch.all(grad == 0)


def test_dpo_objective_policy_loss_is_the_hand_drift():
    params, batch = tabular_batch(4)
    result = DPO(TABULAR, normalize_advantages=False)(params, batch, HP)
    with torch.no_grad():
        logp = Categorical(logits=params["logits"][batch["obs"].long()]).log_prob(batch["actions"])
    ratio = (logp - batch["old_logp"]).exp().tolist()
    adv = batch["advantages"].tolist()
    by_hand = -sum(r * a - dpo_by_hand(r, a) for r, a in zip(ratio, adv)) / len(ratio)
    assert result.metrics["policy_loss"] == pytest.approx(by_hand, abs=1e-12)
    assert result.metrics["drift"] == pytest.approx(sum(dpo_by_hand(r, a) for r, a in zip(ratio, adv)) / len(ratio))


def test_objectives_table_has_lpo_and_dpo():
    assert OBJECTIVES["lpo"] is LPO and OBJECTIVES["dpo"] is DPO
