"""Tests of ``rlmeta.returns`` against plain reference loops written from the definitions.

The references below do not reuse the backward recursions of the implementation: for every
sub-env ``b`` and start time ``t`` they find the end of the episode (the first step ``e >= t`` with
``continues[e] == 0``, or the horizon ``T - 1``) and write each quantity as an explicit sum over the
future steps ``t..e``:

* n-step return: ``sum_{k<m} (prod_{j<k} d_{t+j}) r_{t+k} + (prod_{j<m} d_{t+j}) V(s'_{t+m-1})`` with
  ``m = min(n, e - t + 1)``.
* lambda-return: ``(1 - lambda) sum_{n=1}^{L-1} lambda^{n-1} G^(n)_t + lambda^{L-1} G^(L)_t`` with
  ``L = e - t + 1`` (the remaining weight goes on the longest return, truncated at the episode
  end or horizon).
* GAE: ``sum_{k<L} (prod_{j<k} lambda d_{t+j}) delta_{t+k}`` and lambda-return minus ``V(s_t)``.
* V-trace (Espeholt et al. 2018, eq. 1): ``v_t = V(s_t) + sum_{s=t}^{e} (prod_{i=t}^{s-1} d_i c_i)
  rho_s delta_s``; leaky V-trace as in rlax's ``leaky_vtrace`` (Zahavy et al. 2020) with ``c_bar``
  in place of 1; policy-gradient advantages as in rlax's ``vtrace_td_error_and_advantage``.

Data: random float64 ``[T, B]`` rollouts with terminations (discount 0, continues 0) and
truncations (discount gamma, continues 0, and a ``next_value`` unrelated to ``values[t + 1]``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlmeta import returns as R

T, B = 7, 5
ATOL = 1e-10
CONT, TERM, TRUNC = 0, 1, 2


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def make_rollout(seed: int, gamma: float = 0.9, num_steps: int = T, batch: int = B) -> dict:
    """A random rollout with terminations and truncations, as numpy float64 arrays.

    Column 0 has a termination at t=2, column 1 a truncation at t=3, column 2 no episode end at
    all (one trace over the whole horizon), the others random ends (including at ``T - 1``).
    """
    rng = np.random.default_rng(seed)
    kind = rng.choice(3, size=(num_steps, batch), p=[0.6, 0.2, 0.2])
    if num_steps >= 5 and batch >= 3:
        kind[:, 0] = CONT
        kind[2, 0] = TERM
        kind[:, 1] = CONT
        kind[3, 1] = TRUNC
        kind[:, 2] = CONT
    terminated = (kind == TERM).astype(np.float64)
    continues = (kind == CONT).astype(np.float64)
    values = rng.normal(size=(num_steps, batch))
    next_values = np.empty((num_steps, batch))
    for t in range(num_steps):
        for b in range(batch):
            if continues[t, b] == 1.0 and t < num_steps - 1:
                next_values[t, b] = values[t + 1, b]  # V(s'_t) = V(s_{t+1}) inside an episode
            else:
                # value of the true final observation (truncation), an arbitrary number at a
                # termination (it must be ignored: zero discount), or the horizon bootstrap
                next_values[t, b] = rng.normal() * 3.0
    return {
        "rewards": rng.normal(size=(num_steps, batch)),
        "terminated": terminated,
        "discounts": gamma * (1.0 - terminated),
        "values": values,
        "next_values": next_values,
        "continues": continues,
        "rhos": rng.uniform(0.2, 2.0, size=(num_steps, batch)),
        "kind": kind,
    }


def tt(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# Reference loops (python floats, one sub-env and one start time at a time)
# --------------------------------------------------------------------------------------------


def episode_end(continues: np.ndarray, t: int, b: int) -> int:
    """Last step ``e >= t`` of the episode that contains step ``t`` (or the horizon)."""
    e = t
    while e < continues.shape[0] - 1 and continues[e, b] == 1.0:
        e += 1
    return e


def ref_n_step(r, d, nv, cont, n: int) -> np.ndarray:
    num_steps, batch = r.shape
    out = np.zeros((num_steps, batch))
    for b in range(batch):
        for t in range(num_steps):
            m = min(n, episode_end(cont, t, b) - t + 1, num_steps - t)
            g = 0.0
            for k in range(m):
                g += math.prod(float(d[t + j, b]) for j in range(k)) * float(r[t + k, b])
            g += math.prod(float(d[t + j, b]) for j in range(m)) * float(nv[t + m - 1, b])
            out[t, b] = g
    return out


def ref_lambda_returns(r, d, nv, cont, lam: float) -> np.ndarray:
    num_steps, batch = r.shape
    n_step = {n: ref_n_step(r, d, nv, cont, n) for n in range(1, num_steps + 1)}
    out = np.zeros((num_steps, batch))
    for b in range(batch):
        for t in range(num_steps):
            length = episode_end(cont, t, b) - t + 1
            g = sum((1.0 - lam) * lam ** (n - 1) * n_step[n][t, b] for n in range(1, length))
            g += lam ** (length - 1) * n_step[length][t, b]
            out[t, b] = g
    return out


def ref_gae(r, d, v, nv, cont, lam: float) -> np.ndarray:
    num_steps, batch = r.shape
    out = np.zeros((num_steps, batch))
    for b in range(batch):
        for t in range(num_steps):
            a = 0.0
            for s in range(t, episode_end(cont, t, b) + 1):
                coef = math.prod(lam * float(d[j, b]) for j in range(t, s))
                a += coef * (float(r[s, b]) + float(d[s, b]) * float(nv[s, b]) - float(v[s, b]))
            out[t, b] = a
    return out


def ref_vtrace(v, nv, r, d, cont, rhos, lam=1.0, rho_bar=1.0, c_bar=1.0, pg_rho_bar=1.0, alpha=None):
    num_steps, batch = r.shape
    a = 1.0 if alpha is None else float(alpha)  # alpha = 1 is plain V-trace

    def clipped_rho(x):
        return (1.0 - a) * x + a * min(rho_bar, x)

    def trace(x):
        return ((1.0 - a) * x + a * min(c_bar, x)) * lam

    vs = np.zeros((num_steps, batch))
    for b in range(batch):
        for t in range(num_steps):
            total = float(v[t, b])
            for s in range(t, episode_end(cont, t, b) + 1):
                coef = math.prod(float(d[i, b]) * trace(float(rhos[i, b])) for i in range(t, s))
                delta = clipped_rho(float(rhos[s, b])) * (
                    float(r[s, b]) + float(d[s, b]) * float(nv[s, b]) - float(v[s, b])
                )
                total += coef * delta
            vs[t, b] = total
    pg = np.zeros((num_steps, batch))
    for b in range(batch):
        for t in range(num_steps):
            if t < num_steps - 1 and cont[t, b] == 1.0:
                boot = lam * vs[t + 1, b] + (1.0 - lam) * float(v[t + 1, b])
            else:
                boot = float(nv[t, b])
            q = float(r[t, b]) + float(d[t, b]) * boot
            pg[t, b] = min(pg_rho_bar, float(rhos[t, b])) * (q - float(v[t, b]))
    return vs, pg


def assert_close(got: torch.Tensor, expected, atol: float = ATOL):
    np.testing.assert_allclose(got.detach().numpy(), np.asarray(expected), rtol=0.0, atol=atol)


# --------------------------------------------------------------------------------------------
# The references themselves on a hand-computed case
# --------------------------------------------------------------------------------------------


def test_reference_loops_on_a_hand_computed_case():
    # one sub-env, T=3: truncation at t=0 (final obs value 5), then a step, then the horizon.
    r = np.array([[1.0], [2.0], [3.0]])
    d = np.array([[0.5], [0.5], [0.5]])
    v = np.array([[0.0], [10.0], [20.0]])
    nv = np.array([[5.0], [20.0], [40.0]])
    cont = np.array([[0.0], [1.0], [1.0]])
    np.testing.assert_allclose(ref_n_step(r, d, nv, cont, 3)[:, 0], [1 + 0.5 * 5, 2 + 0.5 * 3 + 0.25 * 40, 3 + 0.5 * 40])
    np.testing.assert_allclose(ref_n_step(r, d, nv, cont, 1)[:, 0], [3.5, 12.0, 23.0])
    lam = 0.5  # G_1 = 0.5 * 12 + 0.5 * (2 + 1.5 + 10)
    np.testing.assert_allclose(ref_lambda_returns(r, d, nv, cont, lam)[1, 0], 0.5 * 12.0 + 0.5 * 13.5)
    np.testing.assert_allclose(ref_gae(r, d, v, nv, cont, lam)[1, 0], 0.5 * 12.0 + 0.5 * 13.5 - 10.0)
    vs, pg = ref_vtrace(v, nv, r, d, cont, np.ones((3, 1)))
    np.testing.assert_allclose(vs[:, 0], [3.5, 13.5, 23.0])
    np.testing.assert_allclose(pg[:, 0], [3.5, 13.5 - 10.0, 3.0])


# --------------------------------------------------------------------------------------------
# Against the references
# --------------------------------------------------------------------------------------------

SEEDS = [0, 1, 2]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.9, 1.0])
def test_td_errors(seed, gamma):
    x = make_rollout(seed, gamma)
    got = R.td_errors(tt(x["rewards"]), tt(x["discounts"]), tt(x["values"]), tt(x["next_values"]))
    assert_close(got, x["rewards"] + x["discounts"] * x["next_values"] - x["values"])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gamma", [0.5, 0.9, 1.0])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 20])
def test_n_step_returns_match_reference(seed, gamma, n):
    x = make_rollout(seed, gamma)
    got = R.n_step_returns(tt(x["rewards"]), tt(x["discounts"]), tt(x["next_values"]), tt(x["continues"]), n)
    assert got.shape == (T, B) and got.dtype == torch.float64
    assert_close(got, ref_n_step(x["rewards"], x["discounts"], x["next_values"], x["continues"], n))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gamma", [0.5, 0.9, 1.0])
@pytest.mark.parametrize("lam", [0.0, 0.3, 0.8, 0.95, 1.0])
def test_lambda_returns_match_reference(seed, gamma, lam):
    x = make_rollout(seed, gamma)
    got = R.lambda_returns(tt(x["rewards"]), tt(x["discounts"]), tt(x["next_values"]), tt(x["continues"]), lam)
    assert got.shape == (T, B)
    assert_close(got, ref_lambda_returns(x["rewards"], x["discounts"], x["next_values"], x["continues"], lam))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gamma", [0.5, 0.9, 1.0])
@pytest.mark.parametrize("lam", [0.0, 0.5, 0.95, 1.0])
def test_generalized_advantages_match_reference(seed, gamma, lam):
    x = make_rollout(seed, gamma)
    args = [tt(x[k]) for k in ("rewards", "discounts", "values", "next_values", "continues")]
    got = R.generalized_advantages(*args, lambda_=lam)
    assert got.shape == (T, B)
    assert_close(got, ref_gae(x["rewards"], x["discounts"], x["values"], x["next_values"], x["continues"], lam))
    # GAE == lambda-returns - values (next_values[t] == values[t + 1] inside episodes)
    lr = R.lambda_returns(tt(x["rewards"]), tt(x["discounts"]), tt(x["next_values"]), tt(x["continues"]), lam)
    assert_close(got, (lr - tt(x["values"])).numpy())
    assert_close(got, ref_lambda_returns(x["rewards"], x["discounts"], x["next_values"], x["continues"], lam) - x["values"])


VTRACE_CASES = [
    # lam, rho_bar, c_bar, pg_rho_bar, alpha
    (1.0, 1.0, 1.0, 1.0, None),
    (0.9, 1.0, 1.0, 1.0, None),
    (0.95, 0.8, 1.3, 0.6, None),
    (0.7, 1.5, 0.7, 2.0, None),
    (0.0, 1.0, 1.0, 1.0, None),
    (1.0, 1.0, 1.0, 1.0, 1.0),  # leaky with alpha = 1 is plain V-trace
    (0.9, 1.0, 1.0, 1.0, 0.5),
    (0.8, 0.9, 1.2, 1.0, 0.25),
    (1.0, 1.0, 1.0, 1.0, 0.0),  # no clipping at all
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gamma", [0.5, 0.99])
@pytest.mark.parametrize("lam, rho_bar, c_bar, pg_rho_bar, alpha", VTRACE_CASES)
def test_vtrace_matches_reference(seed, gamma, lam, rho_bar, c_bar, pg_rho_bar, alpha):
    x = make_rollout(seed, gamma)
    out = R.vtrace(
        tt(x["values"]), tt(x["next_values"]), tt(x["rewards"]), tt(x["discounts"]), tt(x["continues"]),
        tt(x["rhos"]), lambda_=lam, rho_bar=rho_bar, c_bar=c_bar, pg_rho_bar=pg_rho_bar, alpha=alpha,
    )
    vs, pg = ref_vtrace(
        x["values"], x["next_values"], x["rewards"], x["discounts"], x["continues"], x["rhos"],
        lam=lam, rho_bar=rho_bar, c_bar=c_bar, pg_rho_bar=pg_rho_bar, alpha=alpha,
    )
    assert out.vs.shape == (T, B) and out.pg_advantages.shape == (T, B)
    assert_close(out.vs, vs)
    assert_close(out.pg_advantages, pg)


def test_leaky_vtrace_alpha_one_is_plain_vtrace_and_alpha_as_tensor():
    x = make_rollout(5, 0.9)
    args = [tt(x[k]) for k in ("values", "next_values", "rewards", "discounts", "continues", "rhos")]
    plain = R.vtrace(*args, lambda_=0.9, rho_bar=0.8, c_bar=1.1)
    leaky_one = R.vtrace(*args, lambda_=0.9, rho_bar=0.8, c_bar=1.1, alpha=torch.tensor(1.0, dtype=torch.float64))
    assert_close(leaky_one.vs, plain.vs.numpy())
    assert_close(leaky_one.pg_advantages, plain.pg_advantages.numpy())
    leaky = R.vtrace(*args, lambda_=0.9, rho_bar=0.8, c_bar=1.1, alpha=torch.tensor(0.3, dtype=torch.float64))
    vs, pg = ref_vtrace(
        x["values"], x["next_values"], x["rewards"], x["discounts"], x["continues"], x["rhos"],
        lam=0.9, rho_bar=0.8, c_bar=1.1, alpha=0.3,
    )
    assert_close(leaky.vs, vs)
    assert_close(leaky.pg_advantages, pg)


# --------------------------------------------------------------------------------------------
# Identities between the estimators
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gamma", [0.5, 0.9, 1.0])
def test_lambda_one_is_n_step_with_n_equal_T_and_lambda_zero_is_one_step(seed, gamma):
    x = make_rollout(seed, gamma)
    args = [tt(x[k]) for k in ("rewards", "discounts", "next_values", "continues")]
    assert_close(R.lambda_returns(*args, 1.0), R.n_step_returns(*args, T).numpy())
    assert_close(R.lambda_returns(*args, 0.0), R.n_step_returns(*args, 1).numpy())
    assert_close(R.n_step_returns(*args, 1), x["rewards"] + x["discounts"] * x["next_values"])
    assert_close(R.n_step_returns(*args, T + 10), R.n_step_returns(*args, T).numpy())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gamma", [0.5, 0.9, 1.0])
def test_vtrace_on_policy_lambda_one_is_lambda_return(seed, gamma):
    x = make_rollout(seed, gamma)
    vt = R.vtrace(
        tt(x["values"]), tt(x["next_values"]), tt(x["rewards"]), tt(x["discounts"]), tt(x["continues"]),
        torch.ones(T, B, dtype=torch.float64), lambda_=1.0,
    )
    lr = R.lambda_returns(tt(x["rewards"]), tt(x["discounts"]), tt(x["next_values"]), tt(x["continues"]), 1.0)
    assert_close(vt.vs, lr.numpy())
    # on-policy, lambda = 1: the pg advantage is the return minus the baseline
    assert_close(vt.pg_advantages, (lr - tt(x["values"])).numpy())


@pytest.mark.parametrize("lam", [0.0, 0.6, 1.0])
def test_vtrace_on_policy_any_lambda_is_lambda_return(lam):
    # rhos = 1 and no clipping bites: vs is the lambda-return and pg_advantages is GAE
    x = make_rollout(7, 0.9)
    vt = R.vtrace(
        tt(x["values"]), tt(x["next_values"]), tt(x["rewards"]), tt(x["discounts"]), tt(x["continues"]),
        torch.ones(T, B, dtype=torch.float64), lambda_=lam,
    )
    args = [tt(x[k]) for k in ("rewards", "discounts", "next_values", "continues")]
    assert_close(vt.vs, R.lambda_returns(*args, lam).numpy())
    gae = R.generalized_advantages(*[tt(x[k]) for k in ("rewards", "discounts", "values", "next_values", "continues")], lam)
    assert_close(vt.pg_advantages, gae.numpy())


def test_lambda_per_sub_env_tensor():
    x = make_rollout(3, 0.9)
    lams = [0.0, 0.3, 0.7, 0.95, 1.0]
    lam_t = torch.tensor(lams, dtype=torch.float64)
    args = [tt(x[k]) for k in ("rewards", "discounts", "next_values", "continues")]
    got = R.lambda_returns(*args, lam_t)
    gae = R.generalized_advantages(*[tt(x[k]) for k in ("rewards", "discounts", "values", "next_values", "continues")], lam_t)
    vt = R.vtrace(*[tt(x[k]) for k in ("values", "next_values", "rewards", "discounts", "continues", "rhos")], lambda_=lam_t)
    for b, lam in enumerate(lams):
        assert_close(got[:, b], R.lambda_returns(*args, lam)[:, b].numpy())
        col = {k: x[k][:, b : b + 1] for k in x}
        assert_close(got[:, b : b + 1], ref_lambda_returns(col["rewards"], col["discounts"], col["next_values"], col["continues"], lam))
        assert_close(gae[:, b : b + 1], ref_gae(col["rewards"], col["discounts"], col["values"], col["next_values"], col["continues"], lam))
        vs, pg = ref_vtrace(col["values"], col["next_values"], col["rewards"], col["discounts"], col["continues"], col["rhos"], lam=lam)
        assert_close(vt.vs[:, b : b + 1], vs)
        assert_close(vt.pg_advantages[:, b : b + 1], pg)


def test_nothing_flows_across_an_episode_end():
    x = make_rollout(0, 0.9)
    # column 0 terminates at t=2, column 1 is truncated at t=3: change everything after those.
    y = {k: v.copy() for k, v in x.items()}
    rng = np.random.default_rng(123)
    for b, end in ((0, 2), (1, 3)):
        for k in ("rewards", "values", "next_values", "rhos"):
            y[k][end + 1 :, b] = rng.uniform(0.3, 3.0, size=T - end - 1)
    # the ignored next_value of the terminal step, too (zero discount)
    y["next_values"][2, 0] = 1e6

    def run_all(z):
        a = [tt(z[k]) for k in ("rewards", "discounts", "next_values", "continues")]
        vt = R.vtrace(*[tt(z[k]) for k in ("values", "next_values", "rewards", "discounts", "continues", "rhos")], lambda_=0.9)
        gae = R.generalized_advantages(*[tt(z[k]) for k in ("rewards", "discounts", "values", "next_values", "continues")], 0.9)
        return [R.lambda_returns(*a, 0.9), R.n_step_returns(*a, 5), gae, vt.vs, vt.pg_advantages]

    for before, after in zip(run_all(x), run_all(y)):
        assert_close(after[:3, 0], before[:3, 0].numpy(), atol=0.0)
        assert_close(after[:4, 1], before[:4, 1].numpy(), atol=0.0)


def test_time_only_inputs_and_single_step():
    x = make_rollout(4, 0.9)
    col = {k: v[:, 3] for k, v in x.items()}
    a2 = [tt(x[k]) for k in ("rewards", "discounts", "next_values", "continues")]
    a1 = [tt(col[k]) for k in ("rewards", "discounts", "next_values", "continues")]
    assert R.lambda_returns(*a1, 0.8).shape == (T,)
    assert_close(R.lambda_returns(*a1, 0.8), R.lambda_returns(*a2, 0.8)[:, 3].numpy())
    assert_close(R.n_step_returns(*a1, 3), R.n_step_returns(*a2, 3)[:, 3].numpy())
    v1 = R.vtrace(*[tt(col[k]) for k in ("values", "next_values", "rewards", "discounts", "continues", "rhos")], lambda_=0.8)
    v2 = R.vtrace(*[tt(x[k]) for k in ("values", "next_values", "rewards", "discounts", "continues", "rhos")], lambda_=0.8)
    assert_close(v1.vs, v2.vs[:, 3].numpy())
    # T = 1: everything is the one-step target
    one = {k: v[:1] for k, v in x.items()}
    target = one["rewards"] + one["discounts"] * one["next_values"]
    a = [tt(one[k]) for k in ("rewards", "discounts", "next_values", "continues")]
    assert_close(R.lambda_returns(*a, 0.9), target)
    assert_close(R.n_step_returns(*a, 4), target)
    vt = R.vtrace(*[tt(one[k]) for k in ("values", "next_values", "rewards", "discounts", "continues")], torch.ones(1, B, dtype=torch.float64))
    assert_close(vt.vs, target)


# --------------------------------------------------------------------------------------------
# Gradients through gamma and lambda
# --------------------------------------------------------------------------------------------


def _all_outputs(x: dict, gamma, lam) -> torch.Tensor:
    """A scalar mixing every estimator, as a function of tensor (or float) gamma and lambda."""
    discounts = gamma * (1.0 - tt(x["terminated"]))
    r, v, nv, c, rhos = (tt(x[k]) for k in ("rewards", "values", "next_values", "continues", "rhos"))
    w = torch.as_tensor(np.random.default_rng(99).normal(size=(7, T, B)))
    outs = [
        R.lambda_returns(r, discounts, nv, c, lam),
        R.n_step_returns(r, discounts, nv, c, 3),
        R.generalized_advantages(r, discounts, v, nv, c, lam),
        R.td_errors(r, discounts, v, nv),
    ]
    vt = R.vtrace(v, nv, r, discounts, c, rhos, lambda_=lam, rho_bar=1.2, c_bar=0.9, pg_rho_bar=1.1)
    lk = R.vtrace(v, nv, r, discounts, c, rhos, lambda_=lam, rho_bar=1.2, c_bar=0.9, alpha=0.4)
    outs += [vt.vs, vt.pg_advantages, lk.vs + lk.pg_advantages]
    return sum((wi * o).sum() for wi, o in zip(w, outs))


def _rel_err(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("gamma0, lam0", [(0.9, 0.95), (0.6, 0.5), (0.99, 0.2)])
@pytest.mark.parametrize("closed_form", [True, False])
def test_gradients_wrt_gamma_and_lambda_match_finite_differences(seed, gamma0, lam0, closed_form, monkeypatch):
    monkeypatch.setattr(R, "CLOSED_FORM_MIN_STEPS", 2 if closed_form else T + 1)
    x = make_rollout(seed, gamma0)
    gamma = torch.tensor(gamma0, dtype=torch.float64, requires_grad=True)
    lam = torch.tensor(lam0, dtype=torch.float64, requires_grad=True)
    dg, dl = torch.autograd.grad(_all_outputs(x, gamma, lam), (gamma, lam))
    h = 1e-6
    with torch.no_grad():
        fd_g = (_all_outputs(x, gamma0 + h, lam0) - _all_outputs(x, gamma0 - h, lam0)) / (2 * h)
        fd_l = (_all_outputs(x, gamma0, lam0 + h) - _all_outputs(x, gamma0, lam0 - h)) / (2 * h)
    assert abs(fd_g.item()) > 1e-3 and abs(fd_l.item()) > 1e-3
    assert _rel_err(dg.item(), fd_g.item()) <= 1e-6, (dg.item(), fd_g.item())
    assert _rel_err(dl.item(), fd_l.item()) <= 1e-6, (dl.item(), fd_l.item())


@pytest.mark.parametrize("closed_form", [True, False])
def test_gradients_wrt_per_sub_env_lambda_match_finite_differences(closed_form, monkeypatch):
    monkeypatch.setattr(R, "CLOSED_FORM_MIN_STEPS", 2 if closed_form else T + 1)
    x = make_rollout(2, 0.9)
    lam0 = np.array([0.1, 0.4, 0.7, 0.9, 0.99])
    lam = torch.tensor(lam0, dtype=torch.float64, requires_grad=True)
    (dl,) = torch.autograd.grad(_all_outputs(x, 0.9, lam), (lam,))
    h = 1e-6
    for b in range(B):
        up, down = lam0.copy(), lam0.copy()
        up[b] += h
        down[b] -= h
        with torch.no_grad():
            fd = (_all_outputs(x, 0.9, tt(up)) - _all_outputs(x, 0.9, tt(down))).item() / (2 * h)
        assert _rel_err(dl[b].item(), fd) <= 1e-6, (b, dl[b].item(), fd)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def _good():
    x = make_rollout(0, 0.9)
    return {k: tt(x[k]) for k in ("rewards", "discounts", "values", "next_values", "continues", "rhos")}


@pytest.mark.parametrize("bad", ["rewards", "discounts", "next_values", "continues", "values", "rhos"])
@pytest.mark.parametrize("shape", [(T, B + 1), (T + 1, B), (T,), (T, 1), (T, B, 1)])
def test_bad_shapes_raise(bad, shape):
    a = _good()
    a[bad] = torch.zeros(shape, dtype=torch.float64)
    lr_args = (a["rewards"], a["discounts"], a["next_values"], a["continues"])
    calls = [lambda: R.vtrace(a["values"], a["next_values"], a["rewards"], a["discounts"], a["continues"], a["rhos"])]
    if bad != "rhos":
        calls.append(lambda: R.generalized_advantages(a["rewards"], a["discounts"], a["values"], a["next_values"], a["continues"]))
    if bad in ("rewards", "discounts", "next_values", "values"):
        calls.append(lambda: R.td_errors(a["rewards"], a["discounts"], a["values"], a["next_values"]))
    if bad in ("rewards", "discounts", "next_values", "continues"):
        calls += [lambda: R.lambda_returns(*lr_args, 0.9), lambda: R.n_step_returns(*lr_args, 2)]
    for call in calls:
        with pytest.raises(ValueError):
            call()


def test_scalar_inputs_raise():
    s = torch.tensor(1.0, dtype=torch.float64)
    with pytest.raises(ValueError):
        R.lambda_returns(s, s, s, s, 0.9)


@pytest.mark.parametrize("n", [0, -1, 1.0, 2.5, True, None])
def test_bad_n_raises(n):
    a = _good()
    with pytest.raises(ValueError):
        R.n_step_returns(a["rewards"], a["discounts"], a["next_values"], a["continues"], n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_generalized_advantages_without_gradients_are_bitwise_those_with(dtype):
    """Where nothing requires grad, GAE takes its coefficients for all steps at once: the same values, bitwise."""
    g = torch.Generator().manual_seed(7)
    T, B = 17, 5
    rewards, values, next_values = (torch.randn(T, B, generator=g, dtype=dtype) for _ in range(3))
    discounts = 0.97 * (torch.rand(T, B, generator=g, dtype=dtype) > 0.1).to(dtype)
    continues = (torch.rand(T, B, generator=g, dtype=dtype) > 0.2).to(dtype)
    for lam in (0.8, torch.tensor(0.93, dtype=dtype), torch.rand(B, generator=g, dtype=dtype)):
        plain = R.generalized_advantages(rewards, discounts, values, next_values, continues, lam)
        traced = R.generalized_advantages(rewards, discounts, values.clone().requires_grad_(True), next_values,
                                          continues, lam)
        assert traced.requires_grad and not plain.requires_grad
        assert torch.equal(plain, traced.detach())


def test_backward_recursion_is_the_loop_with_first_and_second_derivatives():
    """The closed form differentiated lambda-returns take: the recursion's values (float64), and its
    first and second derivatives (``gradcheck``, ``gradgradcheck``), with zeros among the a_t."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 4, dtype=torch.float64, generator=g)
    a = torch.rand(9, 4, dtype=torch.float64, generator=g) * (torch.rand(9, 4, generator=g) > 0.25)
    a[-1] = 0.0
    y, want = torch.zeros(4, dtype=torch.float64), []
    for t in reversed(range(9)):
        y = x[t] + a[t] * y
        want.append(y)
    assert torch.allclose(R.backward_recursion(x, a), torch.stack(want[::-1]), rtol=0, atol=1e-12)
    xs, as_ = x[:5, :2].clone().requires_grad_(True), a[:5, :2].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(R.backward_recursion, (xs, as_))
    assert torch.autograd.gradgradcheck(R.backward_recursion, (xs, as_))


@pytest.mark.parametrize("seed", SEEDS)
def test_differentiated_lambda_returns_take_the_closed_form_and_equal_the_loop(seed, monkeypatch):
    x = make_rollout(seed, 0.9)
    args = [tt(x[k]) for k in ("rewards", "discounts", "next_values", "continues")]
    lam = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    calls = []
    real = R.backward_recursion
    monkeypatch.setattr(R, "backward_recursion", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(R, "CLOSED_FORM_MIN_STEPS", T)  # T = 7 here: long enough
    traced = R.lambda_returns(*args, lam)
    assert calls and torch.allclose(traced.detach(), R.lambda_returns(*args, 0.8), rtol=0, atol=1e-12)
    calls.clear()
    R.lambda_returns(*args, 0.8)  # nothing to differentiate: the loop, bitwise as before
    monkeypatch.setattr(R, "CLOSED_FORM_MAX_ELEMENTS", T * T * B - 1)  # products too large: the loop
    R.lambda_returns(*args, lam)
    assert not calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lambda_returns_without_gradients_are_bitwise_the_step_by_step_loop(dtype):
    """Where nothing requires grad, lambda-returns take every step's coefficients at once: the values of
    the step-by-step recursion of the definition, bitwise (plain training's numbers do not move)."""
    g = torch.Generator().manual_seed(11)
    T, B = 17, 5
    rewards, next_values = (torch.randn(T, B, generator=g, dtype=dtype) for _ in range(2))
    discounts = 0.97 * (torch.rand(T, B, generator=g, dtype=dtype) > 0.1).to(dtype)
    continues = (torch.rand(T, B, generator=g, dtype=dtype) > 0.2).to(dtype)
    for lam in (0.8, torch.tensor(0.93, dtype=dtype), torch.rand(B, generator=g, dtype=dtype)):
        returns, ret = [], next_values[-1]
        for t in reversed(range(T)):
            mix = lam * continues[t] if t < T - 1 else torch.zeros_like(continues[t])
            ret = rewards[t] + discounts[t] * ((1 - mix) * next_values[t] + mix * ret)
            returns.append(ret)
        assert torch.equal(R.lambda_returns(rewards, discounts, next_values, continues, lam), torch.stack(returns[::-1]))
