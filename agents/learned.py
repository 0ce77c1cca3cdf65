"""Learned objectives as files: what ``rlmeta meta-train`` writes and ``rlmeta train --algo lpg`` and
``rlmeta meta-test`` read (a path, a shipped name, ``untrained`` or ``untrained:N``); and learned LPO
drifts, which ``rlmeta train --algo lpo`` and ``rlmeta meta-test`` read (a path written by
:func:`save_lpo`, a shipped name, or ``ppo-init``). Shipped objectives are package data: ``<name>.pt``
and its card ``<name>.json``, whose ``kind`` (``lpg`` or ``lpo``) says which loader reads it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import torch

from rlmeta.agents.config import LPGConfig, MetaTrainConfig
from rlmeta.agents.population import TabularHypers
from rlmeta.objectives.lpg import LPG, LPGNetwork
from rlmeta.objectives.lpo import LPO, LPONetwork
from rlmeta.rollout import PolicyValue

SHIPPED = "rlmeta.objectives.trained"  # package data: <name>.pt and <name>.json cards
LPG_FORMAT = "rlmeta-lpg-1"
LPO_FORMAT = "rlmeta-lpo-1"
PPO_INIT = "ppo-init"  # --algo lpo's default objective: the drift network's PPO-clip initialisation


@dataclass
class LearnedLPG:
    """A trained LPG: its network shape, parameters, agent-loss weight, and the tabular hyperparameters it met."""

    network: LPGNetwork
    params: dict[str, torch.Tensor]
    target_cost: float
    hypers: TabularHypers
    source: str
    config: dict[str, Any]

    def objective(self, policy_value: PolicyValue, lifetime: float = 1.0) -> LPG:
        """The LPG objective reading the agent through ``policy_value``; ``lifetime``: the agent's
        lifetime N in updates (a TA-LPG reads log N and n/N)."""
        return LPG(policy_value, self.network, params=self.params, target_cost=self.target_cost, lifetime=lifetime)


KINDS = ("lpg", "lpo")


def shipped_card(name: str) -> dict[str, Any]:
    """The card (``<name>.json``) of a shipped objective: where it came from, its config and its scores."""
    card = resources.files(SHIPPED) / f"{name}.json"
    if not card.is_file():
        raise ValueError(f"{name!r} is not a shipped objective ({shipped_objectives()})")
    return json.loads(card.read_text())


def shipped_objectives(kind: str | None = None) -> list[str]:
    """Names of the learned objectives that ship with rlmeta (``kind``: only LPGs (``lpg``) or LPO drifts (``lpo``))."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
    names = sorted(p.name[:-3] for p in resources.files(SHIPPED).iterdir() if p.name.endswith(".pt"))
    return [n for n in names if kind is None or shipped_card(n).get("kind") == kind]


def _shipped_path(name: str) -> Path:
    return Path(str(resources.files(SHIPPED) / f"{name}.pt"))


_KIND_NAMES = {"lpg": "LPG", "lpo": "LPO drift"}


def _objective_path(objective: str, kind: str, missing: Callable[[], str]) -> Path:
    """The file of ``objective`` (a path, or a shipped name of ``kind``); a shipped name of the other kind
    says which ``--algo`` reads it; anything else raises ``missing()``."""
    path = Path(objective)
    if path.is_file():
        return path
    if objective in shipped_objectives(kind):
        return _shipped_path(objective)
    other = "lpo" if kind == "lpg" else "lpg"
    if objective in shipped_objectives(other):
        raise ValueError(f"{objective!r} is a shipped {_KIND_NAMES[other]}, not an {_KIND_NAMES[kind]}: "
                         f"use it with --algo {other}")
    raise ValueError(missing())


def objective_kind(objective: str) -> str:
    """``lpg`` or ``lpo``: which kind of learned objective ``objective`` (a file, a shipped name,
    ``untrained[:N]`` or ``ppo-init``) is; a clear error where it is none."""
    if objective == "untrained" or objective.startswith("untrained:"):
        return "lpg"
    if objective == PPO_INIT:
        return "lpo"
    path = Path(objective)
    if not path.is_file():
        if objective in shipped_objectives():
            return shipped_card(objective)["kind"]
        raise ValueError(f"objective {objective!r} is neither a file nor a shipped objective ({shipped_objectives()}), "
                         f"nor 'untrained', 'untrained:N' or {PPO_INIT!r}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # not a torch file
        raise ValueError(f"{str(path)!r} is not a learned objective file: {error}") from None
    found = data.get("format") if isinstance(data, dict) else None
    if found == LPG_FORMAT:
        return "lpg"
    if found == LPO_FORMAT:
        return "lpo"
    raise ValueError(f"{str(path)!r} is not a learned objective: format {found!r}, expected {LPG_FORMAT!r} "
                     f"(rlmeta meta-train / es-train --objective lpg) or {LPO_FORMAT!r} (es-train --objective lpo)")


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
    path = _objective_path(objective, "lpg", lambda: f"objective {objective!r} is neither a file nor a shipped LPG "
                           f"({shipped_objectives('lpg')}), nor 'untrained' or 'untrained:N'")
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


@dataclass
class LearnedLPO:
    """A learned LPO drift: its network shape and parameters, where it came from, and what its writer noted."""

    network: LPONetwork
    params: dict[str, torch.Tensor]
    source: str
    info: dict[str, Any]

    def objective(self, policy_value: PolicyValue, lifetime: float = 1.0, **options: Any) -> LPO:
        """The LPO objective reading the agent through ``policy_value`` (``options``: PPO's, e.g. epochs)."""
        return LPO(policy_value, self.network, params=self.params, lifetime=lifetime, **options)


def save_lpo(path: str | Path, network: LPONetwork, params: dict[str, torch.Tensor], **info: Any) -> Path:
    """Write a learned LPO drift to ``path`` (format ``rlmeta-lpo-1``: ``network`` (the
    :class:`LPONetwork` fields), ``params`` (its tensors, on the CPU) and ``info`` (any notes, plain data)),
    the file ``rlmeta train --algo lpo --objective PATH`` and :func:`load_lpo` read."""
    network.check(params)
    path = Path(path)
    data = {"format": LPO_FORMAT, "network": asdict(network),
            "params": {k: v.detach().to("cpu").clone() for k, v in params.items()}, "info": dict(info)}
    torch.save(data, path)
    return path


def load_lpo(objective: str | None = PPO_INIT, clip: float = 0.2, seed: int = 0) -> LearnedLPO:
    """A learned LPO drift from a file written by :func:`save_lpo`, a shipped name (``rlmeta meta-test
    --list``), or ``ppo-init`` (or None): a fresh drift network whose drift is PPO-clip's with eps
    ``clip`` (its hidden layer drawn with ``seed``)."""
    if objective is None or objective == PPO_INIT:
        network = LPONetwork(ppo_clip=clip)
        return LearnedLPO(network, network.init(seed), PPO_INIT, {})
    path = _objective_path(objective, "lpo", lambda: f"LPO objective {objective!r} is neither a file, a shipped LPO "
                           f"drift ({shipped_objectives('lpo')}) nor {PPO_INIT!r}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # not a torch file, or one holding more than plain data and tensors
        raise ValueError(f"{str(path)!r} is not a learned LPO file (format {LPO_FORMAT}): {error}") from None
    if not isinstance(data, dict) or data.get("format") != LPO_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        hint = " (a learned LPG: use --algo lpg)" if found == LPG_FORMAT else ""
        raise ValueError(f"{str(path)!r} is not a learned LPO file: format {found!r}, expected {LPO_FORMAT!r}{hint}")
    if not isinstance(data.get("network"), dict) or not isinstance(data.get("params"), dict):
        raise ValueError(f"{str(path)!r}: a learned LPO file needs a 'network' dict and a 'params' dict")
    try:
        network = LPONetwork(**data["network"])
    except TypeError as error:
        raise ValueError(f"{str(path)!r}: its network {data['network']} is not an LPONetwork ({error})") from None
    network.check(data["params"])
    return LearnedLPO(network, data["params"], str(path), dict(data.get("info") or {}))
