"""Functional, differentiable optimizers: SGD, RMSProp and Adam as ``init``/``update`` pairs.

In the style of optax and TorchOpt: parameters, gradients and optimizer state are dicts of tensors,
and ``update`` returns new ones without touching its inputs, so an inner update can be
differentiated with respect to its hyperparameters (``lr`` may be a tensor) and to the gradients
(create them with ``create_graph=True``). Square roots of second moments take ``eps_root`` inside
the root, so their derivative stays finite where a second moment is zero; ``eps_root=0`` with the
default ``eps`` reproduces ``torch.optim`` exactly.

    opt = adam(lr=3e-4)
    state = opt.init(params)
    params, state = opt.update(params, grads, state)            # or lr=<tensor> to override
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

Params = dict[str, Tensor]
State = dict[str, object]


def global_norm(tensors: Params) -> Tensor:
    """Euclidean norm of all tensors together (differentiable, finite gradient at zero)."""
    values = list(tensors.values())
    if not any(t.requires_grad for t in values):  # one fused kernel per tensor list
        norms = torch._foreach_norm(values)
        return torch.sqrt(torch.sum(torch.stack(norms) ** 2) + 1e-30)
    total = sum(torch.sum(t * t) for t in values)
    return torch.sqrt(total + 1e-30)


def clip_by_global_norm(grads: Params, max_norm: float, norm: Tensor | None = None) -> tuple[Params, Tensor]:
    """Scale ``grads`` so their global norm is at most ``max_norm``; returns (grads, norm before).

    ``norm`` may be passed when already computed (it must be ``global_norm(grads)``).
    """
    norm = global_norm(grads) if norm is None else norm
    scale = torch.clamp(max_norm / norm, max=1.0)
    return {k: g * scale for k, g in grads.items()}, norm


@dataclass(frozen=True)
class Optimizer:
    """A functional optimizer: ``init(params) -> state`` and ``update(params, grads, state, lr=None)``."""

    name: str
    lr: float
    init: Callable[[Params], State]
    direction: Callable[[Params, State], tuple[Params, State]]
    max_grad_norm: float | None = None
    # The same direction on one flat tensor of all gradients, used when nothing needs a gradient.
    fused_direction: Callable[[Tensor, State, "_Layout"], tuple[Tensor, State]] | None = None

    def __post_init__(self) -> None:
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm!r}")

    def update(
        self, params: Params, grads: Params, state: State, lr: float | Tensor | None = None,
        grad_norm: Tensor | None = None,
    ) -> tuple[Params, State]:
        """Return ``(new_params, new_state)``: clip ``grads``, then ``params - lr * direction``.

        ``grad_norm``, if the caller has it already, is ``global_norm(grads)`` (saves recomputing it).
        """
        missing = set(params) ^ set(grads)
        if missing:
            raise ValueError(f"params and grads must have the same keys; differing: {sorted(missing)}")
        rate = self.lr if lr is None else lr
        if self.fused_direction is not None and not _needs_graph(params, grads, state, rate):
            return self._fused_update(params, grads, state, float(rate), grad_norm)
        if self.max_grad_norm is not None:
            grads, _ = clip_by_global_norm(grads, self.max_grad_norm, grad_norm)
        step, new_state = self.direction(grads, state)
        return {k: params[k] - rate * step[k] for k in params}, new_state

    def _fused_update(
        self, params: Params, grads: Params, state: State, rate: float, grad_norm: Tensor | None
    ) -> tuple[Params, State]:
        """``update`` without autograd on one flat buffer: a handful of kernels per step, whatever the
        number of tensors (plain training's fast path; small networks are dominated by per-op costs)."""
        layout = _Layout(params)
        with torch.no_grad():
            g = layout.flat(grads)
            if self.max_grad_norm is not None:
                norm = torch.linalg.vector_norm(g) if grad_norm is None else grad_norm
                g = g * torch.clamp(self.max_grad_norm / norm, max=1.0)
            step, new_state = self.fused_direction(g, state, layout)  # type: ignore[misc]
            new = layout.flat(params).sub_(step, alpha=rate)
        # Leaf parameters come back as leaves that require grad exactly when the old ones did.
        return {k: t.requires_grad_(params[k].requires_grad) for k, t in layout.split(new).items()}, new_state


class _Layout:
    """Where each tensor of a dict lies in one flat buffer (same keys, order, shapes)."""

    def __init__(self, like: Params):
        self.keys = list(like)
        self.shapes = [like[k].shape for k in self.keys]
        self.sizes = [like[k].numel() for k in self.keys]

    def flat(self, tensors: Params) -> Tensor:
        """A new flat tensor of ``tensors`` in this layout."""
        return torch.cat([tensors[k].reshape(-1) for k in self.keys])

    def split(self, flat: Tensor) -> Params:
        """Views of ``flat`` shaped as the dict this layout was made from."""
        return {k: t.view(shape) for k, t, shape in zip(self.keys, torch.split(flat, self.sizes), self.shapes)}


def _needs_graph(params: Params, grads: Params, state: State, lr: float | Tensor) -> bool:
    """Whether the update must be differentiable: some input carries a gradient (meta-gradients).

    Leaf parameters alone do not count: with constant gradients and rate, the new parameters'
    only dependence on them is the identity, and plain training re-leafs them anyway.
    """
    if torch.is_tensor(lr) and lr.requires_grad:
        return True
    if any(p.grad_fn is not None for p in params.values()):
        return True
    if any(g.requires_grad for g in grads.values()):
        return True
    return any(t.requires_grad for t in _tensors(state))


def detached(tree: object) -> object:
    """``tree`` (nested dicts of tensors and plain values, e.g. an optimizer state) with every tensor detached."""
    if isinstance(tree, Tensor):
        return tree.detach()
    if isinstance(tree, dict):
        return {k: detached(v) for k, v in tree.items()}
    return tree


def _tensors(tree: object) -> list[Tensor]:
    if torch.is_tensor(tree):
        return [tree]  # type: ignore[list-item]
    if isinstance(tree, dict):
        return [t for v in tree.values() for t in _tensors(v)]
    return []


def _check(name: str, value: float, low: float, high: float | None = None, low_open: bool = False) -> None:
    ok = value > low if low_open else value >= low
    if high is not None:
        ok = ok and value < high
    if not ok:
        rng = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'})"
        raise ValueError(f"{name} must be in {rng}, got {value!r}")


def sgd(lr: float, momentum: float = 0.0, max_grad_norm: float | None = None) -> Optimizer:
    """SGD with optional heavy-ball momentum (``buf = momentum * buf + g``), as ``torch.optim.SGD``."""
    _check("lr", lr, 0.0)
    _check("momentum", momentum, 0.0, 1.0)

    def init(params: Params) -> State:
        return {"momentum": {k: torch.zeros_like(p) for k, p in params.items()}} if momentum else {}

    def direction(grads: Params, state: State) -> tuple[Params, State]:
        if not momentum:
            return grads, state
        buf = {k: momentum * state["momentum"][k] + g for k, g in grads.items()}
        return buf, {"momentum": buf}

    def fused(grads: Tensor, state: State, layout: "_Layout") -> tuple[Tensor, State]:
        if not momentum:
            return grads, state
        buf = layout.flat(state["momentum"]).mul_(momentum).add_(grads)
        return buf, {"momentum": layout.split(buf)}

    return Optimizer("sgd", lr, init, direction, max_grad_norm, fused)


def rmsprop(
    lr: float, decay: float = 0.99, eps: float = 1e-8, eps_root: float = 0.0, max_grad_norm: float | None = None
) -> Optimizer:
    """RMSProp: ``v = decay v + (1 - decay) g^2``; step ``g / (sqrt(v + eps_root) + eps)``.

    ``eps_root > 0`` keeps second derivatives finite at ``v = 0``; use it when differentiating
    through the update (meta-gradients), e.g. ``eps_root=1e-12``.
    """
    _check("lr", lr, 0.0)
    _check("decay", decay, 0.0, 1.0)
    _check("eps", eps, 0.0)
    _check("eps_root", eps_root, 0.0)

    def init(params: Params) -> State:
        return {"nu": {k: torch.zeros_like(p) for k, p in params.items()}}

    def direction(grads: Params, state: State) -> tuple[Params, State]:
        nu = {k: decay * state["nu"][k] + (1 - decay) * g * g for k, g in grads.items()}
        return {k: g / (torch.sqrt(nu[k] + eps_root) + eps) for k, g in grads.items()}, {"nu": nu}

    def fused(grads: Tensor, state: State, layout: "_Layout") -> tuple[Tensor, State]:
        nu = layout.flat(state["nu"]).mul_(decay).addcmul_(grads, grads, value=1 - decay)
        return grads / (nu + eps_root).sqrt_().add_(eps), {"nu": layout.split(nu)}

    return Optimizer("rmsprop", lr, init, direction, max_grad_norm, fused)


def adam(
    lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0,
    max_grad_norm: float | None = None,
) -> Optimizer:
    """Adam (Kingma and Ba 2015) with bias correction; ``eps_root`` as in :func:`rmsprop`."""
    _check("lr", lr, 0.0)
    _check("b1", b1, 0.0, 1.0)
    _check("b2", b2, 0.0, 1.0)
    _check("eps", eps, 0.0)
    _check("eps_root", eps_root, 0.0)

    def init(params: Params) -> State:
        return {
            "count": 0,
            "mu": {k: torch.zeros_like(p) for k, p in params.items()},
            "nu": {k: torch.zeros_like(p) for k, p in params.items()},
        }

    def direction(grads: Params, state: State) -> tuple[Params, State]:
        count = int(state["count"]) + 1
        mu = {k: b1 * state["mu"][k] + (1 - b1) * g for k, g in grads.items()}
        nu = {k: b2 * state["nu"][k] + (1 - b2) * g * g for k, g in grads.items()}
        c1, c2 = 1 - b1**count, 1 - b2**count
        step = {k: (mu[k] / c1) / (torch.sqrt(nu[k] / c2 + eps_root) + eps) for k in grads}
        return step, {"count": count, "mu": mu, "nu": nu}

    def fused(grads: Tensor, state: State, layout: "_Layout") -> tuple[Tensor, State]:
        count = int(state["count"]) + 1
        mu = layout.flat(state["mu"]).mul_(b1).add_(grads, alpha=1 - b1)
        nu = layout.flat(state["nu"]).mul_(b2).addcmul_(grads, grads, value=1 - b2)
        c1, c2 = 1 - b1**count, 1 - b2**count
        step = (mu / c1).div_((nu / c2).add_(eps_root).sqrt_().add_(eps))
        return step, {"count": count, "mu": layout.split(mu), "nu": layout.split(nu)}

    return Optimizer("adam", lr, init, direction, max_grad_norm, fused)



OPTIMIZERS = {"sgd": sgd, "rmsprop": rmsprop, "adam": adam}
