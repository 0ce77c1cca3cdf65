"""Multi-step returns and off-policy corrections as pure, differentiable torch functions.

All inputs are time-major ``[T, B]`` tensors describing ``T`` consecutive transitions of ``B``
sub-envs, in the form the rlmeta vector-env contract makes natural:

* ``rewards[t]``: reward of transition ``t``.
* ``discounts[t]``: ``gamma * (1 - terminated[t])``; pass ``gamma`` as a tensor to differentiate
  through it.
* ``values[t]``: ``V(s_t)``.
* ``next_values[t]``: ``V(s'_t)``, the value of the state the transition led to: the true final
  observation when the episode ended at ``t`` (``info["final_obs"]``, needed for truncation),
  otherwise ``V(s_{t+1})`` (for ``t = T-1`` the bootstrap value). Its value at terminal steps is
  multiplied by a zero discount.
* ``continues[t]``: 1.0 when transition ``t + 1`` continues the same episode (neither terminated
  nor truncated at ``t``), else 0.0. Traces are cut where it is 0, so nothing flows across an
  episode boundary even inside one rollout.

Every function is written as the backward recursion of its definition, so gradients flow to
``discounts``, ``lambda_`` and the values exactly as in the math. ``lambda_`` may be a float or a
tensor broadcastable to ``[B]``.

References: Sutton and Barto (2018) for n-step and lambda-returns; Schulman et al. (2016),
"High-Dimensional Continuous Control Using Generalized Advantage Estimation"; Espeholt et al.
(2018), "IMPALA" for V-trace; Zahavy et al. (2020), "A Self-Tuning Actor-Critic Algorithm"
(STACX) for leaky V-trace.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


def _check_time_major(**tensors: Tensor) -> None:
    """Raise ValueError unless all tensors share one ``[T, B]`` (or ``[T]``) shape."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items() if isinstance(t, Tensor)}
    first = next(iter(shapes.values()))
    if len(first) < 1 or any(s != first for s in shapes.values()):
        raise ValueError(f"expected tensors of one time-major shape [T, B], got {shapes}")


def td_errors(rewards: Tensor, discounts: Tensor, values: Tensor, next_values: Tensor) -> Tensor:
    """One-step TD errors ``r_t + d_t V(s'_t) - V(s_t)``, ``[T, B]``."""
    _check_time_major(rewards=rewards, discounts=discounts, values=values, next_values=next_values)
    return rewards + discounts * next_values - values


# The closed form's [T, T, ...] products: used where they stay this small (elements).
CLOSED_FORM_MAX_ELEMENTS = 1 << 22
CLOSED_FORM_MIN_STEPS = 8  # shorter horizons: the loop is as fast


def _closed_form_pays(num_steps: int, *inputs: float | Tensor) -> bool:
    """Whether a differentiated recursion should take :func:`backward_recursion` (the loop records
    ~10 ops per step, each differentiated again by a meta-gradient): the horizon is long enough to
    pay (measured, forward and backward in gamma and lambda, 1 thread: 2.76 -> 1.85 ms at 16 x 64;
    at 5 x 512 the loop is faster, 0.87 vs 0.97 ms), and the products stay small."""
    if num_steps < CLOSED_FORM_MIN_STEPS:
        return False
    per_step = max(x.numel() // max(x.shape[0], 1) if x.dim() else 1 for x in inputs if torch.is_tensor(x))
    return num_steps * num_steps * per_step <= CLOSED_FORM_MAX_ELEMENTS


def backward_recursion(x: Tensor, a: Tensor) -> Tensor:
    """``y_t = x_t + a_t y_{t+1}`` with ``y_T = 0``, for time-major ``x`` and ``a``, without a loop.

    ``y_t = sum_{k >= t} (prod_{j=t}^{k-1} a_j) x_k``: the products for every (t, k) come from one
    cumulative product over ``[T, T, ...]`` (``a_j`` for ``j >= t``, ones before; zeros, at episode
    ends, are fine for the product and its derivatives), then one weighted sum. About 15 ops and
    as many in its backward, instead of ~10 per step each way: what a differentiated lambda-return
    costs inside a meta-gradient. Equal to the recursion to rounding (tested in float64).
    """
    x, a = torch.broadcast_tensors(x, a)
    steps = x.shape[0]
    index = torch.arange(steps, device=x.device)
    shape = (steps, steps) + (1,) * (x.dim() - 1)
    later = (index[None, :] >= index[:, None]).view(shape)  # [t, k]: k >= t
    factors = torch.where(later, a.unsqueeze(0), torch.ones((), dtype=a.dtype, device=a.device))  # [t, j]
    # products[t, k] = prod_{j < k} factors[t, j] = prod_{j=t}^{k-1} a_j for k >= t (the empty product on the diagonal)
    products = torch.cumprod(torch.cat([torch.ones_like(factors[:, :1]), factors[:, :-1]], dim=1), dim=1)
    return (torch.where(later, products, torch.zeros((), dtype=x.dtype, device=x.device)) * x.unsqueeze(0)).sum(1)


def lambda_returns(
    rewards: Tensor, discounts: Tensor, next_values: Tensor, continues: Tensor, lambda_: float | Tensor = 1.0
) -> Tensor:
    """TD(lambda) returns ``G_t = r_t + d_t ((1 - l_t) V(s'_t) + l_t G_{t+1})``, ``[T, B]``.

    ``l_t = lambda * continues_t``, and ``l_{T-1} = 0`` (bootstrap at the horizon).
    ``lambda_ = 1`` gives Monte-Carlo returns bootstrapped at the end; ``0`` gives one-step targets.
    """
    _check_time_major(rewards=rewards, discounts=discounts, next_values=next_values, continues=continues)
    num_steps = rewards.shape[0]
    inputs = (rewards, discounts, next_values, continues, lambda_)
    differentiated = any(torch.is_tensor(x) and x.requires_grad for x in inputs)
    returns = []
    g = next_values[-1]
    if not differentiated or _closed_form_pays(num_steps, *inputs):
        mix = lambda_ * torch.cat([continues[:-1], torch.zeros_like(continues[-1:])])  # l_{T-1} = 0
        if differentiated:
            return backward_recursion(rewards + discounts * (1 - mix) * next_values, discounts * mix)
        # Nothing to differentiate: every step's coefficients at once (the same products, so the same
        # values, bitwise), the recursion on their rows.
        rows = zip(rewards.unbind(0), discounts.unbind(0), ((1 - mix) * next_values).unbind(0), mix.unbind(0))
        for r, d, stay, m in reversed(list(rows)):
            g = r + d * (stay + m * g)
            returns.append(g)
        return torch.stack(returns[::-1])
    for t in reversed(range(num_steps)):
        mix = lambda_ * continues[t] if t < num_steps - 1 else torch.zeros_like(continues[t])
        g = rewards[t] + discounts[t] * ((1 - mix) * next_values[t] + mix * g)
        returns.append(g)
    return torch.stack(returns[::-1])


def n_step_returns(
    rewards: Tensor, discounts: Tensor, next_values: Tensor, continues: Tensor, n: int
) -> Tensor:
    """n-step returns, ``[T, B]``: ``n`` rewards then a bootstrap, cut at episode ends and at T."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    _check_time_major(rewards=rewards, discounts=discounts, next_values=next_values, continues=continues)
    g = rewards + discounts * next_values  # 1-step returns
    for _ in range(n - 1):  # G^k_t = r_t + d_t (c_t G^{k-1}_{t+1} + (1 - c_t) V(s'_t))
        later = torch.cat([g[1:], next_values[-1:]], dim=0)
        c = torch.cat([continues[:-1], torch.zeros_like(continues[-1:])], dim=0)
        g = rewards + discounts * (c * later + (1 - c) * next_values)
    return g


def generalized_advantages(
    rewards: Tensor, discounts: Tensor, values: Tensor, next_values: Tensor, continues: Tensor,
    lambda_: float | Tensor = 0.95,
) -> Tensor:
    """GAE: ``A_t = delta_t + d_t lambda c_t A_{t+1}``, ``[T, B]``; equals lambda-returns minus values."""
    _check_time_major(values=values, continues=continues)
    deltas = td_errors(rewards, discounts, values, next_values)
    advantages = []
    a = torch.zeros_like(deltas[-1])
    inputs = (rewards, discounts, values, next_values, continues, lambda_)
    if not any(torch.is_tensor(x) and x.requires_grad for x in inputs):
        # Nothing to differentiate: the coefficients d_t lambda c_t of all steps at once (the same
        # products, so the same values), the recursion on their rows.
        coefficients = (discounts * lambda_ * continues).unbind(0)
        rows = deltas.unbind(0)
        for t in reversed(range(deltas.shape[0])):
            a = rows[t] + coefficients[t] * a
            advantages.append(a)
        return torch.stack(advantages[::-1])
    for t in reversed(range(deltas.shape[0])):
        a = deltas[t] + discounts[t] * lambda_ * continues[t] * a
        advantages.append(a)
    return torch.stack(advantages[::-1])


class VTraceOutput(NamedTuple):
    """V-trace targets ``vs`` and policy-gradient advantages, both ``[T, B]``."""

    vs: Tensor
    pg_advantages: Tensor


def vtrace(
    values: Tensor, next_values: Tensor, rewards: Tensor, discounts: Tensor, continues: Tensor, rhos: Tensor,
    lambda_: float | Tensor = 1.0, rho_bar: float = 1.0, c_bar: float = 1.0, pg_rho_bar: float = 1.0,
    alpha: float | Tensor | None = None,
) -> VTraceOutput:
    """V-trace (Espeholt et al. 2018) with rho-bar/c-bar clipping and optional leaky mixing.

    ``rhos = pi(a_t|s_t) / mu(a_t|s_t)`` are the importance ratios ``[T, B]``. With ``alpha``
    (leaky V-trace, Zahavy et al. 2020), the clipped ratios are mixed with the unclipped ones:
    ``rho_t = alpha min(rho_bar, rho) + (1 - alpha) rho`` and likewise for ``c_t``; ``alpha = 1``
    is plain V-trace. Traces: ``c_t = lambda min(c_bar, rho_t)``.

    ``vs_t = V(s_t) + delta_t + d_t c_t continues_t (vs_{t+1} - V(s_{t+1}))`` with
    ``delta_t = rho_t (r_t + d_t V(s'_t) - V(s_t))``; the advantages are
    ``min(pg_rho_bar, rho_t) (r_t + d_t q_{t+1} - V(s_t))`` where ``q_{t+1}`` is
    ``lambda vs_{t+1} + (1 - lambda) V(s_{t+1})`` inside an episode and ``V(s'_t)`` at its end.
    Gradients flow through everything; detach inputs (e.g. ``rhos``) where a loss needs it.
    """
    _check_time_major(
        values=values, next_values=next_values, rewards=rewards, discounts=discounts, continues=continues, rhos=rhos
    )
    clipped_rhos = torch.clamp(rhos, max=rho_bar)
    cs = torch.clamp(rhos, max=c_bar)
    if alpha is not None:
        clipped_rhos = alpha * clipped_rhos + (1 - alpha) * rhos
        cs = alpha * cs + (1 - alpha) * rhos
    cs = lambda_ * cs
    deltas = clipped_rhos * (rewards + discounts * next_values - values)
    num_steps = values.shape[0]
    corrections = []
    acc = torch.zeros_like(values[-1])
    for t in reversed(range(num_steps)):
        carry = continues[t] if t < num_steps - 1 else torch.zeros_like(continues[t])
        acc = deltas[t] + discounts[t] * cs[t] * carry * acc
        corrections.append(acc)
    vs = values + torch.stack(corrections[::-1])
    # Bootstrap of the policy-gradient target: within an episode, lambda-mix of vs_{t+1} and V(s_{t+1}).
    vs_next = torch.cat([vs[1:], next_values[-1:]], dim=0)
    values_next = torch.cat([values[1:], next_values[-1:]], dim=0)
    inside = torch.cat([continues[:-1], torch.zeros_like(continues[-1:])], dim=0)
    q_next = inside * (lambda_ * vs_next + (1 - lambda_) * values_next) + (1 - inside) * next_values
    pg_advantages = torch.clamp(rhos, max=pg_rho_bar) * (rewards + discounts * q_next - values)
    return VTraceOutput(vs=vs, pg_advantages=pg_advantages)
