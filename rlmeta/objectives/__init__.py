"""Objectives: ``objective(params, data, hparams, progress, context) -> Loss``, hand-written or learned.

The protocol is in :mod:`rlmeta.objectives.base`; ``OBJECTIVES`` maps the catalog's algorithm
names to the hand-written ones.
"""

from rlmeta.objectives.actor_critic import A2C, DEFAULT_HPARAMS, PPO, OuterCritic, VTraceActorCritic
from rlmeta.objectives.base import PLAIN, Loss, LossContext, MinibatchObjective, Objective
from rlmeta.objectives.lpg import LPG, LPGMetaObjective, LPGNetwork

# keys: ALGORITHMS; "lpg" needs its learned parameters (a file: rlmeta.agents.learned.load_lpg)
OBJECTIVES: dict[str, type[Objective]] = {"ppo": PPO, "a2c": A2C, "vtrace": VTraceActorCritic, "lpg": LPG}

__all__ = ["A2C", "DEFAULT_HPARAMS", "LPG", "LPGMetaObjective", "LPGNetwork", "Loss", "LossContext",
           "MinibatchObjective", "OBJECTIVES", "Objective", "OuterCritic", "PLAIN", "PPO", "VTraceActorCritic"]
