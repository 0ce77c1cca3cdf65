"""Any gymnasium environment behind rlmeta's vector-env contract (``envs.make("gym:<id>")``).

Sub-envs are vectorized with gymnasium's own ``SyncVectorEnv`` (default) or ``AsyncVectorEnv``
(``vectorization="async"``, one process per sub-env) in gymnasium's same-step autoreset mode;
we turn its per-env ``final_obs`` objects into one batch array and add the contract's episode
statistics. An episode counts as a success when the env's info has a true ``success`` or
``is_success`` at some step; such envs report ``has_success=True`` after their first step with
that key. Options: ``vectorization``, ``max_episode_steps`` (a time limit), ``clip_actions``, and
anything else is passed to ``gymnasium.make`` (for ``gym:<id>``) or to the registered factory or
``module:Class`` entry point.
"""

from __future__ import annotations

import reprlib
from functools import partial
from typing import Any, Callable

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from rlmeta.envs.core import (
    Backend, EpisodeTracker, Obs, VectorEnv, check_num_envs, normalize_step, sub_seeds, unknown_id_message,
    zeros_like_batch,
)

VECTORIZATIONS = ("sync", "async")
_SUCCESS_KEYS = ("success", "is_success")


def _success_of(info: dict, num_envs: int) -> np.ndarray | None:
    """Per-env success flags found in a gymnasium vector info dict, or None if there are none."""
    for key in _SUCCESS_KEYS:
        if key in info:
            values = np.asarray(info[key])
            mask = np.asarray(info.get(f"_{key}", np.ones(num_envs, dtype=bool)))
            return (values.astype(float) > 0) & mask
    return None


class GymVectorEnv(VectorEnv):
    """gymnasium sub-envs vectorized by gymnasium, translated to the rlmeta contract."""

    def __init__(
        self,
        env_fns: list[Callable[[], gym.Env]],
        seed: int | None,
        vectorization: str = "sync",
        clip_actions: bool = False,
        name: str = "gym",
    ):
        vector_cls = gym.vector.AsyncVectorEnv if vectorization == "async" else gym.vector.SyncVectorEnv
        self._vec = vector_cls(env_fns, autoreset_mode=AutoresetMode.SAME_STEP)
        self.name = name
        super().__init__(
            len(env_fns), self._vec.single_observation_space, self._vec.single_action_space,
            seed=seed, clip_actions=clip_actions,
        )
        self._tracker = EpisodeTracker(self.num_envs, has_success=False)

    def _reset(self, seed: int | None, options: dict | None) -> tuple[Obs, dict]:
        seeds = sub_seeds(seed, self.num_envs) if seed is not None else None
        obs, info = self._vec.reset(seed=seeds, options=options)
        self._tracker.clear()
        return obs, info

    def step(self, actions: Any) -> tuple[Obs, np.ndarray, np.ndarray, np.ndarray, dict]:
        """Step every sub-env; ended ones are reset in the same step by gymnasium."""
        actions = self.check_actions(actions)
        obs, reward, terminated, truncated, info = self._vec.step(actions)
        reward, terminated, truncated, done = normalize_step(reward, terminated, truncated)
        final_info = info.pop("final_info", None)
        info.pop("_final_info", None)
        success = _success_of(info, self.num_envs)
        if final_info is not None:  # the last step's info of an ended episode sits in final_info
            final_success = _success_of(final_info, self.num_envs)
            if final_success is not None:
                success = final_success if success is None else (success | final_success)
        if success is not None and not self.has_success:
            self.has_success = self._tracker.has_success = True
        self._tracker.update(reward, done, info, success)
        if done.any():
            final = zeros_like_batch(self.single_observation_space, self.num_envs)
            _fill_final(final, info.pop("final_obs"), done)
            info.pop("_final_obs", None)
            info["final_obs"] = final
            info["_final_obs"] = done
        return obs, reward, terminated, truncated, info

    def _close(self) -> None:
        self._vec.close()

    def __repr__(self) -> str:
        return f"GymVectorEnv({self.name!r}, num_envs={self.num_envs})"


def _fill_final(target: Obs, per_env: np.ndarray, done: np.ndarray) -> None:
    """Copy gymnasium's per-env final observations (an object array) into a batch array/dict."""
    for i in np.flatnonzero(done):
        if isinstance(target, dict):
            for key in target:
                target[key][i] = per_env[i][key]
        else:
            target[i] = per_env[i]


def _build_one(factory: Callable[..., gym.Env], max_episode_steps: int | None, name: str, **kwargs: Any) -> gym.Env:
    env = factory(**kwargs)
    if not isinstance(env, gym.Env):
        hint = ""
        if isinstance(env, gym.vector.VectorEnv):
            hint = "; for a factory of vector envs use envs.register(name, factory, vectorized=True)"
        raise ValueError(
            f"{name}: the env factory {factory!r} returned {reprlib.repr(env)} (type {type(env).__name__}), "
            f"expected a gymnasium.Env{hint}"
        )
    if max_episode_steps is not None:
        env = gym.wrappers.TimeLimit(env, max_episode_steps)
    return env


def make_gym_vector(
    factory: Callable[..., gym.Env],
    num_envs: int = 1,
    seed: int | None = 0,
    vectorization: str = "sync",
    max_episode_steps: int | None = None,
    clip_actions: bool = False,
    name: str = "gym",
    **kwargs: Any,
) -> GymVectorEnv:
    """Vectorize ``num_envs`` copies of ``factory(**kwargs)`` (a gymnasium.Env) under the contract."""
    num_envs = check_num_envs(num_envs)
    if vectorization not in VECTORIZATIONS:
        raise ValueError(f"vectorization must be one of {VECTORIZATIONS}, got {vectorization!r}")
    if max_episode_steps is not None and (
        isinstance(max_episode_steps, bool) or not isinstance(max_episode_steps, int) or max_episode_steps < 1
    ):
        raise ValueError(f"max_episode_steps must be an integer >= 1 or None, got {max_episode_steps!r}")
    env_fns = [partial(_build_one, factory, max_episode_steps, name, **kwargs) for _ in range(num_envs)]
    try:
        if vectorization == "async":  # sub-envs are built in worker processes: check the options here first
            env_fns[0]().close()
        return GymVectorEnv(env_fns, seed=seed, vectorization=vectorization, clip_actions=clip_actions, name=name)
    except TypeError as error:
        if "argument" not in str(error):
            raise
        raise ValueError(f"invalid option(s) for {name}: {error}") from error


def make_gym(env_id: str, num_envs: int = 1, seed: int | None = 0, **options: Any) -> GymVectorEnv:
    """Build ``num_envs`` copies of the gymnasium env ``env_id``; unknown ids raise ValueError."""
    if env_id not in gym.registry:
        raise ValueError(unknown_id_message(f"gym:{env_id}", [f"gym:{k}" for k in gym.registry]))
    return make_gym_vector(gym.make, num_envs=num_envs, seed=seed, name=f"gym:{env_id}", id=env_id, **options)


def env_ids() -> list[str]:
    """Every id in gymnasium's registry (valid names after ``gym:``)."""
    return list(gym.registry)


BACKEND = Backend(
    "gym", make_gym, "any gymnasium id, e.g. gym:CartPole-v1, vectorized with gymnasium's vector API", env_ids
)
