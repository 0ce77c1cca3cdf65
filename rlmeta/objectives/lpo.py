"""Mirror-learning objectives: Learned Policy Optimisation (LPO) and Discovered Policy Optimisation
(DPO), Lu et al. 2022, "Discovered Policy Optimisation"; with the temporally-aware drift of Jackson
et al. 2024, "Discovering Temporally-Aware Reinforcement Learning Algorithms" (TA-LPO) as an option.

PPO's clipped surrogate is one member of a family (mirror learning): the policy maximises

    E[ r A - drift(r, A) ],        r = pi(a|s) / pi_old(a|s),  A the (normalised) advantage,

for any drift with ``drift >= 0``, ``drift(1, A) = 0`` and zero gradient in ``r`` at ``r = 1``.
PPO-clip is ``drift_PPO(r, A) = relu((r - clip(r, 1 - eps, 1 + eps)) A)``, since
``r A - drift_PPO = min(r A, clip(r, 1 - eps, 1 + eps) A)``.

* **LPO** learns the drift: a network ``g`` (:class:`LPONetwork`) reads, per sample,

      x = [log r, (log r)^2, 1 - r, (1 - r)^2]  and  A * x          (8 inputs)

  with one hidden layer of 128 tanh units and no biases anywhere (the reference's ``DriftNet``).
  Every input is 0 at ``r = 1`` and there are no biases, so ``g = 0`` there for any weights. The
  reference keeps the constraints with a dead zone of ``delta = 1e-4``: ``drift = relu(g - delta)``,
  or with its PPO initialisation ``relu(drift_PPO + g - delta)``; near ``r = 1``, ``|g| < delta``
  and ``drift_PPO = 0``, so the drift is 0 on a neighbourhood of ``r = 1`` (value and gradient).
  Here, with the PPO base, the drift is

      drift = relu(drift_PPO + g - delta) + min(drift_PPO, delta)

  which keeps the reference's family (``g < 0`` can remove PPO's penalty; the second term is
  below ``delta``), its constraints (both terms are >= 0 and vanish near ``r = 1``) and its
  gradient in ``g`` (the meta-gradient reaches the network where ``drift_PPO + g > delta``), and
  is *exactly* PPO-clip at ``g = 0`` (the reference's ``relu(drift_PPO - delta)`` is off by up to
  ``delta``). :meth:`LPONetwork.init` zeroes the output layer, so a fresh LPO is PPO-clip: loss and
  gradient (``tests/rlmeta/test_lpo.py``).

* **TA-LPO** (``lifetime_conditioning``): the inputs become ``[x, (n/N) x]`` (Jackson et al. 2024,
  eq. 10), ``n/N`` the training progress the learner passes (env steps learned from before the
  update / total). Multiplying by ``x`` keeps the drift's constraints, which a bare ``n/N`` input
  would break. The paper leaves ``log N`` out of TA-LPO (trained on one horizon);
  ``horizon_conditioning`` adds ``log(N) x`` (our option, not the paper's), N the objective's
  ``lifetime``.

* **DPO** is the closed form the paper distilled from a learned LPO (alpha = 2, beta = 0.6):

      drift = relu((r - 1) A - alpha tanh((r - 1) A / alpha))     for A >= 0
              relu(log(r) A - beta tanh(log(r) A / beta))          for A < 0

Both are PPO in everything else: the same ``prepare`` (GAE advantages and returns), value loss,
entropy bonus, minibatches and outer-critic term; only :meth:`PPO.surrogate` differs.

References (read for facts, not copied): ``luchris429/discovered-policy-optimisation``,
``dpo/brax_drift.py`` (inputs, ``DriftNet`` in ``dpo/main_drift_brax.py``, the ``relu(. - 1e-4)``
constraint and PPO initialisation) and ``luchris429/purejaxrl``, ``purejaxrl/dpo_continuous_action.py``
(DPO's drift).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from rlmeta.objectives.actor_critic import PPO, OuterCritic
from rlmeta.objectives.base import HParams
from rlmeta.rollout import Params, PolicyValue

NUM_FEATURES = 8  # [log r, (log r)^2, 1 - r, (1 - r)^2] and the same times A


def ppo_drift(ratio: Tensor, advantages: Tensor, clip: float) -> Tensor:
    """PPO-clip's drift ``relu((r - clip(r, 1 - eps, 1 + eps)) A)``: ``r A - drift = min(r A, clip(r) A)``."""
    return F.relu((ratio - torch.clamp(ratio, 1 - clip, 1 + clip)) * advantages)


def dpo_drift(ratio: Tensor, log_ratio: Tensor, advantages: Tensor, alpha: float = 2.0, beta: float = 0.6) -> Tensor:
    """DPO's drift (see the module docstring): the ``A >= 0`` branch in ``r - 1``, the ``A < 0`` one in ``log r``."""
    positive = (ratio - 1) * advantages
    negative = log_ratio * advantages
    return torch.where(advantages >= 0, F.relu(positive - alpha * torch.tanh(positive / alpha)),
                       F.relu(negative - beta * torch.tanh(negative / beta)))


def drift_features(ratio: Tensor, log_ratio: Tensor, advantages: Tensor) -> Tensor:
    """``[..., 8]``: ``[log r, (log r)^2, 1 - r, (1 - r)^2]`` and each times ``A`` (all 0 at ``r = 1``)."""
    one_minus = 1 - ratio
    x = torch.stack([log_ratio, log_ratio * log_ratio, one_minus, one_minus * one_minus], dim=-1)
    return torch.cat([x, advantages[..., None] * x], dim=-1)


@dataclass(frozen=True)
class LPONetwork:
    """The shape of an LPO drift network, and the drift it computes (see the module docstring).

    * ``hidden``: tanh units of the one hidden layer (the reference's 128); no biases.
    * ``ppo_clip``: eps of the PPO-clip drift the learned part is added to (the reference's
      ``--ppo-init``, eps 0.2); None: the network's drift alone, ``relu(g - delta)``.
    * ``lifetime_conditioning``: TA-LPO's inputs ``[x, (n/N) x]``.
    * ``horizon_conditioning``: also ``log(N) x`` (not in the paper; N the objective's ``lifetime``).
    * ``delta``: the dead zone that makes the drift vanish near ``r = 1`` (the reference's 1e-4).

    Its parameters are a plain dict of tensors (``shapes()``): a meta-parameter tree
    (``MetaParams(trees={"lpo": ...})``) or, flattened (:meth:`flatten`), an evolution-strategies
    search space.
    """

    hidden: int = 128
    ppo_clip: float | None = 0.2
    lifetime_conditioning: bool = False
    horizon_conditioning: bool = False
    delta: float = 1e-4

    def __post_init__(self) -> None:
        if not isinstance(self.hidden, int) or isinstance(self.hidden, bool) or self.hidden < 1:
            raise ValueError(f"LPONetwork.hidden must be an integer >= 1, got {self.hidden!r}")
        if self.ppo_clip is not None and not (isinstance(self.ppo_clip, (int, float)) and 0 < self.ppo_clip < 1):
            raise ValueError(f"LPONetwork.ppo_clip must be in (0, 1) or None, got {self.ppo_clip!r}")
        if not (isinstance(self.delta, (int, float)) and self.delta > 0 and math.isfinite(self.delta)):
            raise ValueError(f"LPONetwork.delta must be > 0, got {self.delta!r}")

    @property
    def input_size(self) -> int:
        """8 features, times 2 with ``lifetime_conditioning``, plus 8 with ``horizon_conditioning``."""
        return NUM_FEATURES * (1 + int(self.lifetime_conditioning) + int(self.horizon_conditioning))

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's shape, by name (no biases)."""
        return {"hidden.weight": (self.hidden, self.input_size), "out.weight": (1, self.hidden)}

    def init(self, seed: int = 0, dtype: torch.dtype = torch.float32) -> Params:
        """Initial parameters: hidden weights ``N(0, 1 / fan_in)`` (flax's default, untruncated), seeded;
        the output layer zero, so the learned part ``g`` is 0 and the drift is the base's (PPO-clip)."""
        generator = torch.Generator().manual_seed(seed)
        h, d = self.shapes()["hidden.weight"]
        hidden = torch.randn((h, d), generator=generator, dtype=torch.float64) / math.sqrt(d)
        return {"hidden.weight": hidden.to(dtype), "out.weight": torch.zeros(1, h, dtype=dtype)}

    def check(self, params: Params) -> None:
        """Raise ValueError unless ``params`` has exactly this network's parameters and shapes."""
        expected = self.shapes()
        got = {k: tuple(v.shape) for k, v in params.items()}
        if got != expected:
            missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
            wrong = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
            raise ValueError(f"LPO parameters do not fit {self}: missing {missing}, unexpected {extra}, "
                             f"wrong shapes {[(k, got[k], expected[k]) for k in wrong]}")

    @property
    def num_params(self) -> int:
        """The number of scalars in the parameter tree."""
        return sum(math.prod(s) for s in self.shapes().values())

    def flatten(self, params: Params) -> Tensor:
        """The parameters as one vector ``[num_params]`` in :meth:`shapes` order (an ES search point)."""
        self.check(params)
        return torch.cat([params[k].reshape(-1) for k in self.shapes()])

    def unflatten(self, vector: Tensor) -> Params:
        """The parameter tree of a vector :meth:`flatten` made (views of it)."""
        if vector.dim() != 1 or vector.numel() != self.num_params:
            raise ValueError(f"an LPO parameter vector has {self.num_params} entries, got shape {tuple(vector.shape)}")
        params, start = {}, 0
        for name, shape in self.shapes().items():
            size = math.prod(shape)
            params[name] = vector[start:start + size].reshape(shape)
            start += size
        return params

    def inputs(self, ratio: Tensor, log_ratio: Tensor, advantages: Tensor, progress: float = 0.0,
               lifetime: float = 1.0) -> Tensor:
        """The network's ``[..., input_size]`` inputs (``progress``: n/N in [0, 1]; ``lifetime``: N)."""
        x = drift_features(ratio, log_ratio, advantages)
        columns = [x]
        if self.lifetime_conditioning:
            columns.append(progress * x)  # a float, or a 0-d tensor (the learner's compiled steps)
        if self.horizon_conditioning:
            columns.append(math.log(max(float(lifetime), 1.0)) * x)
        return torch.cat(columns, dim=-1) if len(columns) > 1 else x

    def learned(self, params: Params, inputs: Tensor) -> Tensor:
        """``g``, the network's raw output ``[...]`` (0 wherever the inputs are 0)."""
        hidden = torch.tanh(F.linear(inputs, params["hidden.weight"]))
        return F.linear(hidden, params["out.weight"]).squeeze(-1)

    def __call__(self, params: Params, ratio: Tensor, log_ratio: Tensor, advantages: Tensor, progress: float = 0.0,
                 lifetime: float = 1.0) -> Tensor:
        """The drift ``[...]`` at ratios ``r = exp(log_ratio)`` and advantages ``A`` (see the module docstring)."""
        g = self.learned(params, self.inputs(ratio, log_ratio, advantages, progress, lifetime))
        if self.ppo_clip is None:
            return F.relu(g - self.delta)
        base = ppo_drift(ratio, advantages, self.ppo_clip)
        return F.relu(base + g - self.delta) + torch.clamp(base, max=self.delta)


class MirrorLearning(PPO):
    """PPO with its surrogate replaced by ``r A - drift(r, A)``; subclasses give the drift.

    Everything else is PPO's (``prepare``, value loss, entropy, minibatches, outer critic).
    ``clip`` only sets the ``clip_fraction`` metric's threshold (the fraction of samples with
    ``|r - 1| > clip``); the loss reports the mean ``drift`` too.
    """

    def __init__(self, policy_value: PolicyValue, clip: float = 0.2, value_clip: float | None = None,
                 normalize_advantages: bool = True, epochs: int = 4, minibatches: int = 4,
                 outer_critic: OuterCritic | None = None):
        super().__init__(policy_value, clip=clip, value_clip=value_clip, normalize_advantages=normalize_advantages,
                         epochs=epochs, minibatches=minibatches, anneal_clip=False, outer_critic=outer_critic)

    def drift(self, ratio: Tensor, log_ratio: Tensor, advantages: Tensor, hparams: HParams,
              progress: float = 0.0) -> Tensor:
        """The per-sample drift (>= 0, 0 with zero gradient at ``r = 1``)."""
        raise NotImplementedError

    def surrogate(self, ratio: Tensor, log_ratio: Tensor, advantages: Tensor, hparams: HParams,
                  progress: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
        """``r A - drift(r, A)`` per sample, and the mean drift as a metric."""
        drift = self.drift(ratio, log_ratio, advantages, hparams, progress)
        return ratio * advantages - drift, {"drift": drift.mean()}


class LPO(MirrorLearning):
    """Learned Policy Optimisation: PPO with a learned drift (see the module docstring).

    * ``network``: the drift network's shape; ``params``: its parameters when they are not
      meta-learned (otherwise ``hparams[tree]`` holds them and takes precedence). A fresh
      ``network.init()`` with the PPO base is PPO-clip exactly.
    * ``lifetime``: N for ``horizon_conditioning`` (TA-LPO reads n/N from ``progress``).
    * ``clip``: the ``clip_fraction`` metric's threshold (default: the network's ``ppo_clip``, else 0.2).
    """

    def __init__(self, policy_value: PolicyValue, network: LPONetwork = LPONetwork(), params: Params | None = None,
                 tree: str = "lpo", lifetime: float = 1.0, clip: float | None = None, value_clip: float | None = None,
                 normalize_advantages: bool = True, epochs: int = 4, minibatches: int = 4,
                 outer_critic: OuterCritic | None = None):
        if params is not None:
            network.check(params)
        if not lifetime >= 1:
            raise ValueError(f"LPO lifetime (N) must be >= 1, got {lifetime!r}")
        clip = clip if clip is not None else (network.ppo_clip if network.ppo_clip is not None else 0.2)
        super().__init__(policy_value, clip=clip, value_clip=value_clip, normalize_advantages=normalize_advantages,
                         epochs=epochs, minibatches=minibatches, outer_critic=outer_critic)
        self.network, self.params, self.tree, self.lifetime = network, params, tree, lifetime

    def lpo_params(self, hparams: HParams) -> Params:
        """The drift network's parameters: the meta-learned tree in ``hparams``, else the objective's own."""
        if self.tree in hparams:
            return hparams[self.tree]
        if self.params is None:
            raise ValueError(f"LPO has no parameters: meta-learn them as the tree {self.tree!r} or pass params=")
        return self.params

    def drift(self, ratio: Tensor, log_ratio: Tensor, advantages: Tensor, hparams: HParams,
              progress: float = 0.0) -> Tensor:
        """The learned drift at training progress ``progress`` (n/N)."""
        params = {k: v.to(ratio) for k, v in self.lpo_params(hparams).items()}  # the batch's device and dtype
        return self.network(params, ratio, log_ratio, advantages, progress, self.lifetime)


class DPO(MirrorLearning):
    """Discovered Policy Optimisation: PPO with DPO's closed-form drift (``alpha``, ``beta``: 2 and 0.6)."""

    def __init__(self, policy_value: PolicyValue, alpha: float = 2.0, beta: float = 0.6, clip: float = 0.2,
                 value_clip: float | None = None, normalize_advantages: bool = True, epochs: int = 4,
                 minibatches: int = 4, outer_critic: OuterCritic | None = None):
        for name, value in (("alpha", alpha), ("beta", beta)):
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise ValueError(f"DPO {name} must be > 0, got {value!r}")
        super().__init__(policy_value, clip=clip, value_clip=value_clip, normalize_advantages=normalize_advantages,
                         epochs=epochs, minibatches=minibatches, outer_critic=outer_critic)
        self.alpha, self.beta = float(alpha), float(beta)

    def drift(self, ratio: Tensor, log_ratio: Tensor, advantages: Tensor, hparams: HParams,
              progress: float = 0.0) -> Tensor:
        """DPO's drift (:func:`dpo_drift`)."""
        return dpo_drift(ratio, log_ratio, advantages, self.alpha, self.beta)
