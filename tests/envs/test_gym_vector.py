"""``gym:CartPole-v1`` with ``vectorization="vector"``: gymnasium's numpy-vectorized CartPole reset in
the same step (``envs.gym_backend.SameStepCartPole``), checked step by step against gymnasium's
scalar ``CartPoleEnv`` started from the same state (the vector-env contract: tests/envs/test_contract.py)."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

from rlmeta import envs


def test_every_step_is_the_scalar_cartpoles_step_and_ended_envs_restart_at_once():
    env = envs.make("gym:CartPole-v1", num_envs=4, seed=3, vectorization="vector", max_episode_steps=60)
    inner = env._vec.env  # the CartPoleVectorEnv: its float64 states, before each step
    scalar = CartPoleEnv()
    scalar.reset(seed=0)
    rng = np.random.default_rng(0)
    obs, _ = env.reset()
    lengths, ended = np.zeros(4, int), 0
    for _ in range(400):
        before = inner.state.copy()
        actions = rng.integers(0, 2, 4)
        obs, reward, terminated, truncated, info = env.step(actions)
        lengths += 1
        for i in range(4):
            scalar.state, scalar.steps_beyond_terminated = tuple(before[:, i]), None
            want, want_reward, want_terminated, _, _ = scalar.step(int(actions[i]))
            got = info["final_obs"][i] if terminated[i] or truncated[i] else obs[i]
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
            assert reward[i] == want_reward and terminated[i] == want_terminated
            assert truncated[i] == (lengths[i] == 60 and not want_terminated)
            if terminated[i] or truncated[i]:  # a fresh start in the same step, as gymnasium's reset draws it
                assert np.all(np.abs(obs[i]) <= 0.05) and info["episode"]["length"][i] == lengths[i]
                lengths[i], ended = 0, ended + 1
    assert ended > 20  # random actions end episodes every ~20 steps


def test_the_vector_cartpole_is_seeded_and_refuses_other_envs():
    def first(seed):
        env = envs.make("gym:CartPole-v1", num_envs=3, seed=seed, vectorization="vector")
        return env.reset()[0]

    np.testing.assert_array_equal(first(5), first(5))
    assert not np.array_equal(first(5), first(6))
    assert envs.make("gym:CartPole-v0", num_envs=2, vectorization="vector")._vec.env.max_episode_steps == 200
    with pytest.raises(ValueError, match="applies to gym:CartPole-v0/v1"):
        envs.make("gym:Acrobot-v1", num_envs=2, vectorization="vector")
    with pytest.raises(ValueError, match="invalid option"):
        envs.make("gym:CartPole-v1", num_envs=2, vectorization="vector", gravity=3.0)
