"""Meta-gradient estimators: one-step, multi-step (optionally truncated), mixed and bootstrapped.

All of them differentiate an *outer* loss through K differentiable inner updates with respect to
the raw meta-parameters of a :class:`~rlmeta.hparams.MetaParams`:

* one-step (Xu, van Hasselt and Silver 2018, "Meta-Gradient Reinforcement Learning"): one inner
  update on rollout 0, the outer loss on a fresh rollout 1;
* multi-step: K inner updates on rollouts 0..K-1, the outer loss on rollout K (``truncation=T``
  keeps the graph of the last T updates only; earlier ones run without it, which also saves
  their memory);
* mixed (Bonnet et al. 2021, "One Step at a Time: Pros and Cons of Multi-Step Meta-Gradient
  RL"): ``sum_k w_k g_k / sum_k w_k`` over the k-step meta-gradients ``g_k``, k = 1..K, from a
  single unroll: after k updates the outer loss ``L_k`` is taken on rollout k, the one the agent
  collects next anyway, and one backward pass of ``sum_k w_k L_k`` gives the combination;
* bootstrapped (Flennerhag et al. 2022, "Bootstrapped Meta-Learning", BMG): after the K
  differentiable updates, L further updates without a graph give a target; the meta-loss is
  ``KL(pi_target || pi_K)`` on the states of the last rollout (plus, optionally, a squared
  distance between the values).

Rollouts come from ``collect(params) -> Rollout``, called with detached parameters whenever the
unroll needs the next one (rollout k is collected by the agent after k updates, as online), so
fixed rollouts can be fed for exactness tests. The inner update is the learner's:
``inner_update(params, opt_state, rollout, hparams, create_graph) -> (params, opt_state)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from rlmeta.hparams import MetaParams

InnerUpdate = Callable[[dict, Any, Any, dict, bool], tuple[dict, Any]]
OuterLoss = Callable[[dict, Any, dict | None], Tensor]  # (params, rollout, params before the update) -> loss
Collect = Callable[[dict], Any]


@dataclass
class MetaGradient:
    """One estimate and where the agent stands after it."""

    grads: dict[str, Tensor]  # d meta-loss / d raw meta-parameter, per name
    params: dict[str, Tensor]  # agent parameters after the K inner updates (detached leaves)
    opt_state: Any  # the inner optimizer's state after them (detached)
    meta_loss: float
    outer_losses: list[float] = field(default_factory=list)  # L_1..L_K where computed
    rollouts_used: int = 0  # rollouts collected (a reused first rollout not counted)
    next_rollout: Any = None  # the fresh rollout of L_K, collected with ``params``: reusable as the next rollout 0

    def norm(self) -> float:
        """Global norm of the meta-gradient."""
        return float(torch.sqrt(sum((g.detach() ** 2).sum() for g in self.grads.values())))

    def vector(self) -> Tensor:
        """The meta-gradient as one vector, in the meta-parameters' order."""
        return torch.stack([g.detach().reshape(()) for g in self.grads.values()])


def _detach(tree: Any) -> Any:
    if isinstance(tree, Tensor):
        return tree.detach()
    if isinstance(tree, dict):
        return {k: _detach(v) for k, v in tree.items()}
    return tree


def _leaves(params: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().requires_grad_(True) for k, v in params.items()}


def check_num_updates(num_updates: int) -> int:
    """K must be an integer >= 1."""
    if isinstance(num_updates, bool) or not isinstance(num_updates, int) or num_updates < 1:
        raise ValueError(f"the number of inner updates K must be an integer >= 1, got {num_updates!r}")
    return num_updates


def mixing_weights(num_updates: int, weights: str | Sequence[float] = "uniform", decay: float = 0.5) -> list[float]:
    """Normalized weights ``w_1..w_K`` of the k-step meta-gradients.

    ``"uniform"``: all equal; ``"geometric"``: ``w_k`` proportional to ``decay ** (K - k)`` (the
    K-step estimate weighs most; ``decay`` in (0, 1]); or K nonnegative numbers with a positive sum.
    """
    k = check_num_updates(num_updates)
    if isinstance(weights, str):
        if weights == "uniform":
            raw = [1.0] * k
        elif weights == "geometric":
            if not 0 < decay <= 1:
                raise ValueError(f"geometric mixing needs decay in (0, 1], got {decay!r}")
            raw = [decay ** (k - i) for i in range(1, k + 1)]
        else:
            raise ValueError(f"mixing weights must be 'uniform', 'geometric' or {k} numbers, got {weights!r}")
    else:
        raw = [float(w) for w in weights]
        if len(raw) != k:
            raise ValueError(f"mixing weights must have K={k} entries (one per k-step estimate), got {len(raw)}")
        if any(not w >= 0 for w in raw) or not sum(raw) > 0:
            raise ValueError(f"mixing weights must be >= 0 with a positive sum, got {raw}")
    total = sum(raw)
    return [w / total for w in raw]


class Estimator:
    """Shared machinery: the unroll, the meta-loss and its gradient (see the module docstring)."""

    name = "estimator"

    def __init__(self, inner_update: InnerUpdate, outer_loss: OuterLoss, num_updates: int = 1):
        self.inner_update = inner_update
        self.outer_loss = outer_loss
        self.num_updates = check_num_updates(num_updates)

    def weights(self) -> list[float]:
        """Weight of ``L_k`` (outer loss after k updates) in the meta-loss, k = 1..K."""
        return [0.0] * (self.num_updates - 1) + [1.0]

    def truncation(self) -> int:
        """How many of the last inner updates keep their graph."""
        return self.num_updates

    def estimate(self, meta: MetaParams, params: dict, opt_state: Any, collect: Collect,
                 first_rollout: Any = None) -> MetaGradient:
        """Unroll K inner updates from ``params`` and differentiate the meta-loss w.r.t. ``meta.raw``.

        ``first_rollout``: rollout 0, if the caller has one collected with ``params`` already (the
        previous estimate's ``next_rollout``, as Xu et al. 2018 reuse it); otherwise collected.
        """
        hparams = meta.hparams()
        weights = self.weights()
        keep_from = self.num_updates - self.truncation()
        meta_loss: Tensor | float = 0.0
        outer_losses: list[float] = []
        used = 0
        params, previous = _leaves(params), None
        self._last_fresh = None
        for k in range(self.num_updates):
            if k == 0 and first_rollout is not None:
                rollout = first_rollout
            else:
                rollout = collect(_detach(params))
                used += 1
            if k > 0 and weights[k - 1]:
                loss = self.outer_loss(params, rollout, previous)
                outer_losses.append(float(loss.detach()))
                meta_loss = meta_loss + weights[k - 1] * loss
            differentiable = k >= keep_from
            if k == keep_from:  # cut the graph: only the last `truncation` updates carry meta-gradient
                params, opt_state = _leaves(params), _detach(opt_state)
            previous = _detach(params)
            step_hparams = hparams if differentiable else _detach(hparams)
            params, opt_state = self.inner_update(params, opt_state, rollout, step_hparams, differentiable)
        final, used = self.final_loss(params, opt_state, previous, collect, used)
        outer_losses.append(float(final.detach()))
        meta_loss = meta_loss + weights[-1] * final
        names = meta.names
        grads = torch.autograd.grad(meta_loss, [meta.raw[n] for n in names], allow_unused=True)
        grads = {n: torch.zeros_like(meta.raw[n]) if g is None else g for n, g in zip(names, grads)}
        return MetaGradient(grads, _leaves(params), _detach(opt_state), float(meta_loss.detach()), outer_losses, used,
                            self._last_fresh)

    def final_loss(self, params: dict, opt_state: Any, previous: dict | None, collect: Collect, used: int):
        """``L_K``: the outer loss on a fresh rollout after the K-th update."""
        rollout = collect(_detach(params))
        self._last_fresh = rollout
        return self.outer_loss(params, rollout, previous), used + 1


class OneStep(Estimator):
    """Xu et al. (2018): one differentiable update, the outer loss on the next rollout."""

    name = "one-step"

    def __init__(self, inner_update: InnerUpdate, outer_loss: OuterLoss):
        super().__init__(inner_update, outer_loss, 1)


class MultiStep(Estimator):
    """K differentiable updates, the outer loss after the K-th; optionally truncated to the last T."""

    name = "multi-step"

    def __init__(self, inner_update: InnerUpdate, outer_loss: OuterLoss, num_updates: int,
                 truncation: int | None = None):
        super().__init__(inner_update, outer_loss, num_updates)
        if truncation is not None and not (isinstance(truncation, int) and 1 <= truncation <= num_updates):
            raise ValueError(f"truncation must be an integer in [1, K={num_updates}] or None, got {truncation!r}")
        self._truncation = truncation or num_updates

    def truncation(self) -> int:
        return self._truncation


class Mixed(Estimator):
    """Bonnet et al. (2021): a weighted combination of the k-step meta-gradients, k = 1..K, one unroll."""

    name = "mixed"

    def __init__(self, inner_update: InnerUpdate, outer_loss: OuterLoss, num_updates: int,
                 weights: str | Sequence[float] = "uniform", decay: float = 0.5):
        super().__init__(inner_update, outer_loss, num_updates)
        self._weights = mixing_weights(num_updates, weights, decay)

    def weights(self) -> list[float]:
        return self._weights


class Bootstrapped(Estimator):
    """Flennerhag et al. (2022), BMG: match the K-step policy to a target L updates further on.

    ``policy_value(params, obs, hparams) -> (distribution, values)`` reads the policies;
    ``target_hparams`` drive the L target updates (default: the current values, detached).
    The meta-loss is ``KL(pi_target || pi_K)`` averaged over the last rollout's observations,
    plus ``value_cost * 0.5 (v_target - v_K)^2``.
    """

    name = "bootstrapped"

    def __init__(self, inner_update: InnerUpdate, policy_value: Callable, num_updates: int = 1,
                 target_updates: int = 1, value_cost: float = 0.0, target_hparams: dict | None = None):
        super().__init__(inner_update, lambda p, r, prev: torch.zeros(()), num_updates)
        if not isinstance(target_updates, int) or target_updates < 1:
            raise ValueError(f"target_updates (L) must be an integer >= 1, got {target_updates!r}")
        if not value_cost >= 0:
            raise ValueError(f"value_cost must be >= 0, got {value_cost!r}")
        self.policy_value = policy_value
        self.target_updates = target_updates
        self.value_cost = value_cost
        self.target_hparams = target_hparams
        self._current_hparams: dict = {}

    def estimate(self, meta: MetaParams, params: dict, opt_state: Any, collect: Collect,
                 first_rollout: Any = None) -> MetaGradient:
        self._current_hparams = _detach(meta.hparams())
        return super().estimate(meta, params, opt_state, collect, first_rollout)

    def final_loss(self, params: dict, opt_state: Any, previous: dict | None, collect: Collect, used: int):
        """``KL(pi_target || pi_K)`` (+ value term) after L non-differentiated target updates."""
        hparams = self.target_hparams if self.target_hparams is not None else self._current_hparams
        target, state = _leaves(params), _detach(opt_state)
        rollout = None
        for _ in range(self.target_updates):
            rollout = collect(_detach(target))
            used += 1
            target, state = self.inner_update(target, state, rollout, hparams, False)
            target = _leaves(target)
        obs = rollout.obs.reshape(-1, *rollout.obs.shape[2:])
        return self.match(params, _detach(target), obs, hparams), used

    def match(self, params: dict, target: dict, obs: Tensor, hparams: dict) -> Tensor:
        """The matching loss: ``KL(pi_target || pi_params)`` (+ value term) on ``obs`` (target held fixed)."""
        with torch.no_grad():
            target_dist, target_values = self.policy_value(target, obs, hparams)
        dist, values = self.policy_value(params, obs, hparams)
        loss = torch.distributions.kl_divergence(target_dist, dist).mean()
        if self.value_cost:
            loss = loss + self.value_cost * 0.5 * ((target_values - values) ** 2).mean()
        return loss


ESTIMATORS = {"one-step": OneStep, "multi-step": MultiStep, "mixed": Mixed, "bootstrapped": Bootstrapped}
