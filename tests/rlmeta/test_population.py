"""A population of agents as a leading parameter axis: P agents batched learn exactly what P separate agents learn.

Float64 throughout; each agent has its own data (observations, actions, rewards, terminations and a
different number of truncated episodes, so the final observations are ragged across agents), its
own initial parameters and its own optimizer state; gradient clipping is active for some agents
and not for others. The network has a convolution, a hidden layer, a critic and an outer critic
(a restricted loss term), and is mapped over agents with ``torch.func.vmap``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical

from rlmeta.hparams import MetaParams
from rlmeta.learner import UpdateMode, update
from rlmeta.metagrad import Mixed, MultiStep, OneStep, OuterObjective
from rlmeta.objectives import A2C, PPO, OuterCritic, VTraceActorCritic
from rlmeta.optim import adam, rmsprop, sgd
from rlmeta.rollout import ForwardMemo, Population, PolicyValue, Rollout, group_rows

DT = torch.float64
P, B, T, A = 4, 3, 5, 3
SIDE, CHANNELS, HIDDEN = 4, 2, 8


def forward(params, obs, conditioning):
    """A small conv net: obs ``[N, SIDE, SIDE, CHANNELS]`` -> logits, value, outer value."""
    x = F.conv2d(obs.movedim(-1, -3), params["conv.weight"], params["conv.bias"], padding=1)
    x = torch.tanh(x).flatten(1)
    if conditioning is not None:
        x = torch.cat([x, conditioning.expand(x.shape[0], -1)], -1)
    h = torch.tanh(F.linear(x, params["torso.weight"], params["torso.bias"]))
    return {
        "logits": F.linear(h, params["policy_head.weight"], params["policy_head.bias"]),
        "value": F.linear(h, params["value_head.weight"], params["value_head.bias"]).squeeze(-1),
        "outer_value": F.linear(h, params["outer_value_head.weight"], params["outer_value_head.bias"]).squeeze(-1),
    }


def categorical(outputs):
    return Categorical(logits=outputs["logits"], validate_args=False)


def make_params(seed, conditioning=0):
    g = torch.Generator().manual_seed(seed)
    flat = 3 * SIDE * SIDE + conditioning
    shapes = {"conv.weight": (3, CHANNELS, 3, 3), "conv.bias": (3,), "torso.weight": (HIDDEN, flat),
              "torso.bias": (HIDDEN,), "policy_head.weight": (A, HIDDEN), "policy_head.bias": (A,),
              "value_head.weight": (1, HIDDEN), "value_head.bias": (1,), "outer_value_head.weight": (1, HIDDEN),
              "outer_value_head.bias": (1,)}
    return {k: (0.4 * torch.randn(s, generator=g, dtype=DT)).requires_grad_(True) for k, s in shapes.items()}


def make_rollout(seed, truncations):
    """One agent's rollout ``[T, B]`` with ``truncations`` truncated episodes (their true final obs)."""
    g = torch.Generator().manual_seed(1000 + seed)
    terminated = (torch.rand(T, B, generator=g) < 0.15).to(DT)
    truncated = torch.zeros(T, B, dtype=DT)
    flat = torch.randperm(T * B, generator=g)[:truncations]
    truncated.view(-1)[flat] = 1.0
    terminated.view(-1)[flat] = 0.0
    return Rollout(
        obs=torch.rand(T, B, SIDE, SIDE, CHANNELS, generator=g, dtype=DT),
        actions=torch.randint(0, A, (T, B), generator=g),
        rewards=torch.randn(T, B, generator=g, dtype=DT),
        terminated=terminated,
        truncated=truncated,
        behaviour_logp=torch.log(torch.rand(T, B, generator=g, dtype=DT) * 0.5 + 0.2),
        last_obs=torch.rand(B, SIDE, SIDE, CHANNELS, generator=g, dtype=DT),
        final_obs=torch.rand(truncations, SIDE, SIDE, CHANNELS, generator=g, dtype=DT),
        final_index=flat.sort().values,
    )


def join(rollouts):
    """P agents' rollouts side by side: env ``b`` of agent ``p`` is env ``p * B + b`` of ``[T, P * B]``."""
    width = P * B
    final_index = [r.final_index // B * width + p * B + r.final_index % B for p, r in enumerate(rollouts)]
    return Rollout(
        *(torch.cat([getattr(r, name) for r in rollouts], dim=1) for name in
          ("obs", "actions", "rewards", "terminated", "truncated", "behaviour_logp")),
        last_obs=torch.cat([r.last_obs for r in rollouts]),
        final_obs=torch.cat([r.final_obs for r in rollouts]),
        final_index=torch.cat(final_index),
    )


def stack(trees):
    return {k: torch.stack([t[k].detach() for t in trees]).requires_grad_(True) for k in trees[0]}


TRUNCATIONS = (0, 2, 1, 3)  # per agent: ragged final observations
ROLLOUTS = [[make_rollout(10 * k + p, TRUNCATIONS[(p + k) % P]) for p in range(P)] for k in range(6)]
HPARAMS = {"gamma": 0.95, "lambda": 0.9, "entropy_cost": 0.02, "value_cost": 0.5}

OBJECTIVES = {
    "a2c": lambda pv: A2C(pv),
    "a2c-normalized": lambda pv: A2C(pv, normalize_advantages=True),
    "a2c-outer-critic": lambda pv: A2C(pv.reading("value", "outer_value"),
                                       outer_critic=OuterCritic(0.99, 1.0, 0.5, head="outer_value_head.")),
    "vtrace": lambda pv: VTraceActorCritic(pv, rho_bar=1.0, c_bar=0.9),
}
OPTIMIZERS = {
    "adam-clipped": lambda: adam(0.05, max_grad_norm=1.2),
    "rmsprop-clipped": lambda: rmsprop(0.02, decay=0.9, eps=1e-4, max_grad_norm=1.2),
    "sgd-momentum": lambda: sgd(0.1, momentum=0.9),
}


def assert_close(batched, separate, tol=1e-10):
    for k, v in batched.items():
        expected = torch.stack([s[k].detach() for s in separate])
        assert torch.allclose(v.detach(), expected, rtol=0, atol=tol), (k, float((v - expected).abs().max()))


def test_group_rows_groups_and_restores():
    agents = torch.tensor([2, 0, 2, 1, 0, 2])
    index, inverse = group_rows(agents, 4)
    assert index.shape == (4, 3)
    assert index[0, :2].tolist() == [1, 4] and index[1, 0].tolist() == 3 and index[2].tolist() == [0, 2, 5]
    rows = torch.arange(6) * 10
    grouped = rows[index.reshape(-1)]
    assert torch.equal(grouped[inverse], rows)


@pytest.mark.parametrize("objective_name", list(OBJECTIVES))
@pytest.mark.parametrize("optimizer_name", list(OPTIMIZERS))
def test_batched_population_updates_equal_separate_agents(objective_name, optimizer_name):
    plain = PolicyValue(forward, categorical)
    population = plain.for_population(P, B)
    optimizer = OPTIMIZERS[optimizer_name]()
    separate = [make_params(p) for p in range(P)]
    states = [optimizer.init(params) for params in separate]
    batched = stack(separate)
    batched_optimizer = optimizer.for_population()
    batched_state = batched_optimizer.init(batched)
    clipped = set()
    for k in range(3):
        for p in range(P):
            objective = OBJECTIVES[objective_name](plain)
            separate[p], states[p], agent_metrics = update(objective, optimizer, separate[p], states[p],
                                                           ROLLOUTS[k][p], HPARAMS)
            if optimizer.max_grad_norm is not None:
                clipped.add(agent_metrics["grad_norm"] > optimizer.max_grad_norm)
        batched, batched_state, metrics = update(OBJECTIVES[objective_name](population), batched_optimizer, batched,
                                                 batched_state, join(ROLLOUTS[k]), HPARAMS)
        assert math.isfinite(metrics["grad_norm"])
        assert_close(batched, separate)
    if optimizer.max_grad_norm is not None:
        assert clipped == {True, False}  # some agents clipped, some not: the clipping is per agent
    assert_close(batched_state["nu" if "nu" in batched_state else "momentum"],
                 [s["nu" if "nu" in s else "momentum"] for s in states])


@pytest.mark.parametrize("exact", [True, False])
def test_differentiable_population_updates_equal_separate_agents(exact):
    """The meta-gradient path: create_graph, exact targets (OutputSplit) and a shared forward memo."""
    plain = PolicyValue(forward, categorical)
    population = plain.for_population(P, B)
    optimizer = adam(0.05, eps=1e-4, eps_root=1e-12, max_grad_norm=0.6)
    separate = [make_params(p) for p in range(P)]
    states = [optimizer.init(params) for params in separate]
    batched = stack(separate)
    batched_optimizer = optimizer.for_population()
    batched_state = batched_optimizer.init(batched)
    gamma = torch.tensor(0.95, dtype=DT, requires_grad=True)
    hparams = {**HPARAMS, "gamma": gamma}
    for k in range(2):
        for p in range(P):
            mode = UpdateMode(True, exact and k > 0, ForwardMemo())
            separate[p], states[p], _ = update(A2C(plain), optimizer, separate[p], states[p], ROLLOUTS[k][p], hparams,
                                               mode=mode)
        mode = UpdateMode(True, exact and k > 0, ForwardMemo())
        batched, batched_state, _ = update(A2C(population), batched_optimizer, batched, batched_state,
                                           join(ROLLOUTS[k]), hparams, mode=mode)
    assert_close(batched, separate)
    # The derivative of every agent's parameters in gamma, through both updates.
    probe = [torch.randn(v.shape, generator=torch.Generator().manual_seed(i), dtype=DT)
             for i, v in enumerate(batched.values())]
    batched_grad, = torch.autograd.grad(sum((v * w).sum() for v, w in zip(batched.values(), probe)), gamma,
                                        retain_graph=True)
    separate_grad = sum(torch.autograd.grad(sum((s[key] * w[p]).sum() for key, w in zip(batched, probe)), gamma,
                                            retain_graph=True)[0] for p, s in enumerate(separate))
    assert torch.allclose(batched_grad, separate_grad, rtol=1e-10, atol=1e-12)


def test_per_agent_learning_rates():
    plain = PolicyValue(forward, categorical)
    rates = torch.tensor([0.01, 0.02, 0.05, 0.1], dtype=DT)
    separate = [make_params(p) for p in range(P)]
    batched = stack(separate)
    optimizer = adam(0.05, max_grad_norm=0.6)
    states = [optimizer.init(params) for params in separate]
    batched_state = optimizer.for_population().init(batched)
    for k in range(2):
        for p in range(P):
            separate[p], states[p], _ = update(A2C(plain), optimizer, separate[p], states[p], ROLLOUTS[k][p],
                                               {**HPARAMS, "lr": float(rates[p])})
        batched, batched_state, _ = update(A2C(plain.for_population(P, B)), optimizer.for_population(), batched,
                                           batched_state, join(ROLLOUTS[k]), {**HPARAMS, "lr": rates})
    assert_close(batched, separate)


@pytest.mark.parametrize("estimator", ["one-step", "multi-step", "mixed"])
def test_population_meta_gradient_is_the_mean_of_the_agents(estimator):
    """Meta-parameters shared by the population (as a learned objective's are): the meta-gradient of the
    population's mean outer loss is the mean of the agents' meta-gradients, through exact multi-step unrolls."""
    plain = PolicyValue(forward, categorical)
    population = plain.for_population(P, B)
    optimizer = adam(0.05, eps=1e-4, eps_root=1e-12, max_grad_norm=0.6)

    def make(pv, opt):
        def inner(params, opt_state, rollout, hparams, mode):
            new, state, _ = update(A2C(pv), opt, params, opt_state, rollout, hparams, mode=mode)
            return new, state

        outer = OuterObjective(pv, gamma=0.99, lambda_=1.0)
        if estimator == "one-step":
            return OneStep(inner, outer)
        if estimator == "multi-step":
            return MultiStep(inner, outer, 2)
        return Mixed(inner, outer, 2)

    def meta():
        return MetaParams({"gamma": 0.9, "lambda": 0.8}, fixed={"entropy_cost": 0.02, "value_cost": 0.5}, dtype=DT)

    per_agent = []
    for p in range(P):
        rollouts = iter([ROLLOUTS[k][p] for k in range(4)])
        params = make_params(p)
        result = make(plain, optimizer).estimate(meta(), params, optimizer.init(params), lambda _: next(rollouts))
        per_agent.append(result)
    joined = iter([join(ROLLOUTS[k]) for k in range(4)])
    params = stack([make_params(p) for p in range(P)])
    batched_optimizer = optimizer.for_population()
    result = make(population, batched_optimizer).estimate(meta(), params, batched_optimizer.init(params),
                                                           lambda _: next(joined))
    for name, grad in result.grads.items():
        mean = torch.stack([r.grads[name] for r in per_agent]).mean(0)
        assert torch.allclose(grad, mean, rtol=1e-9, atol=1e-13), (name, float(grad), float(mean))
    assert_close(result.params, [r.params for r in per_agent])


def test_population_is_checked_before_work():
    plain = PolicyValue(forward, categorical)
    params = stack([make_params(p) for p in range(P)])
    with pytest.raises(ValueError, match="per-agent optimizer"):
        update(A2C(plain.for_population(P, B)), adam(0.01), params, adam(0.01).init(params), join(ROLLOUTS[0]),
               HPARAMS)
    with pytest.raises(ValueError, match="rollouts of 12 envs, got 3"):
        opt = adam(0.01).for_population()
        update(A2C(plain.for_population(P, B)), opt, params, opt.init(params), ROLLOUTS[0][0], HPARAMS)
    with pytest.raises(ValueError, match="leading axis of 4 agents"):
        single = make_params(0)
        opt = adam(0.01).for_population()
        update(A2C(plain.for_population(P, B)), opt, single, opt.init(single), join(ROLLOUTS[0]), HPARAMS)
    with pytest.raises(ValueError, match="envs_per_agent must be an integer >= 1"):
        Population(4, 0)
    with pytest.raises(ValueError, match=r"lr must be a scalar, got shape \(3,\)"):
        adam(0.01).update(make_params(0), make_params(1), adam(0.01).init(make_params(0)), lr=torch.ones(3))
    opt = adam(0.01).for_population()
    with pytest.raises(ValueError, match="lr has 3 rates for 4 agents"):
        opt.update(params, params, opt.init(params), lr=torch.ones(3, dtype=DT))
    with pytest.raises(ValueError, match="minibatches, which would mix"):
        ppo = PPO(plain.for_population(P, B), epochs=1, minibatches=2)
        update(ppo, opt, params, opt.init(params), join(ROLLOUTS[0]), HPARAMS)


def test_a_tabular_population_reads_its_tables_directly_as_the_vmapped_forward_would():
    """TabularAgent.population_outputs (one gather per output) is the generic grouped, vmapped forward:
    the same outputs, and the same gradients into each agent's tables."""
    from rlmeta.agents.networks import TabularAgent

    agent = TabularAgent(7, 3, prediction=4).double()
    g = torch.Generator().manual_seed(2)
    params = {k: torch.randn(P, *v.shape, generator=g, dtype=DT).requires_grad_(True)
              for k, v in agent.named_parameters()}
    population = Population(P, B)
    obs = torch.randint(0, 7, (2 * P * B,), generator=g)
    agents = population.agents_of_rows(obs.shape[0])
    fast = population.forward(agent.named_outputs, params, obs, None, agents)
    generic = population.forward(lambda p, o, c: agent.named_outputs(p, o, c), params, obs, None, agents)
    assert fast.keys() == generic.keys() == {"policy", "value", "prediction"}
    weights = {k: torch.randn(v.shape, generator=g, dtype=DT) for k, v in fast.items()}
    grads = [torch.autograd.grad(sum((out[k] * weights[k]).sum() for k in out), list(params.values()))
             for out in (fast, generic)]
    for k in fast:
        assert torch.equal(fast[k], generic[k])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)
