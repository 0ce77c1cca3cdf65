"""LPG (Oh et al. 2020): its network against PyTorch's GRU, its loss against the rule it generalises,
its meta-gradients through K = 1..3 agent updates against central finite differences (float64), and
a population of LPG agents against the same agents run separately."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical

from rlmeta.hparams import MetaParams
from rlmeta.learner import UpdateMode, gradient_step, update
from rlmeta.metagrad import Mixed, MultiStep, OneStep, OuterObjective
from rlmeta.objectives import OuterCritic
from rlmeta.objectives.lpg import LPG, LPGMetaObjective, LPGNetwork, kl_to_target
from rlmeta.optim import adam, rmsprop, sgd
from rlmeta.rollout import PolicyValue, Rollout

from helpers.finite_differences import directional_check

DT = torch.float64
S, A, M, T, B = 5, 3, 3, 4, 3
SMALL = LPGNetwork(target_width=M, embedding_width=3, gru_width=4)


def forward(params, obs, conditioning):
    """A tabular agent: policy logits, prediction logits y(s) and a value per state."""
    return {"logits": obs @ params["logits"], "prediction": obs @ params["y"], "value": obs @ params["values"]}


def categorical(outputs):
    return Categorical(logits=outputs["logits"], validate_args=False)


policy_value = PolicyValue(forward, categorical, extras=("prediction",))


def make_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"logits": 0.5 * torch.randn(S, A, generator=g, dtype=DT), "y": 0.5 * torch.randn(S, M, generator=g, dtype=DT),
            "values": torch.randn(S, generator=g, dtype=DT)}


def make_rollout(seed, num_envs=B):
    g = torch.Generator().manual_seed(200 + seed)
    onehot = lambda idx: torch.nn.functional.one_hot(idx, S).to(DT)  # noqa: E731
    terminated = torch.zeros(T, num_envs, dtype=DT)
    truncated = torch.zeros(T, num_envs, dtype=DT)
    terminated[1, 0] = 1.0
    truncated[2, 1] = 1.0
    return Rollout(
        obs=onehot(torch.randint(0, S, (T, num_envs), generator=g)),
        actions=torch.randint(0, A, (T, num_envs), generator=g),
        rewards=torch.randn(T, num_envs, generator=g, dtype=DT),
        terminated=terminated,
        truncated=truncated,
        behaviour_logp=torch.full((T, num_envs), -math.log(A), dtype=DT),
        last_obs=onehot(torch.randint(0, S, (num_envs,), generator=g)),
        final_obs=onehot(torch.randint(0, S, (1,), generator=g)),
        final_index=torch.tensor([2 * num_envs + 1]),
    )


ROLLOUTS = [make_rollout(i) for i in range(8)]


def lpg_tree(seed=0):
    # Scaled up from PyTorch's initialisation so every leaf has a clear effect in a few steps.
    return {k: 2.0 * v for k, v in SMALL.init(seed, DT).items()}


# ------------------------------------------------------------------------------------------------
# The network.


def test_the_backward_gru_is_torchs_gru_run_backward_with_resets():
    net = LPGNetwork(target_width=M, embedding_width=3, gru_width=4, inputs_gamma=True)
    params = net.init(1, DT)
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(T, B, generator=g, dtype=DT)
    terminated = torch.zeros(T, B, dtype=DT)
    terminated[1, 0] = 1.0
    ended = terminated.clone()
    ended[2, 1] = 1.0  # a truncation: the state resets, the next prediction is still read
    pi = torch.rand(T, B, generator=g, dtype=DT)
    y = torch.softmax(torch.randn(T, B, M, generator=g, dtype=DT), -1)
    next_y = torch.softmax(torch.randn(T, B, M, generator=g, dtype=DT), -1)
    pi_hat, y_hat = net(params, rewards, terminated, ended, 0.9, pi, y, next_y)
    assert pi_hat.shape == (T, B) and y_hat.shape == (T, B, M)
    assert torch.allclose(y_hat.sum(-1), torch.ones(T, B, dtype=DT))
    # Reference: torch.nn.GRUCell stepped backward in time per env, with explicit loops.
    cell = torch.nn.GRUCell(net.input_size, net.gru_width).double()
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(params[f"gru.{name}"])

    def embed(v):
        hidden = torch.relu(v @ params["embed.0.weight"].T + params["embed.0.bias"])
        return hidden @ params["embed.1.weight"].T + params["embed.1.bias"]

    for b in range(B):
        h = torch.zeros(1, net.gru_width, dtype=DT)
        for t in reversed(range(T)):
            if ended[t, b]:
                h = torch.zeros_like(h)
            next_embedding = embed(next_y[t, b]) * (0.0 if terminated[t, b] else 1.0)
            x = torch.cat([rewards[t, b:b + 1], terminated[t, b:b + 1], pi[t, b:b + 1], embed(y[t, b]),
                           next_embedding, torch.tensor([0.9], dtype=DT)])[None]
            h = cell(x, h)
            z = torch.relu(h[0])
            expected_pi = z @ params["pi_head.weight"][0] + params["pi_head.bias"][0]
            expected_y = torch.softmax(z @ params["y_head.weight"].T + params["y_head.bias"], -1)
            assert torch.allclose(pi_hat[t, b], expected_pi, atol=1e-12)
            assert torch.allclose(y_hat[t, b], expected_y, atol=1e-12)


def test_outputs_before_an_episode_end_ignore_what_follows_it():
    params = SMALL.init(2, DT)
    g = torch.Generator().manual_seed(1)
    rewards = torch.randn(T, 1, generator=g, dtype=DT)
    ended = torch.zeros(T, 1, dtype=DT)
    ended[1, 0] = 1.0
    inputs = dict(terminated=ended, ended=ended, gamma=0.9, pi=torch.full((T, 1), 0.5, dtype=DT),
                  y=torch.full((T, 1, M), 1 / M, dtype=DT), next_y=torch.full((T, 1, M), 1 / M, dtype=DT))
    before = SMALL(params, rewards, **inputs)
    changed = rewards.clone()
    changed[2:] += 5.0  # the next episode's rewards
    after = SMALL(params, changed, **inputs)
    assert torch.allclose(before[0][:2], after[0][:2]) and not torch.allclose(before[0][2:], after[0][2:])


def test_lpg_network_checks_its_parameters_and_shape():
    with pytest.raises(ValueError, match="target_width must be >= 2"):
        LPGNetwork(target_width=1)
    with pytest.raises(ValueError, match="gru_width must be an integer >= 1"):
        LPGNetwork(gru_width=0)
    params = SMALL.init(0)
    SMALL.check(params)
    wrong = dict(params, **{"y_head.weight": torch.zeros(M + 1, 4)})
    with pytest.raises(ValueError, match="wrong shapes"):
        SMALL.check(wrong)
    assert LPGNetwork(lifetime_conditioning=True).input_size == 8 and LPGNetwork(inputs_gamma=False).input_size == 5
    assert torch.equal(SMALL.init(3)["gru.weight_ih"], SMALL.init(3)["gru.weight_ih"])  # seeded


def test_a_ta_lpg_starts_as_the_lpg_of_its_seed():
    """Same draws for every parameter, zero weights on n/N and log N: at initialisation a TA-LPG is its
    seed's LPG whatever the time inputs, so ES comparisons of the two start from one function."""
    plain, timed = LPGNetwork(gru_width=6), LPGNetwork(gru_width=6, lifetime_conditioning=True)
    p, q = plain.init(4, DT), timed.init(4, DT)
    timed.check(q)
    assert all(torch.equal(p[k], q[k]) for k in p if k != "gru.weight_ih")
    assert torch.equal(q["gru.weight_ih"][:, :-2], p["gru.weight_ih"]) and not q["gru.weight_ih"][:, -2:].any()
    g = torch.Generator().manual_seed(3)
    inputs = dict(terminated=torch.zeros(T, 2, dtype=DT), ended=torch.zeros(T, 2, dtype=DT), gamma=0.9,
                  pi=torch.rand(T, 2, generator=g, dtype=DT), y=torch.softmax(torch.randn(T, 2, M, generator=g, dtype=DT), -1),
                  next_y=torch.softmax(torch.randn(T, 2, M, generator=g, dtype=DT), -1))
    rewards = torch.randn(T, 2, generator=g, dtype=DT)
    reference = LPGNetwork(gru_width=6, target_width=M)
    base = reference.init(4, DT)
    for progress, lifetime in ((0.0, 10.0), (0.7, 250.0)):
        timed_net = LPGNetwork(gru_width=6, target_width=M, lifetime_conditioning=True)
        out = timed_net(timed_net.init(4, DT), rewards, progress=progress, lifetime=lifetime, **inputs)
        expected = reference(base, rewards, **inputs)
        # equal up to the summation order of the GRU's input product (zero terms added)
        assert torch.allclose(out[0], expected[0], rtol=1e-13, atol=1e-15)
        assert torch.allclose(out[1], expected[1], rtol=1e-13, atol=1e-15)
    moved = dict(timed_net.init(4, DT))
    moved["gru.weight_ih"] = moved["gru.weight_ih"].clone()
    moved["gru.weight_ih"][:, -1] = 0.5  # once ES moves a time weight, the lifetime matters
    assert not torch.equal(timed_net(moved, rewards, lifetime=10.0, **inputs)[0],
                           timed_net(moved, rewards, lifetime=250.0, **inputs)[0])


def test_normalised_lifetime_input_is_the_affine_map_of_log_n():
    """lifetime_range (lo, hi): TA-LPG reads (log N - log lo) / (log hi - log lo), 0 at lo and 1 at hi;
    the network with it equals the log-N network whose GRU input weight and bias absorb the map."""
    import math

    net = LPGNetwork(gru_width=6, target_width=M, lifetime_conditioning=True, lifetime_range=(10, 250))
    assert net.lifetime_input(10) == pytest.approx(0.0) and net.lifetime_input(250) == pytest.approx(1.0)
    assert net.lifetime_input(50) == pytest.approx(math.log(5) / math.log(25))
    assert LPGNetwork(lifetime_conditioning=True).lifetime_input(50) == pytest.approx(math.log(50))
    g = torch.Generator().manual_seed(5)
    params = {k: torch.randn(v.shape, generator=g, dtype=DT) for k, v in net.init(0, DT).items()}
    inputs = dict(terminated=torch.zeros(T, 2, dtype=DT), ended=torch.zeros(T, 2, dtype=DT), gamma=0.9,
                  pi=torch.rand(T, 2, generator=g, dtype=DT), y=torch.softmax(torch.randn(T, 2, M, generator=g, dtype=DT), -1),
                  next_y=torch.softmax(torch.randn(T, 2, M, generator=g, dtype=DT), -1))
    rewards = torch.randn(T, 2, generator=g, dtype=DT)
    raw = LPGNetwork(gru_width=6, target_width=M, lifetime_conditioning=True)
    low, span = math.log(10), math.log(250) - math.log(10)
    absorbed = dict(params)  # w * (log N - low) / span  =  (w / span) log N  -  w low / span
    column = params["gru.weight_ih"][:, -1]
    absorbed["gru.weight_ih"] = params["gru.weight_ih"].clone()
    absorbed["gru.weight_ih"][:, -1] = column / span
    absorbed["gru.bias_ih"] = params["gru.bias_ih"] - column * low / span
    for lifetime in (10.0, 37.0, 1000.0):
        ours = net(params, rewards, progress=0.3, lifetime=lifetime, **inputs)
        theirs = raw(absorbed, rewards, progress=0.3, lifetime=lifetime, **inputs)
        assert torch.allclose(ours[0], theirs[0], rtol=1e-10, atol=1e-12)
    assert torch.equal(net.init(4, DT)["gru.weight_ih"], raw.init(4, DT)["gru.weight_ih"])  # same start
    with pytest.raises(ValueError, match="needs lifetime_conditioning"):
        LPGNetwork(lifetime_range=(10, 250))
    with pytest.raises(ValueError, match="1 <= lo < hi"):
        LPGNetwork(lifetime_conditioning=True, lifetime_range=(250, 10))


# ------------------------------------------------------------------------------------------------
# The loss.


class Reinforce:
    """A hand-written 'LPG': pi_hat = -G_t (the discounted return to the episode's end), y_hat uniform."""

    target_width = M

    def check(self, params):
        pass

    def __call__(self, params, rewards, terminated, ended, gamma, pi, y, next_y, progress=0.0, lifetime=1.0):
        returns = torch.zeros_like(rewards)
        running = torch.zeros_like(rewards[0])
        for t in reversed(range(rewards.shape[0])):
            running = rewards[t] + gamma * running * (1.0 - ended[t])
            returns[t] = running
        return -returns, torch.full((*rewards.shape, M), 1.0 / M, dtype=rewards.dtype)


def test_lpg_with_the_reinforce_rule_is_the_policy_gradient():
    """At the rule it generalises, LPG's update is REINFORCE's: d/dtheta -E[log pi(a|s) G_t]."""
    params = {k: v.requires_grad_(True) for k, v in make_params(0).items()}
    rollout = ROLLOUTS[0]
    objective = LPG(policy_value, network=Reinforce(), params={}, target_cost=0.0)
    loss = objective(params, rollout, {"gamma": 0.9})
    grad = torch.autograd.grad(loss.total, params["logits"])[0]
    # Reference loop: returns per env, cut at episode ends (terminated or truncated).
    logp = Categorical(logits=rollout.obs @ params["logits"]).log_prob(rollout.actions)
    returns = torch.zeros(T, B, dtype=DT)
    for b in range(B):
        g = 0.0
        for t in reversed(range(T)):
            if rollout.terminated[t, b] or rollout.truncated[t, b]:
                g = 0.0
            g = float(rollout.rewards[t, b]) + 0.9 * g
            returns[t, b] = g
    expected = torch.autograd.grad(-(logp * returns).mean(), params["logits"])[0]
    assert torch.allclose(grad, expected, atol=1e-12)
    assert loss.metrics["target_kl"] >= 0


def test_the_prediction_term_is_the_kl_to_lpgs_target():
    params = {k: v.requires_grad_(True) for k, v in make_params(1).items()}
    objective = LPG(policy_value, network=SMALL, params=lpg_tree(0), target_cost=0.7)
    out, _, _ = objective.outputs(params, ROLLOUTS[1], {"gamma": 0.9})
    y = torch.softmax(ROLLOUTS[1].obs @ params["y"], -1)
    expected = (y * (torch.log(y) - torch.log(out.y_hat + 1e-8))).sum(-1)
    assert torch.allclose(kl_to_target(out.y_logits, out.y_hat), expected, atol=1e-12)
    loss = objective(params, ROLLOUTS[1], {"gamma": 0.9})
    assert float(loss.total.detach()) == pytest.approx(float(((out.logp * out.pi_hat).mean() + 0.7 * expected.mean()).detach()),
                                                         rel=1e-12)
    # LPG's inputs are held fixed: the gradient in y comes from the KL's prediction only.
    grad_y = torch.autograd.grad(loss.total, params["y"])[0]
    reference = torch.autograd.grad(0.7 * kl_to_target(ROLLOUTS[1].obs @ params["y"], out.y_hat.detach()).mean(),
                                    params["y"])[0]
    assert torch.allclose(grad_y, reference, atol=1e-12)


def test_lpg_refuses_what_it_cannot_use():
    with pytest.raises(ValueError, match="extras=\\('prediction',\\)"):
        LPG(PolicyValue(forward, categorical), network=SMALL)
    with pytest.raises(ValueError, match="do not fit"):
        LPG(policy_value, network=SMALL, params=LPGNetwork(target_width=M).init(0))
    with pytest.raises(ValueError, match="reads no outer critic"):
        LPG(policy_value, network=SMALL, outer_critic=OuterCritic())
    with pytest.raises(ValueError, match="no parameters"):
        LPG(policy_value, network=SMALL)(make_params(0), ROLLOUTS[0], {"gamma": 0.9})


# ------------------------------------------------------------------------------------------------
# Meta-gradients through LPG updates against central finite differences.


OPTIMIZERS = {
    "sgd": lambda: sgd(0.5),
    "rmsprop": lambda: rmsprop(0.05, decay=0.9, eps=1e-4, eps_root=1e-12),
    "adam": lambda: adam(0.05, eps=1e-4, eps_root=1e-12),
}
critic_policy_value = PolicyValue(lambda p, o, c: {**forward(p, o, c), "outer_value": o @ p["outer"]}, categorical,
                                  value="value", outer_value="outer_value", extras=("prediction",))


def make_critic_params(seed=0):
    params = make_params(seed)
    params["outer"] = torch.randn(S, generator=torch.Generator().manual_seed(50 + seed), dtype=DT)
    return params


def make_meta():
    return MetaParams({"gamma": 0.9}, trees={"lpg": lpg_tree(0)}, dtype=DT)


def finite_difference_check(make_estimator, optimizer, directions=3, h=1e-5, rtol=2e-5):
    """The LPG meta-gradient (the tree and gamma) against central differences, through K LPG updates."""
    holder = {}
    estimator = make_estimator(lambda: holder["meta"].hparams())

    def run(meta):
        params = make_critic_params(0)
        rollouts = iter(ROLLOUTS)
        return estimator.estimate(meta, params, optimizer.init(params), lambda _: next(rollouts))

    result = directional_check(estimator, make_meta, run, directions, h, rtol, holder=holder)
    assert float(result.grads["lpg.gru.weight_ih"].abs().max()) > 1e-6  # the inner updates reach the GRU
    return result


def lpg_estimator(kind, k, optimizer, recompute=False, regularised=True):
    def make(hparams):
        lpg = LPG(critic_policy_value, network=SMALL, outer_critic=OuterCritic(0.99, 1.0, 0.5, head="outer"))

        def inner(params, opt_state, rollout, hp, mode):
            new, state, _ = gradient_step(lpg, optimizer, params, opt_state, rollout, hp, mode=mode)
            return new, state

        outer = OuterObjective(critic_policy_value.reading("outer_value"), gamma=0.99, lambda_=0.95, entropy_cost=0.05)
        if regularised:
            outer = LPGMetaObjective(outer, lpg, hparams, target_entropy_cost=0.01, pi_l2_cost=0.05, y_l2_cost=0.05)
        if kind == "one-step":
            return OneStep(inner, outer, recompute=recompute)
        if kind == "multi-step":
            return MultiStep(inner, outer, k, recompute=recompute)
        return Mixed(inner, outer, k, weights=[0.2, 0.3, 0.5][-k:] if k > 1 else "uniform", recompute=recompute)

    return make


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("kind", ["multi-step", "mixed"])
def test_lpg_meta_gradients_match_finite_differences(kind, k):
    finite_difference_check(lpg_estimator(kind, k, OPTIMIZERS["adam"]()), OPTIMIZERS["adam"]())


@pytest.mark.parametrize("opt_name", ["sgd", "rmsprop"])
def test_lpg_meta_gradients_match_finite_differences_with_other_optimizers(opt_name):
    finite_difference_check(lpg_estimator("multi-step", 3, OPTIMIZERS[opt_name]()), OPTIMIZERS[opt_name]())


def test_lpg_one_step_and_the_memory_saving_path():
    optimizer = OPTIMIZERS["rmsprop"]()
    finite_difference_check(lpg_estimator("one-step", 1, optimizer), optimizer)
    for kind in ("multi-step", "mixed"):
        full = finite_difference_check(lpg_estimator(kind, 3, optimizer), optimizer, directions=1)
        recomputed = finite_difference_check(lpg_estimator(kind, 3, optimizer, recompute=True), optimizer,
                                             directions=1)
        for name in full.grads:
            assert torch.allclose(full.grads[name], recomputed.grads[name], rtol=1e-9, atol=1e-13), name


def test_the_regularisers_reach_lpg_directly():
    """Without agent updates in between, the meta-loss's L2 terms still move LPG: their direct path counts."""
    optimizer = OPTIMIZERS["adam"]()
    plain = finite_difference_check(lpg_estimator("multi-step", 2, optimizer, regularised=False), optimizer,
                                    directions=1)
    regularised = finite_difference_check(lpg_estimator("multi-step", 2, optimizer), optimizer, directions=1)
    difference = regularised.vector() - plain.vector()
    assert float(difference.abs().max()) > 1e-4


# ------------------------------------------------------------------------------------------------
# A population of LPG agents (one shared LPG) learns what the same agents learn one by one.


def join(parts):
    """One population rollout from the agents' own rollouts (agent ``p``'s sub-envs are columns ``p * B ...``)."""
    width = len(parts) * B
    final_index = [r.final_index // B * width + p * B + r.final_index % B for p, r in enumerate(parts)]
    return Rollout(*(torch.cat([getattr(r, n) for r in parts], dim=1) for n in
                     ("obs", "actions", "rewards", "terminated", "truncated", "behaviour_logp")),
                   last_obs=torch.cat([r.last_obs for r in parts]), final_obs=torch.cat([r.final_obs for r in parts]),
                   final_index=torch.cat(final_index))


def test_a_population_of_lpg_agents_equals_separate_agents():
    agents = 4
    rollouts = [[make_rollout(10 * k + p) for p in range(agents)] for k in range(3)]
    optimizer = adam(0.05, max_grad_norm=0.3)
    hparams = {"gamma": 0.9, "lpg": lpg_tree(0)}
    separate = [{k: v.requires_grad_(True) for k, v in make_params(p).items()} for p in range(agents)]
    states = [optimizer.init(p) for p in separate]
    batched = {k: torch.stack([p[k].detach() for p in separate]).requires_grad_(True) for k in separate[0]}
    population = optimizer.for_population()
    batched_state = population.init(batched)
    for k in range(3):
        for p in range(agents):
            separate[p], states[p], _ = update(LPG(policy_value, network=SMALL), optimizer, separate[p], states[p],
                                               rollouts[k][p], hparams)
        batched, batched_state, _ = update(LPG(policy_value.for_population(agents, B), network=SMALL), population,
                                           batched, batched_state, join(rollouts[k]), hparams,
                                           mode=UpdateMode())
    for name, value in batched.items():
        expected = torch.stack([p[name].detach() for p in separate])
        assert torch.allclose(value.detach(), expected, rtol=0, atol=1e-10), name


def test_grouped_lpgs_equal_each_lpg_on_its_own_agents():
    """G LPGs (e.g. evolution-strategies candidates) on one population: block g of the agents learns
    with LPG g exactly as those agents would alone with it."""
    agents, groups = 4, 2
    trees = [lpg_tree(0), lpg_tree(1)]
    rollouts = [[make_rollout(10 * k + p) for p in range(agents)] for k in range(2)]
    optimizer = sgd(0.5, max_grad_norm=0.3)
    separate = [{k: v.requires_grad_(True) for k, v in make_params(p).items()} for p in range(agents)]
    states = [optimizer.init(p) for p in separate]
    batched = {k: torch.stack([p[k].detach() for p in separate]).requires_grad_(True) for k in separate[0]}
    population = optimizer.for_population()
    batched_state = population.init(batched)
    grouped = {k: torch.stack([t[k] for t in trees]) for k in trees[0]}
    for k in range(2):
        for p in range(agents):
            lpg = LPG(policy_value, network=SMALL, params=trees[p // (agents // groups)])
            separate[p], states[p], _ = update(lpg, optimizer, separate[p], states[p], rollouts[k][p], {"gamma": 0.9})
        lpg = LPG(policy_value.for_population(agents, B), network=SMALL, params=grouped, grouped=True)
        batched, batched_state, _ = update(lpg, population, batched, batched_state, join(rollouts[k]), {"gamma": 0.9},
                                           mode=UpdateMode())
    for name, value in batched.items():
        expected = torch.stack([p[name].detach() for p in separate])
        assert torch.allclose(value.detach(), expected, rtol=0, atol=1e-10), name
    fresh = {k: v.requires_grad_(True) for k, v in make_params(2).items()}
    by_tree = [update(LPG(policy_value, network=SMALL, params=t), optimizer, fresh, optimizer.init(fresh),
                      rollouts[0][2], {"gamma": 0.9})[0]["logits"] for t in trees]
    assert not torch.allclose(*by_tree)  # the two LPGs update differently: a wrong grouping would show
    zeros, y = torch.zeros(5, 3, dtype=DT), torch.full((5, 3, SMALL.target_width), 1 / SMALL.target_width, dtype=DT)
    with pytest.raises(ValueError, match="divisible"):
        SMALL(grouped, zeros, zeros, zeros, 0.9, zeros + 0.5, y, y)
    with pytest.raises(ValueError, match="common leading axis"):
        SMALL.check({**grouped, "pi_head.bias": grouped["pi_head.bias"][:1]}, grouped=True)
