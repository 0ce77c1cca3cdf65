"""Prioritised level replay (Jiang et al. 2021) as GROOVE uses it: the replay distribution, replay vs fresh,
levels in play, the buffer's capacity, and a snapshot round trip."""

from __future__ import annotations

import numpy as np
import pytest

from rlmeta.curriculum import LevelBuffer


def filled(scores, **kwargs) -> LevelBuffer:
    buffer = LevelBuffer(capacity=len(scores), **kwargs)
    rng = np.random.default_rng(0)
    for i, score in enumerate(scores):
        level = buffer.next(lambda i=i: f"level-{i}", rng, replay_probability=0.0)
        buffer.score(level, score)
    return buffer


def test_replay_distribution_is_rank_prioritised_plus_staleness():
    buffer = filled([0.5, 2.0, -1.0, 1.0], temperature=0.5, staleness_weight=0.25)
    p = buffer.replay_distribution()
    # ranks by score: level-1 (2.0) 1, level-3 2, level-0 3, level-2 4; h = (1/rank)^(1/T), T = 0.5
    h = np.array([1 / 3, 1.0, 1 / 4, 1 / 2]) ** 2
    staleness = buffer.clock - np.array(buffer.last_handed, dtype=float)
    expected = 0.75 * h / h.sum() + 0.25 * staleness / staleness.sum()
    assert np.allclose(p, expected) and p.sum() == pytest.approx(1.0)
    assert p.argmax() == 1


def test_next_replays_with_the_given_probability_and_never_a_level_in_play():
    buffer = filled([1.0, 2.0, 3.0, 4.0])
    rng = np.random.default_rng(1)
    fresh = iter(f"fresh-{i}" for i in range(10_000))
    handed = [buffer.next(lambda: next(fresh), rng, replay_probability=0.5) for _ in range(3)]
    assert len(set(handed)) == len(handed)  # a replayed level is never handed out twice while in play
    assert all(level in buffer.active for level in handed)
    for level in handed:
        buffer.score(level, 0.0)
    assert not buffer.active
    counts = {"replay": 0, "fresh": 0}
    for _ in range(2000):
        level = buffer.next(lambda: next(fresh), rng, replay_probability=0.3)
        counts["fresh" if str(level).startswith("fresh") else "replay"] += 1
        buffer.active.clear()
    assert counts["replay"] / 2000 == pytest.approx(0.3, abs=0.04)


def test_a_full_buffer_admits_a_level_only_over_its_worst():
    buffer = filled([1.0, 2.0, 3.0])
    buffer.score("new-low", 0.5)
    assert "new-low" not in buffer.levels
    buffer.score("new-high", 5.0)
    assert "new-high" in buffer.levels and "level-0" not in buffer.levels and len(buffer) == 3
    buffer.score("level-1", 7.0)  # a buffered level's score is updated in place
    assert buffer.scores[buffer.levels.index("level-1")] == 7.0


def test_state_round_trip_and_bad_arguments():
    buffer = filled([1.0, 2.0])
    buffer.next(lambda: "fresh", np.random.default_rng(0), 0.0)
    copy = LevelBuffer(2)
    copy.load_state_dict(buffer.state_dict(str.upper), str.lower)
    assert copy.levels == buffer.levels and copy.scores == buffer.scores and copy.clock == buffer.clock
    assert copy.active == buffer.active and copy.last_handed == buffer.last_handed
    with pytest.raises(ValueError, match="capacity"):
        LevelBuffer(0)
    with pytest.raises(ValueError, match="temperature"):
        LevelBuffer(3, temperature=0.0)
    with pytest.raises(ValueError, match="staleness_weight"):
        LevelBuffer(3, staleness_weight=1.5)
