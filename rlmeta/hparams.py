"""Named, bounded hyperparameters: fixed values or meta-learned ones behind a transform.

Each learnable hyperparameter is stored as an unconstrained ``raw`` tensor and read through a
transform into its bounds (Xu, van Hasselt and Silver 2018, "Meta-Gradient Reinforcement
Learning", learn gamma and lambda through a sigmoid):

* ``sigmoid``: ``low + (high - low) * sigmoid(raw)``, for values in an interval (gamma, lambda,
  V-trace's alpha);
* ``softplus``: ``low + softplus(raw)``, for nonnegative weights (loss coefficients);
* ``exp``: ``exp(raw)``, for positive scales spanning decades (the learning rate).

    meta = MetaParams({"gamma": 0.95, "lambda": 0.9}, fixed={"entropy_cost": 0.01})
    hparams = meta.hparams()            # {"gamma": tensor(0.95, grad), "lambda": ..., "entropy_cost": 0.01}
    meta.raw["gamma"]                   # the leaf a meta-optimizer moves

With ``condition=True`` the agent is conditioned on the learned values (Xu et al. 2018, section
1.4: the policy and value take an embedding of eta as an extra input, so that one network can
represent the values of a changing discount): ``hparams()`` then also carries them as one ``[H]``
tensor under :data:`CONDITIONING`, which networks read; the outer objective feeds the reference
values instead (:meth:`MetaParams.reference_vector`).
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import Tensor

from rlmeta.catalog import CONDITIONING, HYPERPARAMETERS, Bounds, check_hyperparameter


# The hyperparameters the actor-critic objectives and the learner read, and their ranges (one table:
# rlmeta.catalog).
KNOWN: dict[str, Bounds] = {name: h.bounds for name, h in HYPERPARAMETERS.items()}


def check_name(name: str) -> Bounds:
    """The bounds of ``name``; an unknown name raises ValueError listing the known ones."""
    return check_hyperparameter(name)


def to_raw(name: str, value: float, bounds: Bounds | None = None) -> float:
    """The raw (unconstrained) value whose transform is ``value``; out-of-bounds values raise."""
    b = bounds or check_name(name)
    if not (isinstance(value, (int, float)) and math.isfinite(value)) or not b.contains(float(value)):
        raise ValueError(f"{name}={value!r} is outside its bounds {b.describe()} ({b.transform} transform)")
    if b.transform == "sigmoid":
        p = (value - b.low) / (b.high - b.low)
        return math.log(p) - math.log1p(-p)
    if b.transform == "softplus":
        x = value - b.low
        return x + math.log(-math.expm1(-x))  # inverse softplus, stable for large x
    return math.log(value)


def from_raw(raw: Tensor, bounds: Bounds) -> Tensor:
    """The transform: raw tensor -> bounded value (differentiable)."""
    if bounds.transform == "sigmoid":
        return bounds.low + (bounds.high - bounds.low) * torch.sigmoid(raw)
    if bounds.transform == "softplus":
        return bounds.low + torch.nn.functional.softplus(raw)
    return torch.exp(raw)


class MetaParams:
    """Learnable hyperparameters (raw leaf tensors) plus fixed ones, read as one ``hparams`` dict.

    ``learn`` maps names to initial values; ``bounds`` may narrow a name's interval (e.g. gamma in
    (0.9, 1)). ``fixed`` values are passed through unchanged. Every name is checked against
    :data:`KNOWN`; an initial value outside its bounds raises ValueError. ``condition``: ``hparams()``
    also carries the learned values as the network's conditioning input (see the module docstring).
    """

    def __init__(
        self,
        learn: Mapping[str, float],
        fixed: Mapping[str, float] | None = None,
        bounds: Mapping[str, tuple[float, float]] | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        condition: bool = False,
    ):
        if condition and not learn:
            raise ValueError("condition=True needs at least one learned hyperparameter to condition on")
        self.condition = bool(condition)
        fixed = dict(fixed or {})
        both = sorted(set(learn) & set(fixed))
        if both:
            raise ValueError(f"hyperparameter(s) {both} are both learned and fixed; pick one")
        for name in fixed:
            check_name(name)
        self.bounds: dict[str, Bounds] = {}
        for name in learn:
            b = check_name(name)
            if bounds and name in bounds:
                low, high = bounds[name]
                if not (b.low <= low < high <= b.high):
                    raise ValueError(f"bounds for {name} must satisfy {b.low:g} <= low < high <= {b.high:g}, "
                                     f"got ({low}, {high})")
                if b.transform != "sigmoid" and high != math.inf:
                    raise ValueError(f"{name} uses a {b.transform} transform: only its lower bound can be set")
                b = Bounds(b.transform, float(low), float(high))
            self.bounds[name] = b
        unknown_bounds = sorted(set(bounds or {}) - set(learn))
        if unknown_bounds:
            raise ValueError(f"bounds given for hyperparameter(s) {unknown_bounds} that are not learned")
        self.raw: dict[str, Tensor] = {
            name: torch.tensor(to_raw(name, float(value), self.bounds[name]), dtype=dtype, device=device,
                               requires_grad=True)
            for name, value in learn.items()
        }
        self.fixed = fixed

    @property
    def names(self) -> list[str]:
        """The learned hyperparameters, in order."""
        return list(self.raw)

    def values(self) -> dict[str, Tensor]:
        """The learned hyperparameters' current values (differentiable in ``raw``)."""
        return {name: from_raw(raw, self.bounds[name]) for name, raw in self.raw.items()}

    def hparams(self) -> dict[str, float | Tensor]:
        """Fixed values and learned (differentiable) ones together, as objectives read them.

        Conditioned (``condition=True``): also the learned values as one ``[H]`` tensor under
        :data:`CONDITIONING`, differentiable too (the meta-gradient flows through the network's input).
        """
        values = self.values()
        out: dict[str, float | Tensor] = {**self.fixed, **values}
        if self.condition:
            out[CONDITIONING] = torch.stack([values[n] for n in self.names])
        return out

    def vector(self) -> Tensor:
        """The learned values as one ``[H]`` tensor (for conditioning a network on them)."""
        values = self.values()
        return torch.stack([values[n] for n in self.names]) if values else torch.zeros(0)

    def reference_vector(self, reference: Mapping[str, float]) -> Tensor:
        """The conditioning input of the outer objective ``[H]``, a constant: ``reference[name]`` where
        given (the outer gamma and lambda), else the learned value, detached."""
        values = self.values()
        return torch.stack([torch.as_tensor(reference[n], dtype=values[n].dtype, device=values[n].device)
                            if n in reference else values[n].detach() for n in self.names])

    def state_dict(self) -> dict[str, object]:
        """Raw values and bounds, for checkpoints."""
        return {"raw": {k: v.detach().clone() for k, v in self.raw.items()}, "fixed": dict(self.fixed),
                "bounds": {k: (b.low, b.high) for k, b in self.bounds.items()}}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore raw values saved by :meth:`state_dict` (same names)."""
        raw = state["raw"]
        if set(raw) != set(self.raw):  # type: ignore[arg-type]
            raise ValueError(f"saved meta-parameters {sorted(raw)} differ from {sorted(self.raw)}")  # type: ignore[arg-type]
        with torch.no_grad():
            for name, value in raw.items():  # type: ignore[union-attr]
                self.raw[name].copy_(value)
