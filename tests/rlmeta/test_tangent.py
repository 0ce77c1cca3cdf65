"""The forward-over-reverse path (rlmeta.tangent) equals the reverse-over-reverse reference.

A small nonlinear network (tanh and ReLU layers, float64) on fixed rollouts; with ``tangent=True``
every estimator's first update takes the tangent path, ``tangent=False`` (the default) is the reference.
Both must agree to 1e-8 relative for SGD, RMSProp and Adam, with and without active global-norm
clipping, for A2C (plain and normalised advantages), V-trace and A2C with an outer critic whose
loss is restricted to its head, exact and semi targets, K = 1 and 3, a meta-learned learning rate,
and the memory-saving recompute path. Agreement with finite differences is in test_metagrad.py
and tests/agents/test_outer_critic.py (the reference path, which this one must equal).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.distributions import Categorical

from rlmeta.hparams import MetaParams
from rlmeta.learner import UpdateMode, gradient_step
from rlmeta.metagrad import Mixed, MultiStep, OneStep, OuterObjective
from rlmeta.objectives import A2C, OuterCritic, VTraceActorCritic
from rlmeta.optim import adam, detached, rmsprop, sgd
from rlmeta.rollout import PolicyValue, Rollout
import rlmeta.tangent as tangent_module

DT = torch.float64
D, H, A, T, B = 6, 8, 3, 5, 4


def forward(params, obs, conditioning):
    hidden = torch.tanh(obs @ params["w1"] + params["b1"])
    hidden = torch.relu(hidden @ params["w2"]) + hidden
    return {"logits": hidden @ params["pi"], "value": hidden @ params["v"],
            "outer_values": hidden.detach() @ params["outer_v"] + params["outer_b"]}


def categorical(outputs):
    return Categorical(logits=outputs["logits"], validate_args=False)


policy_value = PolicyValue(forward, categorical, outer_value="outer_values")
outer_reader = policy_value.reading(value="outer_values")


def make_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = {"w1": (D, H), "b1": (H,), "w2": (H, H), "pi": (H, A), "v": (H,), "outer_v": (H,), "outer_b": ()}
    return {k: (0.6 * torch.randn(s, generator=g, dtype=DT)).requires_grad_(True) for k, s in shapes.items()}


def make_rollout(seed):
    g = torch.Generator().manual_seed(300 + seed)
    terminated = torch.zeros(T, B, dtype=DT)
    truncated = torch.zeros(T, B, dtype=DT)
    terminated[1, 0] = 1.0
    truncated[3, 2] = 1.0
    return Rollout(
        obs=torch.randn(T, B, D, generator=g, dtype=DT),
        actions=torch.randint(0, A, (T, B), generator=g),
        rewards=torch.randn(T, B, generator=g, dtype=DT),
        terminated=terminated,
        truncated=truncated,
        behaviour_logp=torch.full((T, B), -math.log(A), dtype=DT) + 0.1 * torch.randn(T, B, generator=g, dtype=DT),
        last_obs=torch.randn(B, D, generator=g, dtype=DT),
        final_obs=torch.randn(1, D, generator=g, dtype=DT),
        final_index=torch.tensor([3 * B + 2]),
    )


ROLLOUTS = [make_rollout(i) for i in range(8)]

OPTIMIZERS = {
    "sgd": lambda clip: sgd(0.2, max_grad_norm=clip),
    "rmsprop": lambda clip: rmsprop(0.02, decay=0.9, eps=1e-4, eps_root=1e-12, max_grad_norm=clip),
    "adam": lambda clip: adam(0.02, eps=1e-4, eps_root=1e-12, max_grad_norm=clip),
}
OBJECTIVES = {
    "a2c": lambda: A2C(policy_value),
    "a2c-normalized": lambda: A2C(policy_value, normalize_advantages=True),
    "vtrace": lambda: VTraceActorCritic(policy_value, rho_bar=1.2),
    "a2c+outer-critic": lambda: A2C(policy_value, outer_critic=OuterCritic(gamma=0.97, lambda_=0.7, head="outer_")),
}


def make_meta(lr=False):
    values = {"gamma": 0.9, "lambda": 0.8, "entropy_cost": 0.05}
    if lr:
        values["lr"] = 0.03
    return MetaParams(values, fixed={"value_cost": 0.5}, dtype=DT)


def run(estimator_kind, objective, optimizer, k, exact, tangent, lr=False, recompute=False):
    def inner(params, opt_state, rollout, hparams, mode):
        new, state, _ = gradient_step(objective, optimizer, params, opt_state, rollout, hparams, mode=mode)
        return new, state

    outer = OuterObjective(outer_reader if isinstance(objective, A2C) and objective.outer_critic else policy_value,
                           value_cost=0.1, kl_cost=0.2)
    common = dict(exact=exact, tangent=tangent, recompute=recompute)
    estimator = (OneStep(inner, outer, **common) if estimator_kind == "one-step"
                 else Mixed(inner, outer, k, **common) if estimator_kind == "mixed"
                 else MultiStep(inner, outer, k, **common))
    params = make_params()
    it = iter(ROLLOUTS)
    result = estimator.estimate(make_meta(lr), params, optimizer.init(params), lambda p: next(it))
    return result.vector()


def assert_same(a, b):
    assert torch.isfinite(a).all() and a.abs().max() > 0
    rel = float((a - b).norm() / b.norm())
    assert rel <= 1e-8, f"tangent vs reference: relative {rel:.2e}\n{a}\n{b}"


@pytest.mark.parametrize("clip", [None, 0.05], ids=["no-clip", "clip-active"])
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_one_step_tangent_equals_reference(objective, opt_name, clip):
    optimizer = OPTIMIZERS[opt_name](clip)
    if clip is not None:  # the clip must really act on this data
        params = make_params()
        norm = gradient_step(OBJECTIVES[objective](), optimizer, params, optimizer.init(params), ROLLOUTS[0],
                             make_meta().hparams())[2]["grad_norm"]
        assert norm > 2 * clip
    a = run("one-step", OBJECTIVES[objective](), optimizer, 1, True, True)
    b = run("one-step", OBJECTIVES[objective](), optimizer, 1, True, False)
    assert_same(a, b)


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "semi"])
@pytest.mark.parametrize("kind", ["multi-step", "mixed"])
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_k_step_first_update_tangent_equals_reference(opt_name, kind, exact):
    """K = 3: the first update's tangent node feeds the later updates (parameters and optimizer moments)."""
    optimizer = OPTIMIZERS[opt_name](0.5)
    a = run(kind, OBJECTIVES["a2c"](), optimizer, 3, exact, True)
    b = run(kind, OBJECTIVES["a2c"](), optimizer, 3, exact, False)
    assert_same(a, b)


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_meta_learned_learning_rate_through_the_tangent_node(opt_name):
    optimizer = OPTIMIZERS[opt_name](0.05)
    a = run("mixed", OBJECTIVES["vtrace"](), optimizer, 2, True, True, lr=True)
    b = run("mixed", OBJECTIVES["vtrace"](), optimizer, 2, True, False, lr=True)
    assert_same(a, b)


def test_recompute_path_takes_the_tangent_node_too():
    optimizer = OPTIMIZERS["adam"](0.5)
    a = run("multi-step", OBJECTIVES["a2c+outer-critic"](), optimizer, 3, True, True, recompute=True)
    b = run("multi-step", OBJECTIVES["a2c+outer-critic"](), optimizer, 3, True, False, recompute=False)
    assert_same(a, b)


def test_tangent_path_is_taken_and_plain_results_match():
    """The node is really used (the new parameters' grad_fn), and its primal equals a plain update (to
    rounding: the differentiated lambda-returns take the closed form, rlmeta.returns.backward_recursion)."""
    optimizer = OPTIMIZERS["rmsprop"](0.05)
    objective = OBJECTIVES["a2c"]()
    meta = make_meta()
    params = make_params()
    mode = UpdateMode(differentiable=True, tangent=True)
    new, state, metrics = gradient_step(objective, optimizer, params, optimizer.init(params), ROLLOUTS[0],
                                        meta.hparams(), mode=mode)
    assert all("TangentFunction" in type(v.grad_fn).__name__ for v in new.values())
    plain, plain_state, plain_metrics = gradient_step(objective, optimizer, make_params(), optimizer.init(params),
                                                      ROLLOUTS[0], detached(meta.hparams()))
    for key in new:
        torch.testing.assert_close(new[key].detach(), plain[key].detach(), rtol=1e-12, atol=0)
        assert state["nu"][key].requires_grad  # the moments are outputs of the node too
        torch.testing.assert_close(state["nu"][key].detach(), plain_state["nu"][key], rtol=1e-12, atol=0)
    assert metrics["loss"] == pytest.approx(plain_metrics["loss"], rel=1e-12)


def test_tangent_mode_needs_a_differentiable_update():
    with pytest.raises(ValueError, match="tangent needs differentiable=True"):
        UpdateMode(tangent=True)


def test_rollout_envs_selects_sub_envs_with_their_truncations():
    rollout = ROLLOUTS[0]  # a truncation at (t=3, b=2)
    sub = rollout.envs(torch.tensor([1, 2]))
    assert sub.num_envs == 2 and sub.num_steps == T
    torch.testing.assert_close(sub.obs, rollout.obs[:, [1, 2]])
    torch.testing.assert_close(sub.last_obs, rollout.last_obs[[1, 2]])
    assert sub.final_index.tolist() == [3 * 2 + 1] and torch.equal(sub.final_obs, rollout.final_obs)
    none = rollout.envs(torch.tensor([0, 3]))
    assert none.final_index.numel() == 0 and none.final_obs.shape == (0, D)


def test_approximate_tangent_pass_is_unbiased():
    """Over every subset of 2 of the 4 sub-envs the approximate meta-gradient averages to the exact one
    (the tangent part is linear in the per-env terms); a single draw differs from it."""
    from itertools import combinations

    optimizer = OPTIMIZERS["adam"](0.5)
    exact = run("one-step", OBJECTIVES["vtrace"](), optimizer, 1, True, True)
    draws = []
    original = tangent_module.draw_columns
    for subset in combinations(range(B), B // 2):
        tangent_module.draw_columns = lambda *args, subset=subset: torch.tensor(subset)
        try:
            def inner(params, opt_state, rollout, hparams, mode, objective=OBJECTIVES["vtrace"]()):
                return gradient_step(objective, optimizer, params, opt_state, rollout, hparams, mode=mode)[:2]

            estimator = OneStep(inner, OuterObjective(policy_value, value_cost=0.1, kl_cost=0.2), tangent=True,
                                tangent_fraction=0.5)
            params = make_params()
            it = iter(ROLLOUTS)
            draws.append(estimator.estimate(make_meta(), params, optimizer.init(params), lambda p: next(it)).vector())
        finally:
            tangent_module.draw_columns = original
    mean = torch.stack(draws).mean(0)
    assert float((mean - exact).norm() / exact.norm()) <= 1e-8
    assert float((draws[0] - exact).norm() / exact.norm()) > 1e-3


@pytest.mark.parametrize("kind, tangent_fraction, recompute", [("one-step", 0.5, False), ("multi-step", 0.5, False),
                                                                 ("multi-step", 1.0, True)])
def test_approximate_outer_loss_is_unbiased(kind, tangent_fraction, recompute):
    """``outer_fraction``: over every subset of 2 of the 4 sub-envs for L_K's gradient (and, with the
    approximate tangent pass too, every pair of subsets) the meta-gradient averages to the exact one;
    the value reported stays the whole L_K."""
    from itertools import combinations, product

    import rlmeta.metagrad.estimators as estimators_module

    optimizer = OPTIMIZERS["adam"](0.5)
    objective = OBJECTIVES["vtrace"]()

    def inner(params, opt_state, rollout, hparams, mode):
        return gradient_step(objective, optimizer, params, opt_state, rollout, hparams, mode=mode)[:2]

    def estimate(outer_fraction, fraction, inner_subset=None, outer_subset=None):
        outer = OuterObjective(policy_value, value_cost=0.1, kl_cost=0.2)
        common = dict(tangent=True, tangent_fraction=fraction, outer_fraction=outer_fraction, recompute=recompute)
        estimator = OneStep(inner, outer, **common) if kind == "one-step" else MultiStep(inner, outer, 2, **common)
        originals = tangent_module.draw_columns, estimators_module.draw_columns
        if inner_subset is not None:
            tangent_module.draw_columns = lambda *args: torch.tensor(inner_subset)
        if outer_subset is not None:
            estimators_module.draw_columns = lambda *args: torch.tensor(outer_subset)
        try:
            params = make_params()
            it = iter(ROLLOUTS)
            return estimator.estimate(make_meta(), params, optimizer.init(params), lambda p: next(it))
        finally:
            tangent_module.draw_columns, estimators_module.draw_columns = originals

    exact = estimate(1.0, 1.0)
    subsets = list(combinations(range(B), B // 2))
    pairs = list(product(subsets, subsets)) if tangent_fraction < 1 else [(None, s) for s in subsets]
    draws = [estimate(0.5, tangent_fraction, a, b) for a, b in pairs]
    mean = torch.stack([d.vector() for d in draws]).mean(0)
    assert float((mean - exact.vector()).norm() / exact.vector().norm()) <= 1e-8
    assert float((draws[1].vector() - exact.vector()).norm() / exact.vector().norm()) > 1e-3
    assert draws[1].meta_loss == pytest.approx(exact.meta_loss, rel=1e-12)


def test_approximate_outer_loss_refuses_what_it_cannot_estimate():
    from rlmeta.metagrad import Bootstrapped

    with pytest.raises(ValueError, match="outer_fraction must be in"):
        OneStep(lambda *a: None, OuterObjective(policy_value), outer_fraction=1.5)
    with pytest.raises(ValueError, match="per_env"):
        OneStep(lambda *a: None, lambda *a: None, outer_fraction=0.5)
    with pytest.raises(ValueError, match="bootstrapped estimator's final loss is not one"):
        Bootstrapped(lambda *a: None, lambda *a: None, outer_fraction=0.5)


def test_approximate_mode_refuses_objectives_with_batch_statistics():
    optimizer = OPTIMIZERS["sgd"](None)
    mode = UpdateMode(differentiable=True, tangent=True, tangent_fraction=0.5)
    params = make_params()
    with pytest.raises(ValueError, match="per_env"):
        gradient_step(OBJECTIVES["a2c-normalized"](), optimizer, params, optimizer.init(params), ROLLOUTS[0],
                      make_meta().hparams(), mode=mode)
    with pytest.raises(ValueError, match="tangent_fraction must be in"):
        UpdateMode(differentiable=True, tangent=True, tangent_fraction=0.0)
    with pytest.raises(ValueError, match="needs tangent=True"):
        OneStep(lambda *a: None, lambda *a: None, tangent=False, tangent_fraction=0.5)


def test_estimates_leave_nothing_alive():
    """The tangent node must not hold its own outputs (a cycle through the autograd graph that the
    garbage collector cannot break: it leaked about 180 MB per meta-update on Snake)."""
    import gc

    import rlmeta.tangent as tangent_module

    optimizer = OPTIMIZERS["adam"](0.5)
    objective = OBJECTIVES["a2c"]()

    def inner(params, opt_state, rollout, hparams, mode):
        return gradient_step(objective, optimizer, params, opt_state, rollout, hparams, mode=mode)[:2]

    # Mixed K=3: the unroll's memo holds forwards of the node's outputs (it leaked that way too)
    estimator = Mixed(inner, OuterObjective(policy_value), 3, tangent=True)
    params = make_params()
    state = optimizer.init(params)
    rollouts = iter(ROLLOUTS * 15)

    def alive(estimates):
        nonlocal params, state
        for _ in range(estimates):
            result = estimator.estimate(make_meta(), params, state, lambda p: next(rollouts))
            params, state = result.params, result.opt_state
        del result
        gc.collect()
        return sum(isinstance(o, tangent_module._Step) for o in gc.get_objects())

    first = alive(3)
    assert alive(10) == first  # nothing accumulates from one estimate to the next


class _ReadsParametersToo(A2C):
    """A2C plus an eta-weighted penalty on a parameter read directly (not through the network's outputs):
    the cut at the outputs must keep this gradient's own second-order part."""

    def __call__(self, params, data, hparams, progress=0.0, context=None):
        loss = super().__call__(params, data, hparams, progress, context)
        penalty = hparams["entropy_cost"] * (params["w2"] ** 2).sum() + hparams["gamma"] * params["pi"].sum()
        return dataclasses.replace(loss, total=loss.total + penalty)


def _count_paths(monkeypatch):
    """Counts of meta-backward passes through the cut path and through the loss head run on dual tensors."""
    calls = {"cut": 0, "dual": 0}
    cut, dual = tangent_module._Cut.directional, tangent_module._Step._directional

    def counted_cut(self, u):
        calls["cut"] += 1
        return cut(self, u)

    def counted_dual(self, u, hparams):
        calls["dual"] += 1
        return dual(self, u, hparams)

    monkeypatch.setattr(tangent_module._Cut, "directional", counted_cut)
    monkeypatch.setattr(tangent_module._Step, "_directional", counted_dual)
    return calls


@pytest.mark.parametrize("objective", ["a2c", "a2c+outer-critic"])
def test_cut_at_the_outputs_is_the_path_taken(objective, monkeypatch):
    """The meta-backward differentiates the loss head's backward graph (no head op re-run on dual tensors)."""
    calls = _count_paths(monkeypatch)
    a = run("one-step", OBJECTIVES[objective](), OPTIMIZERS["adam"](0.05), 1, True, True)
    assert calls == {"cut": 1, "dual": 0}
    assert_same(a, run("one-step", OBJECTIVES[objective](), OPTIMIZERS["adam"](0.05), 1, True, False))


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_gradients_that_reach_parameters_directly_keep_their_second_order_part(opt_name, monkeypatch):
    calls = _count_paths(monkeypatch)
    optimizer = OPTIMIZERS[opt_name](None)
    a = run("one-step", _ReadsParametersToo(policy_value), optimizer, 1, True, True)
    assert calls["cut"] == 1
    b = run("one-step", _ReadsParametersToo(policy_value), optimizer, 1, True, False)
    assert_same(a, b)
    # and the penalty matters: without it the meta-gradient differs
    c = run("one-step", A2C(policy_value), optimizer, 1, True, False)
    assert float((b - c).norm() / b.norm()) > 1e-3
