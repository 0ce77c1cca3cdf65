"""One source of truth for the names, defaults and bounds the core knows.

Hyperparameters (name, default, range and the transform a meta-learned value lives behind),
meta-gradient estimators and inner optimizers are named here once; ``rlmeta.hparams``,
``rlmeta.objectives``, ``rlmeta.metagrad``, ``rlmeta.optim`` and the typed configs of
``rlmeta.agents.config`` all read these tables. This module imports nothing but the standard
library, so configs and the command line (``rlmeta --help``) can use it without loading torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Bounds:
    """How a hyperparameter is kept in range: its transform and interval.

    * ``sigmoid``: ``low + (high - low) * sigmoid(raw)``, values in an interval (gamma, lambda);
    * ``softplus``: ``low + softplus(raw)``, nonnegative weights (loss coefficients);
    * ``exp``: ``exp(raw)``, positive scales spanning decades (the learning rate).
    """

    transform: str  # "sigmoid" | "softplus" | "exp"
    low: float
    high: float  # math.inf for softplus and exp

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies strictly inside (the transform reaches only the open interval)."""
        return self.low < value < self.high

    def admits(self, value: float) -> bool:
        """Whether a fixed (not learned) value may take ``value``: the closed interval."""
        return self.low <= value <= self.high

    def describe(self) -> str:
        """``(low, high)`` for messages."""
        return f"({self.low:g}, {self.high:g})"


@dataclass(frozen=True)
class HyperParameter:
    """A hyperparameter the hand-written objectives and the learner read."""

    default: float | None  # None: set elsewhere (the learning rate is the optimizer's)
    bounds: Bounds
    doc: str
    learn_from: float | None = None  # where meta-learning starts by default when ``default`` sits on a bound


UNIT = Bounds("sigmoid", 0.0, 1.0)
WEIGHT = Bounds("softplus", 0.0, math.inf)
SCALE = Bounds("exp", 0.0, math.inf)

HYPERPARAMETERS: dict[str, HyperParameter] = {
    "gamma": HyperParameter(0.99, UNIT, "discount"),
    "lambda": HyperParameter(0.95, UNIT, "lambda of lambda-returns, GAE and V-trace"),
    "policy_cost": HyperParameter(1.0, WEIGHT, "weight of the policy-gradient loss"),
    "value_cost": HyperParameter(0.5, WEIGHT, "weight of the value loss"),
    "entropy_cost": HyperParameter(0.01, WEIGHT, "weight of the entropy bonus"),
    "vtrace_alpha": HyperParameter(1.0, UNIT, "leaky V-trace's alpha (1: plain V-trace)", learn_from=0.9),
    "lr": HyperParameter(None, SCALE, "the inner optimizer's learning rate"),
}

# Values the objectives read when ``hparams`` leave a name out.
DEFAULTS: dict[str, float] = {name: h.default for name, h in HYPERPARAMETERS.items() if h.default is not None}

# The key under which ``hparams`` carry the vector a conditioned network takes as input.
CONDITIONING = "conditioning"

# Meta-gradient estimators (``rlmeta.metagrad.ESTIMATORS`` maps each to its class).
ESTIMATORS: tuple[str, ...] = ("one-step", "multi-step", "mixed", "bootstrapped")

# Inner and meta optimizers (``rlmeta.optim.OPTIMIZERS`` maps each to its constructor).
OPTIMIZERS: tuple[str, ...] = ("adam", "rmsprop", "sgd")

# Actor-critic objectives (``rlmeta.objectives.OBJECTIVES``). lpg: a learned objective (--objective);
# lpo: PPO with a learned drift (--objective, default its PPO-clip initialisation); dpo: its closed form.
ALGORITHMS: tuple[str, ...] = ("ppo", "a2c", "vtrace", "lpg", "lpo", "dpo")


def learning_start(name: str, value: float, given: bool) -> float:
    """Where meta-learning ``name`` starts: ``value``, unless it was not ``given`` explicitly and sits on the
    bound of the transform (vtrace_alpha's default 1 is sigmoid's bound), then the catalog's ``learn_from``."""
    entry = HYPERPARAMETERS[name]
    if not given and entry.learn_from is not None and value in (entry.bounds.low, entry.bounds.high):
        return entry.learn_from
    return value


def check_hyperparameter(name: str) -> Bounds:
    """The bounds of ``name``; an unknown name raises ValueError listing the known ones."""
    if name not in HYPERPARAMETERS:
        raise ValueError(f"unknown hyperparameter {name!r}; known: {sorted(HYPERPARAMETERS)}")
    return HYPERPARAMETERS[name].bounds


def learned_bounds(name: str, narrowed: tuple[float, float] | None = None) -> Bounds:
    """The bounds a meta-learned ``name`` lives in: the catalog's, or ``narrowed`` (low, high) inside them."""
    b = check_hyperparameter(name)
    if narrowed is None:
        return b
    low, high = narrowed
    if not (b.low <= low < high <= b.high):
        raise ValueError(f"bounds for {name} must satisfy {b.low:g} <= low < high <= {b.high:g}, got ({low}, {high})")
    if b.transform != "sigmoid" and high != math.inf:
        raise ValueError(f"{name} uses a {b.transform} transform: only its lower bound can be set")
    return Bounds(b.transform, float(low), float(high))


def to_raw(name: str, value: float, bounds: Bounds | None = None) -> float:
    """The raw (unconstrained) value whose transform is ``value``; out-of-bounds values raise."""
    b = bounds or check_hyperparameter(name)
    if not (isinstance(value, (int, float)) and math.isfinite(value)) or not b.contains(float(value)):
        raise ValueError(f"{name}={value!r} is outside its bounds {b.describe()} ({b.transform} transform)")
    if b.transform == "sigmoid":
        p = (value - b.low) / (b.high - b.low)
        return math.log(p) - math.log1p(-p)
    if b.transform == "softplus":
        x = value - b.low
        return x + math.log(-math.expm1(-x))  # inverse softplus, stable for large x
    return math.log(value)



def check_num_updates(num_updates: int) -> int:
    """K, the number of inner updates of a meta-gradient, must be an integer >= 1."""
    if isinstance(num_updates, bool) or not isinstance(num_updates, int) or num_updates < 1:
        raise ValueError(f"the number of inner updates K must be an integer >= 1, got {num_updates!r}")
    return num_updates


def mixing_weights(num_updates: int, weights: str | Sequence[float] = "uniform", decay: float = 0.5) -> list[float]:
    """Normalized weights ``w_1..w_K`` of the k-step meta-gradients of the mixed estimator.

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
