"""Single environments on gymnasium's registry: ``gymnasium.make("rlmeta/Snake-v0")`` and friends.

rlmeta's native envs are vector envs; gymnasium's tools (``check_env``, wrappers, video recording)
want one ``gymnasium.Env``. :class:`SingleEnv` is a vector env of one sub-env seen as a plain env:
``step`` returns the episode's true last observation when it ends (not the next episode's first),
and the next ``reset()`` starts the episode the vector env has already begun. Importing
``rlmeta.envs`` registers (or use gymnasium's module prefix: ``gymnasium.make("rlmeta.envs:rlmeta/Snake-v0")``):

* ``rlmeta/Snake-v0``: Snake 12x12 (time limit 4000), ``rlmeta/Snake-6x6-v0``: Snake 6x6 (time limit 500);
* ``rlmeta/GridWorld-v0``: the LPG/GROOVE grid world (``level="dense"`` by default; any ``grid`` option).

Keyword arguments of ``gymnasium.make`` go to ``envs.make`` as options.
"""

from __future__ import annotations

from typing import Any, Callable

import gymnasium as gym
import numpy as np

from rlmeta.envs.core import VectorEnv

SINGLE_ENVS = {
    "rlmeta/Snake-v0": ("snake", {}),
    "rlmeta/Snake-6x6-v0": ("snake-6x6", {}),
    "rlmeta/GridWorld-v0": ("grid", {}),
}


class SingleEnv(gym.Env):
    """One sub-env of an rlmeta vector env as a ``gymnasium.Env`` (see the module docstring)."""

    metadata = {"render_modes": []}

    def __init__(self, make: Callable[..., VectorEnv], env_id: str, **options: Any):
        self._vec = make(env_id, num_envs=1, seed=None, **options)
        self.observation_space = self._vec.single_observation_space
        self.action_space = self._vec.single_action_space
        self._pending: Any = None  # the first observation of the episode the vector env already began

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        """A new episode (seeded like ``envs.make(..., seed=seed)``)."""
        super().reset(seed=seed)
        if seed is not None or self._pending is None:
            obs, _ = self._vec.reset(seed=seed, options=options)
            self._pending = None
            return _row(obs), {}
        obs, self._pending = self._pending, None
        return obs, {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        """One step; at an episode's end, its true last observation and its episode statistics."""
        obs, reward, terminated, truncated, info = self._vec.step(np.asarray(action)[None])
        out: dict = {}
        if terminated[0] or truncated[0]:
            self._pending = _row(obs)
            obs = info["final_obs"]
            out["episode"] = {k: v[0] for k, v in info.get("episode", {}).items()}
        return _row(obs), float(reward[0]), bool(terminated[0]), bool(truncated[0]), out

    def close(self) -> None:
        """Close the vector env."""
        self._vec.close()


def _row(obs: Any) -> Any:
    if isinstance(obs, dict):
        return {k: v[0] for k, v in obs.items()}
    return obs[0]


def register_single_envs(make: Callable[..., VectorEnv]) -> None:
    """Put :data:`SINGLE_ENVS` on gymnasium's registry (building with ``make``, i.e. ``rlmeta.envs.make``)."""
    for gym_id, (env_id, defaults) in SINGLE_ENVS.items():
        if gym_id not in gym.registry:
            gym.register(gym_id, entry_point=SingleEnv, kwargs={"make": make, "env_id": env_id, **defaults})
