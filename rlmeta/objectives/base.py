"""The objective protocol: what an inner loss is, what it returns, and how it reads the network.

An :class:`Objective` is a class whose call ``objective(params, data, hparams, progress, context)``
returns one :class:`Loss`. It is a pure function of the parameters (a dict of tensors) and of the
hyperparameters, whose values may be tensors that require grad (meta-learned scalars) or whole
parameter trees (a learned objective's network, under its own name in ``hparams``). What it
needs is declared on its class:

* the batch form: a plain :class:`Objective` learns from a whole ``Rollout`` in one gradient
  step; a :class:`MinibatchObjective` (PPO) has a ``prepare`` step, run once per rollout, and the
  learner then steps on ``epochs x minibatches`` subsets of the prepared batch;
* the network outputs it reads: its ``policy_value`` adapter (``rlmeta.rollout.PolicyValue``)
  names them (the values, an outer critic's values, extra heads).

The :class:`LossContext` the learner passes says how the loss evaluates the network: whether its
targets (bootstrap values, baselines, importance ratios) stay differentiable functions of the
parameters for exact meta-gradients (an ``OutputSplit``) and which forward passes it may share
with other losses (a ``ForwardMemo``). Objectives never infer either.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Mapping

from torch import Tensor

from rlmeta.rollout import Evaluation, ForwardMemo, OutputSplit, Params, PolicyValue, Rollout, evaluate, \
    evaluate_split

HParams = Mapping[str, Any]  # name -> float, tensor, or a parameter tree (dict of tensors)


@dataclass
class Loss:
    """What an objective returns: the loss, its metrics, and terms restricted to some parameters.

    ``restricted[prefix]`` is a loss term whose gradient may reach only the parameters whose names
    start with ``prefix`` (e.g. an outer critic's value loss, which must not train the layers it
    shares with the critic); the learner adds those gradients to the ones of ``total``.
    """

    total: Tensor
    metrics: dict[str, float]
    restricted: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class LossContext:
    """How a loss evaluates the network (the learner and the estimators make these; objectives read them).

    * ``exact``: the targets stay differentiable functions of the parameters. Predictions then use
      aliases of the network outputs and the targets the outputs themselves (recorded in
      ``split``, an ``rlmeta.rollout.OutputSplit``), so the learner's gradient leaves the targets
      out while a meta-gradient still sees them. False: the targets are the predictions detached,
      the usual semi-gradient.
    * ``memo``: forward passes shared with other losses of the same parameters on the same rollout.
    * ``metrics``: whether the caller reads the loss's metrics. False (the learner's minibatch
      steps before the last, whose metrics it drops): an objective may leave them out, and the
      work they take; the loss and its gradient must not change.
    * ``tensor_metrics``: give the metrics as detached 0-d tensors instead of floats, so that the
      loss reads nothing back to the host (``rlmeta.capture``: a CUDA graph cannot; the caller
      converts them after the step). The built-in actor-critic objectives honour it.
    """

    exact: bool = False
    memo: ForwardMemo | None = None
    metrics: bool = True
    tensor_metrics: bool = False
    split: OutputSplit | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "split", OutputSplit() if self.exact else None)

    def evaluate(self, policy_value: PolicyValue, params: Params, rollout: Rollout,
                 hparams: HParams | None) -> tuple[Evaluation, Evaluation]:
        """``(predictions, targets)`` of one forward pass: targets detached, or exact (see the class)."""
        if self.split is not None:
            return evaluate_split(policy_value, params, rollout, hparams, self.split, self.memo)
        predictions = evaluate(policy_value, params, rollout, hparams, self.memo)
        return predictions, predictions.detached()

    def evaluate_once(self, policy_value: PolicyValue, params: Params, rollout: Rollout,
                      hparams: HParams | None) -> Evaluation:
        """One evaluation, nothing held fixed (an outer loss's, or a prepare step's)."""
        return evaluate(policy_value, params, rollout, hparams, self.memo)


PLAIN = LossContext()


class Objective(ABC):
    """An inner loss on a whole rollout (see the module docstring).

    ``per_env``: the loss is the mean over the rollout's sub-envs of a loss that reads each
    sub-env's own steps only (no batch statistics), so the same objective on a random subset of
    sub-envs is an unbiased estimate of it (the approximate tangent pass, ``rlmeta.tangent``).
    """

    policy_value: PolicyValue
    per_env: bool = False

    @abstractmethod
    def __call__(self, params: Params, data: Any, hparams: HParams, progress: float = 0.0,
                 context: LossContext = PLAIN) -> Loss:
        """The loss of ``params`` on ``data`` (a ``Rollout``; a prepared minibatch for a
        :class:`MinibatchObjective`); ``progress`` in [0, 1] is how far training has come."""


class MinibatchObjective(Objective):
    """An objective with a prepare step, learned from ``epochs x minibatches`` subsets of its batch (PPO)."""

    epochs: int
    minibatches: int

    @abstractmethod
    def prepare(self, params: Params, rollout: Rollout, hparams: HParams, context: LossContext = PLAIN
                ) -> dict[str, Tensor]:
        """The flat ``[N, ...]`` batch the minibatches are drawn from (advantages, returns, ...).

        With ``context.exact`` its targets stay differentiable functions of ``params``; the learner
        never differentiates the minibatch losses through them.
        """
