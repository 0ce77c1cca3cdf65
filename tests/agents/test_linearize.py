"""ActorCritic.linearize: tangents that reuse the forward's activations, and the meta-gradient built on them.

The tape's tangents must equal forward-mode AD of the network for every architecture the builder
makes; the forward-over-reverse meta-gradient through the real network (linearized tangent pass)
must equal the reverse-over-reverse reference to 1e-8 in float64.
"""

from __future__ import annotations

import math

import gymnasium as gym
import pytest
import torch
import torch.autograd.forward_ad as fwad

from rlmeta.agents.actor import make_policy_value
from rlmeta.agents.networks import ActorCritic, Tape
from rlmeta.hparams import MetaParams
from rlmeta.learner import gradient_step
from rlmeta.metagrad import Mixed, OneStep, OuterObjective
from rlmeta.objectives import A2C, OuterCritic, VTraceActorCritic
from rlmeta.optim import adam, rmsprop
from rlmeta.rollout import Rollout

DT = torch.float64
GRID = gym.spaces.Box(0.0, 1.0, (6, 6, 5))
ARCHITECTURES = {
    "relu conv (Snake default)": (GRID, gym.spaces.Discrete(4), dict(activation="relu")),
    "tanh, SAME padding, strides": (GRID, gym.spaces.Discrete(4),
                                    dict(activation="tanh", conv_kernel=2, conv_strides=(2, 1))),
    "elu, outer critic head": (GRID, gym.spaces.Discrete(4), dict(activation="elu", outer_critic=True)),
    "separate outer critic, value convs": (GRID, gym.spaces.Discrete(4),
                                           dict(activation="relu", outer_critic=True, outer_critic_network=True,
                                                value_convs=True, value_hidden=(24,))),
    "shared torso": (GRID, gym.spaces.Discrete(4), dict(activation="relu", shared_torso=True)),
    "vector obs, Gaussian policy, extra head": (gym.spaces.Box(-1.0, 1.0, (7,)), gym.spaces.Box(-1.0, 1.0, (2,)),
                                                dict(activation="tanh", hidden=(16, 16), extra_outputs={"y": 3})),
}


def make_net(name, seed=0):
    torch.manual_seed(seed)
    obs_space, action_space, options = ARCHITECTURES[name]
    options = {"hidden": (32,), "conv_channels": (8, 8), **options}
    return ActorCritic(obs_space, action_space, **options).to(DT), obs_space


def tangent_inputs(net, obs_space, seed, rows):
    """The network's parameters, random directions and ``rows`` random observations (the net's dtype)."""
    dtype = next(net.parameters()).dtype
    params = {k: v.detach() for k, v in net.named_parameters()}
    g = torch.Generator().manual_seed(seed)
    directions = {k: torch.randn(v.shape, generator=g, dtype=dtype) for k, v in params.items()}
    return params, directions, torch.rand(rows, *obs_space.shape, generator=g, dtype=dtype)


def forward_mode(net, params, directions, obs):
    """The outputs and their tangents by torch's forward-mode AD (the reference for the tape)."""
    with fwad.dual_level():
        dual = net.named_outputs({k: fwad.make_dual(params[k], directions[k]) for k in params}, obs)
        return {k: v.detach() for k, v in dual.items()}, {k: fwad.unpack_dual(v).tangent for k, v in dual.items()}


@pytest.mark.parametrize("dtype", [DT, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_tape_tangents_equal_forward_mode_ad(name, dtype):
    """In float32 too: the tape's kernels (activation backwards, convolutions on joined channels) are
    not those of forward-mode AD."""
    net, obs_space = make_net(name)
    net = net.to(dtype)
    params, directions, obs = tangent_inputs(net, obs_space, 1, 12)
    outputs, jvp = net.linearize(params, obs)
    tangents = jvp(directions)
    primal, reference = forward_mode(net, params, directions, obs)
    assert set(tangents) == set(reference) == set(outputs)
    tolerance = dict(rtol=1e-10, atol=1e-12) if dtype == DT else dict(rtol=1e-4, atol=1e-5)
    for key in reference:
        torch.testing.assert_close(outputs[key], primal[key], rtol=0, atol=0)  # same forward
        torch.testing.assert_close(tangents[key], reference[key], **tolerance)


def test_a_conditioned_network_is_not_linearized():
    net = ActorCritic(GRID, gym.spaces.Discrete(4), hidden=(8,), conv_channels=(4,), num_hparams=2)
    assert make_policy_value(net).linearize is None
    with pytest.raises(ValueError, match="unconditioned"):
        net.linearize(dict(net.named_parameters()), torch.zeros(2, 6, 6, 5), torch.zeros(2))


def grid_rollout(seed, t=4, b=3):
    g = torch.Generator().manual_seed(500 + seed)
    terminated = torch.zeros(t, b, dtype=DT)
    truncated = torch.zeros(t, b, dtype=DT)
    terminated[1, 0] = 1.0
    truncated[2, 1] = 1.0
    return Rollout(
        obs=torch.rand(t, b, 6, 6, 5, generator=g, dtype=DT),
        actions=torch.randint(0, 4, (t, b), generator=g),
        rewards=torch.randn(t, b, generator=g, dtype=DT),
        terminated=terminated,
        truncated=truncated,
        behaviour_logp=torch.full((t, b), -math.log(4), dtype=DT),
        last_obs=torch.rand(b, 6, 6, 5, generator=g, dtype=DT),
        final_obs=torch.rand(1, 6, 6, 5, generator=g, dtype=DT),
        final_index=torch.tensor([2 * b + 1]),
    )


@pytest.mark.parametrize("setup", ["a2c", "vtrace", "a2c + separate outer critic"])
@pytest.mark.parametrize("estimator", ["one-step", "mixed K=2"])
def test_meta_gradient_through_the_network_tangent_equals_reference(setup, estimator):
    name = "separate outer critic, value convs" if "outer" in setup else "relu conv (Snake default)"
    results = []
    for tangent in (True, False):
        net, _ = make_net(name)
        if "outer" in setup:
            both, outer_reader = make_policy_value(net, "both"), make_policy_value(net, "outer")
            objective = A2C(both, outer_critic=OuterCritic(0.99, 1.0, 0.5, head="outer_critic."))
        else:
            both = outer_reader = make_policy_value(net)
            objective = VTraceActorCritic(both, rho_bar=1.0) if setup == "vtrace" else A2C(both)
        assert both.linearize is not None
        optimizer = (rmsprop(0.01, decay=0.9, eps=1e-4, eps_root=1e-12, max_grad_norm=0.5) if estimator == "one-step"
                     else adam(0.01, eps=1e-4, eps_root=1e-12, max_grad_norm=0.5))

        def inner(params, opt_state, rollout, hparams, mode, objective=objective, optimizer=optimizer):
            return gradient_step(objective, optimizer, params, opt_state, rollout, hparams, mode=mode)[:2]

        outer = OuterObjective(outer_reader, gamma=0.99, lambda_=1.0)
        est = (OneStep(inner, outer, tangent=tangent) if estimator == "one-step"
               else Mixed(inner, outer, 2, tangent=tangent))
        meta = MetaParams({"gamma": 0.8, "lambda": 0.9, "entropy_cost": 0.02}, fixed={"value_cost": 0.5}, dtype=DT)
        params = {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()}
        rollouts = iter([grid_rollout(i) for i in range(4)])
        results.append(est.estimate(meta, params, optimizer.init(params), lambda p: next(rollouts)).vector())
    a, b = results
    assert a.abs().max() > 0
    assert float((a - b).norm() / b.norm()) <= 1e-8, (a, b)


def test_tangents_of_some_outputs_skip_the_ops_they_do_not_read():
    """The inner loss's tangent needs the policy and value only: the outer critic's own network is not run."""
    net, obs_space = make_net("separate outer critic, value convs")
    params, directions, obs = tangent_inputs(net, obs_space, 2, 5)
    outputs, jvp = net.linearize(params, obs)
    full = jvp(directions)
    some = jvp(directions, ["policy", "value"])
    assert set(some) == {"policy", "value"}
    for key in some:
        torch.testing.assert_close(some[key], full[key], rtol=0, atol=0)
    tape = next(c.cell_contents for c in jvp.__closure__ if isinstance(c.cell_contents, Tape))
    kept = tape._needed({k: outputs[k] for k in ("policy", "value")})
    assert kept and len(kept) < len(tape.ops)
    assert not any(key and key.startswith("outer_critic") for _, _, _, key, _ in kept)
    assert any(key and key.startswith("outer_critic") for _, _, _, key, _ in tape.ops)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_tape_tangents_of_some_rows_are_those_rows_of_the_full_tangents(name):
    net, obs_space = make_net(name)
    params, directions, obs = tangent_inputs(net, obs_space, 3, 9)
    _, jvp = net.linearize(params, obs)
    full = jvp(directions)
    rows = torch.tensor([7, 0, 4])
    some = jvp(directions, None, rows)
    for key in full:
        torch.testing.assert_close(some[key], full[key].index_select(0, rows), rtol=1e-12, atol=1e-14)


def test_approximate_mode_through_the_network_tangent_is_unbiased():
    """Over every draw of 2 of the 3 sub-envs, the meta-gradient with the tangent pass on the drawn
    sub-envs' rows (scaled by 3/2) averages to the exact one."""
    from itertools import combinations

    import rlmeta.tangent as tangent_module

    def estimate(fraction, subset=None):
        net, _ = make_net("relu conv (Snake default)")
        both = make_policy_value(net)
        objective = A2C(both)
        optimizer = rmsprop(0.01, decay=0.9, eps=1e-4, eps_root=1e-12, max_grad_norm=0.5)

        def inner(params, opt_state, rollout, hparams, mode):
            return gradient_step(objective, optimizer, params, opt_state, rollout, hparams, mode=mode)[:2]

        est = OneStep(inner, OuterObjective(both, gamma=0.99, lambda_=1.0), tangent=True, tangent_fraction=fraction)
        meta = MetaParams({"gamma": 0.8, "lambda": 0.9, "entropy_cost": 0.02}, fixed={"value_cost": 0.5}, dtype=DT)
        params = {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()}
        rollouts = iter([grid_rollout(i) for i in range(2)])
        original = tangent_module.draw_columns
        if subset is not None:
            tangent_module.draw_columns = lambda *args: torch.tensor(subset)
        try:
            return est.estimate(meta, params, optimizer.init(params), lambda p: next(rollouts)).vector()
        finally:
            tangent_module.draw_columns = original

    exact = estimate(1.0)
    draws = [estimate(0.5, subset) for subset in combinations(range(3), 2)]
    mean = torch.stack(draws).mean(0)
    assert float((mean - exact).norm() / exact.norm()) <= 1e-8
    assert float((draws[0] - exact).norm() / exact.norm()) > 1e-4
