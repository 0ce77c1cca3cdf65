"""The capturable plain update (rlmeta.capture): equal to the learner's update, nothing read on the host,
static shapes whatever the rollout's truncations; and the CUDA graph itself where a GPU exists."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical

from rlmeta.capture import CapturedUpdate, HostSyncError, forbid_host_syncs
from rlmeta.learner import update
from rlmeta.objectives import A2C, PPO, OuterCritic, VTraceActorCritic
from rlmeta.optim import adam, rmsprop, sgd
from rlmeta.rollout import PolicyValue, Rollout, evaluate, pad_final

D, H, A, T, B = 6, 8, 3, 5, 4


def forward(params, obs, conditioning):
    hidden = torch.tanh(obs @ params["w1"] + params["b1"])
    return {"logits": hidden @ params["pi"], "value": hidden @ params["v"],
            "outer_values": hidden.detach() @ params["outer_v"]}


def categorical(outputs):
    return Categorical(logits=outputs["logits"], validate_args=False)


policy_value = PolicyValue(forward, categorical, outer_value="outer_values")


def make_params(seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    shapes = {"w1": (D, H), "b1": (H,), "pi": (H, A), "v": (H,), "outer_v": (H,)}
    return {k: (0.6 * torch.randn(s, generator=g)).to(dtype=dtype, device=device).requires_grad_(True)
            for k, s in shapes.items()}


def make_rollout(seed, truncations, dtype=torch.float32, device="cpu"):
    """A rollout with ``truncations`` time-limit ends (their true final observations kept)."""
    g = torch.Generator().manual_seed(100 + seed)
    terminated, truncated = torch.zeros(T, B), torch.zeros(T, B)
    terminated[1, 0] = 1.0
    cells = torch.randperm(T * B, generator=g)[:truncations].sort().values
    truncated.view(-1)[cells] = 1.0
    rollout = Rollout(
        obs=torch.randn(T, B, D, generator=g), actions=torch.randint(0, A, (T, B), generator=g),
        rewards=torch.randn(T, B, generator=g), terminated=terminated * (1 - truncated), truncated=truncated,
        behaviour_logp=torch.full((T, B), -math.log(A)) + 0.1 * torch.randn(T, B, generator=g),
        last_obs=torch.randn(B, D, generator=g), final_obs=torch.randn(truncations, D, generator=g),
        final_index=cells.long())
    return Rollout(*(t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device) for t in rollout))


OPTIMIZERS = {
    "sgd": lambda: sgd(0.1, max_grad_norm=0.5),
    "rmsprop": lambda: rmsprop(5e-3, decay=0.9, max_grad_norm=None),
    "adam": lambda: adam(3e-3, max_grad_norm=0.5),
}
OBJECTIVES = {
    "a2c": lambda: A2C(policy_value),
    "a2c-normalised": lambda: A2C(policy_value, normalize_advantages=True),
    "vtrace": lambda: VTraceActorCritic(policy_value, rho_bar=1.2),
    "a2c+outer-critic": lambda: A2C(policy_value, outer_critic=OuterCritic(gamma=0.97, lambda_=0.7, head="outer_")),
}
HPARAMS = {"gamma": 0.95, "lambda": 0.9, "entropy_cost": 0.01, "value_cost": 0.5}
TRUNCATIONS = (0, 2, 5, 1, 3, 7)  # 5 > 4 (the smallest default capacity): it doubles once


def run_both(objective, optimizer, hparams_of, device="cpu"):
    """Six updates by the learner and by a CapturedUpdate from the same start; both trajectories."""
    captured = CapturedUpdate(objective, optimizer)
    params = make_params(device=device)
    state = optimizer.init(params)
    ours = (params, state)
    theirs = (params, state)
    out = []
    for i, count in enumerate(TRUNCATIONS):
        rollout = make_rollout(i, count, device=device)
        p, s, m = update(objective, optimizer, *theirs, rollout, hparams_of(i), progress=i / 6)
        q, r, n = captured(*ours, rollout, hparams_of(i), progress=i / 6)
        theirs, ours = (p, s), (q, r)
        out.append((p, m, q, n))
    return captured, out


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_captured_update_equals_the_learners(objective, opt_name):
    captured, steps = run_both(OBJECTIVES[objective](), OPTIMIZERS[opt_name](), lambda i: HPARAMS)
    for p, m, q, n in steps:
        for k in p:
            assert torch.allclose(p[k], q[k], rtol=1e-5, atol=1e-6), k
            assert q[k].is_leaf and q[k].requires_grad
        assert set(m) == set(n) and all(n[k] == pytest.approx(m[k], rel=1e-4, abs=1e-6) for k in m)
    assert captured.capacity == 8 and captured.captures == 2  # built once, then once more for 5 truncations


def test_an_annealed_learning_rate_is_an_input_not_a_constant():
    """The lr changes every update: it is copied into the step, not baked in (one build for all of them)."""
    captured, steps = run_both(A2C(policy_value), rmsprop(5e-3, decay=0.9),
                               lambda i: {**HPARAMS, "lr": 5e-3 * (1 - i / 6)})
    for p, _, q, _ in steps:
        assert all(torch.allclose(p[k], q[k], rtol=1e-5, atol=1e-6) for k in p)
    assert captured.captures == 2  # the capacity's rebuild only


def test_a_changed_constant_hyperparameter_rebuilds_the_step():
    captured = CapturedUpdate(A2C(policy_value), sgd(0.1))
    params = make_params()
    state = captured.optimizer.init(params)
    captured(params, state, make_rollout(0, 1), HPARAMS)
    captured(params, state, make_rollout(1, 2), HPARAMS)
    assert captured.captures == 1
    p, _, _ = captured(params, state, make_rollout(1, 2), {**HPARAMS, "gamma": 0.5})
    assert captured.captures == 2
    q, _, _ = update(captured.objective, captured.optimizer, params, state, make_rollout(1, 2),
                     {**HPARAMS, "gamma": 0.5})
    assert all(torch.allclose(p[k], q[k], rtol=1e-5, atol=1e-6) for k in p)


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_the_step_reads_nothing_on_the_host(objective):
    """What a CUDA capture needs, checked on the CPU: no operator of the step reads a value back."""
    optimizer = adam(3e-3, max_grad_norm=0.5)
    captured = CapturedUpdate(OBJECTIVES[objective](), optimizer)
    params = make_params()
    captured(params, optimizer.init(params), make_rollout(0, 3), {**HPARAMS, "lr": 1e-3})  # builds the inputs
    with forbid_host_syncs():
        outputs = captured._step()
    assert set(outputs[0]) == set(params)
    with pytest.raises(HostSyncError, match="_local_scalar_dense"):
        with forbid_host_syncs():  # the learner's eager update reads its loss and metrics as floats
            update(captured.objective, optimizer, params, optimizer.init(params), make_rollout(0, 3), HPARAMS)


def test_forbid_host_syncs_catches_every_kind_of_read():
    x = torch.randn(5)
    for read in (lambda: x.sum().item(), lambda: float(x.sum()), lambda: bool(x.sum() > 0), lambda: x.nonzero(),
                 lambda: x[x > 0], lambda: torch.equal(x, x)):
        with pytest.raises(HostSyncError):
            with forbid_host_syncs():
                read()
    with forbid_host_syncs():  # arithmetic, reductions and index ops with tensor indices are fine
        (x * 2).sum().sqrt()
        x.index_select(0, torch.tensor([0, 2]))
        torch.where(x > 0, x, -x)


def test_padding_the_final_observations_changes_no_evaluation():
    params = make_params(dtype=torch.float64)
    for count in (0, 1, 3):
        rollout = make_rollout(count, count, dtype=torch.float64)
        padded = pad_final(rollout, 6)
        assert padded.final_obs.shape[0] == 6 and padded.final_index.shape[0] == 6
        a, b = evaluate(policy_value, params, rollout, HPARAMS), evaluate(policy_value, params, padded, HPARAMS)
        for name in ("logp", "entropy", "values", "next_values", "outer_values", "outer_next_values"):
            # to rounding: the network runs on a batch with more rows, which may block its products differently
            assert torch.allclose(getattr(a, name), getattr(b, name), rtol=1e-13, atol=1e-14), name
        # the pads leave when sub-envs are selected (the approximate tangent path's Rollout.envs)
        columns = torch.tensor([0, 2, 3])
        assert torch.equal(padded.envs(columns).final_index, rollout.envs(columns).final_index)
    with pytest.raises(ValueError, match="more than the capacity"):
        pad_final(make_rollout(0, 3), 2)


def test_a_non_finite_loss_raises_and_returns_nothing():
    captured = CapturedUpdate(A2C(policy_value), sgd(0.1))
    params = make_params()
    rollout = make_rollout(0, 1)
    bad = rollout._replace(rewards=rollout.rewards.clone().fill_(float("nan")))
    with pytest.raises(FloatingPointError, match="non-finite"):
        captured(params, captured.optimizer.init(params), bad, HPARAMS)


def test_capture_refuses_what_it_cannot_take():
    with pytest.raises(ValueError, match="whole-rollout objectives"):
        CapturedUpdate(PPO(policy_value), adam(1e-3))
    captured = CapturedUpdate(A2C(policy_value), sgd(0.1))
    params = make_params()
    with pytest.raises(ValueError, match="carries a gradient"):
        captured(params, {}, make_rollout(0, 1), {**HPARAMS, "lr": torch.tensor(0.1, requires_grad=True)})
    with pytest.raises(ValueError, match="give them as numbers"):
        captured(params, {}, make_rollout(0, 1), {**HPARAMS, "gamma": torch.tensor(0.9)})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_the_cuda_graph_replays_the_learners_update(opt_name):
    captured, steps = run_both(A2C(policy_value), OPTIMIZERS[opt_name](), lambda i: {**HPARAMS, "lr": 3e-3},
                               device="cuda")
    assert captured.captured
    for p, m, q, n in steps:
        assert all(torch.allclose(p[k], q[k], rtol=1e-4, atol=1e-5) for k in p)
        assert all(n[k] == pytest.approx(m[k], rel=1e-3, abs=1e-5) for k in m)


@pytest.mark.parametrize("config", ["snake6_reference_a2c.toml", "cartpole_vtrace"])
def test_the_shipped_networks_steps_read_nothing_on_the_host(config):
    """The real agents (Snake's convolutions with separate value torso, CartPole's MLPs), not only the toy net."""
    from pathlib import Path

    from rlmeta.agents.build import build_agent
    from rlmeta.agents.config import TrainConfig, load_config
    from rlmeta.agents.lifetime import Learning, build_loop, make_env

    if config.endswith(".toml"):
        cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / config, TrainConfig)
        cfg = TrainConfig(**{**cfg.__dict__, "num_envs": 16})
    else:
        cfg = TrainConfig(env="envpool:CartPole-v1", num_envs=8, num_steps=8, algo="vtrace", total_steps=1000)
    env = make_env(cfg, 0)
    agent = build_agent(cfg, env.single_observation_space, env.single_action_space, "cpu")
    learning = Learning(cfg, agent)
    state = learning.initial_state()
    loop = build_loop(cfg, agent, env, "cpu", 0)
    try:
        learning.start(state, loop)
        rollout = loop.next().rollout
    finally:
        loop.close()
    captured = CapturedUpdate(agent.objective, agent.optimizer)
    captured(state.params, state.opt_state, rollout, learning.hparams(state))
    with forbid_host_syncs():
        captured._step()
