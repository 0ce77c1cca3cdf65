"""Level curricula: prioritised level replay (Jiang, Grefenstette and Rocktaeschel 2021, "Prioritized Level
Replay"), as GROOVE (Jackson et al. 2023) uses it to choose the levels a learned objective meta-trains on.

A :class:`LevelBuffer` keeps up to ``capacity`` levels (any hashable values) with a score each
(GROOVE: the algorithmic regret of an LPG agent on the level). A new agent's level is either
replayed from the buffer, with probability ``replay_probability``, or fresh from a generator:

    P_replay(i) = (1 - rho) * h(rank_i)^(1/T) / sum_j h(rank_j)^(1/T) + rho * (c - C_i) / sum_j (c - C_j)

with ``h(rank) = 1 / rank`` (rank 1 for the highest score), ``T`` the temperature, ``rho`` the
staleness weight, ``c`` the number of levels handed out so far and ``C_i`` when level ``i`` was
last handed out. Levels being played (handed out, not yet scored) are not replayed, so two agents
never share a replayed level at once (as groove). A scored fresh level enters the buffer; when it
is full it replaces the lowest-scoring level if it scores higher.

GROOVE's own code replays the top-``n`` levels by score deterministically ("rank" transform) and
recomputes each level's A2C reference every time; the design notes of this project ask for PLR's
stochastic rank prioritisation and a cached reference, which ``rlmeta.agents.meta_train`` uses.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable

import numpy as np


class LevelBuffer:
    """Scored levels and PLR's replay distribution over them (see the module docstring)."""

    def __init__(self, capacity: int, temperature: float = 1.0, staleness_weight: float = 0.3):
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be an integer >= 1, got {capacity!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if not 0 <= staleness_weight <= 1:
            raise ValueError(f"staleness_weight must be in [0, 1], got {staleness_weight!r}")
        self.capacity, self.temperature, self.staleness_weight = capacity, temperature, staleness_weight
        self.levels: list[Hashable] = []
        self.scores: list[float] = []
        self.last_handed: list[int] = []
        self.clock = 0  # levels handed out so far
        self.active: dict[Hashable, int] = {}  # levels being played -> how many agents play them

    def __len__(self) -> int:
        return len(self.levels)

    def replayable(self) -> list[int]:
        """Indices of buffered levels nobody is playing now."""
        return [i for i, level in enumerate(self.levels) if level not in self.active]

    def replay_distribution(self, candidates: list[int] | None = None) -> np.ndarray:
        """PLR's probabilities over ``candidates`` (default: the replayable levels), in their order."""
        candidates = self.replayable() if candidates is None else candidates
        if not candidates:
            return np.zeros(0)
        scores = np.array([self.scores[i] for i in candidates], dtype=np.float64)
        order = np.argsort(-scores, kind="stable")
        ranks = np.empty(len(candidates))
        ranks[order] = np.arange(1, len(candidates) + 1)
        weights = (1.0 / ranks) ** (1.0 / self.temperature)
        by_score = weights / weights.sum()
        stale = np.array([self.clock - self.last_handed[i] for i in candidates], dtype=np.float64)
        by_staleness = stale / stale.sum() if stale.sum() > 0 else np.full(len(candidates), 1.0 / len(candidates))
        return (1 - self.staleness_weight) * by_score + self.staleness_weight * by_staleness

    def next(self, fresh: Callable[[], Hashable], rng: np.random.Generator, replay_probability: float) -> Hashable:
        """The level of a new agent: replayed with probability ``replay_probability`` (when one can be), else fresh."""
        self.clock += 1
        candidates = self.replayable()
        if candidates and rng.random() < replay_probability:
            i = candidates[int(rng.choice(len(candidates), p=self.replay_distribution(candidates)))]
            self.last_handed[i] = self.clock
            level = self.levels[i]
        else:
            level = fresh()
        self.active[level] = self.active.get(level, 0) + 1
        return level

    def score(self, level: Hashable, value: float) -> None:
        """An agent finished ``level`` with score ``value``: update it, or admit it (see the module docstring)."""
        if level in self.active:
            self.active[level] -= 1
            if not self.active[level]:
                del self.active[level]
        value = float(value)
        if level in self.levels:
            i = self.levels.index(level)
            self.scores[i] = value
            return
        if len(self.levels) < self.capacity:
            self.levels.append(level)
            self.scores.append(value)
            self.last_handed.append(self.clock)
            return
        worst = int(np.argmin(self.scores))
        if value > self.scores[worst] and self.levels[worst] not in self.active:
            self.levels[worst], self.scores[worst], self.last_handed[worst] = level, value, self.clock

    def state_dict(self, encode: Callable[[Hashable], Any]) -> dict[str, Any]:
        """A picklable snapshot (``encode`` turns a level into plain data)."""
        return {"levels": [encode(level) for level in self.levels], "scores": list(self.scores),
                "last_handed": list(self.last_handed), "clock": self.clock,
                "active": [(encode(level), n) for level, n in self.active.items()]}

    def load_state_dict(self, state: dict[str, Any], decode: Callable[[Any], Hashable]) -> None:
        """Restore :meth:`state_dict` (``decode`` inverts its ``encode``)."""
        self.levels = [decode(d) for d in state["levels"]]
        self.scores, self.last_handed = list(state["scores"]), list(state["last_handed"])
        self.clock = int(state["clock"])
        self.active = {decode(d): int(n) for d, n in state["active"]}
