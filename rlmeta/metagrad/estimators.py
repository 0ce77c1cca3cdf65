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

Memory: by default the unroll keeps every differentiable update's graph (activations of the
inner losses and of their gradients), so memory grows with K by one update's graph per step.
``recompute=True`` is the memory-saving path for large K: the forward sweep runs the K updates
without a graph and stores only what each update starts from (parameters, optimizer state,
rollout); a backward sweep then rebuilds one update's graph at a time, from the last to the
first, and pushes the adjoint of the parameters and optimizer state through it (per-update
checkpointing). Peak memory is one update's graph plus K parameter copies, at the price of one
more inner update's compute per step; the meta-gradient is the same (tested to 1e-10 in float64).
Inner updates that draw random numbers (PPO's minibatches) must use the estimator's
``generator``, whose state is replayed for each rebuilt update.

Forward passes are shared where two losses evaluate the same parameters on the same rollout
(:class:`~rlmeta.rollout.ForwardMemo`, for ``policy_value`` functions that allow it): the outer
loss ``L_k`` of a mixed unroll with the (k+1)-th inner update, and ``L_K`` with the next
estimate's first inner update when that estimate starts from this one's parameters and reuses
its fresh rollout (``first_rollout=result.next_rollout``, as training does). For the latter,
``L_K`` is differentiated at leaf copies of the parameters, and its gradient there is pushed
through the unroll; the meta-gradient is the same.

Rollouts come from ``collect(params) -> Rollout``, called with detached parameters whenever the
unroll needs the next one (rollout k is collected by the agent after k updates, as online), so
fixed rollouts can be fed for exactness tests. The inner update is the learner's (see
:class:`InnerUpdate`); the estimator tells it, per update, how it is differentiated
(``rlmeta.learner.UpdateMode``): exact targets wherever the parameters depend on the
meta-parameters (after the first update of an unroll, or from the first one for an agent
conditioned on them), unless the estimator was made with ``exact=False``, the published
semi-gradient form, whose targets are always detached.

The approximate mode trades variance for time in both second-order passes of a one-step
meta-gradient: ``tangent_fraction`` < 1 runs the first update's tangent pass on a random subset of
its sub-envs (``rlmeta.tangent``), ``outer_fraction`` < 1 takes ``L_K``'s gradient from the outer
loss on a random subset of its rollout's sub-envs (a forward and backward of that subset alone;
the full ``L_K`` is still computed, as the value reported and the forward the next update
shares). Each is an unbiased estimate for a per-env loss, and so is their product, the two
subsets being drawn independently (tested exactly over all subsets); only ``L_K`` is subsampled,
not the intermediate outer losses of a mixed unroll.

Meta-parameters (``rlmeta.hparams.MetaParams``) are a dict of tensors: named bounded scalars and
whole parameter trees alike; ``MetaGradient.grads`` has one entry per raw tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import Tensor

from rlmeta.catalog import check_num_updates, mixing_weights
from rlmeta.hparams import MetaParams
from rlmeta.learner import UpdateMode
from rlmeta.optim import detached, float_tensors
from rlmeta.objectives.base import LossContext
from rlmeta.rollout import ForwardMemo, Params, Rollout
from rlmeta.tangent import draw_columns


class InnerUpdate(Protocol):
    """The learner's update as an estimator calls it: ``(params, opt_state, rollout, hparams, mode)``."""

    def __call__(self, params: Params, opt_state: Any, rollout: Rollout, hparams: dict, mode: UpdateMode
                 ) -> tuple[Params, Any]:
        """The parameters and optimizer state after one update on ``rollout``."""


class OuterLoss(Protocol):
    """The outer loss (e.g. :class:`~rlmeta.metagrad.OuterObjective`): ``(params, rollout, previous, context)``."""

    def __call__(self, params: Params, rollout: Rollout, previous: Params | None, context: LossContext) -> Tensor:
        """The outer loss of ``params`` on ``rollout`` (``previous``: the parameters before the last update)."""


Collect = Callable[[Params], Rollout]


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
        """The meta-gradient as one flat vector, in the meta-parameters' order (trees flattened)."""
        return torch.cat([g.detach().reshape(-1) for g in self.grads.values()])


def _leaves(params: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().requires_grad_(True) for k, v in params.items()}


def _leaf_state(tree: Any) -> Any:
    """The optimizer state with every floating-point tensor a fresh leaf that requires grad."""
    if isinstance(tree, Tensor):
        return tree.detach().requires_grad_(True) if tree.is_floating_point() else tree
    if isinstance(tree, dict):
        return {k: _leaf_state(v) for k, v in tree.items()}
    return tree


class Estimator:
    """Shared machinery: the unroll, the meta-loss and its gradient (see the module docstring)."""

    name = "estimator"
    shares_final_forward = True  # L_K is the outer loss on a fresh rollout (see _estimate)

    def __init__(self, inner_update: InnerUpdate, outer_loss: OuterLoss, num_updates: int = 1,
                 recompute: bool = False, generator: torch.Generator | None = None, exact: bool = True,
                 tangent: bool = True, tangent_fraction: float = 1.0, outer_fraction: float = 1.0):
        self._carried: ForwardMemo | None = None  # the last L_K's forward, for the next first update
        self.inner_update = inner_update
        self.outer_loss = outer_loss
        self.num_updates = check_num_updates(num_updates)
        for name, flag in (("recompute", recompute), ("exact", exact), ("tangent", tangent)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be True or False, got {flag!r}")
        self.recompute = recompute
        self.exact = exact  # False: the semi-gradient form (targets detached in every inner loss)
        # True (default, measured faster): updates whose parameters do not depend on eta take the
        # forward-over-reverse path where it applies (rlmeta.tangent); False: reverse-over-reverse
        # everywhere (the reference).
        self.tangent = tangent
        # < 1: the approximate tangent pass on that fraction of the sub-envs (unbiased, noisier).
        if not (isinstance(tangent_fraction, (int, float)) and 0.0 < tangent_fraction <= 1.0):
            raise ValueError(f"tangent_fraction must be in (0, 1], got {tangent_fraction!r}")
        if tangent_fraction < 1.0 and not tangent:
            raise ValueError("tangent_fraction < 1 is a mode of the tangent path: it needs tangent=True")
        self.tangent_fraction = float(tangent_fraction)
        # < 1: L_K's gradient from that fraction of its rollout's sub-envs (its own forward and backward
        # on them; the value reported and the forward shared with the next update stay whole).
        if not (isinstance(outer_fraction, (int, float)) and 0.0 < outer_fraction <= 1.0):
            raise ValueError(f"outer_fraction must be in (0, 1], got {outer_fraction!r}")
        if outer_fraction < 1.0:
            if not self.shares_final_forward:
                raise ValueError(f"outer_fraction < 1 needs an outer loss on a rollout; the {self.name} estimator's "
                                 "final loss is not one")
            if not getattr(outer_loss, "per_env", False):
                raise ValueError("outer_fraction < 1 needs an outer loss that is a mean of per-sub-env losses "
                                 f"(per_env); {type(outer_loss).__name__} does not say it is")
        self.outer_fraction = float(outer_fraction)
        self.generator = generator  # the inner updates' random numbers (replayed when recomputing)

    def mode(self, differentiable: bool, upstream: bool, memo: ForwardMemo | None = None) -> UpdateMode:
        """How an inner update is differentiated: ``upstream`` says whether its parameters or its
        network input already depend on the meta-parameters (then its targets must stay exact)."""
        exact = self.exact and differentiable and upstream
        tangent = self.tangent and differentiable and not upstream
        return UpdateMode(differentiable=differentiable, exact_targets=exact, memo=memo, tangent=tangent,
                          tangent_fraction=self.tangent_fraction if tangent else 1.0, generator=self.generator)

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
        if self.recompute:
            return self._estimate_recomputing(meta, params, opt_state, collect, first_rollout)
        carried, self._carried = self._carried, None
        memo = carried if carried is not None and self._continues(carried, params, first_rollout) \
            else ForwardMemo(linearize=self.tangent)
        return self._estimate(meta, params if len(memo) else _leaves(params), opt_state, collect, first_rollout, memo)

    def _estimate(self, meta: MetaParams, params: dict, opt_state: Any, collect: Collect, first_rollout: Any,
                  memo: ForwardMemo) -> MetaGradient:
        """The full unroll (``estimate`` without ``recompute``); every loss shares forward passes through ``memo``."""
        hparams = meta.hparams()
        weights = self.weights()
        keep_from = self.num_updates - self.truncation()
        meta_loss: Tensor | float = 0.0
        outer_losses: list[float] = []
        used = 0
        previous = None
        context = LossContext(memo=memo)
        for k in range(self.num_updates):
            if k == 0 and first_rollout is not None:
                rollout = first_rollout
            else:
                rollout = collect(detached(params))
                used += 1
            if k > 0 and weights[k - 1]:
                loss = self.outer_loss(params, rollout, previous, context)
                outer_losses.append(float(loss.detach()))
                meta_loss = meta_loss + weights[k - 1] * loss
            differentiable = k >= keep_from
            if k == keep_from:  # cut the graph: only the last `truncation` updates carry meta-gradient
                # (at k = 0 the parameters are leaves already, possibly the carried ones: kept as they are)
                params, opt_state = (_leaves(params) if k else params), detached(opt_state)
            previous = detached(params)
            step_hparams = hparams if differentiable else detached(hparams)
            mode = self.mode(differentiable, upstream=k > keep_from or meta.condition, memo=memo)
            params, opt_state = self.inner_update(params, opt_state, rollout, step_hparams, mode)
        if self.shares_final_forward:
            # L_K at leaf copies of the parameters: its gradient there, pushed through the unroll
            # (sum of params * gradient has the same derivative in eta), gives the same meta-gradient,
            # and its forward pass stays for the next meta-update's first inner update, which learns
            # from the same rollout with the same parameters.
            final_params = _leaves(params)
            final, used, fresh = self.final_loss(final_params, opt_state, previous, collect, used, memo)
            keys = [n for n in final_params if params[n].requires_grad]
            source = self._outer_sample(final, final_params, fresh, previous)
            outer_grads = torch.autograd.grad(source, [final_params[n] for n in keys], retain_graph=source is final,
                                              allow_unused=True)
            through = sum((params[n] * g).sum() for n, g in zip(keys, outer_grads) if g is not None)
            # Plus L_K itself: from the leaf copies it reaches the meta-parameters only where it reads
            # them directly (a learned objective's regularisers); elsewhere that part of the graph is pruned.
            through = through + final
            self._carried = memo.keep_only(final_params, fresh)
        else:
            final, used, fresh = self.final_loss(params, opt_state, previous, collect, used, memo)
            final_params, through = _leaves(params), final
        outer_losses.append(float(final.detach()))
        meta_value = float((meta_loss + weights[-1] * final).detach())
        meta_loss = meta_loss + weights[-1] * through
        names = meta.names
        raw = [meta.raw[n] for n in names]
        if isinstance(meta_loss, Tensor) and meta_loss.requires_grad:
            grads = torch.autograd.grad(meta_loss, raw, allow_unused=True)
        else:  # nothing depends on the meta-parameters (e.g. every update sits before the truncation)
            grads = (None,) * len(raw)
        grads = {n: torch.zeros_like(meta.raw[n]) if g is None else g for n, g in zip(names, grads)}
        return MetaGradient(grads, final_params, detached(opt_state), meta_value, outer_losses, used, fresh)

    def _continues(self, memo: ForwardMemo, params: dict, first_rollout: Any) -> bool:
        """Whether ``memo`` (carried from the last estimate) holds ``params`` on ``first_rollout``."""
        return first_rollout is not None and len(memo.keep_only(params, first_rollout)) > 0

    def _estimate_recomputing(self, meta: MetaParams, params: dict, opt_state: Any, collect: Collect,
                              first_rollout: Any) -> MetaGradient:
        """``estimate`` with per-update checkpointing (see the module docstring): same result, less memory."""
        weights = self.weights()
        keep_from = self.num_updates - self.truncation()
        frozen = detached(meta.hparams())
        names = meta.names
        raw = [meta.raw[n] for n in names]
        # Forward sweep, no graph: remember where each update starts.
        starts: list[tuple[dict, Any, Any, Any]] = []  # (params, opt_state, rollout, generator state)
        used = 0
        params = _leaves(params)
        for k in range(self.num_updates):
            if k == 0 and first_rollout is not None:
                rollout = first_rollout
            else:
                rollout = collect(detached(params))
                used += 1
            starts.append((detached(params), detached(opt_state), rollout, self._rng_state()))
            params, opt_state = self.inner_update(params, opt_state, rollout, frozen, self.mode(False, False))
            params, opt_state = _leaves(params), detached(opt_state)
        final, used, fresh = self.final_loss(params, opt_state, starts[-1][0], collect, used, None)
        source = self._outer_sample(final, params, fresh, starts[-1][0])
        after = self._rng_state()
        inputs = list(params.values()) + raw
        grads = torch.autograd.grad(weights[-1] * source, inputs, allow_unused=True)
        params_bar = dict(zip(params, grads[: len(params)]))
        meta_bar = list(grads[len(params):])
        state_bar: list[Tensor | None] | None = None
        outer_losses = {self.num_updates: float(final.detach())}
        # Backward sweep: rebuild update k's graph and push the adjoints through it, k = K-1..keep_from.
        for k in range(self.num_updates - 1, keep_from - 1, -1):
            start, state, rollout, rng = starts[k]
            self._set_rng_state(rng)
            first = k == keep_from  # nothing upstream of it carries meta-gradient
            leaves = _leaves(start)
            state_in = state if first else _leaf_state(state)
            mode = self.mode(True, upstream=not first or meta.condition)
            new_params, new_state = self.inner_update(leaves, state_in, rollout, meta.hparams(), mode)
            total = sum((new_params[n] * params_bar[n]).sum() for n in new_params if params_bar[n] is not None)
            if state_bar is not None:
                for t, bar in zip(float_tensors(new_state), state_bar):
                    if bar is not None and t.requires_grad:
                        total = total + (t * bar).sum()
            if not first and k > 0 and weights[k - 1]:
                loss = self.outer_loss(leaves, rollout, starts[k - 1][0], LossContext())
                outer_losses[k] = float(loss.detach())
                total = total + weights[k - 1] * loss
            wrt = ([] if first else list(leaves.values()) + float_tensors(state_in)) + raw
            if not (isinstance(total, Tensor) and total.requires_grad):  # nothing flows back through here
                break
            grads = torch.autograd.grad(total, wrt, allow_unused=True)
            for i, g in enumerate(grads[len(wrt) - len(raw):]):
                if g is not None:
                    meta_bar[i] = g if meta_bar[i] is None else meta_bar[i] + g
            if not first:
                params_bar = dict(zip(leaves, grads[: len(leaves)]))
                state_bar = list(grads[len(leaves): len(wrt) - len(raw)])
        self._set_rng_state(after)
        # L_k computed without a graph where no meta-gradient flows through it (before the truncation).
        for k in range(1, keep_from + 1):
            if weights[k - 1]:
                with torch.no_grad():
                    outer_losses[k] = float(self.outer_loss(starts[k][0], starts[k][2], starts[k - 1][0], LossContext()))
        meta_loss = sum(weights[k - 1] * v for k, v in outer_losses.items())
        result = {n: torch.zeros_like(meta.raw[n]) if g is None else g.detach() for n, g in zip(names, meta_bar)}
        return MetaGradient(result, _leaves(params), detached(opt_state), float(meta_loss),
                            [outer_losses[k] for k in sorted(outer_losses)], used, fresh)

    def _outer_sample(self, final: Tensor, params: Params, fresh: Rollout | None, previous: Params | None) -> Tensor:
        """What ``L_K``'s gradient is taken from: ``final`` itself, or with ``outer_fraction`` < 1 the outer
        loss on a random subset of ``fresh``'s sub-envs (drawn with the generator), whose gradient is an
        unbiased estimate of ``final``'s for a per-env outer loss."""
        if self.outer_fraction == 1.0:
            return final
        if not isinstance(fresh, Rollout):
            raise ValueError("outer_fraction < 1 needs the final loss's rollout")
        count = max(1, round(self.outer_fraction * fresh.num_envs))
        columns = draw_columns(fresh.num_envs, count, self.generator, fresh.rewards.device)
        return self.outer_loss(params, fresh.envs(columns), previous, LossContext())

    def _rng_state(self) -> Tensor | None:
        return None if self.generator is None else self.generator.get_state()

    def _set_rng_state(self, state: Tensor | None) -> None:
        if state is not None:
            self.generator.set_state(state)  # type: ignore[union-attr]

    def final_loss(self, params: Params, opt_state: Any, previous: Params | None, collect: Collect, used: int,
                   memo: ForwardMemo | None) -> tuple[Tensor, int, Rollout | None]:
        """``L_K``: the outer loss on a fresh rollout after the K-th update; also the rollouts used so
        far and that fresh rollout (the next estimate's first, None where there is none to reuse)."""
        rollout = collect(detached(params))
        return self.outer_loss(params, rollout, previous, LossContext(memo=memo)), used + 1, rollout


class OneStep(Estimator):
    """Xu et al. (2018): one differentiable update, the outer loss on the next rollout."""

    name = "one-step"

    def __init__(self, inner_update: InnerUpdate, outer_loss: OuterLoss, recompute: bool = False,
                 generator: torch.Generator | None = None, exact: bool = True, tangent: bool = True,
                 tangent_fraction: float = 1.0, outer_fraction: float = 1.0):
        super().__init__(inner_update, outer_loss, 1, recompute, generator, exact, tangent, tangent_fraction,
                         outer_fraction)


class MultiStep(Estimator):
    """K differentiable updates, the outer loss after the K-th; optionally truncated to the last T."""

    name = "multi-step"

    def __init__(self, inner_update: InnerUpdate, outer_loss: OuterLoss, num_updates: int,
                 truncation: int | None = None, recompute: bool = False, generator: torch.Generator | None = None,
                 exact: bool = True, tangent: bool = True, tangent_fraction: float = 1.0,
                 outer_fraction: float = 1.0):
        super().__init__(inner_update, outer_loss, num_updates, recompute, generator, exact, tangent, tangent_fraction,
                         outer_fraction)
        if truncation is not None and not (isinstance(truncation, int) and 1 <= truncation <= num_updates):
            raise ValueError(f"truncation must be an integer in [1, K={num_updates}] or None, got {truncation!r}")
        self._truncation = truncation or num_updates

    def truncation(self) -> int:
        return self._truncation


class Mixed(Estimator):
    """Bonnet et al. (2021): a weighted combination of the k-step meta-gradients, k = 1..K, one unroll."""

    name = "mixed"

    def __init__(self, inner_update: InnerUpdate, outer_loss: OuterLoss, num_updates: int,
                 weights: str | Sequence[float] = "uniform", decay: float = 0.5, recompute: bool = False,
                 generator: torch.Generator | None = None, exact: bool = True, tangent: bool = True,
                 tangent_fraction: float = 1.0, outer_fraction: float = 1.0):
        super().__init__(inner_update, outer_loss, num_updates, recompute, generator, exact, tangent, tangent_fraction,
                         outer_fraction)
        self._weights = mixing_weights(num_updates, weights, decay)

    def weights(self) -> list[float]:
        return self._weights


class Bootstrapped(Estimator):
    """Flennerhag et al. (2022), BMG: match the K-step policy to a target L updates further on.

    ``policy_value(params, obs, hparams) -> (distribution, values)`` reads the policies. The target
    bootstraps from the agent after K updates: L - 1 updates with the meta-learned rule
    (``target_hparams``, default the current values, detached), then a last one with the outer
    objective's values (``outer_hparams``, e.g. the reference gamma and lambda: the anchor that ties
    the target to the meta-objective; None: the meta-learned rule again). The meta-loss is
    ``KL(pi_target || pi_K)`` averaged over the observations of a fresh rollout of the target, plus
    ``value_cost * 0.5 (v_target - v_K)^2``.
    """

    name = "bootstrapped"
    shares_final_forward = False  # its L_K is the matching loss after L target updates

    def __init__(self, inner_update: InnerUpdate, policy_value: Callable, num_updates: int = 1,
                 target_updates: int = 1, value_cost: float = 0.0, target_hparams: dict | None = None,
                 recompute: bool = False, generator: torch.Generator | None = None, exact: bool = True,
                 outer_hparams: dict | None = None, tangent: bool = True, tangent_fraction: float = 1.0,
                 outer_fraction: float = 1.0):
        super().__init__(inner_update, _no_outer_loss, num_updates, recompute, generator, exact, tangent,
                         tangent_fraction, outer_fraction)
        if not isinstance(target_updates, int) or target_updates < 1:
            raise ValueError(f"target_updates (L) must be an integer >= 1, got {target_updates!r}")
        if not value_cost >= 0:
            raise ValueError(f"value_cost must be >= 0, got {value_cost!r}")
        self.policy_value = policy_value
        self.target_updates = target_updates
        self.value_cost = value_cost
        self.target_hparams = target_hparams
        self.outer_hparams = outer_hparams
        self._current_hparams: dict = {}

    def estimate(self, meta: MetaParams, params: dict, opt_state: Any, collect: Collect,
                 first_rollout: Any = None) -> MetaGradient:
        self._current_hparams = detached(meta.hparams())
        return super().estimate(meta, params, opt_state, collect, first_rollout)

    def final_loss(self, params: Params, opt_state: Any, previous: Params | None, collect: Collect, used: int,
                   memo: ForwardMemo | None) -> tuple[Tensor, int, Rollout | None]:
        """``KL(pi_target || pi_K)`` (+ value term) on a fresh rollout of the target, after its L updates
        (none differentiated; the last with ``outer_hparams`` when given). Nothing is reused: the
        target's rollouts were collected by other parameters."""
        hparams = self.target_hparams if self.target_hparams is not None else self._current_hparams
        target, state = _leaves(params), detached(opt_state)
        for step in range(self.target_updates):
            rollout = collect(detached(target))
            used += 1
            last = step == self.target_updates - 1 and self.outer_hparams is not None
            step_hparams = {**hparams, **self.outer_hparams} if last else hparams
            target, state = self.inner_update(target, state, rollout, step_hparams, self.mode(False, False))
            target = _leaves(target)
        fresh = collect(detached(target))  # the target's own observations for the matching loss
        used += 1
        obs = fresh.obs.reshape(-1, *fresh.obs.shape[2:])
        return self.match(params, detached(target), obs, hparams), used, None

    def match(self, params: dict, target: dict, obs: Tensor, hparams: dict) -> Tensor:
        """The matching loss: ``KL(pi_target || pi_params)`` (+ value term) on ``obs`` (target held fixed)."""
        with torch.no_grad():
            target_dist, target_values = self.policy_value(target, obs, hparams)
        dist, values = self.policy_value(params, obs, hparams)
        loss = torch.distributions.kl_divergence(target_dist, dist).mean()
        if self.value_cost:
            loss = loss + self.value_cost * 0.5 * ((target_values - values) ** 2).mean()
        return loss


def _no_outer_loss(params: Params, rollout: Rollout, previous: Params | None, context: LossContext) -> Tensor:
    """BMG has no outer loss after intermediate updates (its weights put all mass on the matching loss)."""
    return torch.zeros(())


ESTIMATORS = {"one-step": OneStep, "multi-step": MultiStep, "mixed": Mixed, "bootstrapped": Bootstrapped}
