"""Tests of ``agents.networks``: output shapes, distributions, initialisation, hyperparameter
conditioning, extra outputs, input validation and functional (``torch.func``) use.

Networks are small and built from gymnasium spaces; every test seeds torch so it is deterministic.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Independent, Normal
from torch.func import functional_call

from rlmeta.agents.actor import make_policy_value
from rlmeta.agents.config import NetworkConfig, TrainConfig
from rlmeta.agents.networks import ActorCritic, AgentOutput, distribution
from rlmeta.agents.train import Trainer

N = 5


def box(*shape: int, low: float = -1.0, high: float = 1.0) -> gym.spaces.Box:
    return gym.spaces.Box(low, high, shape=shape, dtype=np.float32)


def mlp_net(**kwargs) -> ActorCritic:
    return ActorCritic(box(4), gym.spaces.Discrete(2), hidden=(32, 32), **kwargs)


def cnn_net(**kwargs) -> ActorCritic:
    return ActorCritic(box(6, 6, 5, low=0.0), gym.spaces.Discrete(4), hidden=(32,), conv_channels=(4, 8), **kwargs)


def gauss_net(**kwargs) -> ActorCritic:
    return ActorCritic(box(39, low=-10.0, high=10.0), box(4), hidden=(32, 32), **kwargs)


def grid_obs(n: int, rows: int = 6, cols: int = 6, channels: int = 5, seed: int = 0) -> torch.Tensor:
    """A 0/1 grid, channels last, as an env such as Snake gives it."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, rows, cols, channels, generator=g) < 0.3).to(torch.uint8)


def clone_params(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --------------------------------------------------------------------------------------------
# Shapes and distributions
# --------------------------------------------------------------------------------------------


def test_mlp_discrete_shapes_and_distribution():
    net = mlp_net()
    assert net.conv is None
    out = net(torch.randn(N, 4))
    assert isinstance(out, AgentOutput)
    assert out.policy.shape == (N, 2)
    assert out.value.shape == (N,)
    assert out.log_std is None and out.extras is None
    dist = distribution(out)
    assert isinstance(dist, Categorical)
    assert dist.batch_shape == (N,)
    torch.testing.assert_close(dist.probs.sum(-1), torch.ones(N))
    torch.testing.assert_close(dist.probs, torch.softmax(out.policy, -1))
    actions = torch.tensor([0, 1, 1, 0, 1])
    torch.testing.assert_close(dist.log_prob(actions), torch.log_softmax(out.policy, -1)[torch.arange(N), actions])


def test_cnn_grid_shapes_and_distribution():
    net = cnn_net()
    assert net.conv is not None
    out = net(grid_obs(N).float())
    assert out.policy.shape == (N, 4)
    assert out.value.shape == (N,)
    assert out.log_std is None
    dist = distribution(out)
    assert isinstance(dist, Categorical) and dist.batch_shape == (N,)
    torch.testing.assert_close(dist.probs.sum(-1), torch.ones(N))


def test_gaussian_head_shapes_and_log_prob():
    net = gauss_net(init_log_std=-0.5)
    out = net(torch.randn(N, 39))
    assert out.policy.shape == (N, 4)
    assert out.value.shape == (N,)
    assert out.log_std is not None and out.log_std.shape == (4,)
    torch.testing.assert_close(out.log_std.detach(), torch.full((4,), -0.5))
    dist = distribution(out)
    assert isinstance(dist, Independent) and isinstance(dist.base_dist, Normal)
    assert dist.batch_shape == (N,) and dist.event_shape == (4,)
    actions = torch.randn(N, 4)
    logp = dist.log_prob(actions)
    assert logp.shape == (N,)
    std = torch.exp(torch.tensor(-0.5))
    expected = (-0.5 * ((actions - out.policy) / std) ** 2 - torch.log(std) - 0.5 * np.log(2 * np.pi)).sum(-1)
    torch.testing.assert_close(logp, expected)
    assert dist.sample().shape == (N, 4)
    assert dist.entropy().shape == (N,)


def test_log_std_is_a_learned_parameter():
    net = gauss_net()
    names = dict(net.named_parameters())
    assert "log_std" in names
    out = net(torch.randn(N, 39))
    loss = -distribution(out).log_prob(torch.randn(N, 4) * 3).mean()
    (g,) = torch.autograd.grad(loss, [net.log_std])
    assert torch.all(g != 0)


@pytest.mark.parametrize("make, obs", [
    (mlp_net, lambda: torch.randn(64, 4) * 10),
    (cnn_net, lambda: grid_obs(64).float()),
    (gauss_net, lambda: torch.randn(64, 39) * 10),
])
def test_initial_policy_is_near_uniform(make, obs):
    # the policy head is initialised with a tiny gain: logits (means) near zero for any input
    for seed in range(3):
        torch.manual_seed(seed)
        out = make()(obs())
        assert out.policy.abs().max() < 0.1
    if out.log_std is None:
        probs = distribution(out).probs
        assert torch.allclose(probs, torch.full_like(probs, 1.0 / probs.shape[-1]), atol=0.05)


def test_value_head_is_not_tiny():
    # only the policy head is scaled down; the value head has gain 1 so values vary with inputs
    out = mlp_net()(torch.randn(64, 4) * 3)
    assert out.value.std() > 0.05


# --------------------------------------------------------------------------------------------
# Hyperparameter conditioning and extra outputs
# --------------------------------------------------------------------------------------------


def test_hparam_conditioning_is_required():
    net = mlp_net(num_hparams=2)
    with pytest.raises(ValueError, match="hparams"):
        net(torch.randn(N, 4))


def test_hparam_conditioning_changes_outputs_and_broadcasts():
    net = mlp_net(num_hparams=2)
    obs = torch.randn(N, 4)
    h1 = torch.tensor([0.99, 0.95])
    h2 = torch.tensor([0.5, 0.1])
    a, b = net(obs, h1), net(obs, h2)
    assert not torch.allclose(a.value, b.value)
    assert not torch.allclose(a.policy, b.policy)
    # [H] is broadcast over the batch exactly like [N, H] with identical rows
    c = net(obs, h1.expand(N, 2).clone())
    torch.testing.assert_close(a.value, c.value)
    torch.testing.assert_close(a.policy, c.policy)
    # per-row hparams: row i uses its own hparams
    per_row = torch.stack([h1, h2, h1, h2, h1])
    d = net(obs, per_row)
    torch.testing.assert_close(d.value[[0, 2, 4]], a.value[[0, 2, 4]])
    torch.testing.assert_close(d.value[[1, 3]], b.value[[1, 3]])


def test_unconditioned_network_ignores_hparams_argument():
    net = mlp_net()
    obs = torch.randn(N, 4)
    torch.testing.assert_close(net(obs).value, net(obs, None).value)


def test_gradient_flows_into_hparams():
    net = mlp_net(num_hparams=2)
    hp = torch.tensor([0.99, 0.95], requires_grad=True)
    out = net(torch.randn(N, 4), hp)
    (g,) = torch.autograd.grad(out.value.sum() + out.policy.pow(2).sum(), [hp])
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    # and through per-row hparams as well
    hp_rows = torch.rand(N, 2, requires_grad=True)
    (g2,) = torch.autograd.grad(net(torch.randn(N, 4), hp_rows).value.sum(), [hp_rows])
    assert g2.shape == (N, 2) and torch.all(g2.abs().sum(-1) > 0)


def test_hparam_conditioning_on_grid_and_gaussian():
    for net, obs in ((cnn_net(num_hparams=3), grid_obs(N).float()), (gauss_net(num_hparams=3), torch.randn(N, 39))):
        a = net(obs, torch.zeros(3))
        b = net(obs, torch.ones(3))
        assert a.value.shape == (N,)
        assert not torch.allclose(a.value, b.value)


def test_extra_outputs():
    net = mlp_net(extra_outputs={"y": 7, "z": 1})
    out = net(torch.randn(N, 4))
    assert set(out.extras) == {"y", "z"}
    assert out.extras["y"].shape == (N, 7)
    assert out.extras["z"].shape == (N, 1)
    # the extras depend on the input
    assert not torch.allclose(out.extras["y"][0], out.extras["y"][1])
    grid = cnn_net(extra_outputs={"y": 7})(grid_obs(N).float())
    assert grid.extras["y"].shape == (N, 7)


@pytest.mark.parametrize("make, obs", [
    (lambda: mlp_net(outer_critic=True), lambda: torch.randn(N, 4)),
    (lambda: cnn_net(outer_critic=True, num_hparams=2), lambda: grid_obs(N).float()),
    (lambda: gauss_net(outer_critic=True, shared_torso=True), lambda: torch.randn(N, 39)),
])
def test_outer_critic_is_a_second_value_head_on_the_value_torso(make, obs):
    torch.manual_seed(0)
    net, x = make(), obs()
    hp = {"conditioning": torch.tensor([0.9, 0.5])} if net.num_hparams else {}
    out = net.apply_params(dict(net.named_parameters()), x, hp.get("conditioning"))
    assert out.outer_value.shape == out.value.shape == (N,)
    assert not torch.allclose(out.outer_value, out.value)  # its own weights
    assert not torch.allclose(out.outer_value[0], out.outer_value[1])  # a function of the input
    assert net.apply_params(dict(net.named_parameters()), x, hp.get("conditioning"), value=False).outer_value is None
    # It reads the value torso's features (or the shared torso's): a gradient on it reaches them only.
    params = clone_params(net)
    grads = torch.autograd.grad(net.apply_params(params, x, hp.get("conditioning")).outer_value.sum(),
                                list(params.values()), allow_unused=True)
    reached = {k for k, g in zip(params, grads) if g is not None and g.abs().sum() > 0}
    torso = "torso" if net.value_torso is None else "value_torso"
    assert {"outer_value_head.weight", f"{torso}.0.weight"} <= reached
    assert not reached & {"value_head.weight", "policy_head.weight"}
    for values, expected in (("value", out.value), ("outer", out.outer_value), ("both", out.value)):
        _, got = make_policy_value(net, values)(dict(net.named_parameters()), x, hp)
        torch.testing.assert_close(got, expected)
    both = make_policy_value(net, "both")  # the critic's values, and the outer critic named for objectives
    assert both.outer_value == "outer_value"
    torch.testing.assert_close(both.outputs(dict(net.named_parameters()), x, hp)[both.outer_value], out.outer_value)


def test_outer_critic_policy_values_need_the_head():

    assert mlp_net().outer_value_head is None and mlp_net()(torch.randn(N, 4)).outer_value is None
    with pytest.raises(ValueError, match="needs a network with an outer critic"):
        make_policy_value(mlp_net(), "both")
    with pytest.raises(ValueError, match=r"values must be one of \['value', 'both', 'outer'\], got 'outer_value'"):
        make_policy_value(mlp_net(outer_critic=True), "outer_value")


# --------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    (dict(activation="gelu"), "activation"),
    (dict(hidden=()), "hidden"),
    (dict(hidden=(32, 0)), "hidden"),
    (dict(observation_space=gym.spaces.Dict({"a": box(3)})), "dict"),
    (dict(observation_space=box(3, 4)), r"\(3, 4\)"),
    (dict(observation_space=box(2, 3, 4, 5)), "not supported"),
    (dict(action_space=gym.spaces.MultiDiscrete([2, 3])), "action space"),
    (dict(action_space=box(2, 2)), "action space"),
])
def test_bad_configuration_raises(kwargs, match):
    args = dict(observation_space=box(4), action_space=gym.spaces.Discrete(2))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ActorCritic(**args)


# --------------------------------------------------------------------------------------------
# Functional use
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make, obs", [
    (lambda: mlp_net(num_hparams=2), lambda: torch.randn(N, 4)),
    (lambda: cnn_net(num_hparams=2), lambda: grid_obs(N).float()),
    (lambda: gauss_net(num_hparams=2), lambda: torch.randn(N, 39)),
])
def test_functional_call_matches_module_and_all_params_get_gradients(make, obs):
    net = make()
    x = obs()
    hp = torch.tensor([0.9, 0.5])
    params = clone_params(net)
    out = functional_call(net, params, (x, hp))
    ref = net(x, hp)
    torch.testing.assert_close(out.policy, ref.policy)
    torch.testing.assert_close(out.value, ref.value)
    if ref.log_std is not None:
        torch.testing.assert_close(out.log_std, ref.log_std)
    # a loss on the policy and the value reaches every parameter (no allow_unused)
    dist = distribution(out)
    loss = -dist.log_prob(dist.sample()).mean() + (out.value - 1.0).pow(2).mean()
    keys = list(params)
    grads = dict(zip(keys, torch.autograd.grad(loss, [params[k] for k in keys])))
    groups = {"policy_head", "value_head", "torso", "hparam_embed"} | ({"conv"} if net.conv is not None else set())
    for group in groups:
        assert any(k.startswith(group + ".") for k in keys), group
    for k, g in grads.items():
        assert torch.isfinite(g).all(), k
        if k.endswith("weight") or k == "log_std":
            assert g.abs().sum() > 0, k


def test_functional_call_uses_the_given_params_not_the_modules():
    net = mlp_net()
    x = torch.randn(N, 4)
    params = clone_params(net)
    with torch.no_grad():
        params["value_head.bias"] += 3.0
    out = functional_call(net, params, (x,))
    torch.testing.assert_close(out.value, net(x).value + 3.0)
    # the module itself is unchanged
    assert torch.all(net.value_head.bias == 0)


# --------------------------------------------------------------------------------------------
# Grid observations: channels last
# --------------------------------------------------------------------------------------------


def _reference_grid_forward(net: ActorCritic, obs: torch.Tensor) -> AgentOutput:
    """The CNN written out by hand for a channels-last ``[N, rows, cols, C]`` grid."""
    x = obs.float().permute(0, 3, 1, 2)  # [N, C, rows, cols]
    convs = [m for m in net.conv if isinstance(m, torch.nn.Conv2d)]
    for conv in convs:
        x = torch.tanh(torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1))
    features = x.reshape(x.shape[0], -1)  # flattened channel-major, as nn.Flatten does on [N, C, H, W]
    z = net.torso(features)
    # the value may have its own MLP on the same (shared) convolutional features
    value_torso = getattr(net, "value_torso", None)
    z_value = z if value_torso is None else value_torso(features)
    return AgentOutput(net.policy_head(z), net.value_head(z_value).squeeze(-1))


def test_cnn_reads_grids_channels_last():
    # rows, cols and channels all differ so any transposition would change the result or fail
    net = ActorCritic(box(5, 7, 3, low=0.0), gym.spaces.Discrete(4), hidden=(16,), conv_channels=(4, 6))
    obs = grid_obs(N, 5, 7, 3)
    out = net(obs.float())
    ref = _reference_grid_forward(net, obs)
    torch.testing.assert_close(out.policy, ref.policy)
    torch.testing.assert_close(out.value, ref.value)
    # a channels-first grid is rejected rather than silently misread
    with pytest.raises(RuntimeError):
        net(obs.permute(0, 3, 1, 2).float())


def test_cnn_is_sensitive_to_spatial_layout():
    net = cnn_net()
    obs = grid_obs(N).float()
    flipped_rows = obs.flip(1)
    transposed = obs.transpose(1, 2)
    base = net(obs).value
    assert not torch.allclose(base, net(flipped_rows).value)
    assert not torch.allclose(base, net(transposed).value)


def test_cnn_accepts_uint8_and_bool_grids():
    net = cnn_net()
    obs = grid_obs(N)
    ref = net(obs.float())
    for raw in (obs, obs.bool()):
        out = net(raw)
        torch.testing.assert_close(out.policy, ref.policy)
        torch.testing.assert_close(out.value, ref.value)


@pytest.mark.parametrize("make, obs_of, conditioned", [
    (cnn_net, lambda n: grid_obs(n, seed=3), False),
    (mlp_net, lambda n: torch.randn(n, 4, generator=torch.Generator().manual_seed(4)), True),
    (gauss_net, lambda n: torch.randn(n, 39, generator=torch.Generator().manual_seed(5)), False),
])
def test_a_population_adapter_runs_every_agent_on_its_own_rows(make, obs_of, conditioned):
    """Parameters stacked on a leading agent axis, one vmapped forward: each agent's rows get its own outputs."""
    agents, envs_per_agent = 4, 3
    nets = []
    for seed in range(agents):
        torch.manual_seed(seed)
        nets.append(make(num_hparams=2) if conditioned else make())
    params = [{k: v.double() for k, v in net.named_parameters()} for net in nets]
    stacked = {k: torch.stack([p[k] for p in params]) for k in params[0]}
    obs = obs_of(2 * agents * envs_per_agent)  # two rows of the population's 12 envs
    hparams = {"conditioning": torch.tensor([0.9, 0.1], dtype=torch.float64)} if conditioned else {}
    population = make_policy_value(nets[0]).for_population(agents, envs_per_agent)
    out = population.outputs(stacked, obs.double(), hparams)
    owner = (torch.arange(obs.shape[0]) // envs_per_agent) % agents
    for agent in range(agents):
        rows = owner == agent
        alone = make_policy_value(nets[agent]).outputs(params[agent], obs[rows].double(), hparams)
        for name, value in alone.items():
            assert torch.allclose(out[name][rows], value, rtol=0, atol=1e-12), name


def test_channels_first_images_are_read_as_such():
    """A (C, H, W) observation is detected and gives the same outputs as the same image channels-last."""
    torch.manual_seed(0)
    last = ActorCritic(box(6, 6, 5, low=0.0), gym.spaces.Discrete(4), hidden=(16,), conv_channels=(4,))
    first = ActorCritic(box(5, 6, 6, low=0.0), gym.spaces.Discrete(4), hidden=(16,), conv_channels=(4,))
    assert first.channels_first and not last.channels_first
    assert {k: v.shape for k, v in first.named_parameters()} == {k: v.shape for k, v in last.named_parameters()}
    params = dict(last.named_parameters())
    obs = grid_obs(3).float()
    a = last.apply_params(params, obs)
    b = first.apply_params(params, obs.movedim(-1, -3))
    assert torch.allclose(a.policy, b.policy, atol=1e-6) and torch.allclose(a.value, b.value, atol=1e-6)
    forced = ActorCritic(box(5, 6, 6, low=0.0), gym.spaces.Discrete(4), hidden=(16,), conv_channels=(4,),
                         channels_first=False)
    assert not forced.channels_first  # an explicit choice wins over the shape


def test_snake_with_channels_first_trains(tmp_path):
    config = TrainConfig(env="snake-6x6", env_options={"channels_first": True}, algo="a2c", num_envs=4, num_steps=8,
                         total_steps=64, run_dir=str(tmp_path / "run"), progress=False, eval_episodes=2,
                         network=NetworkConfig(hidden=(16,), conv_channels=(4,)))
    trainer = Trainer(config)
    assert trainer.net.channels_first
    assert trainer.run()["status"] == "completed"


def test_reference_snake_network_same_padding_and_separate_value_network():
    """Bonnet et al.'s Snake networks: 2x2 convolutions of stride 2 then 1 with "SAME" padding, separate
    policy and value networks (value MLP 128-128), and an outer critic of the value's architecture."""
    torch.manual_seed(0)
    net = ActorCritic(box(6, 6, 5, low=0.0), gym.spaces.Discrete(4), hidden=(64, 64), conv_channels=(32, 32),
                      activation="relu", conv_kernel=2, conv_strides=(2, 1), value_hidden=(128, 128), value_convs=True,
                      outer_critic=True, outer_critic_network=True)
    shapes = {k: tuple(v.shape) for k, v in net.named_parameters()}
    assert shapes["torso.0.weight"] == (64, 32 * 3 * 3)  # 6x6 -> 3x3 (stride 2) -> 3x3 (stride 1, SAME)
    assert shapes["value_torso.0.weight"] == (128, 288) and shapes["value_head.weight"] == (1, 128)
    assert {"value_conv.0.weight", "value_conv.3.weight", "outer_critic.conv.3.weight"} <= set(shapes)  # 2: padding
    assert shapes["outer_critic.torso.2.weight"] == (128, 128)
    out = net(grid_obs(4).float())
    assert out.policy.shape == (4, 4) and out.value.shape == out.outer_value.shape == (4,)
    # SAME padding of the stride-1 2x2 layer puts the extra row and column after the data (TensorFlow's rule).
    pad = net.conv[2]
    assert isinstance(pad, torch.nn.ZeroPad2d) and pad.padding == (0, 1, 0, 1)
    odd = ActorCritic(box(7, 7, 5, low=0.0), gym.spaces.Discrete(4), hidden=(8,), conv_channels=(4,), conv_kernel=2,
                      conv_strides=(2,))
    assert dict(odd.named_parameters())["torso.0.weight"].shape == (8, 4 * 4 * 4)  # ceil(7 / 2) = 4
    with pytest.raises(ValueError, match="one stride >= 1 per conv layer"):
        ActorCritic(box(6, 6, 5, low=0.0), gym.spaces.Discrete(4), conv_channels=(4, 4), conv_strides=(2,))


def test_lecun_normal_init_is_haikus_default():
    """Every layer, heads included: truncated normal at 2 std, variance 1 / fan_in; zero biases."""
    from torch import nn

    torch.manual_seed(0)
    net = ActorCritic(gym.spaces.Box(0, 1, (6, 6, 5)), gym.spaces.Discrete(4), hidden=(512, 512), conv_channels=(64, 64),
                      activation="relu", conv_kernel=2, conv_strides=(2, 1), value_convs=True, init="lecun_normal")
    layers = [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert net.policy_head in layers and net.value_head in layers
    for layer in layers:
        fan_in = layer.weight[0].numel()
        w = layer.weight.detach().flatten()
        assert (layer.bias == 0).all()
        assert w.abs().max() <= 2 * (1 / fan_in) ** 0.5 / 0.8796 + 1e-6  # truncated at 2 std of the pre-truncation normal
        if w.numel() >= 20_000:
            assert abs(w.std().item() * fan_in ** 0.5 - 1.0) < 0.05, (layer, w.std().item() * fan_in ** 0.5)
    with pytest.raises(ValueError, match="init must be one of"):
        ActorCritic(gym.spaces.Box(0, 1, (4,)), gym.spaces.Discrete(2), init="xavier")
