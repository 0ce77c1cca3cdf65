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
    total = sum(torch.sum(t * t) for t in tensors.values())
    return torch.sqrt(total + 1e-30)


def clip_by_global_norm(grads: Params, max_norm: float) -> tuple[Params, Tensor]:
    """Scale ``grads`` so their global norm is at most ``max_norm``; returns (grads, norm before)."""
    norm = global_norm(grads)
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

    def __post_init__(self) -> None:
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm!r}")

    def update(self, params: Params, grads: Params, state: State, lr: float | Tensor | None = None) -> tuple[Params, State]:
        """Return ``(new_params, new_state)``: clip ``grads``, then ``params - lr * direction``."""
        missing = set(params) ^ set(grads)
        if missing:
            raise ValueError(f"params and grads must have the same keys; differing: {sorted(missing)}")
        if self.max_grad_norm is not None:
            grads, _ = clip_by_global_norm(grads, self.max_grad_norm)
        step, new_state = self.direction(grads, state)
        rate = self.lr if lr is None else lr
        return {k: params[k] - rate * step[k] for k in params}, new_state


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

    return Optimizer("sgd", lr, init, direction, max_grad_norm)


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

    return Optimizer("rmsprop", lr, init, direction, max_grad_norm)


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

    return Optimizer("adam", lr, init, direction, max_grad_norm)


OPTIMIZERS = {"sgd": sgd, "rmsprop": rmsprop, "adam": adam}
