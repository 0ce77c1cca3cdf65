"""Meta-gradient estimators: exact against central finite differences, float64, fixed rollouts.

A tabular actor-critic (one-hot states; logits and values are parameter tables) keeps everything
smooth and cheap. Rollouts contain terminations and truncations, and gamma and lambda enter the
inner updates through the lambda-returns; a parameter tree (``MetaParams(trees=...)``) enters through
a learned transform of the policy-gradient advantage.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical

from rlmeta.catalog import CONDITIONING
from rlmeta.learner import UpdateMode, gradient_step, update
from rlmeta.hparams import KNOWN, MetaParams, from_raw, to_raw
from rlmeta.metagrad import Bootstrapped, Mixed, MultiStep, OneStep, OuterObjective, mixing_weights
from rlmeta.objectives import A2C, PLAIN, PPO, Loss, Objective, OuterCritic, VTraceActorCritic
from rlmeta.optim import adam, rmsprop, sgd
from rlmeta.returns import lambda_returns
from rlmeta.rollout import PolicyValue, Rollout

DT = torch.float64
S, A, T, B = 5, 3, 4, 3


def forward(params, obs, conditioning):
    return {"logits": obs @ params["logits"], "value": obs @ params["values"]}


def categorical(outputs):
    return Categorical(logits=outputs["logits"], validate_args=False)


# Reads no hparams (shares_forward, the default): losses of the same params on the same rollout share its forward.
policy_value = PolicyValue(forward, categorical)


def make_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"logits": 0.5 * torch.randn(S, A, generator=g, dtype=DT),
            "values": torch.randn(S, generator=g, dtype=DT)}


def make_rollout(seed):
    g = torch.Generator().manual_seed(100 + seed)
    states = torch.randint(0, S, (T, B), generator=g)
    obs = torch.nn.functional.one_hot(states, S).to(DT)
    terminated = torch.zeros(T, B, dtype=DT)
    truncated = torch.zeros(T, B, dtype=DT)
    terminated[1, 0] = 1.0
    truncated[2, 1] = 1.0
    final_state = torch.randint(0, S, (1,), generator=g)
    return Rollout(
        obs=obs,
        actions=torch.randint(0, A, (T, B), generator=g),
        rewards=torch.randn(T, B, generator=g, dtype=DT),
        terminated=terminated,
        truncated=truncated,
        behaviour_logp=torch.full((T, B), -math.log(A), dtype=DT),
        last_obs=torch.nn.functional.one_hot(torch.randint(0, S, (B,), generator=g), S).to(DT),
        final_obs=torch.nn.functional.one_hot(final_state, S).to(DT),
        final_index=torch.tensor([2 * B + 1]),
    )


ROLLOUTS = [make_rollout(i) for i in range(12)]

OPTIMIZERS = {
    "sgd": lambda: sgd(0.3),
    "rmsprop": lambda: rmsprop(0.05, decay=0.9, eps=1e-4, eps_root=1e-12),
    "adam": lambda: adam(0.05, eps=1e-4, eps_root=1e-12),
}


def make_inner(optimizer, objective=None):
    objective = objective or A2C(policy_value)

    def inner_update(params, opt_state, rollout, hparams, mode):
        new, state, _ = gradient_step(objective, optimizer, params, opt_state, rollout, hparams, mode=mode)
        return new, state

    return inner_update


def fixed_collect():
    it = iter(ROLLOUTS)
    return lambda params: next(it)


def make_meta(gamma=0.9, lam=0.8, entropy=0.05):
    return MetaParams({"gamma": gamma, "lambda": lam, "entropy_cost": entropy},
                      fixed={"value_cost": 0.5}, dtype=DT)


def estimate(estimator, meta, optimizer, params_factory=make_params):
    params = params_factory()
    return estimator.estimate(meta, params, optimizer.init(params), fixed_collect())


class Linearized:
    """An outer (or matching) loss that records its gradient in the parameters at the base point.

    Meta-gradients differentiate a semi-gradient: the outer loss holds some terms fixed
    (bootstrap targets, baselines, the KL's reference policy, BMG's target), so its value is not
    the function whose derivative they are. What they are is the chain rule
    ``sum_k w_k g_k . d theta_k / d eta`` with ``g_k`` the outer gradient at ``theta_k(eta_0)``.
    After recording the ``g_k``, this loss returns ``g_k . theta_k``: a plain function of eta
    whose central differences must equal the estimator's meta-gradient.
    """

    def __init__(self, loss):
        self.loss, self.grads, self.recording, self.calls = loss, [], True, 0

    def __call__(self, params, *rest):
        keys = list(params)
        if self.recording:
            value = self.loss(params, *rest)
            # allow_unused: a loss that reads some parameters not at all (the outer critic's reads
            # the outer values only) has a zero gradient in them
            grads = torch.autograd.grad(value, [params[k] for k in keys], retain_graph=True, allow_unused=True)
            self.grads.append([torch.zeros_like(params[k]) if g is None else g.detach() for g, k in zip(grads, keys)])
            return value
        grads = self.grads[self.calls]
        self.calls += 1
        return sum((g * params[k]).sum() for g, k in zip(grads, keys))


def linearize(estimator):
    """Wrap the estimator's outer loss (and BMG's matching loss) in :class:`Linearized`."""
    wrapped = [Linearized(estimator.outer_loss)]
    estimator.outer_loss = wrapped[0]
    if isinstance(estimator, Bootstrapped):
        wrapped.append(Linearized(estimator.match))
        estimator.match = wrapped[1]
    return wrapped


def check_against_finite_differences(make_estimator, optimizer, h=1e-5, rtol=1e-4, meta_factory=make_meta,
                                     params_factory=make_params):
    """The estimator's meta-gradient vs central differences of its linearized meta-loss."""
    estimator = make_estimator()
    wrapped = linearize(estimator)
    result = estimate(estimator, meta_factory(), optimizer, params_factory)
    for w in wrapped:
        w.recording = False
    for name in result.grads:
        for i in range(result.grads[name].numel()):  # every entry of every raw tensor (a tree's too)
            values = []
            for sign in (1, -1):
                meta = meta_factory()
                with torch.no_grad():
                    meta.raw[name].view(-1)[i] += sign * h
                for w in wrapped:
                    w.calls = 0
                values.append(estimate(estimator, meta, optimizer, params_factory).meta_loss)
            fd = (values[0] - values[1]) / (2 * h)
            got = float(result.grads[name].reshape(-1)[i])
            assert abs(got - fd) <= rtol * max(abs(got), abs(fd)), (type(estimator).__name__, name, i, got, fd)
    assert float(result.vector().abs().max()) > 1e-6  # not vacuous
    return result


def estimators(inner, outer, k):
    return {
        "one-step": (lambda: OneStep(inner, outer)) if k == 1 else None,
        "multi-step": lambda: MultiStep(inner, outer, k),
        "mixed-uniform": lambda: Mixed(inner, outer, k),
        "mixed-geometric": lambda: Mixed(inner, outer, k, weights="geometric", decay=0.6),
        "bootstrapped": lambda: Bootstrapped(inner, policy_value, num_updates=k, target_updates=2, value_cost=0.5),
    }


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_every_estimator_matches_finite_differences(opt_name, k):
    optimizer = OPTIMIZERS[opt_name]()
    inner = make_inner(optimizer)
    outer = OuterObjective(policy_value, gamma=0.99, lambda_=1.0, value_cost=0.1, entropy_cost=0.01, kl_cost=0.2)
    for name, make in estimators(inner, outer, k).items():
        if make is not None:
            check_against_finite_differences(make, optimizer)


# A conditioned agent (Xu et al. 2018): an embedding of the learned values enters the logits and,
# multiplied with a state feature, the values. The outer loss feeds the reference values instead.
REFERENCE = {"gamma": 0.99, "lambda": 1.0, "entropy_cost": 0.02}


def conditioned_forward(params, obs, conditioning):
    embedding = torch.tanh(conditioning @ params["embed"])  # [E]
    logits = obs @ params["logits"] + embedding @ params["embed_logits"]
    values = obs @ params["values"] + (obs @ params["value_scale"]) * (embedding @ params["embed_value"])
    return {"logits": logits, "value": values}


conditioned_policy_value = PolicyValue(conditioned_forward, categorical)  # reads the conditioning input only


def make_conditioned_params(seed=0):
    g = torch.Generator().manual_seed(seed + 50)
    params = make_params(seed)
    params.update(embed=torch.randn(3, 2, generator=g, dtype=DT), embed_logits=torch.randn(2, A, generator=g, dtype=DT),
                  value_scale=0.5 * torch.randn(S, generator=g, dtype=DT), embed_value=torch.randn(2, generator=g, dtype=DT))
    return params


def make_conditioned_meta():
    return MetaParams({"gamma": 0.9, "lambda": 0.8, "entropy_cost": 0.05}, fixed={"value_cost": 0.5}, dtype=DT,
                      condition=True)


def test_conditioning_carries_the_learned_values_and_the_outer_loss_the_reference_ones():
    meta = make_conditioned_meta()
    vector = meta.hparams()[CONDITIONING]
    assert torch.allclose(vector, torch.tensor([0.9, 0.8, 0.05], dtype=DT)) and vector.requires_grad
    assert CONDITIONING not in make_meta().hparams()
    reference = meta.reference_vector({"gamma": 0.99, "lambda": 1.0})  # entropy_cost: its current value
    assert torch.allclose(reference, torch.tensor([0.99, 1.0, 0.05], dtype=DT)) and not reference.requires_grad
    seen = []

    def recording(params, obs, conditioning):
        seen.append(conditioning)
        return conditioned_forward(params, obs, conditioning)

    OuterObjective(PolicyValue(recording, categorical), kl_cost=0.1, conditioning=lambda: reference)(
        make_conditioned_params(), ROLLOUTS[0], make_conditioned_params())
    assert len(seen) == 3 and all(torch.equal(v, reference) for v in seen)  # loss, KL before and after
    with pytest.raises(ValueError, match="condition=True needs at least one learned"):
        MetaParams({}, condition=True)


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("k", [1, 3])
def test_meta_gradients_of_a_conditioned_agent_match_finite_differences(opt_name, k):
    """The meta-gradient flows through the conditioning input of every inner update as well."""
    optimizer = OPTIMIZERS[opt_name]()
    objective = A2C(conditioned_policy_value)

    def inner(params, opt_state, rollout, hparams, mode):
        new, state, _ = gradient_step(objective, optimizer, params, opt_state, rollout, hparams, mode=mode)
        return new, state

    reference = torch.tensor([REFERENCE[n] for n in ("gamma", "lambda", "entropy_cost")], dtype=DT)
    outer = OuterObjective(conditioned_policy_value, gamma=0.99, lambda_=1.0, value_cost=0.1, kl_cost=0.2,
                           conditioning=lambda: reference)
    makes = {"multi-step": lambda: MultiStep(inner, outer, k), "mixed": lambda: Mixed(inner, outer, k),
             "recompute": lambda: MultiStep(inner, outer, k, recompute=True),
             "bootstrapped": lambda: Bootstrapped(inner, conditioned_policy_value, num_updates=k, target_updates=2,
                                                 value_cost=0.5)}
    for make in makes.values():
        check_against_finite_differences(make, optimizer, meta_factory=make_conditioned_meta,
                                         params_factory=make_conditioned_params)
    # Not vacuous: cut the conditioning path (the network sees the values as constants) and it changes.
    cut = make_conditioned_meta()
    values_of = cut.hparams
    cut.hparams = lambda: {**values_of(), CONDITIONING: values_of()[CONDITIONING].detach()}
    without = estimate(MultiStep(inner, outer, k), cut, optimizer, make_conditioned_params).vector()
    full = estimate(MultiStep(inner, outer, k), make_conditioned_meta(), optimizer, make_conditioned_params).vector()
    assert not torch.allclose(without, full, rtol=1e-3, atol=0)


# The outer critic (Bonnet et al. 2022): a second value table, trained by the inner loss with the
# reference gamma and lambda, gives the outer loss its values instead of the critic.
OUTER_CRITIC = OuterCritic(gamma=0.97, lambda_=0.7, cost=0.5)


def two_critics_forward(params, obs, conditioning):
    return {**forward(params, obs, conditioning), "outer_values": obs @ params["outer_values"]}


two_critics_policy_value = PolicyValue(two_critics_forward, categorical, outer_value="outer_values")
outer_critic_policy_value = two_critics_policy_value.reading(value="outer_values")  # shares its forward


def make_two_critics_params(seed=0):
    params = make_params(seed)
    params["outer_values"] = torch.randn(S, generator=torch.Generator().manual_seed(seed + 70), dtype=DT)
    return params


def outer_critic_inner(objective, optimizer):
    def inner(params, opt_state, rollout, hparams, mode):
        new, state, _ = update(objective, optimizer, params, opt_state, rollout, hparams, mode=mode)
        return new, state

    return inner


# An outer critic that shares the critic's table (as the network's shares its torso): its loss may
# train only its own parameters ("outer_..."), restricted in the learner, and the derivatives
# through the updates must stay exact.
def shared_critics_forward(params, obs, conditioning):
    outer = obs @ (params["values"] * params["outer_scale"] + params["outer_values"])
    return {**forward(params, obs, conditioning), "outer_values": outer}


shared_critics_policy_value = PolicyValue(shared_critics_forward, categorical, outer_value="outer_values")
shared_outer_policy_value = shared_critics_policy_value.reading(value="outer_values")


def detached_critics_forward(params, obs, conditioning):
    """The shortcut that is not exact: the outer critic reads the shared table detached."""
    outer = obs @ (params["values"].detach() * params["outer_scale"] + params["outer_values"])
    return {**forward(params, obs, conditioning), "outer_values": outer}


detached_critics_policy_value = PolicyValue(detached_critics_forward, categorical, outer_value="outer_values")


def make_shared_critics_params(seed=0):
    params = make_two_critics_params(seed)
    params["outer_scale"] = 1.0 + 0.3 * torch.randn(S, generator=torch.Generator().manual_seed(seed + 90), dtype=DT)
    return params


HEAD_ONLY = OuterCritic(gamma=0.97, lambda_=0.7, cost=0.5, head="outer_")


@pytest.mark.parametrize("setup", ["own table", "shared table, head only"])
@pytest.mark.parametrize("algo", ["a2c", "vtrace", "ppo"])
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("k", [1, 3])
def test_meta_gradients_with_an_outer_critic_match_finite_differences(setup, algo, opt_name, k):
    """Exact through updates that train both critics, with the outer loss reading the outer one; also
    when the outer critic shares the critic's table and its loss may train its own parameters only."""
    if setup == "own table":
        both, outer_only, critic, params_factory = (two_critics_policy_value, outer_critic_policy_value,
                                                    OUTER_CRITIC, make_two_critics_params)
    else:
        both, outer_only, critic, params_factory = (shared_critics_policy_value, shared_outer_policy_value,
                                                    HEAD_ONLY, make_shared_critics_params)
    optimizer = OPTIMIZERS[opt_name]()
    objective = {
        "a2c": lambda: A2C(both, outer_critic=critic),
        "vtrace": lambda: VTraceActorCritic(both, rho_bar=1.2, outer_critic=critic),
        # one minibatch: the epochs' random orders do not change the (mean) loss
        "ppo": lambda: PPO(both, epochs=2, minibatches=1, normalize_advantages=False, outer_critic=critic),
    }[algo]()
    inner = outer_critic_inner(objective, optimizer)
    outer = OuterObjective(outer_only, gamma=critic.gamma, lambda_=critic.lambda_, value_cost=0.1, kl_cost=0.2,
                           vtrace=algo == "vtrace")
    makes = {"multi-step": lambda: MultiStep(inner, outer, k), "mixed": lambda: Mixed(inner, outer, k),
             "recompute": lambda: MultiStep(inner, outer, k, recompute=True)}
    for make in makes.values():
        check_against_finite_differences(make, optimizer, params_factory=params_factory)


def test_the_outer_loss_reads_the_outer_critic_and_the_inner_updates_train_it():
    optimizer = OPTIMIZERS["adam"]()
    inner = outer_critic_inner(A2C(two_critics_policy_value, outer_critic=OUTER_CRITIC), optimizer)

    def meta_gradient(values_of_outer_loss):
        outer = OuterObjective(values_of_outer_loss, gamma=OUTER_CRITIC.gamma, lambda_=OUTER_CRITIC.lambda_)
        return estimate(MultiStep(inner, outer, 2), make_meta(), optimizer, make_two_critics_params)

    with_outer, with_critic = meta_gradient(outer_critic_policy_value), meta_gradient(policy_value)
    assert not torch.allclose(with_outer.vector(), with_critic.vector(), rtol=1e-3, atol=0)
    before = make_two_critics_params()
    assert not torch.allclose(with_outer.params["outer_values"], before["outer_values"])  # trained
    # Without the outer critic's term the outer table gets no gradient and stays where it was.
    plain = outer_critic_inner(A2C(two_critics_policy_value), optimizer)
    after = estimate(MultiStep(plain, OuterObjective(outer_critic_policy_value), 2), make_meta(), optimizer,
                     make_two_critics_params)
    assert torch.equal(after.params["outer_values"], before["outer_values"])


def test_the_restricted_outer_critic_trains_its_head_only_and_detaching_instead_is_not_exact():
    optimizer = OPTIMIZERS["sgd"]()
    params = {k: v.requires_grad_(True) for k, v in make_shared_critics_params().items()}
    rollout, hparams = ROLLOUTS[0], make_meta().hparams()
    restricted = A2C(shared_critics_policy_value, outer_critic=HEAD_ONLY)
    plain = A2C(policy_value)
    new, _, metrics = gradient_step(restricted, optimizer, params, {}, rollout, hparams)
    alone, _, _ = gradient_step(plain, optimizer, params, {}, rollout, hparams)
    assert metrics["outer_value_loss"] > 0
    for key in ("logits", "values"):  # what the critic and policy learn is untouched by the outer critic
        assert torch.allclose(new[key], alone[key], rtol=1e-12, atol=0)
    for key in ("outer_scale", "outer_values"):
        assert not torch.allclose(new[key], params[key])
    with pytest.raises(ValueError, match="restricts a loss term to parameters named 'outer_value_head.'"):
        gradient_step(A2C(shared_critics_policy_value, outer_critic=OuterCritic(head="outer_value_head.")), optimizer,
                      params, {}, rollout, hparams)
    # The same head-only training by detaching the shared table: the K=2 meta-gradient misses the
    # table's part in the outer critic's targets and gradients (which matters once the outer loss has
    # a value term), and no longer matches finite differences.
    inner = outer_critic_inner(A2C(detached_critics_policy_value, outer_critic=HEAD_ONLY), optimizer)
    outer = OuterObjective(shared_outer_policy_value, gamma=HEAD_ONLY.gamma, lambda_=HEAD_ONLY.lambda_,
                           value_cost=0.5)
    with pytest.raises(AssertionError):
        check_against_finite_differences(lambda: MultiStep(inner, outer, 2), optimizer,
                                         params_factory=make_shared_critics_params)


class CountingForward:
    """The tabular forward, counting the network's evaluations."""

    def __init__(self):
        self.calls = 0

    def __call__(self, params, obs, conditioning):
        self.calls += 1
        return forward(params, obs, conditioning)


def counting_policy_value(shares):
    """An adapter of a :class:`CountingForward` (``pv.forward.calls``); ``shares`` sets ``shares_forward``."""
    return PolicyValue(CountingForward(), categorical, shares_forward=shares)


@pytest.mark.parametrize("tangent", [False, True])
@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("k", [1, 3])
def test_losses_of_the_same_parameters_on_the_same_rollout_share_one_forward_pass(opt_name, k, tangent):
    """Within a mixed unroll L_k and the (k+1)-th update share rollout k's forward; from one meta-update
    to the next, the first update reuses the last L_K's. The meta-gradients stay the same. The
    tangent path (rlmeta.tangent) adds one forward pass per estimate: the first update's tangent pass."""
    results = {}
    for shares in (False, True):
        optimizer = OPTIMIZERS[opt_name]()
        counting = counting_policy_value(shares)
        objective = A2C(counting)

        def inner(params, opt_state, rollout, hparams, mode):
            new, state, _ = gradient_step(objective, optimizer, params, opt_state, rollout, hparams, mode=mode)
            return new, state

        estimator = Mixed(inner, OuterObjective(counting, value_cost=0.1, kl_cost=0.2), k, tangent=tangent)
        collect = fixed_collect()
        first = estimator.estimate(make_meta(), make_params(), optimizer.init(make_params()), collect)
        calls_first = counting.forward.calls
        second = estimator.estimate(make_meta(), first.params, first.opt_state, collect, first.next_rollout)
        results[shares] = (first, second, calls_first, counting.forward.calls - calls_first)
    (a1, a2, calls_a1, calls_a2), (b1, b2, calls_b1, calls_b2) = results[False], results[True]
    for plain, shared in ((a1, b1), (a2, b2)):
        assert torch.allclose(plain.vector(), shared.vector(), rtol=1e-12, atol=0)
        assert plain.meta_loss == pytest.approx(shared.meta_loss, rel=1e-12)
        for key in plain.params:
            assert torch.allclose(plain.params[key], shared.params[key], rtol=1e-12, atol=0)
    # K updates, and K outer losses each with its own forward and two for its KL (before and after the update)
    extra = int(tangent)
    assert (calls_a1, calls_a2) == (4 * k + extra, 4 * k + extra)
    # Shared: the KL's updated policy, L_1..L_{K-1} with the updates; then L_K with the next first update.
    assert (calls_b1, calls_b2) == (2 * k + 1 + extra, 2 * k + extra)


@pytest.mark.parametrize("tangent", [False, True])
def test_a_carried_forward_is_used_only_for_its_own_parameters_and_rollout(tangent):
    optimizer = OPTIMIZERS["sgd"]()
    counting = counting_policy_value(True)
    objective = A2C(counting)

    def inner(params, opt_state, rollout, hparams, mode):
        return gradient_step(objective, optimizer, params, opt_state, rollout, hparams, mode=mode)[:2]

    estimator = OneStep(inner, OuterObjective(counting), tangent=tangent)
    collect = fixed_collect()
    first = estimator.estimate(make_meta(), make_params(), {}, collect)
    # Other parameters (a copy) on the same rollout: no reuse, and the same meta-gradient as a fresh start.
    copy = {k: v.detach().clone().requires_grad_(True) for k, v in first.params.items()}
    before = counting.forward.calls
    outer_rollout = lambda params: ROLLOUTS[5]  # noqa: E731
    again = estimator.estimate(make_meta(), copy, {}, outer_rollout, first.next_rollout)
    assert counting.forward.calls - before == 2 + int(tangent)
    fresh = OneStep(inner, OuterObjective(counting), tangent=tangent).estimate(make_meta(), copy, {}, outer_rollout,
                                                              first.next_rollout)
    assert torch.allclose(again.vector(), fresh.vector(), rtol=1e-12, atol=0)


def test_meta_gradient_of_a_loss_without_stop_gradients_is_its_derivative():
    """With an outer loss that is a plain function (no fixed terms), no linearization is needed."""

    def plain_outer(params, rollout, previous, context):
        dist, values = policy_value(params, rollout.obs.reshape(-1, S), {})
        actions, rewards = rollout.actions.reshape(-1), rollout.rewards.reshape(-1)
        return -(dist.log_prob(actions) * rewards).mean() + 0.5 * ((values - rewards) ** 2).mean()

    optimizer = OPTIMIZERS["adam"]()
    inner = make_inner(optimizer)
    for make in (lambda: MultiStep(inner, plain_outer, 3), lambda: Mixed(inner, plain_outer, 3)):
        result = estimate(make(), make_meta(), optimizer)
        for name in result.grads:
            values = []
            for sign in (1, -1):
                meta = make_meta()
                with torch.no_grad():
                    meta.raw[name] += sign * 1e-5
                values.append(estimate(make(), meta, optimizer).meta_loss)
            fd = (values[0] - values[1]) / 2e-5
            assert float(result.grads[name]) == pytest.approx(fd, rel=1e-5, abs=1e-12)


def test_one_step_equals_multi_step_with_k_1():
    optimizer = OPTIMIZERS["sgd"]()
    inner, outer = make_inner(optimizer), OuterObjective(policy_value)
    a = estimate(OneStep(inner, outer), make_meta(), optimizer)
    b = estimate(MultiStep(inner, outer, 1), make_meta(), optimizer)
    assert torch.allclose(a.vector(), b.vector(), rtol=0, atol=1e-14)


@pytest.mark.parametrize("weights", ["uniform", [0.1, 0.0, 0.3, 0.6]])
def test_mixed_is_the_weighted_sum_of_k_step_estimates_from_separate_unrolls(weights):
    optimizer = OPTIMIZERS["rmsprop"]()
    inner, outer = make_inner(optimizer), OuterObjective(policy_value, kl_cost=0.1)
    K = 4
    w = mixing_weights(K, weights)
    mixed = estimate(Mixed(inner, outer, K, weights=weights), make_meta(), optimizer)
    # k-step estimates with the same rollouts: k updates on rollouts 0..k-1, outer on rollout k.
    combined = sum(wk * estimate(MultiStep(inner, outer, k), make_meta(), optimizer).vector()
                   for k, wk in zip(range(1, K + 1), w))
    assert torch.allclose(mixed.vector(), combined, rtol=1e-10, atol=1e-13)
    assert mixed.rollouts_used == K + 1  # one unroll, not K of them


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("k, truncation", [(2, 1), (3, 1), (4, 2), (4, 3)])
def test_truncated_multi_step_is_multi_step_over_the_last_updates(opt_name, k, truncation):
    """Truncation to T == the (finite-difference-checked) T-step estimate after K - T plain updates."""
    optimizer = OPTIMIZERS[opt_name]()
    inner, outer = make_inner(optimizer), OuterObjective(policy_value, kl_cost=0.2)
    full = estimate(MultiStep(inner, outer, k), make_meta(), optimizer).vector()
    truncated = estimate(MultiStep(inner, outer, k, truncation=truncation), make_meta(), optimizer).vector()
    assert not torch.allclose(full, truncated)
    params = {k: v.requires_grad_(True) for k, v in make_params().items()}
    state = optimizer.init(params)
    collect = fixed_collect()
    hp = {k: v.detach() if torch.is_tensor(v) else v for k, v in make_meta().hparams().items()}
    for _ in range(k - truncation):
        params, state = inner(params, state, collect(params), hp, UpdateMode())
    last = MultiStep(inner, outer, truncation).estimate(make_meta(), params, state, collect).vector()
    assert torch.allclose(truncated, last, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("k", [1, 3])
def test_a_reused_first_rollout_replaces_collecting_it(k):
    optimizer = OPTIMIZERS["rmsprop"]()
    inner, outer = make_inner(optimizer), OuterObjective(policy_value)
    collected = estimate(MultiStep(inner, outer, k), make_meta(), optimizer)
    params = make_params()
    rest = iter(ROLLOUTS[1:])
    reused = MultiStep(inner, outer, k).estimate(make_meta(), params, optimizer.init(params), lambda p: next(rest),
                                                 first_rollout=ROLLOUTS[0])
    assert torch.equal(collected.vector(), reused.vector())
    assert (collected.rollouts_used, reused.rollouts_used) == (k + 1, k)
    assert reused.next_rollout is ROLLOUTS[k]  # the outer loss's fresh rollout, for the next estimate


def all_estimators(inner, outer, k, **options):
    """Every estimator with K = k (truncated multi-step too), each built with ``options``."""
    out = {
        "multi-step": lambda: MultiStep(inner, outer, k, **options),
        "mixed": lambda: Mixed(inner, outer, k, weights=[0.2, 0.0, 0.5, 0.3][:k] if k > 1 else "uniform", **options),
        "bootstrapped": lambda: Bootstrapped(inner, policy_value, num_updates=k, target_updates=2, value_cost=0.5,
                                             **options),
    }
    if k == 1:
        out["one-step"] = lambda: OneStep(inner, outer, **options)
    if k > 2:
        out["truncated"] = lambda: MultiStep(inner, outer, k, truncation=2, **options)
    return out


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("k", [1, 2, 4])
def test_the_memory_saving_path_computes_the_same_meta_gradient(opt_name, k):
    """``recompute=True`` (per-update checkpointing) == the full unroll, for every estimator."""
    optimizer = OPTIMIZERS[opt_name]()
    inner = make_inner(optimizer)
    outer = OuterObjective(policy_value, gamma=0.99, lambda_=1.0, value_cost=0.1, entropy_cost=0.01, kl_cost=0.2)
    full = all_estimators(inner, outer, k)
    for name, make in all_estimators(inner, outer, k, recompute=True).items():
        a = estimate(full[name](), make_meta(), optimizer)
        b = estimate(make(), make_meta(), optimizer)
        assert float(a.vector().abs().max()) > 1e-6, name  # not vacuous
        assert torch.allclose(a.vector(), b.vector(), rtol=1e-10, atol=1e-14), (name, a.vector(), b.vector())
        assert a.meta_loss == pytest.approx(b.meta_loss, rel=1e-12)
        assert a.outer_losses == pytest.approx(b.outer_losses, rel=1e-12), name
        assert a.rollouts_used == b.rollouts_used and a.next_rollout is b.next_rollout
        for key in a.params:
            assert torch.allclose(a.params[key], b.params[key], rtol=0, atol=1e-14)
            assert b.params[key].is_leaf and b.params[key].requires_grad


def test_the_memory_saving_path_matches_finite_differences():
    optimizer = OPTIMIZERS["rmsprop"]()
    inner = make_inner(optimizer)
    outer = OuterObjective(policy_value, gamma=0.99, lambda_=1.0, value_cost=0.1, kl_cost=0.2)
    for name, make in all_estimators(inner, outer, 3, recompute=True).items():
        if name != "truncated":  # biased on purpose: the first update's dependence on eta is cut
            check_against_finite_differences(make, optimizer)


def test_the_memory_saving_path_replays_the_inner_updates_random_numbers():
    """PPO draws minibatch orders from a generator: the rebuilt updates must see the same ones."""
    from rlmeta.learner import update
    from rlmeta.objectives import PPO

    optimizer = OPTIMIZERS["adam"]()
    objective = PPO(policy_value, epochs=2, minibatches=3, normalize_advantages=False)

    def run(recompute):
        generator = torch.Generator().manual_seed(7)

        def inner(params, opt_state, rollout, hparams, mode):
            new, state, _ = update(objective, optimizer, params, opt_state, rollout, hparams, mode=mode,
                                   generator=generator)
            return new, state

        est = MultiStep(inner, OuterObjective(policy_value), 3, recompute=recompute, generator=generator)
        return estimate(est, make_meta(), optimizer), generator.get_state()

    (a, state_a), (b, state_b) = run(False), run(True)
    assert torch.allclose(a.vector(), b.vector(), rtol=1e-10, atol=1e-14)
    assert torch.equal(state_a, state_b)  # the generator ends where the full unroll leaves it


def test_recompute_must_be_a_bool():
    with pytest.raises(ValueError, match="recompute must be True or False"):
        OneStep(make_inner(sgd(0.1)), OuterObjective(policy_value), recompute="yes")


def test_estimates_leave_the_agent_after_k_updates_detached():
    optimizer = OPTIMIZERS["adam"]()
    result = estimate(MultiStep(make_inner(optimizer), OuterObjective(policy_value), 3), make_meta(), optimizer)
    assert all(p.is_leaf and p.requires_grad for p in result.params.values())
    assert result.opt_state["count"] == 3
    assert result.rollouts_used == 4 and len(result.outer_losses) == 1
    assert not any(torch.equal(result.params[k], v) for k, v in make_params().items())


def test_the_semi_gradient_form_detaches_the_targets_of_every_inner_update():
    """``exact=False``: the published semi-gradient form. It differs from the exact meta-gradient only
    where an update's targets depend on the meta-parameters (after the first update of an unroll)."""
    optimizer = OPTIMIZERS["adam"]()
    inner = make_inner(optimizer)
    outer = OuterObjective(policy_value, value_cost=0.1, kl_cost=0.2)
    exact1 = estimate(OneStep(inner, outer), make_meta(), optimizer).vector()
    semi1 = estimate(OneStep(inner, outer, exact=False), make_meta(), optimizer).vector()
    assert torch.allclose(exact1, semi1, rtol=1e-12, atol=0)  # the first update's targets are constants anyway
    exact3 = estimate(MultiStep(inner, outer, 3), make_meta(), optimizer).vector()
    semi3 = estimate(MultiStep(inner, outer, 3, exact=False), make_meta(), optimizer).vector()
    assert not torch.allclose(exact3, semi3, rtol=1e-3, atol=0)
    recomputed = estimate(MultiStep(inner, outer, 3, recompute=True, exact=False), make_meta(), optimizer).vector()
    assert torch.allclose(semi3, recomputed, rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="exact must be True or False"):
        MultiStep(inner, outer, 3, exact="no")


# --------------------------------------------------------------------------------------------
# A parameter tree as meta-parameters: a learned transform of the policy-gradient advantage.


class LearnedAdvantageA2C(Objective):
    """A2C whose policy-gradient advantage goes through a linear layer read from ``hparams["advantage"]``:
    ``weight [1, 2] @ [advantage, V(s)] + bias [1]`` (every leaf has its own effect on the update).
    The advantage and ``V(s)`` are targets, held fixed (or exact) like A2C's."""

    def __init__(self, policy_value):
        self.policy_value = policy_value

    def __call__(self, params, rollout, hparams, progress=0.0, context=PLAIN):
        ev, fixed = context.evaluate(self.policy_value, params, rollout, hparams)
        discounts = hparams["gamma"] * (1.0 - rollout.terminated)
        returns = lambda_returns(rollout.rewards, discounts, fixed.next_values, ev.continues, hparams["lambda"])
        layer = hparams["advantage"]
        features = torch.stack([returns - fixed.values, fixed.values], dim=-1)  # [T, B, 2]
        advantages = (features @ layer["weight"].T + layer["bias"])[..., 0]
        policy_loss = -(ev.logp * advantages).mean()
        value_loss = 0.5 * ((returns - ev.values) ** 2).mean()
        entropy = ev.entropy.mean()
        loss = policy_loss + hparams["value_cost"] * value_loss - hparams["entropy_cost"] * entropy
        return Loss(loss, {"policy_loss": float(policy_loss.detach()), "value_loss": float(value_loss.detach())})


def make_tree_meta():
    return MetaParams({"gamma": 0.9}, fixed={"lambda": 0.8, "value_cost": 0.5, "entropy_cost": 0.05},
                      trees={"advantage": {"weight": torch.tensor([[1.0, 0.3]]), "bias": torch.tensor([0.1])}},
                      dtype=DT)


def make_tree_inner(optimizer):
    return make_inner(optimizer, LearnedAdvantageA2C(policy_value))


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_meta_gradients_of_a_parameter_tree_match_finite_differences(opt_name):
    """Every raw entry (gamma and each element of the tree) of the one-step, K=3 multi-step and mixed
    meta-gradients, and of the memory-saving path, against central differences."""
    optimizer = OPTIMIZERS[opt_name]()
    inner = make_tree_inner(optimizer)
    outer = OuterObjective(policy_value, gamma=0.99, lambda_=1.0, value_cost=0.1, entropy_cost=0.01, kl_cost=0.2)
    makes = {
        "one-step": lambda: OneStep(inner, outer),
        "multi-step": lambda: MultiStep(inner, outer, 3),
        "mixed": lambda: Mixed(inner, outer, 3, weights=[0.2, 0.3, 0.5]),
        "recompute multi-step": lambda: MultiStep(inner, outer, 3, recompute=True),
        "recompute mixed": lambda: Mixed(inner, outer, 3, weights=[0.2, 0.3, 0.5], recompute=True),
        "bootstrapped": lambda: Bootstrapped(inner, policy_value, num_updates=3, target_updates=2, value_cost=0.5),
    }
    for name, make in makes.items():
        result = check_against_finite_differences(make, optimizer, meta_factory=make_tree_meta)
        assert list(result.grads) == ["gamma", "advantage.weight", "advantage.bias"], name
        assert result.grads["advantage.weight"].shape == (1, 2) and result.grads["advantage.bias"].shape == (1,)
        assert float(result.vector()[1:].abs().min()) > 1e-6, name  # every leaf of the tree matters


def test_the_recomputing_path_gives_a_trees_meta_gradient_too():
    optimizer = OPTIMIZERS["rmsprop"]()
    inner = make_tree_inner(optimizer)
    outer = OuterObjective(policy_value, value_cost=0.1, kl_cost=0.2)
    for make in (lambda **o: MultiStep(inner, outer, 3, **o), lambda **o: Mixed(inner, outer, 3, **o),
                 lambda **o: MultiStep(inner, outer, 3, truncation=2, **o)):
        full = estimate(make(), make_tree_meta(), optimizer)
        recomputed = estimate(make(recompute=True), make_tree_meta(), optimizer)
        assert torch.allclose(full.vector(), recomputed.vector(), rtol=1e-10, atol=1e-14)


def test_meta_gradient_vector_flattens_a_tree():
    meta = make_tree_meta()
    assert meta.names == ["gamma", "advantage.weight", "advantage.bias"] and meta.scalar_names == ["gamma"]
    hparams = meta.hparams()
    assert set(hparams) == {"gamma", "lambda", "value_cost", "entropy_cost", "advantage"}
    assert hparams["advantage"]["weight"] is meta.raw["advantage.weight"]
    assert hparams["advantage"]["bias"] is meta.raw["advantage.bias"]
    assert all(meta.raw[n].is_leaf and meta.raw[n].requires_grad and meta.raw[n].dtype == DT for n in meta.names)
    assert meta.vector().shape == (1,)  # the scalars only (a conditioning input never carries a tree)
    conditioned = MetaParams({"gamma": 0.9}, trees={"advantage": {"bias": torch.zeros(1)}}, condition=True)
    assert conditioned.hparams()[CONDITIONING].shape == (1,)
    optimizer = OPTIMIZERS["sgd"]()
    result = estimate(MultiStep(make_tree_inner(optimizer), OuterObjective(policy_value, value_cost=0.1), 2),
                      meta, optimizer)
    vector = result.vector()
    assert vector.shape == (4,) and not vector.requires_grad
    expected = torch.cat([result.grads["gamma"].reshape(1), result.grads["advantage.weight"].reshape(-1),
                          result.grads["advantage.bias"].reshape(-1)])
    assert torch.equal(vector, expected)
    assert result.norm() == pytest.approx(float(vector.norm()), rel=1e-12)


def test_a_tree_is_copied_into_its_own_leaves():
    weight = torch.tensor([[1.0, 0.3]], dtype=DT)
    meta = MetaParams({}, trees={"advantage": {"weight": weight}}, dtype=DT)
    with torch.no_grad():
        weight += 1.0
    assert torch.equal(meta.raw["advantage.weight"].detach(), torch.tensor([[1.0, 0.3]], dtype=DT))
    assert meta.tree("advantage") == {"weight": meta.raw["advantage.weight"]}


@pytest.mark.parametrize(
    "trees, message",
    [
        ({"adv.layer": {"weight": torch.zeros(1, 2)}}, "a parameter tree needs a name without '.'"),
        ({"gamma": {"weight": torch.zeros(1, 2)}}, "a parameter tree needs a name without '.'"),
        ({CONDITIONING: {"weight": torch.zeros(1, 2)}}, "a parameter tree needs a name without '.'"),
        ({"": {"weight": torch.zeros(1, 2)}}, "a parameter tree needs a name without '.'"),
        ({"advantage": {"weight": torch.tensor([[1, 2]])}}, "must map names to floating-point tensors"),
        ({"advantage": {"weight": torch.zeros(1, 2), "bias": torch.tensor([True])}},
         "must map names to floating-point tensors"),
        ({"advantage": {"weight": [1.0, 2.0]}}, "must map names to floating-point tensors"),
        ({"advantage": {}}, "must map names to floating-point tensors"),
    ],
)
def test_bad_parameter_trees_are_rejected(trees, message):
    with pytest.raises(ValueError, match=message):
        MetaParams({"gamma": 0.9}, trees=trees)


# --------------------------------------------------------------------------------------------
# Hyperparameters and bad input.


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_transforms_round_trip_inside_bounds(name):
    b = KNOWN[name]
    value = 0.37 if b.high == 1.0 else 2.5e-3
    raw = torch.tensor(to_raw(name, value), dtype=DT)
    assert float(from_raw(raw, b)) == pytest.approx(value, rel=1e-12)


def test_narrowed_bounds_are_respected():
    meta = MetaParams({"gamma": 0.95}, bounds={"gamma": (0.9, 1.0)}, dtype=DT)
    assert float(meta.values()["gamma"].detach()) == pytest.approx(0.95)
    with torch.no_grad():
        meta.raw["gamma"] -= 100.0
    assert 0.9 <= float(meta.values()["gamma"].detach()) < 0.9 + 1e-12


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: MetaParams({"gama": 0.9}), r"unknown hyperparameter 'gama'; known: \["),
        (lambda: MetaParams({"gamma": 1.0}), r"gamma=1.0 is outside its bounds \(0, 1\)"),
        (lambda: MetaParams({"lambda": -0.1}), r"lambda=-0.1 is outside its bounds"),
        (lambda: MetaParams({"lr": 0.0}), r"lr=0.0 is outside its bounds \(0, inf\)"),
        (lambda: MetaParams({"entropy_cost": float("nan")}), "entropy_cost=nan is outside"),
        (lambda: MetaParams({"gamma": 0.5}, bounds={"gamma": (0.9, 1.0)}), r"gamma=0.5 is outside its bounds \(0.9, 1\)"),
        (lambda: MetaParams({"gamma": 0.95}, bounds={"gamma": (0.9, 1.5)}), "bounds for gamma must satisfy"),
        (lambda: MetaParams({"gamma": 0.95}, fixed={"gamma": 0.9}), "both learned and fixed"),
        (lambda: MetaParams({"gamma": 0.95}, bounds={"lambda": (0.1, 0.9)}), "not learned"),
        (lambda: MultiStep(None, None, 0), "K must be an integer >= 1, got 0"),
        (lambda: Mixed(None, None, 2.5), "K must be an integer >= 1, got 2.5"),
        (lambda: MultiStep(None, None, 3, truncation=4), r"truncation must be an integer in \[1, K=3\]"),
        (lambda: mixing_weights(3, [0.5, 0.5]), "must have K=3 entries"),
        (lambda: mixing_weights(2, [0.0, 0.0]), "positive sum"),
        (lambda: mixing_weights(2, [1.0, -0.5]), ">= 0 with a positive sum"),
        (lambda: mixing_weights(2, "cosine"), "must be 'uniform', 'geometric'"),
        (lambda: mixing_weights(2, "geometric", decay=0.0), r"decay in \(0, 1\]"),
        (lambda: Bootstrapped(None, None, target_updates=0), "target_updates"),
        (lambda: OuterObjective(None, gamma=1.2), r"outer gamma must be in \[0, 1\]"),
    ],
)
def test_bad_meta_configuration_is_rejected(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_mixing_weights_are_normalized():
    assert mixing_weights(4) == pytest.approx([0.25] * 4)
    geo = mixing_weights(3, "geometric", decay=0.5)
    assert geo == pytest.approx([0.25 / 1.75, 0.5 / 1.75, 1 / 1.75])
    assert mixing_weights(2, [1, 3]) == pytest.approx([0.25, 0.75])


def test_meta_params_step_moves_raw_tensors_to_fresh_leaves_and_current_is_held_fixed():
    """``MetaParams.step`` applies a meta-optimizer to scalars and trees alike; ``current`` detaches all."""
    meta = MetaParams({"gamma": 0.9}, fixed={"lambda": 0.95}, trees={"w": {"a": torch.ones(2)}})
    optimizer = sgd(0.5)
    state = optimizer.init(meta.raw)
    before = {k: v.detach().clone() for k, v in meta.raw.items()}
    meta.step(optimizer, {"gamma": torch.tensor(1.0), "w.a": torch.tensor([1.0, -1.0])}, state)
    torch.testing.assert_close(meta.raw["gamma"].detach(), before["gamma"] - 0.5)
    torch.testing.assert_close(meta.raw["w.a"].detach(), torch.tensor([0.5, 1.5]))
    assert all(v.is_leaf and v.requires_grad for v in meta.raw.values())
    current = meta.current()
    assert not current["gamma"].requires_grad and not current["w"]["a"].requires_grad
    assert current["lambda"] == 0.95
    torch.testing.assert_close(current["w"]["a"], meta.raw["w.a"].detach())


def test_exact_targets_need_a_differentiable_update():
    """Exactness is an explicit choice, and one without a graph is refused before any work."""
    with pytest.raises(ValueError, match="exact_targets needs differentiable=True"):
        UpdateMode(exact_targets=True)
