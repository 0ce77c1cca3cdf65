"""Delayed chain MDPs: the first action decides the final reward, lifetimes are fixed per seed, variants as documented."""

from __future__ import annotations

import numpy as np
import pytest

from rlmeta import envs
from rlmeta.envs.chain import ChainVectorEnv, make_chain

VARIANTS = {
    "chain": (5, 30, False, 0),
    "chain-noisy": (5, 30, True, 0),
    "chain-long": (5, 50, False, 0),
    "chain-long-noisy": (5, 50, True, 0),
    "chain-distractor": (5, 30, False, 20),
}


def state_index(obs: np.ndarray, max_length: int) -> np.ndarray:
    """The one-hot state of each row (``[B]``)."""
    states = obs[:, : 1 + 2 * max_length]
    np.testing.assert_array_equal(states.sum(axis=1), 1.0)
    return states.argmax(axis=1)


def play_episode(env: ChainVectorEnv, first: np.ndarray, later: int = 0):
    """One episode on every sub-env (they all have ``env.length`` steps); returns the per-step outputs."""
    out = [env.step(first.astype(np.int64))]
    for _ in range(env.length - 1):
        out.append(env.step(np.full(env.num_envs, later, dtype=np.int64)))
    return out


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variants_are_registered_with_their_settings(name):
    low, high, noisy, bits = VARIANTS[name]
    env = envs.make(name, num_envs=2, seed=0)
    assert isinstance(env, ChainVectorEnv)
    assert (env.min_length, env.max_length, env.noisy, env.distractor_bits) == (low, high, noisy, bits)
    assert env.single_observation_space.shape == (1 + 2 * high + bits,)
    assert env.single_action_space.n == 2 and env.optimal_return == 1.0


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_correct_first_action_pays_plus_one_at_the_end_and_wrong_pays_minus_one(name):
    env = envs.make(name, num_envs=4, seed=3)
    obs, _ = env.reset()
    n, length, correct = env.num_envs, env.length, env.correct_action
    first = np.array([correct, 1 - correct, correct, 1 - correct])
    outs = play_episode(env, first, later=1)
    for t, (obs, reward, term, trunc, info) in enumerate(outs):
        assert not trunc.any()
        if t < length - 1:
            assert not term.any() and "final_obs" not in info
            if env.noisy:
                assert set(np.unique(reward)) <= {-1.0, 1.0}
            else:
                np.testing.assert_array_equal(reward, 0.0)
    obs, reward, term, trunc, info = outs[-1]
    assert term.all()
    np.testing.assert_array_equal(reward, np.where(first == correct, 1.0, -1.0))
    np.testing.assert_array_equal(info["episode"]["length"], length)
    noise = sum(o[1] for o in outs[:-1])
    np.testing.assert_allclose(info["episode"]["return"], reward + noise)
    # the final observation is the branch's last state; the new one is the start state
    high = env.max_length
    np.testing.assert_array_equal(state_index(info["final_obs"], high), 1 + first * high + length - 1)
    np.testing.assert_array_equal(state_index(obs, high), 0)


def test_observation_tells_the_branch_and_position():
    env = make_chain(num_envs=2, seed=0, length=6, max_length=10)
    obs, _ = env.reset()
    np.testing.assert_array_equal(state_index(obs, 10), [0, 0])
    first = np.array([0, 1])
    for step, (obs, *_rest) in enumerate(play_episode(env, first)[:-1], start=1):
        np.testing.assert_array_equal(state_index(obs, 10), 1 + first * 10 + step - 1)


def test_lifetime_is_shared_by_sub_envs_fixed_by_the_seed_and_redrawn_by_reset_seed():
    env = envs.make("chain", num_envs=3, seed=5)
    env.reset()
    lifetime = (env.length, env.correct_action)
    env.reset()
    assert (env.length, env.correct_action) == lifetime  # a plain reset keeps the lifetime
    again = envs.make("chain", num_envs=8, seed=5)
    again.reset()
    assert (again.length, again.correct_action) == lifetime  # depends on the seed only
    draws = set()
    for seed in range(200):
        env.reset(seed=seed)
        draws.add((env.length, env.correct_action))
        assert 5 <= env.length <= 30
    assert {a for _, a in draws} == {0, 1}
    assert {length for length, _ in draws} == set(range(5, 31))


def test_fixed_length_and_correct_action():
    env = make_chain(num_envs=2, seed=0, length=7, correct_action=1)
    for seed in range(5):
        env.reset(seed=seed)
        assert (env.length, env.correct_action) == (7, 1)
    outs = play_episode(env, np.array([1, 0]))
    assert len(outs) == 7
    np.testing.assert_array_equal(outs[-1][1], [1.0, -1.0])


def test_noise_is_fair_and_independent_of_the_first_action():
    env = envs.make("chain-noisy", num_envs=256, seed=1)
    env.reset()
    rewards = []
    for _ in range(3):
        outs = play_episode(env, np.arange(256) % 2)
        rewards += [o[1] for o in outs[:-1]]
    rewards = np.array(rewards)
    assert set(np.unique(rewards)) == {-1.0, 1.0}
    assert abs(rewards.mean()) < 4 / np.sqrt(rewards.size)
    # per-branch means too (the noise carries no information about the correct action)
    for branch in (0, 1):
        part = rewards[:, np.arange(256) % 2 == branch]
        assert abs(part.mean()) < 4 / np.sqrt(part.size)


def test_distractor_bits_are_fresh_fair_coins():
    env = envs.make("chain-distractor", num_envs=64, seed=2)
    obs, _ = env.reset()
    bits = [obs[:, 61:]]
    for _ in range(40):
        obs, *_ = env.step(np.zeros(64, dtype=np.int64))
        state_index(obs, 30)
        bits.append(obs[:, 61:])
    bits = np.stack(bits)
    assert bits.shape[-1] == 20 and set(np.unique(bits)) == {0.0, 1.0}
    assert abs(bits.mean() - 0.5) < 4 * 0.5 / np.sqrt(bits.size)
    assert not np.array_equal(bits[1], bits[2])


def test_same_seed_same_trajectory():
    def play(seed):
        env = envs.make("chain-noisy", num_envs=4, seed=seed, distractor_bits=3)
        frames = [env.reset()[0]]
        rng = np.random.default_rng(0)
        for _ in range(50):
            obs, reward, *_ = env.step(rng.integers(0, 2, 4))
            frames += [obs, reward[:, None]]
        return np.concatenate(frames, axis=1)

    np.testing.assert_array_equal(play(1), play(1))
    assert not np.array_equal(play(1), play(2))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"colour": "red"}, "unknown option"),
        ({"min_length": 0}, "min_length"),
        ({"min_length": 10, "max_length": 5}, "larger than max_length"),
        ({"length": 40}, r"\[5, 30\]"),
        ({"correct_action": 2}, "correct_action"),
        ({"noisy": "yes"}, "noisy"),
        ({"distractor_bits": -1}, "distractor_bits"),
    ],
)
def test_bad_options_raise_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        envs.make("chain", num_envs=2, seed=0, **options)


def test_bad_actions_and_lifecycle():
    env = envs.make("chain", num_envs=2, seed=0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2, dtype=np.int64))
    env.reset()
    for bad in (np.array([0, 2]), np.zeros(3, dtype=np.int64), np.zeros(2)):
        with pytest.raises(ValueError, match=r"\(2,"):
            env.step(bad)
    obs, reward, term, trunc, info = env.step(np.array([1, 0]))  # the rejected steps left no trace
    assert not term.any() and state_index(obs, 30).tolist() == [1 + 30, 1]
    env.close()
    with pytest.raises(RuntimeError, match="closed"):
        env.step(np.zeros(2, dtype=np.int64))
