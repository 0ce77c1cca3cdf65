"""Objectives: ``objective(params, data, hparams, progress, context) -> Loss``, hand-written or learned.

The protocol is in :mod:`rlmeta.objectives.base`; ``OBJECTIVES`` maps the catalog's algorithm
names to the hand-written ones.
"""

from rlmeta.objectives.actor_critic import A2C, DEFAULT_HPARAMS, PPO, OuterCritic, VTraceActorCritic
from rlmeta.objectives.base import PLAIN, Loss, LossContext, MinibatchObjective, Objective
from rlmeta.objectives.lpg import LPG, LPGMetaObjective, LPGNetwork
from rlmeta.objectives.lpo import DPO, LPO, LPONetwork, MirrorLearning

# keys: ALGORITHMS; "lpg" and "lpo" need their learned parameters (files: rlmeta.agents.learned.load_lpg, load_lpo)
OBJECTIVES: dict[str, type[Objective]] = {"ppo": PPO, "a2c": A2C, "vtrace": VTraceActorCritic, "lpg": LPG, "lpo": LPO,
                                          "dpo": DPO}

__all__ = ["A2C", "DEFAULT_HPARAMS", "DPO", "LPG", "LPGMetaObjective", "LPGNetwork", "LPO", "LPONetwork", "Loss",
           "LossContext", "MinibatchObjective", "MirrorLearning", "OBJECTIVES", "Objective", "OuterCritic", "PLAIN", "PPO",
           "VTraceActorCritic"]
