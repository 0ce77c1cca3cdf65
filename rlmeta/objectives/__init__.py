"""Objectives: ``objective(params, data, hparams, progress, context) -> Loss``, hand-written or learned.

The protocol is in :mod:`rlmeta.objectives.base`; ``OBJECTIVES`` maps the catalog's algorithm
names to the hand-written ones.
"""

from rlmeta.objectives.actor_critic import A2C, DEFAULT_HPARAMS, PPO, OuterCritic, VTraceActorCritic
from rlmeta.objectives.base import PLAIN, Loss, LossContext, MinibatchObjective, Objective

OBJECTIVES: dict[str, type[Objective]] = {"ppo": PPO, "a2c": A2C, "vtrace": VTraceActorCritic}  # keys: ALGORITHMS

__all__ = ["A2C", "DEFAULT_HPARAMS", "Loss", "LossContext", "MinibatchObjective", "OBJECTIVES", "Objective",
           "OuterCritic", "PLAIN", "PPO", "VTraceActorCritic"]
