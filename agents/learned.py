"""Learned objectives as files: what ``rlmeta meta-train`` writes and ``rlmeta train --algo lpg`` and
``rlmeta meta-test`` read (a path, a shipped name, ``untrained`` or ``untrained:N``)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from rlmeta.agents.config import LPGConfig, MetaTrainConfig
from rlmeta.agents.population import TabularHypers
from rlmeta.objectives.lpg import LPG, LPGNetwork
from rlmeta.rollout import PolicyValue

SHIPPED = "rlmeta.objectives.trained"  # package data: <name>.pt and <name>.json cards
LPG_FORMAT = "rlmeta-lpg-1"


@dataclass
class LearnedLPG:
    """A trained LPG: its network shape, parameters, agent-loss weight, and the tabular hyperparameters it met."""

    network: LPGNetwork
    params: dict[str, torch.Tensor]
    target_cost: float
    hypers: TabularHypers
    source: str
    config: dict[str, Any]

    def objective(self, policy_value: PolicyValue) -> LPG:
        """The LPG objective reading the agent through ``policy_value``."""
        return LPG(policy_value, self.network, params=self.params, target_cost=self.target_cost)


def shipped_objectives() -> list[str]:
    """Names of the learned objectives that ship with rlmeta."""
    return sorted(p.name[:-3] for p in resources.files(SHIPPED).iterdir() if p.name.endswith(".pt"))


def load_lpg(objective: str, seed: int = 0) -> LearnedLPG:
    """A learned LPG from a file written by ``rlmeta meta-train`` (``lpg.pt``), a shipped name
    (``rlmeta meta-test --list``), or ``untrained`` (a fresh LPG, the baseline, initialised with ``seed``)
    or ``untrained:N`` (initialised with seed N, so several initialisations can be scored on the same levels)."""
    if objective == "untrained" or objective.startswith("untrained:"):
        if objective != "untrained":
            init = objective.split(":", 1)[1]
            if not init.isdigit():
                raise ValueError(f"objective {objective!r}: the seed after 'untrained:' must be an integer >= 0")
            seed = int(init)
        config = MetaTrainConfig(lpg=LPGConfig())
        network = LPGNetwork(config.lpg.target_width, config.lpg.embedding_width, config.lpg.gru_width,
                             config.lpg.inputs_gamma, config.lpg.lifetime_conditioning)
        return LearnedLPG(network, network.init(seed), config.lpg.target_cost, TabularHypers(), objective, {})
    path = Path(objective)
    if not path.is_file():
        if objective in shipped_objectives():
            path = Path(str(resources.files(SHIPPED) / f"{objective}.pt"))
        else:
            raise ValueError(f"objective {objective!r} is neither a file nor a shipped objective "
                             f"({shipped_objectives()}), nor 'untrained' or 'untrained:N'")
    data = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(data, dict) or data.get("format") != LPG_FORMAT:
        raise ValueError(f"{str(path)!r} is not a learned LPG written by rlmeta meta-train (format {LPG_FORMAT})")
    network = LPGNetwork(**data["network"])
    network.check(data["params"])
    c = data["config"]
    hypers = TabularHypers(policy_lr=c["agent_lr"], prediction_lr=c["prediction_lr"], value_lr=c["value_lr"],
                           max_grad_norm=c["agent_max_grad_norm"], envs_per_agent=c["envs_per_agent"],
                           num_steps=c["num_steps"], gamma=c["gamma"], gae_lambda=c["critic_lambda"])
    return LearnedLPG(network, data["params"], float(data["target_cost"]), hypers, str(path), c)


