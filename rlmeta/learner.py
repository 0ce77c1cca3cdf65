"""The learner: one functional update ``params', opt_state' = update(params, opt_state, rollout, hparams)``.

The same function serves plain training (``create_graph=False``: the new parameters are fresh
leaves) and meta-gradients (``create_graph=True``: the new parameters stay a differentiable
function of the hyperparameters and of the old parameters).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from rlmeta.hparams import CONDITIONING
from rlmeta.optim import Optimizer, global_norm
from rlmeta.rollout import OutputSplit


def gradient_step(
    objective: Any, optimizer: Optimizer, params: dict, opt_state: dict, data: Any, hparams: dict,
    progress: float = 0.0, create_graph: bool = False,
) -> tuple[dict, dict, dict[str, float]]:
    """One optimizer step on ``objective(params, data, hparams, progress)``.

    An objective may return ``(loss, metrics, restricted)``: ``restricted[prefix]`` is a loss term
    whose gradient is taken with respect to the parameters named ``prefix...`` only and added to
    theirs (e.g. an outer critic's value loss, which must not train the layers it shares).
    """
    keys = list(params)
    exact = create_graph and _targets_differentiable(params, hparams)
    if exact and getattr(objective, "supports_output_split", False):
        # The parameters depend on something (earlier differentiable updates), or the network's
        # input does (conditioning on meta-learned values): the objective predicts with aliases of
        # its network outputs and holds the outputs themselves fixed as targets; the gradient is
        # taken through the aliases only, so the targets stay out of it but remain functions of
        # `params` and of the conditioning, and derivatives through the update are exact (one
        # forward pass: see rlmeta.rollout.OutputSplit).
        split = OutputSplit()
        result = objective(params, data, hparams, progress, split=split)

        def gradient(term, names, last):
            return split.grads(term, [params[k] for k in names])
    elif exact:
        # An objective that does not split its outputs: differentiate it in an alias of the
        # parameters, so that data computed from `params` beforehand (PPO's prepared advantages
        # and returns) stays out of this gradient but remains a function of `params`.
        alias = {k: v.view_as(v) for k, v in params.items()}
        result = objective(alias, data, hparams, progress)

        def gradient(term, names, last):
            return _grad(term, [alias[k] for k in names], create_graph=True)
    else:
        # Plain training, or the first update of an unroll from leaf parameters of an
        # unconditioned network: nothing upstream can see the targets, which are detached.
        result = objective(params, data, hparams, progress)

        def gradient(term, names, last):
            return _grad(term, [params[k] for k in names], create_graph=create_graph, retain=not last)
    loss, metrics, restricted = result if len(result) == 3 else (*result, {})
    grads = dict(zip(keys, gradient(loss, keys, not restricted)))
    for i, (prefix, term) in enumerate(restricted.items()):
        names = [k for k in keys if k.startswith(prefix)]
        if not names:
            raise ValueError(f"the objective restricts a loss term to parameters named {prefix!r}..., "
                             f"but there are none among {keys}")
        for k, g in zip(names, gradient(term, names, i == len(restricted) - 1)):
            grads[k] = grads[k] + g
        loss = loss + term.detach()  # the reported loss includes it
    grad_norm = global_norm(grads)
    loss_value, norm_value = float(loss.detach()), float(grad_norm.detach())
    if not math.isfinite(loss_value):
        raise FloatingPointError(f"non-finite loss {loss_value}")
    if not math.isfinite(norm_value):
        raise FloatingPointError(f"non-finite gradient norm {norm_value} (loss {loss_value})")
    new_params, new_state = optimizer.update(params, grads, opt_state, lr=hparams.get("lr") if hparams else None,
                                             grad_norm=grad_norm)
    if not create_graph:
        new_params = {k: v.detach().requires_grad_(True) for k, v in new_params.items()}
        new_state = _detach(new_state)
    metrics = {**metrics, "loss": loss_value, "grad_norm": norm_value}
    return new_params, new_state, metrics


def update(
    objective: Any, optimizer: Optimizer, params: dict, opt_state: dict, rollout: Any, hparams: dict,
    progress: float = 0.0, create_graph: bool = False, generator: torch.Generator | None = None,
) -> tuple[dict, dict, dict[str, float]]:
    """The learner's update on one rollout: one step, or PPO's epochs x minibatches of steps."""
    if not hasattr(objective, "prepare"):
        return gradient_step(objective, optimizer, params, opt_state, rollout, hparams, progress, create_graph)
    keep_graph = create_graph and _targets_differentiable(params, hparams)
    batch = objective.prepare(params, rollout, hparams, keep_graph=keep_graph)
    size = next(iter(batch.values())).shape[0]
    if size < objective.minibatches:
        raise ValueError(f"a rollout of {size} samples cannot make {objective.minibatches} minibatches; "
                         "collect more steps or use fewer minibatches")
    per = size // objective.minibatches  # the remainder of an uneven split sits out that epoch
    metrics: dict[str, float] = {}
    for _ in range(objective.epochs):
        order = torch.randperm(size, generator=generator, device="cpu").to(batch["obs"].device)
        for start in range(0, per * objective.minibatches, per):
            idx = order[start : start + per]
            minibatch = {k: v[idx] for k, v in batch.items()}
            params, opt_state, metrics = gradient_step(
                objective, optimizer, params, opt_state, minibatch, hparams, progress, create_graph
            )
    return params, opt_state, metrics


def _grad(term: torch.Tensor, inputs: list[torch.Tensor], create_graph: bool, retain: bool = False) -> list[torch.Tensor]:
    """``d term / d inputs`` (zeros for inputs it does not use)."""
    grads = torch.autograd.grad(term, inputs, create_graph=create_graph, retain_graph=retain or create_graph,
                                allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


def _targets_differentiable(params: dict, hparams: dict | None) -> bool:
    """Whether what a loss holds fixed can depend on something a meta-gradient differentiates:
    parameters produced by earlier differentiable updates, or a conditioning input that requires grad."""
    if any(v.grad_fn is not None for v in params.values()):
        return True
    conditioning = hparams.get(CONDITIONING) if hparams else None
    return torch.is_tensor(conditioning) and conditioning.requires_grad


def _detach(tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree.detach()
    if isinstance(tree, dict):
        return {k: _detach(v) for k, v in tree.items()}
    return tree
