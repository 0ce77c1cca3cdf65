"""The learner: one functional update ``params', opt_state' = update(params, opt_state, rollout, hparams)``.

The same function serves plain training and meta-gradients; how it is differentiated is an
explicit :class:`UpdateMode`, never inferred from its inputs:

* plain (``UpdateMode()``): the new parameters are fresh leaves, nothing keeps a graph;
* ``differentiable``: the new parameters stay a differentiable function of the hyperparameters
  and of the old parameters (``create_graph=True``), for meta-gradients through the update;
* ``exact_targets`` (with ``differentiable``): what the loss holds fixed (bootstrap values,
  baselines, importance ratios, PPO's prepared advantages) stays a function of the parameters,
  left out of the update's gradient only, so derivatives through several updates are exact.
  Without it the targets are detached, the published semi-gradient form. An estimator asks for it
  wherever the parameters depend on something it differentiates: after the first update of an
  unroll, or from the first one when the network is conditioned on meta-learned values.

A population (the objective's adapter has a ``rlmeta.rollout.Population``: parameters ``[P, ...]``)
is updated as P separate agents would be: objectives average over the whole batch, so the loss
is scaled by P (each agent's gradient is then that of its own mean loss), and the optimizer must
be a per-agent one (``Optimizer.for_population``: each agent clipped by its own gradient norm).
Minibatch objectives (PPO) do not take populations yet: their minibatches would mix agents.
"""

from __future__ import annotations

import functools
import math
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from rlmeta import tangent
from rlmeta.objectives.base import Loss, LossContext, MinibatchObjective, Objective
from rlmeta.optim import FlatSteps, Optimizer, detached, global_norm
from rlmeta.rollout import ForwardMemo, Params, Rollout


@dataclass(frozen=True)
class UpdateMode:
    """How an update is differentiated (see the module docstring), and the forward passes it may share."""

    differentiable: bool = False
    exact_targets: bool = False
    memo: ForwardMemo | None = None
    # The parameters do not depend on the meta-parameters (the first update of an unroll): the
    # update may take the forward-over-reverse path (rlmeta.tangent) where it applies.
    tangent: bool = False
    # The approximate tangent pass: on this fraction of the sub-envs, drawn with ``generator``
    # (unbiased for objectives with ``per_env``); 1.0: exact.
    tangent_fraction: float = 1.0
    generator: torch.Generator | None = None
    # Plain minibatch steps (PPO, LPO, DPO on flat optimizer buffers) evaluate the loss through
    # ``torch.compile``: its forward and backward run as generated kernels (see ``_compiled_loss``).
    compile: bool = False

    def __post_init__(self) -> None:
        if self.compile and self.differentiable:
            raise ValueError("compile applies to plain updates: a differentiable update keeps a graph through the "
                             "optimizer, which the compiled loss does not build")
        if self.exact_targets and not self.differentiable:
            raise ValueError("exact_targets needs differentiable=True: without a graph there is nothing to keep exact")
        if self.tangent and not self.differentiable:
            raise ValueError("tangent needs differentiable=True: it is a way to differentiate the update")
        if not 0.0 < self.tangent_fraction <= 1.0:
            raise ValueError(f"tangent_fraction must be in (0, 1], got {self.tangent_fraction!r}")


PLAIN_UPDATE = UpdateMode()


def gradient_step(
    objective: Objective, optimizer: Optimizer, params: Params, opt_state: dict, data: Any, hparams: dict,
    progress: float = 0.0, mode: UpdateMode = PLAIN_UPDATE,
) -> tuple[Params, dict, dict[str, float]]:
    """One optimizer step on ``objective(params, data, hparams, progress, context)``.

    The objective's restricted terms (``Loss.restricted[prefix]``) get their gradient with respect
    to the parameters named ``prefix...`` only, added to theirs.
    """
    keys = list(params)
    num_agents = _check_population(objective, optimizer)
    if mode.tangent and not mode.exact_targets and tangent.applies(objective, num_agents):
        return tangent.tangent_step(objective, optimizer, params, opt_state, data, hparams, progress,
                                    LossContext(memo=mode.memo), _check_finite, mode.tangent_fraction, mode.generator)
    if mode.exact_targets and not isinstance(objective, MinibatchObjective):
        # The objective predicts with aliases of its network outputs and holds the outputs
        # themselves fixed as targets; the gradient is taken through the aliases only, so the
        # targets stay out of it but remain functions of `params` (and of the conditioning input),
        # and derivatives through the update are exact (one forward pass: rlmeta.rollout.OutputSplit).
        context = LossContext(exact=True, memo=mode.memo)
        split = context.split
        result = objective(params, data, hparams, progress, context)

        def gradient(term: Tensor, names: list[str], last: bool) -> list[Tensor]:
            return split.grads(term, [params[k] for k in names])
    elif mode.exact_targets:
        # A minibatch of prepared data: differentiate the loss in an alias of the parameters, so
        # that the prepared advantages and returns (computed from `params` beforehand) stay out
        # of this gradient but remain functions of `params`.
        alias = {k: v.view_as(v) for k, v in params.items()}
        result = objective(alias, data, hparams, progress, LossContext(memo=mode.memo))

        def gradient(term: Tensor, names: list[str], last: bool) -> list[Tensor]:
            return _grad(term, [alias[k] for k in names], create_graph=True)
    else:
        # Plain training, or a semi-gradient differentiable update: targets detached.
        result = objective(params, data, hparams, progress, LossContext(memo=mode.memo))

        def gradient(term: Tensor, names: list[str], last: bool) -> list[Tensor]:
            return _grad(term, [params[k] for k in names], create_graph=mode.differentiable, retain=not last)
    # A population's loss is the mean over its agents: scaled by P, each agent gets its own loss's gradient.
    loss, grads = _gradients(result, keys, gradient, num_agents if num_agents > 1 else None)
    grad_norm = global_norm(grads, per_agent=num_agents > 1)  # [P] for a population
    loss_value, norm_value = _check_finite(loss, grad_norm)
    new_params, new_state = optimizer.update(params, grads, opt_state, lr=hparams.get("lr") if hparams else None,
                                             grad_norm=grad_norm)
    if not mode.differentiable:
        new_params = {k: v.detach().requires_grad_(True) for k, v in new_params.items()}
        new_state = detached(new_state)
    metrics = {**result.metrics, "loss": loss_value, "grad_norm": norm_value}  # a population's: agents' mean
    return new_params, new_state, metrics


def _gradients(result: Loss, keys: list[str], gradient: Any, scale: int | None) -> tuple[Tensor, dict[str, Tensor]]:
    """``(loss, grads)`` of an objective's result: ``gradient(term, names, last)`` of its total, plus
    those of its restricted terms (each with respect to the parameters its prefix names); the
    loss includes the restricted terms. ``scale``: multiply the terms by it (a population's P)."""
    if not isinstance(result, Loss):
        raise TypeError(f"an objective must return a rlmeta.objectives.Loss, got {type(result).__name__}")
    loss, restricted = result.total, result.restricted
    grads = dict(zip(keys, gradient(loss if scale is None else loss * scale, keys, not restricted)))
    for i, (prefix, term) in enumerate(restricted.items()):
        names = [k for k in keys if k.startswith(prefix)]
        if not names:
            raise ValueError(f"the objective restricts a loss term to parameters named {prefix!r}..., "
                             f"but there are none among {keys}")
        scaled = term if scale is None else term * scale
        for k, g in zip(names, gradient(scaled, names, i == len(restricted) - 1)):
            grads[k] = grads[k] + g
        loss = loss + term.detach()  # the reported loss includes it
    return loss, grads


def _check_finite(loss: Tensor, grad_norm: Tensor) -> tuple[float, float]:
    """The loss and the (agents' mean) gradient norm as floats; raises on a non-finite one."""
    norm = grad_norm.detach()
    loss_value, norm_value = float(loss.detach()), float(norm if norm.dim() == 0 else norm.mean())
    if not math.isfinite(loss_value):
        raise FloatingPointError(f"non-finite loss {loss_value}")
    if not math.isfinite(norm_value):
        raise FloatingPointError(f"non-finite gradient norm {norm_value} (loss {loss_value})")
    return loss_value, norm_value


def _check_population(objective: Objective, optimizer: Optimizer) -> int:
    """P of the objective's adapter (1 without a population), checked against the optimizer.

    A plain function ``(params, data, hparams, progress, context) -> Loss`` may stand in for an
    :class:`Objective` (it has no adapter, hence no population).
    """
    adapter = objective.policy_value if isinstance(objective, Objective) else None
    num_agents = 1 if adapter is None else adapter.num_agents
    population = adapter is not None and adapter.population is not None
    if population and isinstance(objective, MinibatchObjective):
        raise ValueError(f"{type(objective).__name__} learns from minibatches, which would mix a population's "
                         "agents; populations take whole-rollout objectives (A2C, V-trace, learned ones)")
    if population != optimizer.per_agent:
        raise ValueError("a population's parameters need a per-agent optimizer (optimizer.for_population()), "
                         "and a per-agent optimizer a population's adapter (policy_value.for_population(P, B))")
    return num_agents


def update(
    objective: Objective, optimizer: Optimizer, params: Params, opt_state: dict, rollout: Rollout, hparams: dict,
    progress: float = 0.0, mode: UpdateMode = PLAIN_UPDATE, generator: torch.Generator | None = None,
) -> tuple[Params, dict, dict[str, float]]:
    """The learner's update on one rollout: one step, or a :class:`MinibatchObjective`'s
    ``epochs x minibatches`` steps on its prepared batch (minibatches drawn with ``generator``)."""
    if not isinstance(objective, MinibatchObjective):
        if mode.compile:
            raise ValueError(f"compile takes minibatch objectives (PPO, LPO, DPO), not {type(objective).__name__}")
        return gradient_step(objective, optimizer, params, opt_state, rollout, hparams, progress, mode)
    batch = objective.prepare(params, rollout, hparams, LossContext(exact=mode.exact_targets, memo=mode.memo))
    size = next(iter(batch.values())).shape[0]
    if size < objective.minibatches:
        raise ValueError(f"a rollout of {size} samples cannot make {objective.minibatches} minibatches; "
                         "collect more steps or use fewer minibatches")
    per = size // objective.minibatches  # the remainder of an uneven split sits out that epoch
    if not mode.differentiable:
        _check_population(objective, optimizer)
        flat = optimizer.flat_steps(params, opt_state, hparams.get("lr") if hparams else None)
        if flat is not None:
            return _flat_minibatch_steps(objective, flat, batch, hparams, progress, mode, generator, size, per)
    if mode.compile:
        raise ValueError("compile takes plain minibatch steps on an optimizer's flat buffers (Optimizer.flat_steps); "
                         "this update has none (a differentiable update, a population, or an optimizer without "
                         "a fused step)")
    metrics: dict[str, float] = {}
    for _ in range(objective.epochs):
        order = torch.randperm(size, generator=generator, device="cpu").to(batch["obs"].device)
        for start in range(0, per * objective.minibatches, per):
            idx = order[start : start + per]
            minibatch = {k: v[idx] for k, v in batch.items()}
            params, opt_state, metrics = gradient_step(objective, optimizer, params, opt_state, minibatch, hparams,
                                                       progress, mode)
    return params, opt_state, metrics


# One compiled loss per objective (weakly held: it goes with its objective).
_COMPILED: "weakref.WeakKeyDictionary[MinibatchObjective, Callable[..., Any]]" = weakref.WeakKeyDictionary()


def _loss_terms(objective: MinibatchObjective, params: Params, batch: dict[str, Tensor], index: Tensor,
                hparams: dict, progress: Tensor, context: LossContext) -> tuple[Tensor, dict[str, Tensor]]:
    """The total loss and restricted terms on the minibatch ``index`` of ``batch``."""
    result = objective(params, {k: v.index_select(0, index) for k, v in batch.items()}, hparams, progress, context)
    return result.total, result.restricted


def _compiled_loss(objective: MinibatchObjective) -> Callable[..., tuple[Tensor, dict[str, Tensor]]]:
    """``objective``'s total loss and restricted terms through ``torch.compile`` (static shapes).

    The progress goes in as a 0-d tensor so that a new value per update is a new input, not a new
    graph (as a Python float the clip range would be baked in and every update recompile). The
    minibatch is gathered inside the graph; inductor's checks of its inputs' sizes are off (the
    shapes are static and guarded by dynamo already).
    """
    compiled = _COMPILED.get(objective)
    if compiled is None:
        compiled = _COMPILED[objective] = torch.compile(functools.partial(_loss_terms, objective), dynamic=False,
                                                        options={"size_asserts": False})
    return compiled


def _flat_minibatch_steps(
    objective: MinibatchObjective, flat: FlatSteps, batch: dict[str, Tensor], hparams: dict, progress: float,
    mode: UpdateMode, generator: torch.Generator | None, size: int, per: int,
) -> tuple[Params, dict, dict[str, float]]:
    """``update``'s minibatch loop in plain training, on the optimizer's flat buffers (:class:`FlatSteps`).

    The same steps as a loop of :func:`gradient_step` calls, bitwise, with less work per step: the
    parameters and the optimizer state stay flat between steps, and the objective is told that the
    metrics of every step but the last are not read (``LossContext.metrics``).
    """
    keys = flat.layout.keys
    quiet, last_context = LossContext(memo=mode.memo, metrics=False), LossContext(memo=mode.memo)
    steps = objective.epochs * objective.minibatches
    result, loss_value, norm_value, done = None, 0.0, 0.0, 0
    device = batch["obs"].device
    compiled = _compiled_loss(objective) if mode.compile else None
    dtype = next((v.dtype for v in batch.values() if v.is_floating_point()), torch.get_default_dtype())
    progress_tensor = torch.tensor(progress, dtype=dtype, device=device) if compiled else None
    for _ in range(objective.epochs):
        order = torch.randperm(size, generator=generator, device="cpu").to(device)
        for start in range(0, per * objective.minibatches, per):
            idx = order[start : start + per]
            done += 1
            params = flat.params
            if compiled is not None and done < steps:  # the last step reports metrics: eager
                total, restricted = compiled(params, batch, idx, hparams, progress_tensor, quiet)
                result = Loss(total, {}, restricted)
            else:
                minibatch = {k: v.index_select(0, idx) for k, v in batch.items()}  # v[idx], in fewer ops
                result = objective(params, minibatch, hparams, progress, last_context if done == steps else quiet)

            def gradient(term: Tensor, names: list[str], last: bool) -> list[Tensor]:
                return _grad(term, [params[k] for k in names], create_graph=False, retain=not last)

            loss, grads = _gradients(result, keys, gradient, None)
            if compiled is not None:
                # The norm from the flat gradient (one kernel; equal to global_norm's to rounding), checked
                # after the step: a non-finite one raises, and the inputs were never modified.
                loss_value, norm_value = _check_finite(loss, flat.step(grads, norm=True))
                continue
            grad_norm = global_norm(grads)
            loss_value, norm_value = _check_finite(loss, grad_norm)
            flat.step(grads, grad_norm)
    new_params, new_state = flat.result()
    assert result is not None
    return new_params, new_state, {**result.metrics, "loss": loss_value, "grad_norm": norm_value}


def _grad(term: Tensor, inputs: list[Tensor], create_graph: bool, retain: bool = False) -> list[Tensor]:
    """``d term / d inputs`` (zeros for inputs it does not use)."""
    grads = torch.autograd.grad(term, inputs, create_graph=create_graph, retain_graph=retain or create_graph,
                                allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]
