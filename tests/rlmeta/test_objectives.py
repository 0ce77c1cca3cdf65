"""Tests of the hand-written objectives (A2C, V-trace actor-critic, PPO) and of the learner update.

Most tests use an exact *tabular* agent: ``params = {"logits": [S, A], "values": [S]}`` and
observations that are integer state indices, so every (t, b), bootstrap and final observation can
be given its own state and the references below can be written as plain python loops over floats
from the definitions, independently of ``rlmeta.returns``:

* lambda-return: ``G_t = r_t`` at a termination, ``r_t + gamma V(final_obs)`` at a truncation,
  ``r_t + gamma V(last_obs)`` at the horizon, else ``r_t + gamma ((1 - lambda) V(s_{t+1}) + lambda G_{t+1})``.
* V-trace (Espeholt et al. 2018, eq. 1) as an explicit sum over the rest of the episode, with
  traces ``lambda min(c_bar, rho)`` and policy-gradient advantages
  ``min(pg_rho_bar, rho_t) (r_t + gamma_t q_{t+1} - V(s_t))`` (rlax's convention for lambda).

The targets of every loss are constants for the parameters (semi-gradient), so the references
build them from python floats and only ``logp``, ``V(s_t)`` and the entropy carry gradients.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Categorical

from rlmeta.agents.actor import make_policy_value
from rlmeta.learner import UpdateMode, gradient_step, update
from rlmeta.agents.networks import ActorCritic, named_distribution
from rlmeta.catalog import CONDITIONING
from rlmeta.objectives import A2C, DEFAULT_HPARAMS, PLAIN, PPO, Loss, LossContext, MinibatchObjective, Objective, \
    VTraceActorCritic, LPO
from rlmeta.optim import adam, sgd
from rlmeta.rollout import PolicyValue, Rollout

T, B, A = 5, 3, 3
DT = torch.float64

# Episode ends in the tabular rollout (t, b): termination, mid-rollout truncation, and a
# truncation at the last step (whose bootstrap must be the final obs, not last_obs).
TERM_AT = (1, 0)
TRUNC_AT = (2, 1)
TRUNC_LAST = (T - 1, 2)
TRUNCS = [TRUNC_AT, TRUNC_LAST]
# States: obs[t, b] = t * B + b; last_obs[b] = T * B + b; final_obs[i] = T * B + B + i.
NUM_STATES = T * B + B + len(TRUNCS)


def state(t: int, b: int) -> int:
    return t * B + b


LAST = [T * B + b for b in range(B)]
FINAL = {tb: T * B + B + i for i, tb in enumerate(TRUNCS)}


def tabular_forward(params: dict, obs: torch.Tensor, conditioning) -> dict[str, torch.Tensor]:
    """The tabular agent's forward pass: named outputs, each ``[N, ...]``, for the state indices ``obs``."""
    idx = obs.long()
    return {"logits": params["logits"][idx], "value": params["values"][idx]}


def logits_distribution(outputs: dict) -> Categorical:
    return Categorical(logits=outputs["logits"])


tabular_policy_value = PolicyValue(tabular_forward, logits_distribution)


def unpack(result: Loss, restricted: bool = False) -> tuple:
    """``(total, metrics)`` of an objective's ``Loss`` (which must have no restricted terms), or with
    ``restricted=True`` ``(total, metrics, restricted)``."""
    assert isinstance(result, Loss), type(result)
    if restricted:
        return result.total, result.metrics, result.restricted
    assert result.restricted == {}, result.restricted
    return result.total, result.metrics


def make_params(seed: int = 0, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "logits": (torch.randn(NUM_STATES, A, generator=g, dtype=DT) * scale).requires_grad_(True),
        "values": (torch.randn(NUM_STATES, generator=g, dtype=DT) * 2.0).requires_grad_(True),
    }


def make_rollout(seed: int = 0, behaviour_logp: torch.Tensor | None = None) -> Rollout:
    g = torch.Generator().manual_seed(seed + 100)
    terminated = torch.zeros(T, B, dtype=DT)
    truncated = torch.zeros(T, B, dtype=DT)
    terminated[TERM_AT] = 1.0
    for tb in TRUNCS:
        truncated[tb] = 1.0
    final_index = torch.tensor([state(*tb) for tb in TRUNCS], dtype=torch.long)
    return Rollout(
        obs=torch.arange(T * B).reshape(T, B),
        actions=torch.randint(0, A, (T, B), generator=g),
        rewards=torch.randn(T, B, generator=g, dtype=DT),
        terminated=terminated,
        truncated=truncated,
        behaviour_logp=behaviour_logp if behaviour_logp is not None else torch.full((T, B), -math.log(A), dtype=DT),
        last_obs=torch.tensor(LAST),
        final_obs=torch.tensor([FINAL[tb] for tb in TRUNCS]),
        final_index=final_index,
    )


def current_logp(params: dict, rollout: Rollout) -> torch.Tensor:
    """log pi(a_t | s_t) under ``params``, detached, ``[T, B]``."""
    logits = params["logits"].detach()[rollout.obs]
    return torch.log_softmax(logits, -1).gather(-1, rollout.actions[..., None])[..., 0]


# --------------------------------------------------------------------------------------------
# Reference loops
# --------------------------------------------------------------------------------------------


def _f(x) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def ref_lambda_returns(rollout: Rollout, values: torch.Tensor, gamma: float, lam: float) -> np.ndarray:
    V = values.detach().numpy()
    G = np.zeros((T, B))
    for b in range(B):
        for t in reversed(range(T)):
            r = float(rollout.rewards[t, b])
            if rollout.terminated[t, b]:
                G[t, b] = r
            elif rollout.truncated[t, b]:
                G[t, b] = r + gamma * V[FINAL[(t, b)]]
            elif t == T - 1:
                G[t, b] = r + gamma * V[LAST[b]]
            else:
                G[t, b] = r + gamma * ((1 - lam) * V[state(t + 1, b)] + lam * G[t + 1, b])
    return G


def episode_end(rollout: Rollout, t: int, b: int) -> int:
    e = t
    while e < T - 1 and not (rollout.terminated[e, b] or rollout.truncated[e, b]):
        e += 1
    return e


def next_state_value(rollout: Rollout, V: np.ndarray, t: int, b: int) -> float:
    """V(s'_t): the value of the state transition t led to (0 after a termination)."""
    if rollout.terminated[t, b]:
        return 0.0
    if rollout.truncated[t, b]:
        return V[FINAL[(t, b)]]
    if t == T - 1:
        return V[LAST[b]]
    return V[state(t + 1, b)]


def ref_vtrace(rollout: Rollout, values: torch.Tensor, rhos: np.ndarray, gamma: float, lam: float,
               rho_bar: float = 1.0, c_bar: float = 1.0, pg_rho_bar: float = 1.0):
    V = values.detach().numpy()
    v = np.array([[V[state(t, b)] for b in range(B)] for t in range(T)])
    vs = np.zeros((T, B))
    for b in range(B):
        for t in range(T):
            total = v[t, b]
            for s in range(t, episode_end(rollout, t, b) + 1):
                coef = math.prod(gamma * lam * min(c_bar, rhos[i, b]) for i in range(t, s))
                delta = min(rho_bar, rhos[s, b]) * (
                    float(rollout.rewards[s, b]) + gamma * next_state_value(rollout, V, s, b) - v[s, b]
                )
                total += coef * delta
            vs[t, b] = total
    pg = np.zeros((T, B))
    for b in range(B):
        for t in range(T):
            if episode_end(rollout, t, b) > t:  # the episode goes on inside the rollout
                q = lam * vs[t + 1, b] + (1 - lam) * v[t + 1, b]
            else:
                q = next_state_value(rollout, V, t, b)
            pg[t, b] = min(pg_rho_bar, rhos[t, b]) * (float(rollout.rewards[t, b]) + gamma * q - v[t, b])
    return vs, pg


def _logp_entropy_values(params: dict, rollout: Rollout):
    """Differentiable ``[T, B]`` log-probs, entropies and values of the tabular agent."""
    logits = params["logits"][rollout.obs]
    logps = torch.log_softmax(logits, -1)
    logp = logps.gather(-1, rollout.actions[..., None])[..., 0]
    entropy = -(logps.exp() * logps).sum(-1)
    return logp, entropy, params["values"][rollout.obs]


def ref_actor_critic_loss(params: dict, rollout: Rollout, targets: np.ndarray, pg_advantages: np.ndarray,
                          hp: dict) -> torch.Tensor:
    logp, entropy, v = _logp_entropy_values(params, rollout)
    G = torch.as_tensor(targets, dtype=DT)
    adv = torch.as_tensor(pg_advantages, dtype=DT)
    policy = -(logp * adv).mean()
    value = 0.5 * ((G - v) ** 2).mean()
    return hp["policy_cost"] * policy + hp["value_cost"] * value - hp["entropy_cost"] * entropy.mean()


def ref_a2c_loss(params: dict, rollout: Rollout, hp: dict) -> torch.Tensor:
    G = ref_lambda_returns(rollout, params["values"], hp["gamma"], hp["lambda"])
    V = params["values"].detach().numpy()[rollout.obs.numpy()]
    return ref_actor_critic_loss(params, rollout, G, G - V, hp)


HP = {"gamma": 0.9, "lambda": 0.8, "policy_cost": 1.3, "value_cost": 0.7, "entropy_cost": 0.05}


def grads(loss: torch.Tensor, params: dict, keys=None) -> dict[str, torch.Tensor]:
    keys = list(params) if keys is None else list(keys)
    return dict(zip(keys, torch.autograd.grad(loss, [params[k] for k in keys])))


def assert_grads_close(got: dict, expected: dict, atol: float = 1e-12):
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=0.0, atol=atol)


def test_reference_lambda_returns_on_a_hand_computed_case():
    params = make_params()
    rollout = make_rollout()
    V = params["values"].detach().numpy()
    G = ref_lambda_returns(rollout, params["values"], 0.5, 1.0)
    r = rollout.rewards.numpy()
    b = 2  # no termination; truncated at the last step: bootstrap from its final obs
    assert G[T - 1, b] == pytest.approx(r[T - 1, b] + 0.5 * V[FINAL[TRUNC_LAST]])
    assert G[T - 2, b] == pytest.approx(r[T - 2, b] + 0.5 * G[T - 1, b])
    assert G[TERM_AT] == pytest.approx(r[TERM_AT])
    vs, _ = ref_vtrace(rollout, params["values"], np.ones((T, B)), 0.5, 1.0)
    np.testing.assert_allclose(vs, G, atol=1e-12)


# --------------------------------------------------------------------------------------------
# A2C
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hp", [HP, {**DEFAULT_HPARAMS}, {**HP, "lambda": 1.0}, {**HP, "lambda": 0.0, "gamma": 1.0}])
def test_a2c_loss_and_gradients_match_reference(hp):
    params = make_params()
    rollout = make_rollout()
    loss, metrics = unpack(A2C(tabular_policy_value)(params, rollout, hp))
    ref = ref_a2c_loss(params, rollout, hp)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12, abs=1e-12)
    # semi-gradient: the bootstrap values are targets, not differentiated
    assert_grads_close(grads(loss, params), grads(ref, params))
    assert set(metrics) >= {"policy_loss", "value_loss", "entropy"}
    G = ref_lambda_returns(rollout, params["values"], hp["gamma"], hp["lambda"])
    V = params["values"].detach().numpy()[rollout.obs.numpy()]
    assert metrics["value_loss"] == pytest.approx(0.5 * np.mean((G - V) ** 2), rel=1e-12)


def test_a2c_uses_default_hparams_for_missing_ones():
    params = make_params()
    rollout = make_rollout()
    loss, _ = unpack(A2C(tabular_policy_value)(params, rollout, {}))
    assert loss.item() == pytest.approx(ref_a2c_loss(params, rollout, DEFAULT_HPARAMS).item(), rel=1e-12)


def test_a2c_normalized_advantages():
    params = make_params()
    rollout = make_rollout()
    hp = {**HP, "value_cost": 0.0, "entropy_cost": 0.0, "policy_cost": 1.0}
    loss, _ = unpack(A2C(tabular_policy_value, normalize_advantages=True)(params, rollout, hp))
    G = ref_lambda_returns(rollout, params["values"], hp["gamma"], hp["lambda"])
    adv = G - params["values"].detach().numpy()[rollout.obs.numpy()]
    adv = (adv - adv.mean()) / (adv.std(ddof=1) + 1e-8)
    logp, _, _ = _logp_entropy_values(params, rollout)
    assert loss.item() == pytest.approx(-(logp * torch.as_tensor(adv)).mean().item(), rel=1e-10)


def _with_value(params: dict, s: int, delta: float) -> dict:
    new = {k: v.detach().clone() for k, v in params.items()}
    new["values"][s] += delta
    return new


def test_truncation_bootstraps_from_final_obs_not_the_reset_obs():
    params = make_params()
    rollout = make_rollout()
    a2c = A2C(tabular_policy_value)
    hp = {**HP, "policy_cost": 1.0, "value_cost": 0.0, "entropy_cost": 0.0}
    base = a2c(params, rollout, hp).total.item()
    # the final obs of a truncated episode is its bootstrap: changing its value changes the loss
    for tb in TRUNCS:
        assert a2c(_with_value(params, FINAL[tb], 5.0), rollout, hp).total.item() != pytest.approx(base, abs=1e-6)
    # the reset obs right after the mid-rollout truncation only enters as V(s_{t+1}) of its own
    # step: the loss moves by exactly logp_{t+1} * delta / (T B), nothing through the target at t
    t, b = TRUNC_AT
    delta = 5.0
    moved = a2c(_with_value(params, state(t + 1, b), delta), rollout, hp).total.item()
    logp = current_logp(params, rollout)
    assert moved - base == pytest.approx(float(logp[t + 1, b]) * delta / (T * B), rel=1e-9)
    # truncated at the last step: last_obs (the reset obs) is not used at all for that sub-env
    for hp_ in (hp, HP):
        base_ = a2c(params, rollout, hp_).total.item()
        assert a2c(_with_value(params, LAST[TRUNC_LAST[1]], 50.0), rollout, hp_).total.item() == base_
    # ... while it is the bootstrap of a sub-env that was not cut at the last step
    assert a2c(_with_value(params, LAST[0], 5.0), rollout, hp).total.item() != pytest.approx(base, abs=1e-6)


def test_termination_does_not_bootstrap():
    params = make_params()
    rollout = make_rollout()
    a2c = A2C(tabular_policy_value)
    t, b = TERM_AT
    # the state after a termination (the next episode's first obs) only enters as its own V
    hp = {**HP, "policy_cost": 1.0, "value_cost": 0.0, "entropy_cost": 0.0, "lambda": 0.0}
    base = a2c(params, rollout, hp).total.item()
    delta = 3.0
    moved = a2c(_with_value(params, state(t + 1, b), delta), rollout, hp).total.item()
    logp = current_logp(params, rollout)
    assert moved - base == pytest.approx(float(logp[t + 1, b]) * delta / (T * B), rel=1e-9)


def test_a2c_gradient_wrt_gamma_and_lambda_matches_finite_differences():
    params = make_params()
    rollout = make_rollout()
    a2c = A2C(tabular_policy_value)

    def loss(gamma, lam):
        return a2c(params, rollout, {**HP, "gamma": gamma, "lambda": lam}).total

    gamma = torch.tensor(0.9, dtype=DT, requires_grad=True)
    lam = torch.tensor(0.8, dtype=DT, requires_grad=True)
    dg, dl = torch.autograd.grad(loss(gamma, lam), [gamma, lam])
    h = 1e-6
    with torch.no_grad():
        fd_g = (loss(0.9 + h, 0.8) - loss(0.9 - h, 0.8)).item() / (2 * h)
        fd_l = (loss(0.9, 0.8 + h) - loss(0.9, 0.8 - h)).item() / (2 * h)
    assert torch.isfinite(dg) and abs(fd_g) > 1e-3 and abs(fd_l) > 1e-4
    assert dg.item() == pytest.approx(fd_g, rel=1e-6)
    assert dl.item() == pytest.approx(fd_l, rel=1e-6)


def test_a2c_gradient_wrt_loss_weights():
    params = make_params()
    rollout = make_rollout()
    w = {k: torch.tensor(HP[k], dtype=DT, requires_grad=True) for k in ("policy_cost", "value_cost", "entropy_cost")}
    loss, metrics = unpack(A2C(tabular_policy_value)(params, rollout, {**HP, **w}))
    got = dict(zip(w, torch.autograd.grad(loss, list(w.values()))))
    assert got["policy_cost"].item() == pytest.approx(metrics["policy_loss"], rel=1e-9)
    assert got["value_cost"].item() == pytest.approx(metrics["value_loss"], rel=1e-9)
    assert got["entropy_cost"].item() == pytest.approx(-metrics["entropy"], rel=1e-9)


# --------------------------------------------------------------------------------------------
# V-trace actor-critic
# --------------------------------------------------------------------------------------------


def test_vtrace_on_policy_equals_lambda_returns():
    params = make_params()
    rollout = make_rollout(behaviour_logp=current_logp(params, rollout=make_rollout()))
    loss, metrics = unpack(VTraceActorCritic(tabular_policy_value)(params, rollout, HP))
    assert metrics["mean_rho"] == pytest.approx(1.0, abs=1e-12)
    G = ref_lambda_returns(rollout, params["values"], HP["gamma"], HP["lambda"])
    V = params["values"].detach().numpy()[rollout.obs.numpy()]
    assert metrics["value_loss"] == pytest.approx(0.5 * np.mean((G - V) ** 2), rel=1e-12)
    ref = ref_a2c_loss(params, rollout, HP)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    assert_grads_close(grads(loss, params), grads(ref, params))
    a2c_loss, _ = unpack(A2C(tabular_policy_value)(params, rollout, HP))
    assert loss.item() == pytest.approx(a2c_loss.item(), rel=1e-12)


@pytest.mark.parametrize("lam", [1.0, 0.7])
@pytest.mark.parametrize("seed", [0, 1])
def test_vtrace_off_policy_matches_reference(lam, seed):
    params = make_params(seed)
    rollout0 = make_rollout(seed)
    g = torch.Generator().manual_seed(seed + 7)
    # ratios from 0.3 to 3: both clipped (rho > 1) and unclipped
    log_ratio = torch.empty(T, B, dtype=DT).uniform_(math.log(0.3), math.log(3.0), generator=g)
    behaviour = current_logp(params, rollout0) - log_ratio
    rollout = rollout0._replace(behaviour_logp=behaviour)
    rhos = log_ratio.exp().numpy()
    assert (rhos > 1).any() and (rhos < 1).any()
    hp = {**HP, "lambda": lam}
    loss, metrics = unpack(VTraceActorCritic(tabular_policy_value)(params, rollout, hp))
    vs, pg = ref_vtrace(rollout, params["values"], rhos, hp["gamma"], lam)
    ref = ref_actor_critic_loss(params, rollout, vs, pg, hp)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    # ratios and targets are constants: only logp, V(s_t) and the entropy are differentiated
    assert_grads_close(grads(loss, params), grads(ref, params))
    assert metrics["mean_rho"] == pytest.approx(rhos.mean(), rel=1e-12)


def test_vtrace_clipping_thresholds_are_used():
    params = make_params()
    rollout0 = make_rollout()
    log_ratio = torch.linspace(-1.0, 1.0, T * B, dtype=DT).reshape(T, B)
    rollout = rollout0._replace(behaviour_logp=current_logp(params, rollout0) - log_ratio)
    rhos = log_ratio.exp().numpy()
    hp = {**HP, "lambda": 1.0}
    clipped = VTraceActorCritic(tabular_policy_value, rho_bar=1.5, c_bar=0.8, pg_rho_bar=2.0)
    loss, _ = unpack(clipped(params, rollout, hp))
    vs, pg = ref_vtrace(rollout, params["values"], rhos, hp["gamma"], 1.0, rho_bar=1.5, c_bar=0.8, pg_rho_bar=2.0)
    assert loss.item() == pytest.approx(ref_actor_critic_loss(params, rollout, vs, pg, hp).item(), rel=1e-12)
    default, _ = unpack(VTraceActorCritic(tabular_policy_value)(params, rollout, hp))
    assert default.item() != pytest.approx(loss.item(), rel=1e-6)


# --------------------------------------------------------------------------------------------
# PPO
# --------------------------------------------------------------------------------------------


def test_ppo_prepare_gives_flat_gae_batch():
    params = make_params()
    rollout = make_rollout(behaviour_logp=torch.randn(T, B, dtype=DT))
    batch = PPO(tabular_policy_value).prepare(params, rollout, HP)
    n = T * B
    assert set(batch) == {"obs", "actions", "old_logp", "old_values", "advantages", "returns"}
    for k, v in batch.items():
        assert v.shape == (n,), k
    G = ref_lambda_returns(rollout, params["values"], HP["gamma"], HP["lambda"])
    V = params["values"].detach().numpy()[rollout.obs.numpy()]
    # flat index t * B + b
    np.testing.assert_array_equal(batch["obs"].numpy(), rollout.obs.reshape(-1).numpy())
    np.testing.assert_array_equal(batch["actions"].numpy(), rollout.actions.reshape(-1).numpy())
    np.testing.assert_allclose(batch["old_logp"].numpy(), rollout.behaviour_logp.reshape(-1).numpy())
    np.testing.assert_allclose(batch["old_values"].numpy(), V.reshape(-1), atol=1e-12)
    np.testing.assert_allclose(batch["advantages"].detach().numpy(), (G - V).reshape(-1), atol=1e-12)
    np.testing.assert_allclose(batch["returns"].detach().numpy(), G.reshape(-1), atol=1e-12)
    # targets are constants for the parameters
    assert not batch["advantages"].requires_grad and not batch["old_values"].requires_grad


def _policy_only(hp: dict | None = None) -> dict:
    return {**(hp or HP), "policy_cost": 1.0, "value_cost": 0.0, "entropy_cost": 0.0}


def test_ppo_at_old_params_is_the_plain_policy_gradient():
    params = make_params()
    rollout = make_rollout(behaviour_logp=current_logp(params, make_rollout()))
    ppo = PPO(tabular_policy_value)
    batch = ppo.prepare(params, rollout, HP)
    loss, metrics = unpack(ppo(params, batch, _policy_only()))
    assert metrics["clip_fraction"] == 0.0
    assert abs(metrics["policy_loss"]) < 1e-12  # -(normalized advantages).mean()
    adv = batch["advantages"]
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    logp, _, _ = _logp_entropy_values(params, rollout)
    unclipped = -(logp.reshape(-1) * adv).mean()
    got = grads(loss, params, ["logits"])["logits"]
    torch.testing.assert_close(got, grads(unclipped, params, ["logits"])["logits"], rtol=0.0, atol=1e-12)
    assert got.abs().sum() > 1e-3


def _hand_batch(params: dict, ratios, advantages) -> dict:
    """One sample per state, with old log-probs chosen so that pi/pi_old equals ``ratios``."""
    n = len(ratios)
    obs = torch.arange(n)
    actions = torch.arange(n) % A
    logp = torch.log_softmax(params["logits"].detach()[obs], -1)[torch.arange(n), actions]
    return {
        "obs": obs,
        "actions": actions,
        "old_logp": logp - torch.log(torch.as_tensor(ratios, dtype=DT)),
        "old_values": torch.zeros(n, dtype=DT),
        "advantages": torch.as_tensor(advantages, dtype=DT),
        "returns": torch.zeros(n, dtype=DT),
    }


def test_ppo_clipping_stops_the_gradient_where_it_should():
    params = make_params()
    clip = 0.2
    ratios = [1.5, 1.1, 0.5, 0.5, 1.5, 0.9]
    advs = [2.0, 2.0, -1.0, 1.0, -1.0, -3.0]
    # min(r A, clip(r) A) is constant in r for: r > 1+clip with A > 0, and r < 1-clip with A < 0
    clipped = [True, False, True, False, False, False]
    batch = _hand_batch(params, ratios, advs)
    ppo = PPO(tabular_policy_value, clip=clip, normalize_advantages=False)
    loss, metrics = unpack(ppo(params, batch, _policy_only()))
    r, a = np.array(ratios), np.array(advs)
    expected = -np.mean(np.minimum(r * a, np.clip(r, 1 - clip, 1 + clip) * a))
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert metrics["clip_fraction"] == pytest.approx(np.mean(np.abs(r - 1) > clip))
    g = grads(loss, params)["logits"]
    for i, c in enumerate(clipped):
        if c:
            assert torch.all(g[i] == 0), i
        else:
            assert g[i].abs().sum() > 1e-3, i
    # unclipped samples get the plain importance-weighted gradient -r A grad(logp) / n
    logp = torch.log_softmax(params["logits"][batch["obs"]], -1)[torch.arange(len(r)), batch["actions"]]
    weights = torch.as_tensor([0.0 if c else ri * ai for c, ri, ai in zip(clipped, r, a)], dtype=DT)
    ref = -(logp * weights).sum() / len(r)
    torch.testing.assert_close(g, grads(ref, params, ["logits"])["logits"], rtol=0.0, atol=1e-12)


def test_ppo_anneal_clip_shrinks_the_clip_range_with_progress():
    params = make_params()
    batch = _hand_batch(params, [1.15, 1.15], [1.0, 2.0])  # inside 1 +- 0.2, outside 1 +- 0.1
    annealed = PPO(tabular_policy_value, clip=0.2, normalize_advantages=False, anneal_clip=True)
    plain = PPO(tabular_policy_value, clip=0.2, normalize_advantages=False)
    _, m_half = unpack(annealed(params, batch, _policy_only(), 0.5))  # clip 0.1
    _, m_start = unpack(annealed(params, batch, _policy_only(), 0.0))  # clip 0.2
    _, m_plain = unpack(plain(params, batch, _policy_only(), 0.5))
    assert m_half["clip_fraction"] == 1.0
    assert m_start["clip_fraction"] == 0.0 and m_plain["clip_fraction"] == 0.0
    assert m_half["policy_loss"] == pytest.approx(-1.1 * 1.5, rel=1e-9)
    assert m_plain["policy_loss"] == pytest.approx(-1.15 * 1.5, rel=1e-9)


def test_ppo_advantage_normalization_is_per_minibatch():
    params = make_params()
    batch = _hand_batch(params, [1.0] * 6, [1.0, 2.0, 3.0, 4.0, 5.0, 9.0])
    norm, _ = unpack(PPO(tabular_policy_value, clip=10.0)(params, batch, _policy_only()))
    plain, _ = unpack(PPO(tabular_policy_value, clip=10.0, normalize_advantages=False)(params, batch, _policy_only()))
    assert plain.item() == pytest.approx(-4.0, rel=1e-12)
    assert abs(norm.item()) < 1e-12


def test_ppo_value_clip_is_the_max_of_clipped_and_unclipped():
    params = make_params()
    n, vc = 6, 0.5
    values = params["values"].detach()[:n]
    # old values placed so that some new values moved more than vc from them, in both directions
    shifts = torch.tensor([0.1, -0.2, 1.0, -1.0, 2.0, -0.3], dtype=DT)
    returns = values + torch.tensor([1.0, -1.0, 3.0, -3.0, -2.0, 0.05], dtype=DT)
    batch = _hand_batch(params, [1.0] * n, [0.0] * n)
    batch["old_values"] = values - shifts
    batch["returns"] = returns
    hp = {"policy_cost": 0.0, "value_cost": 1.0, "entropy_cost": 0.0}
    loss, metrics = unpack(PPO(tabular_policy_value, value_clip=vc)(params, batch, hp))
    clipped = batch["old_values"] + torch.clamp(values - batch["old_values"], -vc, vc)
    expected = 0.5 * torch.maximum((returns - values) ** 2, (returns - clipped) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    unclipped_loss, _ = unpack(PPO(tabular_policy_value)(params, batch, hp))
    assert unclipped_loss.item() == pytest.approx(0.5 * ((returns - values) ** 2).mean().item(), rel=1e-12)
    assert loss.item() > unclipped_loss.item()
    g = grads(loss, params)["values"][:n]
    # samples 2, 3: the value moved past the clip range towards the return; the clipped error is
    # larger and constant, so no gradient. Others: the plain gradient (V - R) / n.
    for i in range(n):
        if i in (2, 3):
            assert g[i] == 0, i
        else:
            assert g[i].item() == pytest.approx((values[i] - returns[i]).item() / n, rel=1e-12), i


@pytest.mark.parametrize("kwargs", [dict(clip=0.0), dict(clip=-0.1), dict(epochs=0), dict(minibatches=0), dict(epochs=-2)])
def test_ppo_bad_config_raises(kwargs):
    with pytest.raises(ValueError):
        PPO(tabular_policy_value, **kwargs)


# --------------------------------------------------------------------------------------------
# The learner
# --------------------------------------------------------------------------------------------


class Recording(Objective):
    """Wraps an objective and records the size of every batch it is called on."""

    def __init__(self, objective):
        self.objective = objective
        self.policy_value = objective.policy_value
        self.sizes: list[int] = []
        self.indices: list[list[int]] = []

    def __call__(self, params, data, hparams, progress=0.0, context=PLAIN):
        if isinstance(data, dict):
            assert data["obs"].numel() > 0, "empty minibatch"
            self.sizes.append(int(data["obs"].shape[0]))
            self.indices.append(data["obs"].tolist())
        return self.objective(params, data, hparams, progress, context)


class RecordingMinibatches(Recording, MinibatchObjective):
    """:class:`Recording` of a minibatch objective (PPO): its prepare step, epochs and minibatches."""

    def __init__(self, objective):
        super().__init__(objective)
        self.epochs, self.minibatches = objective.epochs, objective.minibatches

    def prepare(self, params, rollout, hparams, context=PLAIN):
        return self.objective.prepare(params, rollout, hparams, context)


def recording(objective):
    return (RecordingMinibatches if isinstance(objective, MinibatchObjective) else Recording)(objective)


def _differs(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k].detach(), b[k].detach()) for k in a)


@pytest.mark.parametrize("epochs, minibatches", [(1, 1), (3, 2), (2, 5)])
def test_update_with_ppo_runs_epochs_times_minibatches_steps(epochs, minibatches):
    params = make_params()
    rollout = make_rollout(behaviour_logp=current_logp(params, make_rollout()))
    objective = recording(PPO(tabular_policy_value, epochs=epochs, minibatches=minibatches))
    opt = adam(1e-2)
    new, state, metrics = update(objective, opt, params, opt.init(params), rollout, HP,
                                 generator=torch.Generator().manual_seed(0))
    assert state["count"] == epochs * minibatches
    assert len(objective.sizes) == epochs * minibatches
    per = (T * B) // minibatches
    assert objective.sizes == [per] * (epochs * minibatches)
    # within an epoch the minibatches are disjoint (a permutation of the batch)
    for e in range(epochs):
        seen = sum(objective.indices[e * minibatches : (e + 1) * minibatches], [])
        assert len(set(seen)) == len(seen) == per * minibatches
    assert _differs(new, params)
    assert all(v.requires_grad and v.is_leaf for v in new.values())
    assert {"loss", "grad_norm", "clip_fraction"} <= set(metrics)


def test_update_shuffles_minibatches_with_the_generator():
    params = make_params()
    rollout = make_rollout(behaviour_logp=current_logp(params, make_rollout()))

    def indices(seed):
        objective = recording(PPO(tabular_policy_value, epochs=3, minibatches=3))
        update(objective, sgd(1e-2), params, {}, rollout, HP, generator=torch.Generator().manual_seed(seed))
        return objective.indices

    first = indices(0)
    assert first == indices(0)  # reproducible from the generator
    assert first != indices(1)
    epochs = [sorted(sum(first[e * 3 : (e + 1) * 3], [])) for e in range(3)]
    assert epochs[0] == epochs[1] == epochs[2] == list(range(T * B))  # every sample once per epoch
    assert [first[e * 3 : (e + 1) * 3] for e in range(3)].count(first[:3]) == 1  # reshuffled per epoch
    assert first[0] != sorted(first[0]) or first[1] != sorted(first[1])


def test_update_with_more_minibatches_than_samples_never_passes_an_empty_minibatch():
    params = make_params()
    rollout = make_rollout(behaviour_logp=current_logp(params, make_rollout()))
    small = Rollout(
        obs=rollout.obs[:1, :2], actions=rollout.actions[:1, :2], rewards=rollout.rewards[:1, :2],
        terminated=torch.zeros(1, 2, dtype=DT), truncated=torch.zeros(1, 2, dtype=DT),
        behaviour_logp=rollout.behaviour_logp[:1, :2], last_obs=rollout.last_obs[:2],
        final_obs=torch.zeros(0, dtype=torch.long), final_index=torch.zeros(0, dtype=torch.long),
    )
    objective = recording(PPO(tabular_policy_value, epochs=1, minibatches=4))  # 2 samples, 4 minibatches
    opt = sgd(1e-2)
    try:
        update(objective, opt, params, opt.init(params), small, HP)
    except ValueError:
        return  # refusing the configuration up front would be fine too
    assert all(s > 0 for s in objective.sizes)


def test_update_without_prepare_is_one_sgd_step():
    params = make_params()
    rollout = make_rollout()
    objective = recording(A2C(tabular_policy_value))
    lr = 0.1
    new, _, metrics = update(objective, sgd(lr), params, {}, rollout, HP)
    g = grads(ref_a2c_loss(params, rollout, HP), params)
    for k in params:
        torch.testing.assert_close(new[k], params[k].detach() - lr * g[k], rtol=0.0, atol=1e-12)
        assert new[k].is_leaf and new[k].requires_grad
    assert metrics["loss"] == pytest.approx(ref_a2c_loss(params, rollout, HP).item(), rel=1e-12)
    gnorm = math.sqrt(sum(float((v ** 2).sum()) for v in g.values()))
    assert metrics["grad_norm"] == pytest.approx(gnorm, rel=1e-9)
    # the lr in hparams overrides the optimizer's
    new2, _, _ = update(A2C(tabular_policy_value), sgd(lr), params, {}, rollout, {**HP, "lr": 0.5})
    torch.testing.assert_close(new2["values"], params["values"].detach() - 0.5 * g["values"], rtol=0.0, atol=1e-12)


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad:UserWarning")
def test_gradient_step_raises_on_nan_loss():
    params = make_params()
    rollout = make_rollout()
    rewards = rollout.rewards.clone()
    rewards[3, 1] = float("nan")
    bad = rollout._replace(rewards=rewards)
    opt = adam(1e-2)
    with pytest.raises(FloatingPointError):
        gradient_step(A2C(tabular_policy_value), opt, params, opt.init(params), bad, HP)
    with pytest.raises(FloatingPointError):
        update(A2C(tabular_policy_value), opt, params, opt.init(params), bad, HP)
    inf = rollout._replace(rewards=rollout.rewards.masked_fill(rollout.rewards > 0, float("inf")))
    with pytest.raises(FloatingPointError):
        update(A2C(tabular_policy_value), opt, params, opt.init(params), inf, HP)


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad:UserWarning")
def test_gradient_step_checks_the_loss_and_the_gradients():
    params = make_params()
    opt = sgd(0.1)

    def nan_loss(p, data, hparams, progress=0.0, context=PLAIN):  # finite gradients, NaN loss
        return Loss(p["values"].sum() + p["logits"].sum() + float("nan"), {})

    def nan_grad(p, data, hparams, progress=0.0, context=PLAIN):  # finite loss (0), NaN gradient (sqrt at 0)
        return Loss(torch.sqrt(p["values"] * 0.0).sum() + p["logits"].sum(), {})

    for objective in (nan_loss, nan_grad):
        with pytest.raises(FloatingPointError):
            gradient_step(objective, opt, params, {}, None, {})

    def old_style(p, data, hparams, progress=0.0, context=PLAIN):  # a (loss, metrics) tuple is not a Loss
        return p["values"].sum() + p["logits"].sum(), {}

    with pytest.raises(TypeError, match="must return a rlmeta.objectives.Loss, got tuple"):
        gradient_step(old_style, opt, params, {}, None, {})


def _meta_loss(new_params: dict) -> torch.Tensor:
    w = torch.linspace(-1.0, 1.0, NUM_STATES, dtype=DT)
    return (w * new_params["values"]).sum() + new_params["logits"][:, 0].sum()


@pytest.mark.parametrize("objective", ["a2c", "ppo"])
def test_update_with_create_graph_is_differentiable_wrt_hparams(objective):
    params = make_params()
    rollout = make_rollout(behaviour_logp=current_logp(params, make_rollout()))

    def run(lr, gamma, create_graph):
        obj = A2C(tabular_policy_value) if objective == "a2c" else PPO(tabular_policy_value, epochs=2, minibatches=3)
        new, _, _ = update(obj, sgd(0.1, momentum=0.5), params, sgd(0.1, momentum=0.5).init(params), rollout,
                           {**HP, "lr": lr, "gamma": gamma}, mode=UpdateMode(differentiable=create_graph),
                           generator=torch.Generator().manual_seed(3))
        return _meta_loss(new)

    lr = torch.tensor(0.1, dtype=DT, requires_grad=True)
    gamma = torch.tensor(0.9, dtype=DT, requires_grad=True)
    d_lr, d_gamma = torch.autograd.grad(run(lr, gamma, True), [lr, gamma])
    assert torch.isfinite(d_lr) and torch.isfinite(d_gamma)
    h = 1e-6
    fd_lr = (run(0.1 + h, 0.9, False) - run(0.1 - h, 0.9, False)).item() / (2 * h)
    fd_gamma = (run(0.1, 0.9 + h, False) - run(0.1, 0.9 - h, False)).item() / (2 * h)
    assert abs(fd_lr) > 1e-3 and abs(fd_gamma) > 1e-3
    assert d_lr.item() == pytest.approx(fd_lr, rel=1e-5)
    assert d_gamma.item() == pytest.approx(fd_gamma, rel=1e-5)


def test_update_without_create_graph_cuts_the_graph():
    params = make_params()
    rollout = make_rollout()
    lr = torch.tensor(0.1, dtype=DT, requires_grad=True)
    new, _, _ = update(A2C(tabular_policy_value), sgd(0.1), params, {}, rollout, {**HP, "lr": lr})
    assert all(v.is_leaf for v in new.values())
    assert _meta_loss(new).grad_fn is not None  # leaves that require grad, but no path to lr
    with pytest.raises(RuntimeError):
        torch.autograd.grad(_meta_loss(new), [lr])


# --------------------------------------------------------------------------------------------
# With the real network through make_policy_value
# --------------------------------------------------------------------------------------------


def _net_rollout(net_obs_dim: int = 4, num_actions: int = 2, seed: int = 0) -> Rollout:
    g = torch.Generator().manual_seed(seed)
    terminated = torch.zeros(T, B)
    truncated = torch.zeros(T, B)
    terminated[TERM_AT] = 1.0
    truncated[TRUNC_AT] = 1.0
    return Rollout(
        obs=torch.randn(T, B, net_obs_dim, generator=g),
        actions=torch.randint(0, num_actions, (T, B), generator=g),
        rewards=torch.randn(T, B, generator=g),
        terminated=terminated,
        truncated=truncated,
        behaviour_logp=torch.full((T, B), -math.log(num_actions)),
        last_obs=torch.randn(B, net_obs_dim, generator=g),
        final_obs=torch.randn(1, net_obs_dim, generator=g),
        final_index=torch.tensor([state(*TRUNC_AT)]),
    )


@pytest.mark.parametrize("objective_cls", [A2C, VTraceActorCritic, PPO])
def test_objectives_with_a_conditioned_network_meta_gradient_to_the_hparam_vector(objective_cls):
    torch.manual_seed(0)
    box = gym.spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
    net = ActorCritic(box, gym.spaces.Discrete(2), hidden=(16,), num_hparams=2)
    policy_value = make_policy_value(net)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()}
    rollout = _net_rollout()
    vector = torch.tensor([0.9, 0.8], requires_grad=True)
    gamma = torch.tensor(0.9, requires_grad=True)
    hp = {**HP, "gamma": gamma, CONDITIONING: vector}
    objective = objective_cls(policy_value)
    if objective_cls is PPO:
        objective = PPO(policy_value, epochs=1, minibatches=1)
    # the conditioning input requires grad: the targets must stay exact from this first update on
    new, _, _ = update(objective, sgd(0.05), params, {}, rollout, hp,
                       mode=UpdateMode(differentiable=True, exact_targets=True))
    # the meta-objective: A2C on the same data with the updated parameters and fixed hparams
    meta, _ = unpack(A2C(policy_value)(new, rollout, {**HP, CONDITIONING: vector.detach()}))
    d_vec, d_gamma = torch.autograd.grad(meta, [vector, gamma])
    assert torch.isfinite(d_vec).all() and d_vec.abs().sum() > 0
    assert torch.isfinite(d_gamma) and d_gamma.abs() > 0


@pytest.mark.parametrize("continuous", [False, True])
@pytest.mark.parametrize("objective_cls", [A2C, VTraceActorCritic])
def test_output_split_gives_the_semi_gradient_with_targets_kept_differentiable(objective_cls, continuous):
    """One forward pass: the gradient through the aliases equals the usual semi-gradient, while the
    targets the loss held fixed remain functions of the parameters (for exact meta-gradients)."""
    from rlmeta.rollout import OutputSplit

    torch.manual_seed(0)
    box = gym.spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
    actions = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32) if continuous else gym.spaces.Discrete(2)
    net = ActorCritic(box, actions, hidden=(16,))
    objective = objective_cls(make_policy_value(net))
    rollout = _net_rollout()
    if continuous:
        g = torch.Generator().manual_seed(1)
        rollout = rollout._replace(actions=torch.randn(T, B, 2, generator=g), behaviour_logp=torch.full((T, B), -2.0))
    params = {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()}
    keys = list(params)
    loss, _ = unpack(objective(params, rollout, HP))
    semi = torch.autograd.grad(loss, [params[k] for k in keys])
    context = LossContext(exact=True)
    split = context.split
    assert isinstance(split, OutputSplit)
    split_loss, _ = unpack(objective(params, rollout, HP, context=context))
    assert float(split_loss.detach()) == pytest.approx(float(loss.detach()), rel=1e-6)
    grads = split.grads(split_loss, [params[k] for k in keys])
    for k, a, b in zip(keys, semi, grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), k
    # The full gradient of the same loss (targets not held fixed) differs: the split really cut them out.
    full = torch.autograd.grad(split_loss, [params[k] for k in keys], retain_graph=True)
    assert any(not torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(full, grads))
    assert all(o.requires_grad for o in split.outputs) and len(split.outputs) == (3 if continuous else 2)


# --------------------------------------------------------------------------------------------
# The outer critic (Bonnet et al. 2022): a second value column trained with reference gamma/lambda
# --------------------------------------------------------------------------------------------
#
# The tabular agent gets a second value table, ``params["outer_values"]`` ([S]), the forward's output
# ``"outer_value"``, which ``both_policy_value`` names as the outer critic's; ``tabular_policy_value``
# (the critic only) is the same agent without it. The reference targets are ``ref_lambda_returns`` /
# ``ref_vtrace`` above, run on the outer table with the outer critic's gamma and lambda, chosen
# different from the hparams' so the two cannot be confused.

from rlmeta.objectives import OuterCritic  # noqa: E402
from rlmeta.returns import vtrace  # noqa: E402

OC = OuterCritic(gamma=0.97, lambda_=0.5, cost=0.3)
ONE_COLUMN = r"make_policy_value\(net, 'both'\)"


def both_forward(params: dict, obs: torch.Tensor, conditioning) -> dict[str, torch.Tensor]:
    return {**tabular_forward(params, obs, conditioning), "outer_value": params["outer_values"][obs.long()]}


both_policy_value = PolicyValue(both_forward, logits_distribution, outer_value="outer_value")


def make_outer_params(seed: int = 0) -> dict[str, torch.Tensor]:
    params = make_params(seed)
    g = torch.Generator().manual_seed(seed + 50)
    params["outer_values"] = (torch.randn(NUM_STATES, generator=g, dtype=DT) * 2.0).requires_grad_(True)
    return params


def ref_outer_value_loss(params: dict, rollout: Rollout, targets: np.ndarray) -> torch.Tensor:
    """``0.5 mean((G' - V')^2)`` with ``G'`` constant: differentiable in the outer table only."""
    v_outer = params["outer_values"][rollout.obs]
    return 0.5 * ((torch.as_tensor(targets, dtype=DT) - v_outer) ** 2).mean()


def ref_outer_next_values(rollout: Rollout, values: torch.Tensor) -> torch.Tensor:
    """``V'(s'_t)`` ``[T, B]`` built by hand (final obs at truncations, last_obs at the horizon)."""
    V = values.detach().numpy()
    return torch.tensor([[next_state_value(rollout, V, t, b) for b in range(B)] for t in range(T)], dtype=DT)


def off_policy_rollout(params: dict, seed: int = 0) -> tuple[Rollout, np.ndarray]:
    rollout0 = make_rollout(seed)
    g = torch.Generator().manual_seed(seed + 7)
    log_ratio = torch.empty(T, B, dtype=DT).uniform_(math.log(0.3), math.log(3.0), generator=g)
    rollout = rollout0._replace(behaviour_logp=current_logp(params, rollout0) - log_ratio)
    rhos = log_ratio.exp().numpy()
    assert (rhos > 1).any() and (rhos < 1).any()
    return rollout, rhos


def test_outer_critic_reference_targets_differ_from_the_hparams_ones():
    """Guards the tests below: the outer targets with the outer gamma/lambda are not those of the hparams."""
    params = make_outer_params()
    rollout = make_rollout()
    outer = ref_lambda_returns(rollout, params["outer_values"], OC.gamma, OC.lambda_)
    with_hparams = ref_lambda_returns(rollout, params["outer_values"], HP["gamma"], HP["lambda"])
    assert np.abs(outer - with_hparams).max() > 1e-2
    assert ref_outer_value_loss(params, rollout, outer).item() != pytest.approx(
        ref_outer_value_loss(params, rollout, with_hparams).item(), rel=1e-3)


@pytest.mark.parametrize("oc", [OC, OuterCritic(gamma=1.0, lambda_=1.0, cost=2.0), OuterCritic(gamma=0.5, lambda_=0.0)])
def test_a2c_outer_critic_adds_its_td_lambda_value_loss(oc):
    params = make_outer_params()
    rollout = make_rollout()
    with_oc, metrics = unpack(A2C(both_policy_value, outer_critic=oc)(params, rollout, HP))
    without, metrics0 = unpack(A2C(tabular_policy_value)(params, rollout, HP))
    G = ref_lambda_returns(rollout, params["outer_values"], oc.gamma, oc.lambda_)
    expected = ref_outer_value_loss(params, rollout, G).item()
    assert expected > 1e-2
    assert with_oc.item() - without.item() == pytest.approx(oc.cost * expected, rel=1e-10, abs=1e-12)
    assert metrics["outer_value_loss"] == pytest.approx(expected, rel=1e-12)
    assert "outer_value_loss" not in metrics0
    for k in ("policy_loss", "value_loss", "entropy"):  # the critic's part is untouched
        assert metrics[k] == pytest.approx(metrics0[k], rel=1e-12, abs=1e-15)
    # and it is the full loss of the reference (critic from column 0, outer critic from column 1)
    assert with_oc.item() == pytest.approx(ref_a2c_loss(params, rollout, HP).item() + oc.cost * expected, rel=1e-12)


def test_a2c_outer_critic_ignores_the_meta_learned_gamma_and_lambda():
    params = make_outer_params()
    rollout = make_rollout()
    a2c = A2C(both_policy_value, outer_critic=OC)
    seen = {a2c(params, rollout, {**HP, "gamma": g, "lambda": l}).metrics["outer_value_loss"]
            for g, l in [(0.9, 0.8), (0.5, 0.0), (1.0, 1.0), (0.99, 0.95)]}
    assert max(seen) - min(seen) < 1e-12
    G = ref_lambda_returns(rollout, params["outer_values"], OC.gamma, OC.lambda_)
    assert seen.pop() == pytest.approx(ref_outer_value_loss(params, rollout, G).item(), rel=1e-12)


def test_a2c_outer_critic_gradients():
    params = make_outer_params()
    rollout = make_rollout()
    gamma = torch.tensor(HP["gamma"], dtype=DT, requires_grad=True)
    lam = torch.tensor(HP["lambda"], dtype=DT, requires_grad=True)
    hp = {**HP, "gamma": gamma, "lambda": lam}
    keys = ["logits", "values", "outer_values"]
    with_oc, _ = unpack(A2C(both_policy_value, outer_critic=OC)(params, rollout, hp))
    without, _ = unpack(A2C(tabular_policy_value)(params, rollout, hp))
    g_with = dict(zip(keys + ["gamma", "lambda"],
                      torch.autograd.grad(with_oc, [params[k] for k in keys] + [gamma, lam])))
    g_without = dict(zip(keys[:2] + ["gamma", "lambda"],
                         torch.autograd.grad(without, [params[k] for k in keys[:2]] + [gamma, lam])))
    # the meta-learned gamma and lambda get the same meta-gradient: the outer term does not depend on them
    for k in ("gamma", "lambda"):
        assert g_with[k].abs() > 1e-4
        torch.testing.assert_close(g_with[k], g_without[k], rtol=0.0, atol=1e-12)
    # the actor and the critic get the same gradient
    assert_grads_close(g_with, {k: g_without[k] for k in ("logits", "values")})
    # the outer table: the semi-gradient of cost * 0.5 mean((G' - V')^2), G' held fixed (its
    # bootstrap states, the final and last obs, get nothing from the outer term)
    G = ref_lambda_returns(rollout, params["outer_values"], OC.gamma, OC.lambda_)
    expected = grads(OC.cost * ref_outer_value_loss(params, rollout, G), params, ["outer_values"])["outer_values"]
    torch.testing.assert_close(g_with["outer_values"], expected, rtol=0.0, atol=1e-12)
    assert torch.all(g_with["outer_values"][LAST + list(FINAL.values())] == 0)

    # ... which is not the full gradient through the targets
    def full(ov):
        G = lambda_returns_of(rollout, ov, OC.gamma, OC.lambda_)
        return OC.cost * 0.5 * ((G - ov[rollout.obs]) ** 2).mean()

    assert (torch.autograd.grad(full(params["outer_values"]), params["outer_values"])[0] - expected).abs().max() > 1e-3


def lambda_returns_of(rollout: Rollout, values: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """``ref_lambda_returns`` written on tensors, differentiable in ``values`` (for the full gradient)."""
    G = [[None] * B for _ in range(T)]
    for b in range(B):
        for t in reversed(range(T)):
            r = rollout.rewards[t, b]
            if rollout.terminated[t, b]:
                G[t][b] = r
            elif rollout.truncated[t, b]:
                G[t][b] = r + gamma * values[FINAL[(t, b)]]
            elif t == T - 1:
                G[t][b] = r + gamma * values[LAST[b]]
            else:
                G[t][b] = r + gamma * ((1 - lam) * values[state(t + 1, b)] + lam * G[t + 1][b])
    return torch.stack([torch.stack(row) for row in G])


@pytest.mark.parametrize("seed", [0, 1])
def test_vtrace_outer_critic_adds_its_vtrace_value_loss(seed):
    params = make_outer_params(seed)
    rollout, rhos = off_policy_rollout(params, seed)
    clips = dict(rho_bar=1.5, c_bar=0.8, pg_rho_bar=2.0)
    hp = {**HP, "vtrace_alpha": 0.6}  # leaky V-trace for the critic: not for the outer critic
    with_oc, metrics = unpack(VTraceActorCritic(both_policy_value, outer_critic=OC, **clips)(params, rollout, hp))
    without, metrics0 = unpack(VTraceActorCritic(tabular_policy_value, **clips)(params, rollout, hp))
    ov = params["outer_values"].detach()
    targets = vtrace(ov[rollout.obs], ref_outer_next_values(rollout, ov), rollout.rewards,
                     OC.gamma * (1.0 - rollout.terminated), 1.0 - rollout.terminated - rollout.truncated,
                     torch.as_tensor(rhos), lambda_=OC.lambda_, **clips).vs
    # the independent reference loop agrees on the targets
    np.testing.assert_allclose(targets.numpy(), ref_vtrace(rollout, ov, rhos, OC.gamma, OC.lambda_, **clips)[0],
                               atol=1e-12)
    expected = ref_outer_value_loss(params, rollout, targets.numpy()).item()
    assert expected > 1e-2
    assert with_oc.item() - without.item() == pytest.approx(OC.cost * expected, rel=1e-10, abs=1e-12)
    assert metrics["outer_value_loss"] == pytest.approx(expected, rel=1e-12)
    assert metrics["mean_rho"] == pytest.approx(metrics0["mean_rho"], rel=1e-12)
    # with rhos = 1 the targets would be the lambda-returns: the ratios really are used
    G = ref_lambda_returns(rollout, ov, OC.gamma, OC.lambda_)
    assert abs(ref_outer_value_loss(params, rollout, G).item() - expected) > 1e-3
    # gradients: the semi-gradient in the outer table, nothing else changes
    keys = ["logits", "values", "outer_values"]
    g_with = grads(with_oc, params, keys)
    g_without = grads(without, params, keys[:2])
    assert_grads_close(g_with, g_without)
    expected_g = grads(OC.cost * ref_outer_value_loss(params, rollout, targets.numpy()), params, ["outer_values"])
    assert_grads_close(g_with, expected_g)


def test_vtrace_outer_critic_ignores_the_meta_learned_hparams():
    params = make_outer_params()
    rollout, _ = off_policy_rollout(params)
    vt = VTraceActorCritic(both_policy_value, outer_critic=OC)
    gamma = torch.tensor(0.9, dtype=DT, requires_grad=True)
    seen = []
    for hp in ({**HP, "gamma": gamma}, {**HP, "gamma": 0.5, "lambda": 0.1, "vtrace_alpha": 0.3}, {**HP, "lambda": 1.0}):
        loss, metrics = unpack(vt(params, rollout, hp))
        seen.append(metrics["outer_value_loss"])
    assert max(seen) - min(seen) < 1e-12
    d_with = torch.autograd.grad(vt(params, rollout, {**HP, "gamma": gamma}).total, gamma)[0]
    d_without = torch.autograd.grad(
        VTraceActorCritic(tabular_policy_value)(params, rollout, {**HP, "gamma": gamma}).total, gamma)[0]
    assert d_with.abs() > 1e-4
    torch.testing.assert_close(d_with, d_without, rtol=0.0, atol=1e-12)


@pytest.mark.parametrize("keep_graph", [False, True])
def test_ppo_prepare_gives_the_outer_critics_td_lambda_returns(keep_graph):
    params = make_outer_params()
    rollout = make_rollout(behaviour_logp=torch.randn(T, B, dtype=DT))
    batch = PPO(both_policy_value, outer_critic=OC).prepare(params, rollout, HP, LossContext(exact=keep_graph))
    plain = PPO(tabular_policy_value).prepare(params, rollout, HP)
    assert set(batch) == set(plain) | {"outer_returns"}
    for k in plain:  # the critic's part is untouched
        torch.testing.assert_close(batch[k].detach(), plain[k].detach(), rtol=0.0, atol=1e-12)
    G = ref_lambda_returns(rollout, params["outer_values"], OC.gamma, OC.lambda_)
    assert batch["outer_returns"].shape == (T * B,)
    np.testing.assert_allclose(batch["outer_returns"].detach().numpy(), G.reshape(-1), atol=1e-12)
    # not the hparams' gamma/lambda
    G_hp = ref_lambda_returns(rollout, params["outer_values"], HP["gamma"], HP["lambda"])
    assert np.abs(batch["outer_returns"].detach().numpy() - G_hp.reshape(-1)).max() > 1e-2
    assert batch["outer_returns"].requires_grad == keep_graph
    if keep_graph:  # a function of the outer table's bootstrap values, as the reference
        d = torch.autograd.grad(batch["outer_returns"].sum(), params["outer_values"])[0]
        expected = torch.autograd.grad(lambda_returns_of(rollout, params["outer_values"], OC.gamma, OC.lambda_).sum(),
                                       params["outer_values"])[0]
        torch.testing.assert_close(d, expected, rtol=0.0, atol=1e-12)


def test_ppo_outer_critic_minibatch_loss():
    params = make_outer_params()
    rollout = make_rollout(behaviour_logp=torch.randn(T, B, dtype=DT))
    ppo = PPO(both_policy_value, outer_critic=OC)
    batch = ppo.prepare(params, rollout, HP)
    idx = torch.tensor([0, 3, 4, 8, 11, 14])
    minibatch = {k: v[idx] for k, v in batch.items()}
    gamma = torch.tensor(HP["gamma"], dtype=DT, requires_grad=True)
    hp = {**HP, "gamma": gamma}
    with_oc, metrics = unpack(ppo(params, minibatch, hp))
    without, metrics0 = unpack(PPO(tabular_policy_value)(params, minibatch, hp))
    v_outer = params["outer_values"][minibatch["obs"]]
    ref = 0.5 * ((minibatch["outer_returns"] - v_outer) ** 2).mean()
    assert ref.item() > 1e-2
    assert with_oc.item() - without.item() == pytest.approx(OC.cost * ref.item(), rel=1e-10, abs=1e-12)
    assert metrics["outer_value_loss"] == pytest.approx(ref.item(), rel=1e-12)
    for k in ("policy_loss", "value_loss", "entropy", "clip_fraction"):
        assert metrics[k] == pytest.approx(metrics0[k], rel=1e-12, abs=1e-15)
    keys = ["logits", "values", "outer_values"]
    g_with = grads(with_oc, params, keys)
    g_without = grads(without, params, keys[:2])
    assert_grads_close(g_with, g_without)
    assert_grads_close(g_with, grads(OC.cost * ref, params, ["outer_values"]))
    # PPO's minibatch loss does not involve gamma at all (the targets were prepared)
    assert torch.autograd.grad(with_oc, gamma, allow_unused=True)[0] is None


def test_update_with_ppo_and_an_outer_critic_trains_the_outer_table():
    params = make_outer_params()
    rollout = make_rollout(behaviour_logp=current_logp(params, make_rollout()))
    opt = sgd(0.1)
    new, _, metrics = update(PPO(both_policy_value, outer_critic=OC, epochs=2, minibatches=3), opt, params,
                             opt.init(params), rollout, HP, generator=torch.Generator().manual_seed(0))
    assert "outer_value_loss" in metrics
    assert not torch.equal(new["outer_values"].detach(), params["outer_values"].detach())
    # one A2C step moves the outer table by -lr * its semi-gradient, exactly
    new, _, _ = update(A2C(both_policy_value, outer_critic=OC), sgd(0.1), params, {}, rollout, HP)
    G = ref_lambda_returns(rollout, params["outer_values"], OC.gamma, OC.lambda_)
    g = grads(OC.cost * ref_outer_value_loss(params, rollout, G), params, ["outer_values"])["outer_values"]
    torch.testing.assert_close(new["outer_values"], params["outer_values"].detach() - 0.1 * g, rtol=0.0, atol=1e-12)


def test_objectives_with_an_outer_critic_refuse_a_single_value_column():
    """An adapter that names no outer critic is refused when the objective is made, before any work."""
    params = make_outer_params()
    rollout = make_rollout()
    with pytest.raises(ValueError, match=ONE_COLUMN):
        A2C(tabular_policy_value, outer_critic=OC)
    with pytest.raises(ValueError, match=ONE_COLUMN):
        VTraceActorCritic(tabular_policy_value, outer_critic=OC)
    with pytest.raises(ValueError, match=ONE_COLUMN):
        PPO(tabular_policy_value, outer_critic=OC)
    # an adapter that names an outer critic the network does not output: refused when evaluated
    missing = tabular_policy_value.reading(outer_value="outer_value")
    with pytest.raises(ValueError, match="the network has no output named 'outer_value'"):
        A2C(missing, outer_critic=OC)(params, rollout, HP)
    with pytest.raises(ValueError, match="the network has no output named 'outer_value'"):
        VTraceActorCritic(missing, outer_critic=OC)(params, rollout, HP)
    with pytest.raises(ValueError, match="the network has no output named 'outer_value'"):
        PPO(missing, outer_critic=OC).prepare(params, rollout, HP)
    # the minibatch loss too: a batch prepared without the outer critic
    plain_batch = PPO(tabular_policy_value).prepare(params, rollout, HP)
    with pytest.raises(ValueError, match=r"this PPO trains an outer critic: prepare the batch with it"):
        PPO(both_policy_value, outer_critic=OC)(params, plain_batch, HP)


@pytest.mark.parametrize("kwargs, match", [
    (dict(gamma=1.01), "gamma"), (dict(gamma=-0.1), "gamma"), (dict(gamma=float("nan")), "gamma"),
    (dict(lambda_=1.5), "lambda_"), (dict(lambda_=-1e-9), "lambda_"),
    (dict(cost=0.0), "cost"), (dict(cost=-0.5), "cost"), (dict(cost=float("nan")), "cost"),
])
def test_outer_critic_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OuterCritic(**kwargs)


def test_outer_critic_accepts_the_bounds():
    for g in (0.0, 1.0):
        for lam in (0.0, 1.0):
            assert OuterCritic(gamma=g, lambda_=lam, cost=1e-9).gamma == g
    assert OuterCritic() == OuterCritic(gamma=0.99, lambda_=1.0, cost=0.5)


def _outer_net(**kwargs):
    torch.manual_seed(0)
    box = gym.spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
    net = ActorCritic(box, gym.spaces.Discrete(2), hidden=(16,), outer_critic=True, **kwargs)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()}
    return net, params


@pytest.mark.parametrize("objective_cls", [A2C, VTraceActorCritic])
def test_real_network_outer_critic_trains_the_outer_value_head(objective_cls):
    net, params = _outer_net()
    rollout = _net_rollout()
    keys = list(params)
    assert "outer_value_head.weight" in keys
    with_oc, metrics = unpack(objective_cls(make_policy_value(net, "both"), outer_critic=OC)(params, rollout, HP))
    without, _ = unpack(objective_cls(make_policy_value(net, "value"))(params, rollout, HP))
    assert metrics["outer_value_loss"] > 0
    assert with_oc.item() - without.item() == pytest.approx(OC.cost * metrics["outer_value_loss"], rel=1e-5)
    g_with = dict(zip(keys, torch.autograd.grad(with_oc, [params[k] for k in keys], allow_unused=True)))
    g_without = dict(zip(keys, torch.autograd.grad(without, [params[k] for k in keys], allow_unused=True)))
    assert g_with["outer_value_head.weight"] is not None and g_with["outer_value_head.weight"].abs().sum() > 0
    assert g_with["outer_value_head.bias"].abs().sum() > 0
    # without an outer critic the head is not used at all
    assert g_without["outer_value_head.weight"] is None and g_without["outer_value_head.bias"] is None
    # the heads that are not shared with the outer critic get the same gradient
    for k in ("policy_head.weight", "value_head.weight", "value_head.bias"):
        torch.testing.assert_close(g_with[k], g_without[k], rtol=1e-5, atol=1e-7)
    # the value torso also learns from the outer critic (a second head on it)
    torso = [k for k in keys if k.startswith("value_torso") and k.endswith("weight")]
    assert torso and any(not torch.allclose(g_with[k], g_without[k], rtol=1e-4, atol=1e-7) for k in torso)


def test_real_network_outer_critic_values_are_the_outer_value_output():
    net, params = _outer_net()
    rollout = _net_rollout()
    loss, metrics = unpack(A2C(make_policy_value(net, "both"), outer_critic=OC)(params, rollout, HP))
    # the same loss with the values assembled by hand: critic from "value", outer critic from "outer"
    value_pv, outer_pv = make_policy_value(net, "value"), make_policy_value(net, "outer")

    def by_hand(p, obs, conditioning):
        hp = None if conditioning is None else {CONDITIONING: conditioning}
        return {"policy": value_pv.outputs(p, obs, hp)["policy"], "critic": value_pv(p, obs, hp)[1],
                "outer": outer_pv(p, obs, hp)[1]}

    swapped = PolicyValue(by_hand, named_distribution, value="critic", outer_value="outer")
    loss2, metrics2 = unpack(A2C(swapped, outer_critic=OC)(params, rollout, HP))
    assert loss.item() == pytest.approx(loss2.item(), rel=1e-6)
    assert metrics["outer_value_loss"] == pytest.approx(metrics2["outer_value_loss"], rel=1e-6)
    # with the hparams' gamma/lambda, the outer critic's loss is A2C's value loss of the output it reads
    same = OuterCritic(gamma=HP["gamma"], lambda_=HP["lambda"])
    _, m_outer = unpack(A2C(outer_pv)(params, rollout, HP))
    _, m_value = unpack(A2C(value_pv)(params, rollout, HP))
    assert m_outer["value_loss"] != pytest.approx(m_value["value_loss"], rel=1e-3)
    assert A2C(swapped, outer_critic=same)(params, rollout, HP).metrics["outer_value_loss"] == pytest.approx(
        m_outer["value_loss"], rel=1e-6)

    exchanged = swapped.reading(value="outer", outer_value="critic")  # the same forward, read the other way
    assert exchanged.forward is swapped.forward
    assert A2C(exchanged, outer_critic=same)(params, rollout, HP).metrics["outer_value_loss"] == pytest.approx(
        m_value["value_loss"], rel=1e-6)


@pytest.mark.parametrize("objective_cls", [A2C, VTraceActorCritic])
def test_real_network_outer_critic_output_split_gives_the_semi_gradient(objective_cls):
    from rlmeta.rollout import OutputSplit

    net, params = _outer_net()
    rollout = _net_rollout()
    keys = list(params)
    objective = objective_cls(make_policy_value(net, "both"), outer_critic=OC)
    loss, metrics = unpack(objective(params, rollout, HP))
    semi = torch.autograd.grad(loss, [params[k] for k in keys])
    context = LossContext(exact=True)
    split = context.split
    assert isinstance(split, OutputSplit)
    split_loss, split_metrics = unpack(objective(params, rollout, HP, context=context))
    assert split_metrics["outer_value_loss"] == pytest.approx(metrics["outer_value_loss"], rel=1e-6)
    got = split.grads(split_loss, [params[k] for k in keys])
    for k, a, b in zip(keys, semi, got):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), k
    # the outer critic's bootstrap values stay in the graph (for exact meta-gradients) but out of the gradient
    full = torch.autograd.grad(split_loss, [params[k] for k in keys])
    i = keys.index("outer_value_head.weight")
    assert not torch.allclose(full[i], got[i], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("objective", ["a2c", "vtrace", "ppo"])
def test_an_outer_critic_with_a_head_returns_its_term_restricted_to_that_head(objective):
    """``OuterCritic(head=...)``: the term is left out of the loss and returned as ``{head: cost * term}``."""
    import dataclasses

    head_only = dataclasses.replace(OC, head="outer_")
    params = make_outer_params()
    rollout = make_rollout()
    build = {"a2c": lambda oc: A2C(both_policy_value, outer_critic=oc),
             "vtrace": lambda oc: VTraceActorCritic(both_policy_value, outer_critic=oc),
             "ppo": lambda oc: PPO(both_policy_value, outer_critic=oc)}[objective]
    full, restricted = build(OC), build(head_only)
    if objective == "ppo":
        batch = full.prepare(params, rollout, HP)
        whole, metrics = unpack(full(params, batch, HP))
        loss, metrics_r, terms = unpack(restricted(params, batch, HP), restricted=True)
    else:
        whole, metrics = unpack(full(params, rollout, HP))
        loss, metrics_r, terms = unpack(restricted(params, rollout, HP), restricted=True)
    assert set(terms) == {"outer_"}
    assert metrics_r == metrics and metrics["outer_value_loss"] > 0
    assert terms["outer_"].item() == pytest.approx(OC.cost * metrics["outer_value_loss"], rel=1e-12)
    assert loss.item() + terms["outer_"].item() == pytest.approx(whole.item(), rel=1e-12)


def test_outer_critic_head_must_be_a_prefix():
    with pytest.raises(ValueError, match="head must be a non-empty parameter-name prefix or None, got ''"):
        OuterCritic(head="")


def test_real_network_outer_critic_restricted_to_its_head_leaves_the_rest_of_the_update_alone():
    from rlmeta.optim import sgd

    net, params = _outer_net()
    rollout = _net_rollout()
    head_only = OuterCritic(gamma=OC.gamma, lambda_=OC.lambda_, cost=OC.cost, head="outer_value_head.")
    optimizer = sgd(0.1)
    new, _, metrics = gradient_step(A2C(make_policy_value(net, "both"), outer_critic=head_only), optimizer, params, {},
                                    rollout, HP)
    alone, _, _ = gradient_step(A2C(make_policy_value(net, "value")), optimizer, params, {}, rollout, HP)
    shared, _, _ = gradient_step(A2C(make_policy_value(net, "both"), outer_critic=OC), optimizer, params, {}, rollout,
                                 HP)
    assert metrics["outer_value_loss"] > 0
    for key in params:
        if key.startswith("outer_value_head."):
            assert not torch.equal(new[key], params[key])  # it learns
        else:  # nothing else sees its loss
            torch.testing.assert_close(new[key], alone[key], rtol=1e-6, atol=1e-7)
    assert any(not torch.allclose(shared[k], alone[k], rtol=1e-5, atol=1e-7) for k in params
               if k.startswith("value_torso"))  # unrestricted, it trains the value torso too


# --------------------------------------------------------------------------------------------
# The plain minibatch loop on flat buffers (rlmeta.optim.FlatSteps) is the loop of gradient steps


def _gradient_step_loop(objective, opt, params, state, rollout, hparams, generator):
    """``update``'s minibatch loop as a plain loop of :func:`gradient_step` calls, one per minibatch."""
    batch = objective.prepare(params, rollout, hparams)
    size = batch["obs"].shape[0]
    per = size // objective.minibatches
    metrics = {}
    for _ in range(objective.epochs):
        order = torch.randperm(size, generator=generator)
        for start in range(0, per * objective.minibatches, per):
            minibatch = {k: v[order[start : start + per]] for k, v in batch.items()}
            params, state, metrics = gradient_step(objective, opt, params, state, minibatch, hparams)
    return params, state, metrics


@pytest.mark.parametrize("make_opt", [lambda: adam(0.05, eps=1e-5, max_grad_norm=0.5), lambda: sgd(0.1, momentum=0.9),
                                      lambda: adam(0.05)], ids=["adam_clipped", "sgd_momentum", "adam"])
@pytest.mark.parametrize("outer", [None, "joint", "restricted"])
@pytest.mark.parametrize("costs", [HP, {**HP, "policy_cost": 1.0, "entropy_cost": 0.0}], ids=["costs", "unit_zero"])
def test_plain_ppo_update_equals_a_loop_of_gradient_steps_bitwise(make_opt, outer, costs):
    params = make_params() if outer is None else make_outer_params()
    rollout = make_rollout(behaviour_logp=current_logp(params, make_rollout()))
    critic = {None: None, "joint": OC, "restricted": OuterCritic(gamma=0.97, lambda_=0.5, cost=0.3, head="outer_values")}
    objective = PPO(tabular_policy_value if outer is None else both_policy_value, outer_critic=critic[outer], epochs=3,
                    minibatches=2, value_clip=0.5)
    opt = make_opt()
    state = opt.init(params)
    new, new_state, metrics = update(objective, opt, params, state, rollout, costs,
                                     generator=torch.Generator().manual_seed(3))
    ref, ref_state, ref_metrics = _gradient_step_loop(objective, opt, params, state, rollout, costs,
                                                      torch.Generator().manual_seed(3))
    torch.testing.assert_close((new, new_state), (ref, ref_state), rtol=0, atol=0)
    assert metrics == ref_metrics
    assert all(v.is_leaf and v.requires_grad for v in new.values())


def test_ppo_unit_and_zero_costs_change_neither_the_loss_nor_its_gradient():
    """A cost that is the number 1 (0) multiplies nothing (drops its term): the same loss and gradient as
    the same costs given as tensors, which take the general path; metrics=False leaves the metrics out only."""
    params = make_params()
    rollout = make_rollout(behaviour_logp=current_logp(params, make_rollout()))
    objective = PPO(tabular_policy_value)
    batch = objective.prepare(params, rollout, HP)
    numbers = {**HP, "policy_cost": 1.0, "entropy_cost": 0.0}
    tensors = {**HP, "policy_cost": torch.tensor(1.0, dtype=DT), "entropy_cost": torch.tensor(0.0, dtype=DT)}
    results = [objective(params, batch, hp, 0.3, context) for hp, context in
               [(numbers, PLAIN), (tensors, PLAIN), (numbers, LossContext(metrics=False))]]
    grads = [torch.autograd.grad(r.total, list(params.values())) for r in results]
    for r, g in zip(results[1:], grads[1:]):
        assert torch.equal(r.total, results[0].total)
        assert all(torch.equal(a, b) for a, b in zip(g, grads[0]))
    assert results[0].metrics == results[1].metrics
    assert {"entropy", "clip_fraction", "policy_loss", "value_loss"} <= set(results[0].metrics)
    assert results[2].metrics == {}


def test_ppo_prepare_without_a_graph_is_bitwise_the_prepare_with_one():
    """Plain prepare runs the network without autograd (its values are held fixed): the same batch, bitwise;
    meta-learned hyperparameters keep their graph."""
    from rlmeta.rollout import ForwardMemo

    params = make_outer_params()
    rollout = make_rollout(behaviour_logp=current_logp(params, make_rollout()))
    objective = PPO(both_policy_value, outer_critic=OC)
    plain = objective.prepare(params, rollout, HP)
    traced = objective.prepare(params, rollout, HP, LossContext(memo=ForwardMemo()))
    assert set(plain) == set(traced)
    assert all(torch.equal(plain[k], traced[k].detach()) for k in plain)
    assert not any(v.requires_grad for v in plain.values())
    gamma = torch.tensor(HP["gamma"], dtype=DT, requires_grad=True)
    meta = objective.prepare(params, rollout, {**HP, "gamma": gamma})
    assert meta["advantages"].requires_grad and torch.equal(meta["advantages"].detach(), plain["advantages"])


# --------------------------------------------------------------------------------------------
# Compiled minibatch steps (UpdateMode.compile): the same update, one graph whatever the progress


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


@pytest.mark.skipif(not any(__import__("shutil").which(c) for c in ("g++", "c++", "clang++")),
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_ppo_update_equals_the_eager_one_and_compiles_once():
    """torch.compile'd losses (forward and backward as generated kernels) give the eager update to
    rounding, for a new progress every update (an annealed clip) without compiling again."""
    from rlmeta.objectives.lpo import LPONetwork

    params = make_outer_params()
    rollout = make_rollout(behaviour_logp=current_logp(params, make_rollout()))
    restricted = OuterCritic(gamma=0.97, lambda_=0.5, cost=0.3, head="outer_values")
    network = LPONetwork(hidden=4, lifetime_conditioning=True)
    drift = network.init(2, DT)
    drift = {k: v + 0.3 * torch.randn(v.shape, generator=torch.Generator().manual_seed(5), dtype=DT)
             for k, v in drift.items()}  # away from PPO: the drift reads the progress
    objectives = [PPO(both_policy_value, outer_critic=restricted, epochs=3, minibatches=2, value_clip=0.5,
                      anneal_clip=True),
                  LPO(tabular_policy_value, network, params=drift, epochs=2, minibatches=2)]
    for objective in objectives:
        objective_params = params if objective is objectives[0] else make_params()
        opt = adam(0.05, eps=1e-5, max_grad_norm=0.5)
        state = opt.init(objective_params)
        before = _graphs()
        for progress in (0.1, 0.6, 0.95):
            eager = update(objective, opt, objective_params, state, rollout, HP, progress=progress,
                           generator=torch.Generator().manual_seed(3))
            compiled = update(objective, opt, objective_params, state, rollout, HP, progress=progress,
                              mode=UpdateMode(compile=True), generator=torch.Generator().manual_seed(3))
            torch.testing.assert_close(compiled[:2], eager[:2], rtol=1e-10, atol=1e-12)
            assert compiled[2].keys() == eager[2].keys()
            assert all(v.is_leaf and v.requires_grad for v in compiled[0].values())
        assert _graphs() - before == 1  # one graph per objective: the progress is an input, not a constant


def test_compile_refuses_what_it_cannot_take():
    params = make_params()
    rollout = make_rollout(behaviour_logp=current_logp(params, make_rollout()))
    opt = adam(0.05)
    with pytest.raises(ValueError, match="compile applies to plain updates"):
        UpdateMode(differentiable=True, compile=True)
    with pytest.raises(ValueError, match="compile takes minibatch objectives"):
        update(A2C(tabular_policy_value), opt, params, opt.init(params), rollout, HP, mode=UpdateMode(compile=True))
