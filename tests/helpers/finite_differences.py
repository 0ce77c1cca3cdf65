"""Finite-difference checks of meta-gradients, shared by the core and agent tests.

Meta-gradients differentiate a semi-gradient: the outer loss holds some terms fixed (bootstrap
targets, baselines), so its value is not the function whose derivative they are. What they are is
the chain rule ``sum_k w_k (g_k . d theta_k / d eta + g_eta,k)`` with ``g_k`` the outer gradient in
the agent's parameters at the base point and ``g_eta,k`` its direct part in the meta-parameters.
:class:`Linearized` records both, then returns ``g_k . theta_k + g_eta,k . eta``: a plain function
of eta whose central differences must equal the estimator's meta-gradient.
"""

from __future__ import annotations

from typing import Callable

import torch


class Linearized:
    """Wraps an outer loss: records its gradients at the base point, then replays them linearly."""

    def __init__(self, loss: Callable, meta_leaves: Callable[[], dict[str, torch.Tensor]]):
        self.loss, self.meta_leaves, self.records, self.recording, self.calls = loss, meta_leaves, [], True, 0

    def __call__(self, params, *rest):
        keys = list(params)
        if self.recording:
            value = self.loss(params, *rest)
            # Gradients at leaf copies of the parameters: the part in eta is then the direct one only.
            copies = {k: v.detach().requires_grad_(True) for k, v in params.items()}
            leaves = self.meta_leaves()
            grads = torch.autograd.grad(self.loss(copies, *rest), [copies[k] for k in keys] + list(leaves.values()),
                                        allow_unused=True)
            grads = [torch.zeros(()) if g is None else g.detach() for g in grads]
            self.records.append((grads[: len(keys)], dict(zip(leaves, grads[len(keys):]))))
            return value
        param_grads, meta_grads = self.records[self.calls]
        self.calls += 1
        leaves = self.meta_leaves()
        return (sum((g * params[k]).sum() for g, k in zip(param_grads, keys))
                + sum((g * leaves[name]).sum() for name, g in meta_grads.items()))


def directional_check(estimator, make_meta: Callable, run: Callable, directions: int = 3, h: float = 1e-5,
                      rtol: float = 2e-5, seed: int = 7, holder: dict | None = None):
    """The estimator's meta-gradient along random directions of all meta-parameters (and each scalar
    meta-parameter alone) against central differences of its linearized meta-loss.

    ``run(meta) -> MetaGradient`` runs the estimator from the same start; ``holder["meta"]`` (if given)
    is set to the meta-parameters being run, for losses that read them directly.
    """
    holder = holder if holder is not None else {}
    wrapped = Linearized(estimator.outer_loss, lambda: dict(holder["meta"].raw))
    estimator.outer_loss = wrapped

    def go(meta):
        holder["meta"] = meta
        return run(meta)

    result = go(make_meta())
    wrapped.recording = False
    names = list(result.grads)
    g = torch.Generator().manual_seed(seed)
    dtype = next(iter(result.grads.values())).dtype
    checks = [{n: torch.randn(result.grads[n].shape, generator=g, dtype=dtype) for n in names}
              for _ in range(directions)]
    checks += [{n: (torch.ones_like(result.grads[n]) if n == name else torch.zeros_like(result.grads[n]))
                for n in names} for name in names if result.grads[name].numel() == 1]
    for direction in checks:
        values = []
        for sign in (1, -1):
            meta = make_meta()
            with torch.no_grad():
                for n in names:
                    meta.raw[n] += sign * h * direction[n]
            wrapped.calls = 0
            values.append(go(meta).meta_loss)
        fd = (values[0] - values[1]) / (2 * h)
        got = float(sum((result.grads[n] * direction[n]).sum() for n in names))
        assert abs(got - fd) <= rtol * max(abs(got), abs(fd)) + 1e-12, (got, fd)
    return result
