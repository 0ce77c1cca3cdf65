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

from typing import Mapping

import torch
from torch import Tensor

from rlmeta.catalog import CONDITIONING, HYPERPARAMETERS, Bounds, check_hyperparameter, learned_bounds, to_raw
from rlmeta.optim import Optimizer, detached


# The hyperparameters the actor-critic objectives and the learner read, and their ranges (one table:
# rlmeta.catalog).
KNOWN: dict[str, Bounds] = {name: h.bounds for name, h in HYPERPARAMETERS.items()}


def check_name(name: str) -> Bounds:
    """The bounds of ``name``; an unknown name raises ValueError listing the known ones."""
    return check_hyperparameter(name)


def from_raw(raw: Tensor, bounds: Bounds) -> Tensor:
    """The transform: raw tensor -> bounded value (differentiable)."""
    if bounds.transform == "sigmoid":
        return bounds.low + (bounds.high - bounds.low) * torch.sigmoid(raw)
    if bounds.transform == "softplus":
        return bounds.low + torch.nn.functional.softplus(raw)
    return torch.exp(raw)


class MetaParams:
    """Meta-parameters as a dict of tensors (``raw``), plus fixed hyperparameters, read as one ``hparams`` dict.

    Two kinds of meta-parameters, moved alike by estimators and meta-optimizers:

    * named bounded scalars: ``learn`` maps hyperparameter names to initial values; ``bounds``
      may narrow a name's interval (e.g. gamma in (0.9, 1)); each is stored as an unconstrained
      ``raw[name]`` and read through its transform. Every name is checked against :data:`KNOWN`;
      an initial value outside its bounds raises ValueError.
    * parameter trees: ``trees`` maps a name (e.g. a learned objective's ``"lpg"``) to a dict of
      initial tensors; ``raw["<tree>.<key>"]`` holds each, unbounded, and ``hparams()[tree]`` gives
      the tree as a dict of those tensors, which the objective that owns it reads.

    ``fixed`` values are passed through unchanged. ``condition``: ``hparams()`` also carries the
    learned scalars as the network's conditioning input (see the module docstring).
    """

    def __init__(
        self,
        learn: Mapping[str, float],
        fixed: Mapping[str, float] | None = None,
        bounds: Mapping[str, tuple[float, float]] | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        condition: bool = False,
        trees: Mapping[str, Mapping[str, Tensor]] | None = None,
    ):
        if condition and not learn:
            raise ValueError("condition=True needs at least one learned hyperparameter to condition on")
        trees = dict(trees or {})
        for tree, leaves in trees.items():
            if not (isinstance(tree, str) and tree and "." not in tree) or tree in KNOWN or tree == CONDITIONING:
                raise ValueError(f"a parameter tree needs a name without '.' that is not a hyperparameter's or "
                                 f"{CONDITIONING!r}, got {tree!r}")
            if not leaves or not all(isinstance(k, str) and torch.is_tensor(v) and v.is_floating_point()
                                     for k, v in leaves.items()):
                raise ValueError(f"parameter tree {tree!r} must map names to floating-point tensors")
        self.condition = bool(condition)
        fixed = dict(fixed or {})
        both = sorted(set(learn) & set(fixed) | set(trees) & set(fixed))
        if both:
            raise ValueError(f"hyperparameter(s) {both} are both learned and fixed; pick one")
        for name in fixed:
            check_name(name)
        self.bounds: dict[str, Bounds] = {name: learned_bounds(name, (bounds or {}).get(name)) for name in learn}
        unknown_bounds = sorted(set(bounds or {}) - set(learn))
        if unknown_bounds:
            raise ValueError(f"bounds given for hyperparameter(s) {unknown_bounds} that are not learned")
        self.raw: dict[str, Tensor] = {
            name: torch.tensor(to_raw(name, float(value), self.bounds[name]), dtype=dtype, device=device,
                               requires_grad=True)
            for name, value in learn.items()
        }
        self.trees: dict[str, list[str]] = {}  # tree name -> its leaves' names in ``raw``
        for tree, leaves in trees.items():
            self.trees[tree] = [f"{tree}.{key}" for key in leaves]
            for key, value in leaves.items():
                self.raw[f"{tree}.{key}"] = value.detach().clone().to(dtype=dtype, device=device).requires_grad_(True)
        self.fixed = fixed

    @property
    def names(self) -> list[str]:
        """Every raw meta-parameter tensor's name, in order: the scalars, then each tree's leaves."""
        return list(self.raw)

    @property
    def scalar_names(self) -> list[str]:
        """The learned hyperparameters (bounded scalars), in order."""
        return list(self.bounds)

    def values(self) -> dict[str, Tensor]:
        """The learned hyperparameters' current values (differentiable in ``raw``)."""
        return {name: from_raw(self.raw[name], bounds) for name, bounds in self.bounds.items()}

    def tree(self, name: str) -> dict[str, Tensor]:
        """The parameter tree ``name`` as a dict of its raw tensors (keys without the tree's prefix)."""
        return {leaf[len(name) + 1:]: self.raw[leaf] for leaf in self.trees[name]}

    def hparams(self) -> dict[str, float | Tensor | dict[str, Tensor]]:
        """Fixed values, learned (differentiable) scalars and parameter trees together, as objectives read them.

        Conditioned (``condition=True``): also the learned scalars as one ``[H]`` tensor under
        :data:`CONDITIONING`, differentiable too (the meta-gradient flows through the network's input).
        """
        values = self.values()
        out: dict[str, float | Tensor | dict[str, Tensor]] = {**self.fixed, **values}
        out.update({name: self.tree(name) for name in self.trees})
        if self.condition:
            out[CONDITIONING] = torch.stack([values[n] for n in self.scalar_names])
        return out

    def current(self) -> dict[str, float | Tensor | dict[str, Tensor]]:
        """:meth:`hparams` held fixed (every tensor detached): what an agent acts with."""
        return detached(self.hparams())  # type: ignore[return-value]

    def step(self, optimizer: Optimizer, grads: Mapping[str, Tensor], state: dict) -> dict:
        """Move the raw meta-parameters by ``optimizer`` along ``grads`` (a meta-gradient, one entry per
        raw tensor); they become fresh leaves, which the next estimate differentiates in. Returns the
        optimizer's new state (start from ``optimizer.init(meta.raw)``)."""
        new_raw, state = optimizer.update(detached(self.raw), dict(grads), state)  # type: ignore[arg-type]
        for name, value in new_raw.items():
            self.raw[name] = value.detach().requires_grad_(True)
        return state

    def vector(self) -> Tensor:
        """The learned scalars' values as one ``[H]`` tensor (for conditioning a network on them)."""
        values = self.values()
        return torch.stack([values[n] for n in self.scalar_names]) if values else torch.zeros(0)

    def reference_vector(self, reference: Mapping[str, float]) -> Tensor:
        """The conditioning input of the outer objective ``[H]``, a constant: ``reference[name]`` where
        given (the outer gamma and lambda), else the learned value, detached."""
        values = self.values()
        return torch.stack([torch.as_tensor(reference[n], dtype=values[n].dtype, device=values[n].device)
                            if n in reference else values[n].detach() for n in self.scalar_names])

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
