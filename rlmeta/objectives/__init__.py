"""Objectives: ``(params, rollout, hparams, progress) -> (loss, metrics)``, hand-written or learned."""

from rlmeta.objectives.actor_critic import A2C, PPO, DEFAULT_HPARAMS, OuterCritic, VTraceActorCritic

__all__ = ["A2C", "PPO", "DEFAULT_HPARAMS", "OuterCritic", "VTraceActorCritic"]
