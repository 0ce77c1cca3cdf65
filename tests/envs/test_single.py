"""gymnasium's registry: the native envs as single ``gymnasium.Env``s that pass ``check_env``."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from rlmeta import envs


@pytest.mark.parametrize("gym_id", ["rlmeta/Snake-v0", "rlmeta/Snake-6x6-v0", "rlmeta/GridWorld-v0"])
def test_registered_single_envs_pass_check_env(gym_id):
    env = gym.make(gym_id)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_single_env_follows_the_vector_env_and_returns_true_final_observations():
    single = gym.make("rlmeta/Snake-6x6-v0").unwrapped
    vec = envs.make("snake-6x6", num_envs=1, seed=3)
    obs, _ = single.reset(seed=3)
    vobs, _ = vec.reset(seed=3)
    assert np.array_equal(obs, vobs[0])
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(300):
        action = int(rng.integers(0, 4))
        obs, reward, terminated, truncated, info = single.step(action)
        vobs, vreward, vterm, vtrunc, vinfo = vec.step(np.array([action]))
        assert reward == vreward[0] and terminated == vterm[0] and truncated == vtrunc[0]
        if terminated or truncated:
            ended += 1
            assert np.array_equal(obs, vinfo["final_obs"][0])  # the episode's last frame, not the next first
            assert info["episode"]["return"] == vinfo["episode"]["return"][0]
            obs, _ = single.reset()  # the next episode, as the vector env began it
            assert np.array_equal(obs, vobs[0])
        else:
            assert np.array_equal(obs, vobs[0])
    assert ended >= 3


def test_options_and_the_module_prefix_form():
    env = gym.make("rlmeta.envs:rlmeta/GridWorld-v0", level="sparse", obs="grid")
    obs, _ = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape and obs.shape[:2] == (13, 13)
    with pytest.raises(ValueError, match="grid"):
        gym.make("rlmeta/GridWorld-v0", not_an_option=1)
