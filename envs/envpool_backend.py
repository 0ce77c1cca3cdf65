"""Any envpool task behind rlmeta's vector-env contract (``envs.make("envpool:<task>")``).

envpool resets an ended sub-env on the *next* call to ``step`` (the action of that call is
ignored). We translate this to the contract's same-step autoreset: after each step, the sub-envs
that ended are reset at once with envpool's partial ``reset(env_ids)``, their new first
observations replace the final ones in ``obs``, and the final ones go to ``info["final_obs"]``.
Dict observations (e.g. ``Snake-v1``'s ``grid``/``step_count``/``action_mask``) are kept as dicts
of batch arrays. envpool's own per-step ``info`` entries (e.g. ``success`` for Meta-World) are
passed through; ``env_id``, ``players`` and ``elapsed_step`` are dropped.

Options are passed to ``envpool.make`` (``max_episode_steps``, ``num_threads``, ``frame_skip``,
...); unknown ones raise ``ValueError`` naming the task's config keys.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator

import gymnasium as gym
import numpy as np

from rlmeta.envs.core import (
    Backend, EpisodeTracker, Obs, VectorEnv, map_obs, normalize_step, set_rows, unknown_id_message,
)

# Keys of envpool's info that describe the batch layout rather than the environment.
_LAYOUT_KEYS = ("env_id", "players", "elapsed_step")
_RESERVED = ("num_envs", "batch_size", "seed", "env_type", "gym_reset_return_info")


def _as_gymnasium_space(space: Any) -> gym.Space:
    """envpool already returns gymnasium spaces with env_type='gymnasium'; keep them as they are."""
    if not isinstance(space, gym.Space):  # pragma: no cover - defensive, envpool 1.2 returns gymnasium
        raise TypeError(f"unexpected envpool space {space!r}")
    return space


class EnvpoolVectorEnv(VectorEnv):
    """An envpool task with same-step autoreset, checked actions and episode statistics."""

    def __init__(self, task: str, num_envs: int, seed: int | None, clip_actions: bool = False, **options: Any):
        import envpool  # deferred: heavy optional dependency, loaded when an envpool env is built

        self.task = task
        self._options = options
        spec = envpool.make_spec(task, **options)
        with _quiet_casts():
            obs_space = _as_gymnasium_space(spec.observation_space)
            act_space = _as_gymnasium_space(spec.action_space)
        super().__init__(num_envs, obs_space, act_space, seed=seed, clip_actions=clip_actions)
        self._pool = None
        # Enforced here too: Snake-v1 ignores a max_episode_steps other than its own 4000, and reports
        # that one as a termination (see step).
        self.max_episode_steps = getattr(spec.config, "max_episode_steps", None)
        self.has_success = "info:success" in getattr(spec, "_state_keys", ())
        self._tracker = EpisodeTracker(self.num_envs, has_success=self.has_success)

    def _build(self, seed: int | None) -> None:
        import envpool  # deferred: heavy optional dependency, loaded when an envpool env is built

        if self._pool is not None:
            self._pool.close()
        # envpool seeds sub-env i with seed + i; an unseeded env draws a seed once.
        base = int(np.random.SeedSequence(seed).generate_state(1)[0] >> 1) if seed is None else seed
        with _quiet_casts():
            self._pool = envpool.make(
                self.task, env_type="gymnasium", num_envs=self.num_envs, seed=base, **self._options
            )
            self._pool.observation_space, self._pool.action_space  # noqa: B018 - cached now, quietly

    def _reset(self, seed: int | None, options: dict | None) -> tuple[Obs, dict]:
        if self._pool is None or seed is not None:
            self._build(seed)
        obs, raw_info = self._pool.reset()
        self._tracker.clear()
        return obs, self._env_info(raw_info)

    def _env_info(self, raw_info: dict) -> dict:
        return {key: value for key, value in raw_info.items() if key not in _LAYOUT_KEYS}

    def step(self, actions: Any) -> tuple[Obs, np.ndarray, np.ndarray, np.ndarray, dict]:
        """Step every sub-env; ended ones are reset in the same step (see module docstring)."""
        actions = self.check_actions(actions)
        if isinstance(self.single_action_space, gym.spaces.Discrete):
            actions = actions.astype(np.int32, copy=False)
        obs, reward, terminated, truncated, raw_info = self._pool.step(actions)
        info = self._env_info(raw_info)
        if self.max_episode_steps is not None:
            # At the time limit the episode is cut, not finished: some tasks report their own limit as a
            # termination (Snake-v1 at 4000 steps: terminated=True, truncated=False), so the limit's
            # step is a truncation whatever the flags say (a genuine end on that very step reads as one too).
            time_limit = raw_info["elapsed_step"] >= self.max_episode_steps
            truncated = np.asarray(truncated, dtype=bool) | time_limit
            terminated = np.asarray(terminated, dtype=bool) & ~time_limit
        reward, terminated, truncated, done = normalize_step(reward, terminated, truncated)
        success = info.get("success")
        self._tracker.update(reward, done, info, None if success is None else np.asarray(success) > 0)
        if done.any():
            ids = np.flatnonzero(done)
            final = map_obs(np.zeros_like, obs)
            set_rows(final, ids, obs, ids)
            new_obs, _ = self._pool.reset(ids.astype(np.int32))
            obs = map_obs(np.copy, obs)
            set_rows(obs, ids, new_obs)
            info["final_obs"] = final
            info["_final_obs"] = done
        return obs, reward, terminated, truncated, info

    def _close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __repr__(self) -> str:
        return f"EnvpoolVectorEnv({self.task!r}, num_envs={self.num_envs})"


def make_envpool(task: str, num_envs: int = 1, seed: int | None = 0, **options: Any) -> EnvpoolVectorEnv:
    """Build ``task`` from envpool; unknown tasks and options raise ValueError before building."""
    import envpool  # deferred: heavy optional dependency, loaded when an envpool env is built

    tasks = envpool.list_all_envs()
    if task not in tasks:
        raise ValueError(unknown_id_message(f"envpool:{task}", [f"envpool:{t}" for t in tasks]))
    clip_actions = options.pop("clip_actions", False)
    reserved = sorted(set(options) & set(_RESERVED))
    if reserved:
        raise ValueError(f"option(s) {reserved} are set by envs.make itself; pass num_envs/seed to envs.make")
    config_keys = set(envpool.make_spec(task).config._fields)
    unknown = sorted(set(options) - config_keys)
    if unknown:
        allowed = sorted(config_keys - set(_RESERVED) - {"env_seed", "base_path", "max_num_players"})
        raise ValueError(f"unknown option(s) {unknown} for envpool:{task}; allowed: {allowed + ['clip_actions']}")
    return EnvpoolVectorEnv(task, num_envs=num_envs, seed=seed, clip_actions=clip_actions, **options)


def task_names() -> list[str]:
    """Every envpool task id, e.g. ``"CartPole-v1"`` (valid names after ``envpool:``)."""
    import envpool  # deferred: heavy optional dependency, loaded when its task list is asked for

    return list(envpool.list_all_envs())


BACKEND = Backend(
    "envpool", make_envpool, "any envpool task, e.g. envpool:CartPole-v1, envpool:Snake-v1, envpool:Pong-v5", task_names
)


@contextlib.contextmanager
def _quiet_casts() -> Iterator[None]:
    """Silence gymnasium's float64-to-float32 bound warnings, raised by envpool's own float64 specs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*precision lowered by casting.*")
        yield
