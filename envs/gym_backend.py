"""Any gymnasium environment behind rlmeta's vector-env contract (``envs.make("gym:<id>")``).

Sub-envs are vectorized with gymnasium's own ``SyncVectorEnv`` (default) or ``AsyncVectorEnv``
(``vectorization="async"``, one process per sub-env) in gymnasium's same-step autoreset mode;
we turn its per-env ``final_obs`` objects into one batch array and add the contract's episode
statistics. ``vectorization="vector"`` (CartPole-v0/v1) steps all sub-envs at once in gymnasium's
numpy-vectorized ``CartPoleVectorEnv`` (the same dynamics; one random stream for every sub-env),
about twice as fast as ``sync`` at 8 envs; it resets an ended sub-env on its next step, so we
reset it in the same step instead (:class:`SameStepCartPole`). An episode counts as a success when the env's info has a true ``success`` or
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
from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv
from gymnasium.vector import AutoresetMode

from rlmeta.envs.core import (
    Backend, EpisodeTracker, Obs, VectorEnv, check_num_envs, normalize_step, sub_seeds, unknown_id_message,
    zeros_like_batch,
)

VECTORIZATIONS = ("sync", "async", "vector")
_VECTOR_ENTRY = "gymnasium.envs.classic_control.cartpole:CartPoleVectorEnv"  # the one we reset in the same step
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
        env_fns: list[Callable[[], gym.Env]] | SameStepCartPole,
        seed: int | None,
        vectorization: str = "sync",
        clip_actions: bool = False,
        name: str = "gym",
    ):
        if isinstance(env_fns, SameStepCartPole):
            self._vec = env_fns
        else:
            vector_cls = gym.vector.AsyncVectorEnv if vectorization == "async" else gym.vector.SyncVectorEnv
            self._vec = vector_cls(env_fns, autoreset_mode=AutoresetMode.SAME_STEP)
        self.name = name
        super().__init__(
            self._vec.num_envs, self._vec.single_observation_space, self._vec.single_action_space,
            seed=seed, clip_actions=clip_actions,
        )
        self._tracker = EpisodeTracker(self.num_envs, has_success=False)

    def _reset(self, seed: int | None, options: dict | None) -> tuple[Obs, dict]:
        seeds = seed if isinstance(self._vec, SameStepCartPole) or seed is None else sub_seeds(seed, self.num_envs)
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


class SameStepCartPole:
    """gymnasium's ``CartPoleVectorEnv`` with an ended sub-env reset in the step that ends it.

    ``CartPoleVectorEnv`` returns an ended episode's last observation and resets that sub-env on
    the next step (gymnasium's next-step autoreset); the contract wants the reset observation at
    once and the last one in ``info["final_obs"]``. After each step this draws the ended sub-envs'
    new states as the env's own reset does (uniform in its reset bounds, from its generator) and
    clears its step counters and pending-reset flags: the env's public arrays ``state``,
    ``steps`` and ``prev_done``, checked at construction.
    """

    def __init__(self, env: Any):
        missing = [a for a in ("state", "steps", "prev_done", "low", "high", "np_random") if not hasattr(env, a)]
        if missing:
            raise ValueError(f"{type(env).__name__} lacks {missing}: this gymnasium's CartPoleVectorEnv cannot be "
                             "reset per sub-env; use vectorization='sync'")
        self.env, self.num_envs = env, env.num_envs
        self.single_observation_space, self.single_action_space = env.single_observation_space, env.single_action_space

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        return self.env.reset(seed=seed, options=options)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        obs, reward, terminated, truncated, _ = self.env.step(actions)
        done = terminated | truncated
        if not done.any():
            return obs, reward, terminated, truncated, {}
        env, final = self.env, obs.copy()
        env.state[:, done] = env.np_random.uniform(low=env.low, high=env.high, size=(4, int(done.sum())))
        env.steps[done] = 0
        env.prev_done[done] = False
        obs[done] = env.state[:, done].T
        return obs, reward, terminated, truncated, {"final_obs": final, "_final_obs": done}

    def close(self) -> None:
        self.env.close()


def _fill_final(target: Obs, per_env: np.ndarray, done: np.ndarray) -> None:
    """Copy gymnasium's per-env final observations (an object array) into a batch array/dict."""
    for i in np.flatnonzero(done):
        if isinstance(target, dict):
            for key in target:
                target[key][i] = per_env[i][key]
        else:
            target[i] = per_env[i]


def _check_max_episode_steps(max_episode_steps: Any) -> None:
    if max_episode_steps is not None and (
        isinstance(max_episode_steps, bool) or not isinstance(max_episode_steps, int) or max_episode_steps < 1
    ):
        raise ValueError(f"max_episode_steps must be an integer >= 1 or None, got {max_episode_steps!r}")


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
    if vectorization == "vector" and factory is not gym.make:
        raise ValueError("vectorization='vector' applies to gym:CartPole-v0/v1 (gymnasium's vectorized CartPole); "
                         f"{name} is not one: use 'sync' or 'async'")
    _check_max_episode_steps(max_episode_steps)
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
    if options.get("vectorization") == "vector":
        return _make_cartpole_vector(env_id, num_envs, seed, **options)
    return make_gym_vector(gym.make, num_envs=num_envs, seed=seed, name=f"gym:{env_id}", id=env_id, **options)


def _make_cartpole_vector(env_id: str, num_envs: int, seed: int | None, vectorization: str = "vector",
                          max_episode_steps: int | None = None, clip_actions: bool = False,
                          **kwargs: Any) -> GymVectorEnv:
    """``gym:CartPole-v0/v1`` as one ``CartPoleVectorEnv`` reset in the same step (``vectorization="vector"``)."""
    spec = gym.registry[env_id]
    if spec.vector_entry_point != _VECTOR_ENTRY:
        raise ValueError(f"vectorization='vector' applies to gym:CartPole-v0/v1 (gymnasium's vectorized CartPole), "
                         f"not gym:{env_id}: use 'sync' or 'async'")
    num_envs = check_num_envs(num_envs)
    _check_max_episode_steps(max_episode_steps)
    try:
        env = CartPoleVectorEnv(num_envs=num_envs, max_episode_steps=max_episode_steps or spec.max_episode_steps,
                                **{**spec.kwargs, **kwargs})
    except TypeError as error:
        raise ValueError(f"invalid option(s) for gym:{env_id} with vectorization='vector': {error}") from error
    return GymVectorEnv(SameStepCartPole(env), seed=seed, clip_actions=clip_actions, name=f"gym:{env_id}")


def env_ids() -> list[str]:
    """Every id in gymnasium's registry (valid names after ``gym:``)."""
    return list(gym.registry)


BACKEND = Backend(
    "gym", make_gym, "any gymnasium id, e.g. gym:CartPole-v1, vectorized with gymnasium's vector API", env_ids
)
