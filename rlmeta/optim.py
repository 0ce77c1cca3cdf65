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

A population of agents (parameters with a leading agent axis ``[P, ...]``, see
``rlmeta.rollout.Population``) steps with ``opt.for_population()``: each agent's gradients are
clipped by their own global norm, its moments are its own rows of the state, and ``lr`` may be
one rate per agent (``[P]``). It equals P separate optimizers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

Params = dict[str, Tensor]
State = dict[str, object]


def global_norm(tensors: Params, per_agent: bool = False) -> Tensor:
    """Euclidean norm of all tensors together (differentiable, finite gradient at zero).

    ``per_agent``: the leading axis indexes agents; one norm per agent, ``[P]``.
    """
    values = list(tensors.values())
    if per_agent:
        total = sum(torch.sum((t * t).reshape(t.shape[0], -1), dim=1) for t in values)
        return torch.sqrt(total + 1e-30)
    if not any(t.requires_grad for t in values):  # one fused kernel per tensor list
        norms = torch._foreach_norm(values)
        return torch.sqrt(torch.sum(torch.stack(norms).pow(2)) + 1e-30)  # pow(2): ** 2 without its wrapper
    total = sum(torch.sum(t * t) for t in values)
    return torch.sqrt(total + 1e-30)


def clip_by_global_norm(grads: Params, max_norm: float, norm: Tensor | None = None,
                        per_agent: bool = False) -> tuple[Params, Tensor]:
    """Scale ``grads`` so their global norm is at most ``max_norm``; returns (grads, norm before).

    ``norm`` may be passed when already computed (it must be ``global_norm(grads, per_agent)``).
    ``per_agent``: each agent's (leading axis) gradients are clipped by their own norm.
    """
    norm = global_norm(grads, per_agent) if norm is None else norm
    scale = torch.clamp(max_norm / norm, max=1.0)
    return {k: g * _per_row(scale, g) for k, g in grads.items()}, norm


def _per_row(value: Tensor | float, like: Tensor) -> Tensor | float:
    """A scalar as is; a ``[P]`` tensor shaped to broadcast over ``like [P, ...]``'s rows."""
    if torch.is_tensor(value) and value.dim() == 1:
        return value.reshape(-1, *([1] * (like.dim() - 1)))
    return value


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
    per_agent: bool = False  # the leading axis of every tensor indexes a population's agents
    # The vector-Jacobian product of ``direction`` with respect to its gradient input, in closed form on
    # flat tensors (see :meth:`flat_vjp`); None where only autograd can give it.
    direction_vjp: Callable[[Tensor, State, Tensor | None, dict[str, Tensor | None], bool],
                            tuple[Tensor, Tensor | None]] | None = None

    def __post_init__(self) -> None:
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm!r}")

    def for_population(self) -> "Optimizer":
        """This optimizer for parameters ``[P, ...]`` of P agents (see the module docstring)."""
        return dataclasses.replace(self, per_agent=True)

    def update(
        self, params: Params, grads: Params, state: State, lr: float | Tensor | None = None,
        grad_norm: Tensor | None = None,
    ) -> tuple[Params, State]:
        """Return ``(new_params, new_state)``: clip ``grads``, then ``params - lr * direction``.

        ``grad_norm``, if the caller has it already, is ``global_norm(grads, self.per_agent)`` (saves
        recomputing it). A per-agent optimizer takes ``lr`` as a scalar or one rate per agent ``[P]``.
        """
        missing = set(params) ^ set(grads)
        if missing:
            raise ValueError(f"params and grads must have the same keys; differing: {sorted(missing)}")
        rate = self.lr if lr is None else lr
        if torch.is_tensor(rate) and rate.dim() > 0 and not (self.per_agent and rate.dim() == 1):
            raise ValueError(f"lr must be a scalar{' or one per agent [P]' if self.per_agent else ''}, "
                             f"got shape {tuple(rate.shape)}")
        scalar_rate = not torch.is_tensor(rate) or rate.dim() == 0
        if not scalar_rate and params and rate.shape[0] != next(iter(params.values())).shape[0]:
            raise ValueError(f"lr has {rate.shape[0]} rates for {next(iter(params.values())).shape[0]} agents")
        if self.fused_direction is not None and scalar_rate and not _needs_graph(params, grads, state, rate):
            return self._fused_update(params, grads, state, rate, grad_norm)
        if self.max_grad_norm is not None:
            grads, _ = clip_by_global_norm(grads, self.max_grad_norm, grad_norm, self.per_agent)
        step, new_state = self.direction(grads, state)
        return {k: params[k] - _per_row(rate, step[k]) * step[k] for k in params}, new_state

    def flat_vjp(self, grads: Tensor, state: State, lr: float | Tensor | None, params_bar: Tensor | None,
                 state_bar: dict[str, Tensor | None], want_lr: bool = False) -> tuple[Tensor, Tensor | None]:
        """The update's vector-Jacobian product with respect to the gradients, in closed form.

        For ``new_params, new_state = update(params, grads, state, lr)`` on one flat tensor of all
        gradients ``grads`` (and the state's per-parameter trees flat likewise, as :class:`_Layout`
        lays them out), with cotangents ``params_bar`` on the new parameters and ``state_bar[name]``
        on the new state's trees (None: zero), returns ``(grads_bar, lr_bar)``: what autograd through
        ``update`` gives for ``grads`` (the clip's rank-one term included) and, with ``want_lr``, for
        ``lr``. The same arithmetic in a few fused elementwise ops instead of a recorded graph: the
        forward-over-reverse meta-gradient's step 2 (``rlmeta.tangent``). Needs ``direction_vjp``
        and a single agent.
        """
        if self.direction_vjp is None or self.per_agent:
            raise ValueError(f"optimizer {self.name!r} has no closed-form vector-Jacobian product")
        with torch.no_grad():
            g_hat, scale, norm, ratio = grads, None, None, None
            if self.max_grad_norm is not None:
                norm = global_norm({"": grads})
                ratio = self.max_grad_norm / norm
                scale = torch.clamp(ratio, max=1.0)
                g_hat = grads * scale
            rate = self.lr if lr is None else (lr.detach() if torch.is_tensor(lr) else lr)
            step_bar = None if params_bar is None else params_bar * -rate
            g_hat_bar, step = self.direction_vjp(g_hat, state, step_bar, state_bar, want_lr)
            lr_bar = None
            if want_lr:
                lr_bar = torch.zeros((), dtype=grads.dtype, device=grads.device) if params_bar is None \
                    else -torch.dot(params_bar, step)  # type: ignore[arg-type]
            if scale is None:
                return g_hat_bar, lr_bar
            grads_bar = g_hat_bar * scale
            # clamp(ratio, max=1) passes the gradient where ratio <= 1; d ratio / d g = -ratio g / norm^2.
            coefficient = torch.where(ratio <= 1.0, -torch.dot(g_hat_bar, grads) * ratio / (norm * norm),
                                      torch.zeros_like(norm))
            return grads_bar.addcmul_(grads, coefficient), lr_bar

    def flat_steps(self, params: Params, state: State, lr: float | Tensor | None = None) -> "FlatSteps | None":
        """Plain steps on flat buffers kept from one step to the next (:class:`FlatSteps`), or None where
        this optimizer cannot take them: no fused direction, a population's, an ``lr`` or state that
        carries a gradient (meta-gradients), or parameters that are not leaves."""
        rate = self.lr if lr is None else lr
        if self.fused_direction is None or self.per_agent or not params:
            return None
        if torch.is_tensor(rate) and rate.dim() > 0:
            return None
        if _needs_graph(params, {}, state, rate):
            return None
        return FlatSteps(self, params, state, float(rate))

    def _fused_update(
        self, params: Params, grads: Params, state: State, rate: float | Tensor, grad_norm: Tensor | None
    ) -> tuple[Params, State]:
        """``update`` without autograd on one flat buffer: a handful of kernels per step, whatever the
        number of tensors (plain training's fast path; small networks are dominated by per-op costs).
        A 0-d tensor ``rate`` stays on its device (rlmeta.capture reads nothing on the host)."""
        layout = _Layout(params, self.per_agent)
        with torch.no_grad():
            g = layout.flat(grads)
            if self.max_grad_norm is not None:
                if grad_norm is None:
                    grad_norm = torch.linalg.vector_norm(g, dim=-1, keepdim=self.per_agent)
                elif self.per_agent:
                    grad_norm = grad_norm[:, None]
                g = g * torch.clamp(self.max_grad_norm / grad_norm, max=1.0)
            step, new_state = self.fused_direction(g, state, layout)  # type: ignore[misc]
            flat = layout.flat(params)
            new = flat.sub_(step * rate) if torch.is_tensor(rate) else flat.sub_(step, alpha=rate)
        # Leaf parameters come back as leaves that require grad exactly when the old ones did.
        return {k: t.requires_grad_(params[k].requires_grad) for k, t in layout.split(new).items()}, new_state


class _Layout:
    """Where each tensor of a dict lies in one flat buffer (same keys, order, shapes); with
    ``per_agent``, one row per agent, ``[P, D]``."""

    def __init__(self, like: Params, per_agent: bool = False):
        self.keys = list(like)
        self.shapes = [like[k].shape for k in self.keys]
        self.rows = self.shapes[0][0] if per_agent and self.keys else None
        self.sizes = [like[k].numel() // (self.rows or 1) for k in self.keys]

    def flat(self, tensors: Params) -> Tensor:
        """A new flat tensor of ``tensors`` in this layout."""
        if self.rows is not None:
            return torch.cat([tensors[k].reshape(self.rows, -1) for k in self.keys], dim=1)
        return torch.cat([tensors[k].reshape(-1) for k in self.keys])

    def split(self, flat: Tensor) -> Params:
        """Tensors shaped as the dict this layout was made from (views of ``flat`` without agent rows)."""
        if self.rows is not None:
            return {k: t.reshape(shape) for k, t, shape in zip(self.keys, torch.split(flat, self.sizes, dim=1),
                                                                self.shapes)}
        return {k: t.view(shape) for k, t, shape in zip(self.keys, torch.split(flat, self.sizes), self.shapes)}


class _Owned:
    """The layout of :class:`FlatSteps`' buffers, which are flat already: a fused direction given it
    updates them in place (``layout.flat`` of a :class:`_Layout` copies, so ``update`` never does)."""

    @staticmethod
    def flat(tensors: Tensor) -> Tensor:
        return tensors

    @staticmethod
    def split(flat: Tensor) -> Tensor:
        return flat


class FlatSteps:
    """Several plain (non-differentiable) steps of one fused optimizer on flat buffers kept between steps.

    ``Optimizer.update`` on its fused path flattens the parameters, the gradients and the state into
    new buffers and splits them again at every step, which is most of a step's cost on a small
    network. Here the parameters and the state are flattened once: :attr:`params` are leaves that
    require grad and are views of one flat buffer (for the forward pass: take gradients with respect
    to them), :meth:`step` updates that buffer in place, so :attr:`params` hold the new values after
    each step, and :meth:`result` gives ``(params, state)`` in ``update``'s form and ends the run.
    Every step runs the same operations on the same values as ``update(params, grads, state, lr,
    grad_norm)``, so the results are bitwise those of a loop of ``update`` calls; the inputs are not
    modified.
    """

    def __init__(self, optimizer: Optimizer, params: Params, state: State, rate: float):
        self.optimizer, self.rate = optimizer, rate
        self.layout = _Layout(params)
        keys = set(self.layout.keys)
        # The state's per-parameter trees (moments) become flat buffers of their own; the rest stays.
        self._trees = [k for k, v in state.items() if isinstance(v, dict) and set(v) == keys
                       and all(torch.is_tensor(t) for t in v.values())]
        with torch.no_grad():
            self.flat = self.layout.flat(params)
            self.state: State = {k: self.layout.flat(v) if k in self._trees else v for k, v in state.items()}
        # Leaf views: a step writes the buffer under no_grad, and they read the new values.
        self.params: Params = {k: t.requires_grad_(True) for k, t in self.layout.split(self.flat).items()}

    def step(self, grads: Params, grad_norm: Tensor | None = None, norm: bool = False) -> Tensor | None:
        """One update with ``grads`` (keyed as the parameters); ``grad_norm`` as for ``Optimizer.update``.

        Returns the gradients' global norm where it was given or computed (from the flat buffer, one
        kernel): always with ``norm``, else where clipping needs it.
        """
        opt = self.optimizer
        with torch.no_grad():
            g = self.layout.flat(grads)
            if grad_norm is None and (norm or opt.max_grad_norm is not None):
                grad_norm = torch.linalg.vector_norm(g, dim=-1)
            if opt.max_grad_norm is not None:
                # max_grad_norm / grad_norm, as Tensor.__rtruediv__ computes it (without its Python wrapper)
                g = g * torch.clamp(grad_norm.reciprocal() * opt.max_grad_norm, max=1.0)
            step, self.state = opt.fused_direction(g, self.state, _Owned)  # type: ignore[misc,arg-type]
            self.flat.sub_(step, alpha=self.rate)
        return grad_norm

    def result(self) -> tuple[Params, State]:
        """``(params, state)`` after the steps: fresh leaves that require grad, and a detached state."""
        params = {k: t.detach().requires_grad_(True) for k, t in self.layout.split(self.flat).items()}
        state = {k: self.layout.split(v) if k in self._trees else v for k, v in self.state.items()}
        return params, detached(state)  # type: ignore[return-value]


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


def float_tensors(tree: object) -> list[Tensor]:
    """The floating-point tensors of an optimizer state (or any tree of dicts), in dict order."""
    if torch.is_tensor(tree):
        return [tree] if tree.is_floating_point() else []  # type: ignore[list-item,union-attr]
    if isinstance(tree, dict):
        return [t for v in tree.values() for t in float_tensors(v)]
    return []


def _check(name: str, value: float, low: float, high: float | None = None, low_open: bool = False) -> None:
    ok = value > low if low_open else value >= low
    if high is not None:
        ok = ok and value < high
    if not ok:
        rng = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'})"
        raise ValueError(f"{name} must be in {rng}, got {value!r}")


def _next_count(state: State) -> int | Tensor:
    """Adam's step count after this step; a tensor count (rlmeta.capture keeps it on the device) stays
    one: no read on the host."""
    count = state["count"]
    return count + 1 if torch.is_tensor(count) else int(count) + 1  # type: ignore[call-overload,operator]


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

    def vjp(grads: Tensor, state: State, step_bar: Tensor | None, state_bar: dict[str, Tensor | None],
            want_step: bool) -> tuple[Tensor, Tensor | None]:
        # The step is the (momentum) buffer, which is also the new state: both cotangents reach g as they are.
        step = (momentum * state["momentum"] + grads if momentum else grads) if want_step else None
        parts = [b for b in (step_bar, state_bar.get("momentum") if momentum else None) if b is not None]
        g_bar = torch.zeros_like(grads) if not parts else parts[0] if len(parts) == 1 else parts[0] + parts[1]
        return g_bar, step

    return Optimizer("sgd", lr, init, direction, max_grad_norm, fused, direction_vjp=vjp)


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
        root = nu.sqrt() if eps_root == 0 else (nu + eps_root).sqrt_()  # nu >= +0: nu + 0 is nu, bitwise
        return grads / root.add_(eps), {"nu": layout.split(nu)}

    def vjp(grads: Tensor, state: State, step_bar: Tensor | None, state_bar: dict[str, Tensor | None],
            want_step: bool) -> tuple[Tensor, Tensor | None]:
        # step = g / D, D = R + eps, R = sqrt(nu' + eps_root), nu' = decay nu + (1 - decay) g^2.
        nu = (decay * state["nu"]).addcmul_(grads, grads, value=1 - decay)
        root = (nu + eps_root).sqrt_()
        denominator = root + eps
        step = grads / denominator if want_step else None
        nu_bar = state_bar.get("nu")
        if step_bar is None:
            g_bar = torch.zeros_like(grads)
        else:
            g_bar = step_bar / denominator
            # d step / d nu' = -(g / D^2) / (2 R), in autograd's order (0 / 0 where R = 0, as autograd)
            through = (-step_bar * grads / (denominator * denominator)).div_(2 * root)
            nu_bar = through if nu_bar is None else through.add_(nu_bar)
        if nu_bar is not None:
            g_bar.addcmul_(grads, nu_bar, value=2 * (1 - decay))
        return g_bar, step

    return Optimizer("rmsprop", lr, init, direction, max_grad_norm, fused, direction_vjp=vjp)


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
        count = _next_count(state)
        mu = {k: b1 * state["mu"][k] + (1 - b1) * g for k, g in grads.items()}
        nu = {k: b2 * state["nu"][k] + (1 - b2) * g * g for k, g in grads.items()}
        c1, c2 = 1 - b1**count, 1 - b2**count
        step = {k: (mu[k] / c1) / (torch.sqrt(nu[k] / c2 + eps_root) + eps) for k in grads}
        return step, {"count": count, "mu": mu, "nu": nu}

    def fused(grads: Tensor, state: State, layout: "_Layout") -> tuple[Tensor, State]:
        count = _next_count(state)
        mu = layout.flat(state["mu"]).mul_(b1).add_(grads, alpha=1 - b1)
        nu = layout.flat(state["nu"]).mul_(b2).addcmul_(grads, grads, value=1 - b2)
        c1, c2 = 1 - b1**count, 1 - b2**count
        second = nu / c2 if eps_root == 0 else (nu / c2).add_(eps_root)  # nu >= +0: adding 0 changes no bit
        step = (mu / c1).div_(second.sqrt_().add_(eps))
        return step, {"count": count, "mu": layout.split(mu), "nu": layout.split(nu)}

    def vjp(grads: Tensor, state: State, step_bar: Tensor | None, state_bar: dict[str, Tensor | None],
            want_step: bool) -> tuple[Tensor, Tensor | None]:
        # step = m / D, m = mu' / c1, D = R + eps, R = sqrt(nu' / c2 + eps_root), with mu' and nu' the
        # new moments (whose own cotangents add in); the count does not depend on g.
        count = _next_count(state)
        c1, c2 = 1 - b1**count, 1 - b2**count
        mu_bar, nu_bar = state_bar.get("mu"), state_bar.get("nu")
        step = None
        if step_bar is not None or want_step:
            mu = (b1 * state["mu"]).add_(grads, alpha=1 - b1)
            nu = (b2 * state["nu"]).addcmul_(grads, grads, value=1 - b2)
            m = mu.div_(c1)
            root = (nu.div_(c2)).add_(eps_root).sqrt_()
            denominator = root + eps
            step = m / denominator if want_step else None
            if step_bar is not None:
                m_bar = step_bar / denominator
                mu_bar = m_bar.div_(c1) if mu_bar is None else m_bar.div_(c1).add_(mu_bar)
                # d step / d nu' = -(m / D^2) / (2 R) / c2, in autograd's order
                through = (-step_bar * m / (denominator * denominator)).div_(2 * root).div_(c2)
                nu_bar = through if nu_bar is None else through.add_(nu_bar)
        g_bar = torch.zeros_like(grads) if mu_bar is None else mu_bar * (1 - b1)
        if nu_bar is not None:
            g_bar.addcmul_(grads, nu_bar, value=2 * (1 - b2))
        return g_bar, step

    return Optimizer("adam", lr, init, direction, max_grad_norm, fused, direction_vjp=vjp)



OPTIMIZERS = {"sgd": sgd, "rmsprop": rmsprop, "adam": adam}


class Partitioned(Optimizer):
    """Different optimizers for different parameters, chosen by name prefix (optax's ``multi_transform``).

    ``groups`` maps a prefix to the optimizer of the parameters whose names start with it; every
    parameter must match exactly one prefix. Each group keeps its own rate, clipping (by the
    group's own gradient norm) and state, as separate optimizers would (groove trains an LPG
    agent's policy and prediction as two networks with two optimizers).
    """

    def __init__(self, groups: dict[str, Optimizer]):
        if not groups or not all(isinstance(k, str) and k and isinstance(v, Optimizer) for k, v in groups.items()):
            raise ValueError(f"groups must map non-empty name prefixes to optimizers, got {groups!r}")
        per_agent = {opt.per_agent for opt in groups.values()}
        if len(per_agent) > 1:
            raise ValueError("a partitioned optimizer's groups must all be per-agent or none")
        object.__setattr__(self, "groups", dict(groups))
        super().__init__("partitioned", float("nan"), self._init, _no_direction, None, None, per_agent.pop())

    def for_population(self) -> "Partitioned":
        """Every group for parameters ``[P, ...]`` of P agents."""
        return Partitioned({prefix: opt.for_population() for prefix, opt in self.groups.items()})

    def split(self, tree: Params) -> dict[str, Params]:
        """``tree`` divided by group (ValueError for a name that matches no prefix or several)."""
        out: dict[str, Params] = {prefix: {} for prefix in self.groups}
        for name, value in tree.items():
            matches = [prefix for prefix in self.groups if name.startswith(prefix)]
            if len(matches) != 1:
                raise ValueError(f"parameter {name!r} matches {len(matches)} of the prefixes {list(self.groups)}; "
                                 "it must match exactly one")
            out[matches[0]][name] = value
        return out

    def _init(self, params: Params) -> State:
        return {prefix: self.groups[prefix].init(part) for prefix, part in self.split(params).items()}

    def update(self, params: Params, grads: Params, state: State, lr: float | Tensor | None = None,
               grad_norm: Tensor | None = None) -> tuple[Params, State]:
        """Each group's update with its own optimizer (``lr`` must be None: every group has its own rate)."""
        if lr is not None:
            raise ValueError("a partitioned optimizer uses each group's own learning rate; do not pass lr")
        param_parts, grad_parts = self.split(params), self.split(grads)
        new_params: Params = {}
        new_state: State = {}
        for prefix, optimizer in self.groups.items():
            updated, new_state[prefix] = optimizer.update(param_parts[prefix], grad_parts[prefix], state[prefix])
            new_params.update(updated)
        return {k: new_params[k] for k in params}, new_state


def _no_direction(grads: Params, state: State) -> tuple[Params, State]:
    raise NotImplementedError("a partitioned optimizer has no single direction; call update")
