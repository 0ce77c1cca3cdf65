"""Meta-World benchmarks behind rlmeta's vector-env contract (``envs.make("metaworld:<benchmark>")``).

Meta-World (Yu et al., "Meta-World: A Benchmark and Evaluation for Multi-Task and Meta
Reinforcement Learning", CoRL 2019, arXiv:1910.10897) is a suite of 50 Sawyer-arm manipulation
task classes, each with 50 parametric variations (goal and object positions). This backend uses
the maintained v3 release by the Farama Foundation (``metaworld`` >= 3, tasks named like
``"reach-v3"``; McLean et al., "Meta-World+: An Improved, Standardized, RL Benchmark", 2025,
https://github.com/Farama-Foundation/Metaworld), with its task-selection wrappers, vectorized by
gymnasium's ``SyncVectorEnv``/``AsyncVectorEnv`` in same-step autoreset mode.

Benchmarks (``BENCHMARKS``) and ``num_envs``
--------------------------------------------
Let ``C`` be the number of task classes of the benchmark (and split) and ``k`` the number of
sub-envs per class. Sub-envs are laid out in class blocks: sub-envs ``[c*k, (c+1)*k)`` run class
``c`` (``env.class_names[c]``; ``env.task_names[i]`` is the class of sub-env ``i``).

=========  ======================  ============================================================
benchmark  classes C               valid ``num_envs``
=========  ======================  ============================================================
MT1        1 (``task=``)           any ``n >= 1`` (``n`` copies of the task)
MT10       10                      a multiple of 10 (``k = n / 10`` copies of each class)
MT50       50                      a multiple of 50
ML1        1 (``task=``)           the meta-batch size; ``k`` must divide the 50 tasks of the
                                   class: 1, 2, 5, 10, 25 or 50
ML10       train 10, test 5        ``C * k`` with ``k`` in {1, 2, 5, 10, 25, 50}
ML45       train 45, test 5        ``C * k`` with ``k`` in {1, 2, 5, 10, 25, 50}
=========  ======================  ============================================================

``envs.make`` always passes ``num_envs`` (default 1). For MT10/MT50/ML10/ML45 a value of 1 is
*not* silently reinterpreted: it raises ``ValueError`` naming the valid values (e.g. "MT10 needs
num_envs a multiple of 10"), so the batch size you ask for is always the batch size you get.
Calling :func:`make_metaworld` directly with ``num_envs=None`` gives one sub-env per class.
For ML benchmarks the ``k`` sub-envs of a class split the class's 50 tasks evenly (as Meta-World's
``make_ml_envs`` does), so the sub-envs of a class never run the same task at the same time.

Task sampling (as Meta-World intends)
-------------------------------------
* **MT**: each sub-env samples a new task (goal) of its class uniformly from the class's 50
  training tasks on *every* reset, including autoresets (``RandomTaskSelectWrapper``). The goal
  is observable (``obs[36:39]``).
* **ML** (``split="train"`` or ``"test"``): each sub-env keeps its task across episodes until
  ``env.sample_tasks()`` is called, which moves every sub-env to its next task (cycling through
  a per-sub-env shuffled list, ``PseudoRandomTaskSelectWrapper``) and resets all sub-envs,
  returning ``(obs, info)`` like ``reset``. The first ``reset()`` samples the first tasks itself,
  so Meta-World's "call sample_tasks before reset" pitfall cannot happen. The goal is hidden
  (``obs[36:39]`` is zero) as in Meta-World's ML benchmarks.
* The 50 tasks per class (the benchmark's task set) are drawn once, when the env is made, from
  ``benchmark_seed`` (default 0; ML1's test tasks use ``benchmark_seed + 1`` as Meta-World does),
  *not* from ``seed``: the task set is part of the benchmark, like a data set, and ``seed`` only
  seeds the sub-envs (which task each episode gets, and for ML the order of the task sequence).
  This keeps the contract's rule that ``make(seed=s)`` and ``reset(seed=s)`` are the same thing:
  ``reset(seed=s)`` re-seeds every sub-env and restarts the ML task sequence, and gives exactly
  the trajectory of a fresh ``make(seed=s)``. Meta-World's own ``make_mt_envs(seed=s)`` uses one
  seed for both; pass ``benchmark_seed=s`` to get its task set.

Options
-------
``task``                 Meta-World v3 task name, required by MT1/ML1, rejected by the others.
``split``                ``"train"`` (default) or ``"test"``, ML benchmarks only.
``benchmark_seed``       seed of the task set (default 0; None draws a random task set).
``one_hot``              append the one-hot task-class id (length C) to the observation;
                         default True for MT10/MT50, False for MT1. MT only (ML hides the task).
``max_episode_steps``    episode length, 1..500 (default 500, Meta-World's horizon); reaching it
                         sets ``truncated``.
``terminate_on_success`` end the episode (``terminated``) at the first successful step; default
                         False for MT and ML train, True for ML test, as Meta-World's
                         ``make_ml_envs_train``/``make_ml_envs_test`` do.
``vectorization``        ``"sync"`` (default, in-process) or ``"async"`` (one process per sub-env).
``clip_actions``         clip actions into [-1, 1] instead of raising ``ValueError``.
``backend``              ``"metaworld"`` (default) or ``"envpool"`` (MT1 only, see below).
``num_threads``          envpool backend only: envpool's worker threads.

Observations are float64 (Meta-World's and envpool's dtype), shape ``(39,)`` or ``(39 + C,)``
with ``one_hot``: hand xyz, gripper opening, 14 object values, the same 18 values from the
previous step, then the goal xyz. Rewards are float32 (Meta-World's v2 reward functions, in
[0, 10]). Per-step ``info`` carries Meta-World's metrics (``success``, ``near_object``,
``grasp_success``, ``grasp_reward``, ``in_place_reward``, ``obj_to_target``,
``unscaled_reward``) as float arrays; on the step where an episode ends they describe its last
transition. ``info["episode"]["success"]`` is True when the episode succeeded at *any* step.
The declared observation bounds are Meta-World's (hand, gripper) except the goal slice, which
is unbounded for MT (its range differs by class) and [0, 0] for ML.

``backend="envpool"``: envpool's native C++ Meta-World (MT1 only)
-------------------------------------------------------------------
envpool 1.2.5 ships ``MetaWorld/<CamelCase>-v3`` tasks, a much faster reimplementation. We make
it with ``partially_observable=False`` (envpool's default hides the goal; Meta-World MT1 shows
it) through ``envs.envpool_backend.make_envpool``. Measured differences from ``backend=
"metaworld"``:

* **Goals.** envpool draws a fresh goal *and object position* uniformly from the task's
  continuous reset space on every reset (an unbounded task distribution). Meta-World MT1 draws
  from a fixed set of 50 goals sampled at make time. The per-sub-env goal still changes every
  episode in both.
* **Seeding.** Different random streams: the same seed gives different goals in the two
  backends (each is deterministic on its own; envpool seeds sub-env ``i`` with ``seed + i``).
* **Dynamics/reward.** Same observation layout, same reward function and success test. Started
  from the same goal and object position and given the same 100 random actions, reach-v3 rewards
  agreed to float32 precision; observations differ by up to ~1e-3, starting with the object
  quaternion (~5e-4 apart right after reset), so contact-rich tasks drift apart slowly (push-v3
  rewards within 5e-4, pick-place-v3 within 0.04 after 100 steps).
* **Horizon.** Both truncate at ``max_episode_steps`` (default 500) and neither terminates on
  success by default; envpool cannot, so ``terminate_on_success=True`` is rejected there.
* **Not available with envpool:** ``one_hot=True``, ``vectorization``, ``benchmark_seed`` (there
  is no task set) and ``sample_tasks()``; ``num_threads`` is envpool-only.
* **Spaces/info.** envpool declares the observation box as unbounded (same shape and float64
  dtype) and adds ``info["task_id"]`` (the class index among the 50 tasks, constant).

Building cost: Meta-World samples the 50 tasks of every class when a benchmark is made (about
1 s for MT1/ML1, 7 s for MT10, 11 s for ML10, several times more for MT50/ML45 on one core); the
task set is cached per ``(benchmark, task, benchmark_seed)``, so making the same benchmark
again (e.g. an evaluation env) only builds the sub-envs (~0.15 s each).
"""

from __future__ import annotations

import difflib
import functools
from typing import Any

import gymnasium as gym
import numpy as np

from rlmeta.envs.core import (
    Backend, EpisodeTracker, VectorEnv, check_num_envs, check_options, check_seed, normalize_step, sub_seeds,
)
from rlmeta.envs.envpool_backend import make_envpool

#: The Meta-World benchmarks this backend builds (``envs.make("metaworld:<name>")``).
BENCHMARKS = ("MT1", "MT10", "MT50", "ML1", "ML10", "ML45")
#: Tasks per class in every Meta-World benchmark (``metaworld._N_GOALS``).
TASKS_PER_CLASS = 50
#: Meta-World's task horizon (``SawyerXYZEnv.max_path_length``).
MAX_EPISODE_STEPS = 500
#: Observation size of every Meta-World v3 env, without one-hot.
OBS_DIM = 39
GOAL_SLICE = slice(36, 39)

_SINGLE_TASK = ("MT1", "ML1")
_OPTIONS = (
    "task",
    "split",
    "benchmark_seed",
    "one_hot",
    "max_episode_steps",
    "terminate_on_success",
    "vectorization",
    "clip_actions",
    "backend",
    "num_threads",
)
_ENVPOOL_OPTIONS = (
    "task",
    "max_episode_steps",
    "clip_actions",
    "backend",
    "num_threads",
    "one_hot",
    "terminate_on_success",
)


def task_names() -> list[str]:
    """All Meta-World v3 task-class names, e.g. ``"reach-v3"`` (valid ``task=`` values)."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS  # deferred: heavy optional dependency

    return list(ALL_V3_ENVIRONMENTS)


def benchmark_classes(name: str, split: str = "train", task: str | None = None) -> list[str]:
    """The ordered task-class names of benchmark ``name`` (and ``split``); no env is built."""
    import metaworld.env_dict as env_dict  # deferred: heavy optional dependency

    if name in _SINGLE_TASK:
        return [task]
    if name == "MT10":
        return list(env_dict.MT10_V3)
    if name == "MT50":
        return list(env_dict.MT50_V3)
    if name == "ML10":
        return list(env_dict.ML10_V3[split])
    if name == "ML45":
        return list(env_dict.ML45_V3[split])
    raise ValueError(_unknown_benchmark_message(name))


def valid_num_envs(name: str, split: str = "train", limit: int = 6) -> list[int] | None:
    """The first ``limit`` valid ``num_envs`` of a benchmark, or None when any n >= 1 is valid."""
    if name == "MT1":
        return None
    classes = 1 if name == "ML1" else len(benchmark_classes(name, split, task="x"))
    if name.startswith("MT"):
        return [classes * k for k in range(1, limit + 1)]
    return [classes * k for k in range(1, TASKS_PER_CLASS + 1) if TASKS_PER_CLASS % k == 0][:limit]


def _unknown_benchmark_message(name: Any) -> str:
    near = difflib.get_close_matches(str(name).upper(), BENCHMARKS, n=3, cutoff=0.5)
    hint = f" (did you mean {' or '.join(repr(n) for n in near)}?)" if near else ""
    msg = f"unknown Meta-World benchmark {name!r}{hint}; known benchmarks: {', '.join(BENCHMARKS)}"
    if isinstance(name, str) and name in task_names():
        msg += f". For the single task {name!r} use metaworld:MT1 or metaworld:ML1 with task={name!r}"
    return msg


def _check_task(name: str, task: Any) -> str:
    if name in _SINGLE_TASK:
        if task is None:
            raise ValueError(f"{name} needs task=<Meta-World v3 task name>, e.g. task='reach-v3'")
        names = task_names()
        if task not in names:
            near = difflib.get_close_matches(str(task), names, n=5, cutoff=0.4)
            hint = f"; nearest task names: {', '.join(near)}" if near else ""
            raise ValueError(
                f"unknown Meta-World task {task!r}{hint} (all {len(names)} v3 tasks: metaworld_backend.task_names())"
            )
        return task
    if task is not None:
        raise ValueError(
            f"{name} runs a fixed set of task classes and takes no task=; "
            f"use MT1 or ML1 for a single task (got task={task!r})"
        )
    return ""


def _check_num_envs(name: str, split: str, num_envs: Any, classes: int) -> int:
    if num_envs is None:
        return classes
    num_envs = check_num_envs(num_envs)
    if name == "MT1":
        return num_envs
    where = name if name.startswith("MT") else f"{name} (split={split!r})"
    valid = valid_num_envs(name, split)
    if name.startswith("MT"):
        if num_envs % classes:
            raise ValueError(
                f"{where} needs num_envs a multiple of {classes} (k sub-envs for each of its {classes} "
                f"task classes): {', '.join(map(str, valid))}, ...; got {num_envs}"
            )
        return num_envs
    per_class = num_envs // classes
    if name == "ML1" and TASKS_PER_CLASS % num_envs:
        raise ValueError(
            f"{where} needs num_envs (the meta-batch size) dividing the {TASKS_PER_CLASS} tasks of the class: "
            f"one of {', '.join(map(str, valid))}; got {num_envs}"
        )
    if num_envs % classes or TASKS_PER_CLASS % per_class:
        raise ValueError(
            f"{where} needs num_envs (the meta-batch size) = {classes} task classes x k, with k dividing the "
            f"{TASKS_PER_CLASS} tasks of a class: one of {', '.join(map(str, valid))}; got {num_envs}"
        )
    return num_envs


def _check_bool(option: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{option} must be True or False, got {value!r}")
    return bool(value)


def _check_max_steps(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_EPISODE_STEPS:
        raise ValueError(
            f"max_episode_steps must be an integer in [1, {MAX_EPISODE_STEPS}] (Meta-World's horizon), got {value!r}"
        )
    return int(value)


def make_metaworld(name: str, num_envs: int | None = None, seed: int | None = 0, **options: Any) -> VectorEnv:
    """Build Meta-World benchmark ``name`` as a contract VectorEnv; see the module docstring."""
    if name not in BENCHMARKS:
        raise ValueError(_unknown_benchmark_message(name))
    check_options(f"metaworld:{name}", options, list(_OPTIONS))
    seed = check_seed(seed)
    task = _check_task(name, options.get("task"))
    is_ml = name.startswith("ML")
    split = options.get("split")
    if split is not None and not is_ml:
        raise ValueError(f"{name} has no train/test split (split= is for ML1, ML10, ML45); got split={split!r}")
    split = "train" if split is None else split
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    backend = options.get("backend", "metaworld")
    if backend not in ("metaworld", "envpool"):
        raise ValueError(f"backend must be 'metaworld' or 'envpool', got {backend!r}")
    if backend == "envpool":
        return _make_envpool(name, task, num_envs, seed, options)
    if "num_threads" in options:
        raise ValueError("num_threads is an option of backend='envpool' only")

    classes = benchmark_classes(name, split, task)
    num_envs = _check_num_envs(name, split, num_envs, len(classes))
    one_hot = options.get("one_hot")
    if one_hot is None:
        one_hot = name in ("MT10", "MT50")
    one_hot = _check_bool("one_hot", one_hot)
    if one_hot and is_ml:
        raise ValueError(f"one_hot is for MT benchmarks; {name} hides the task identity from the agent")
    max_steps = _check_max_steps(options.get("max_episode_steps", MAX_EPISODE_STEPS))
    terminate = options.get("terminate_on_success")
    terminate = _check_bool("terminate_on_success", is_ml and split == "test" if terminate is None else terminate)
    vectorization = options.get("vectorization", "sync")
    if vectorization not in ("sync", "async"):
        raise ValueError(f"vectorization must be 'sync' or 'async', got {vectorization!r}")
    clip_actions = _check_bool("clip_actions", options.get("clip_actions", False))
    benchmark_seed = options.get("benchmark_seed", 0)
    try:
        benchmark_seed = check_seed(benchmark_seed)
    except ValueError:
        raise ValueError(f"benchmark_seed must be a non-negative integer or None, got {benchmark_seed!r}") from None

    return MetaWorldVectorEnv(
        name,
        classes,
        num_envs,
        seed,
        benchmark_seed=benchmark_seed,
        task=task or None,
        split=split if is_ml else None,
        one_hot=one_hot,
        max_episode_steps=max_steps,
        terminate_on_success=terminate,
        vectorization=vectorization,
        clip_actions=clip_actions,
    )


# -- building ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _cached_benchmark(name: str, task: str | None, seed: int) -> Any:
    return _new_benchmark(name, task, seed)


def _new_benchmark(name: str, task: str | None, seed: int | None) -> Any:
    import metaworld  # deferred: heavy optional dependency (MuJoCo)

    cls = getattr(metaworld, name)
    return cls(task, seed=seed) if name in _SINGLE_TASK else cls(seed=seed)


def _benchmark(name: str, task: str | None, seed: int | None) -> Any:
    """Meta-World's benchmark object (its 50 tasks per class); cached for a fixed seed."""
    return _new_benchmark(name, task, None) if seed is None else _cached_benchmark(name, task, seed)


def _find_task_wrapper(env: gym.Env) -> gym.Wrapper:
    # deferred: heavy optional dependency (MuJoCo)
    from metaworld.wrappers import PseudoRandomTaskSelectWrapper, RandomTaskSelectWrapper

    while isinstance(env, gym.Wrapper):
        if isinstance(env, (RandomTaskSelectWrapper, PseudoRandomTaskSelectWrapper)):
            return env
        env = env.env
    raise RuntimeError("Meta-World env without a task-selection wrapper")


class _SubEnv(gym.Wrapper):
    """One Meta-World env: seeds on ``reset(seed=...)`` and samples ML tasks on first/seeded reset."""

    def __init__(self, env: gym.Env, fixed_tasks: bool):
        super().__init__(env)
        self._task_wrapper = _find_task_wrapper(env)
        self._initial_tasks = list(self._task_wrapper.tasks)
        self._fixed_tasks = fixed_tasks
        self._has_task = False

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Reset; re-seed (and restart the ML task sequence) when ``seed`` is given."""
        sample = bool(options and options.get("sample_tasks"))
        if seed is not None:
            self.env.unwrapped.seed(seed)
            if self._fixed_tasks:
                self._task_wrapper.tasks = list(self._initial_tasks)
                self._task_wrapper.current_task_idx = -1
                self._has_task = False
        if self._fixed_tasks and not self._has_task:
            sample = True
        self._has_task = True
        if sample:
            return self._task_wrapper.sample_tasks()
        return self.env.reset()


def _make_sub_env(
    env_cls: type,
    tasks: list,
    seed: int | None,
    fixed_tasks: bool,
    max_episode_steps: int,
    terminate_on_success: bool,
) -> gym.Env:
    import metaworld  # deferred: heavy optional dependency (MuJoCo)

    env = metaworld._init_each_env(
        env_cls=env_cls,
        tasks=tasks,
        seed=seed,
        max_episode_steps=max_episode_steps,
        terminate_on_success=terminate_on_success,
        task_select="pseudorandom" if fixed_tasks else "random",
    )
    return _SubEnv(env, fixed_tasks)


def _single_observation_space(goal_observable: bool) -> gym.spaces.Box:
    """Meta-World's 39-d observation box, with an unbounded (MT) or zero (ML) goal slice."""
    from metaworld.sawyer_xyz_env import SawyerXYZEnv  # deferred: heavy optional dependency

    hand = SawyerXYZEnv._HAND_SPACE
    obj = np.full(14, np.inf)
    goal = np.full(3, np.inf) if goal_observable else np.zeros(3)
    low = np.hstack([hand.low, -1.0, -obj, hand.low, -1.0, -obj, -goal])
    high = np.hstack([hand.high, 1.0, obj, hand.high, 1.0, obj, goal])
    return gym.spaces.Box(low, high, dtype=np.float64)


class MetaWorldVectorEnv(VectorEnv):
    """A Meta-World benchmark as a contract VectorEnv (gymnasium vector env underneath)."""

    has_success = True

    def __init__(
        self,
        benchmark: str,
        class_names: list[str],
        num_envs: int,
        seed: int | None,
        *,
        benchmark_seed: int | None,
        task: str | None,
        split: str | None,
        one_hot: bool,
        max_episode_steps: int,
        terminate_on_success: bool,
        vectorization: str,
        clip_actions: bool,
    ):
        self._vec = None
        self.benchmark = benchmark
        self.split = split
        self.task = task
        self.class_names = list(class_names)
        per_class = num_envs // len(class_names)
        #: The task class run by each sub-env.
        self.task_names = [name for name in class_names for _ in range(per_class)]
        self.max_episode_steps = max_episode_steps
        self.terminate_on_success = terminate_on_success
        is_ml = benchmark.startswith("ML")
        self.fixed_tasks = is_ml

        inner_space = _single_observation_space(goal_observable=not is_ml)
        if one_hot:
            n = len(class_names)
            space = gym.spaces.Box(
                np.hstack([inner_space.low, np.zeros(n)]), np.hstack([inner_space.high, np.ones(n)]), dtype=np.float64
            )
            self._one_hot = np.zeros((num_envs, n))
            self._one_hot[np.arange(num_envs), np.arange(num_envs) // per_class] = 1.0
        else:
            space = inner_space
            self._one_hot = None
        action_space = gym.spaces.Box(-1.0, 1.0, (4,), dtype=np.float32)
        super().__init__(num_envs, space, action_space, seed=seed, clip_actions=clip_actions)

        self.benchmark_seed = benchmark_seed
        bench = _benchmark(benchmark, task, benchmark_seed)
        classes = bench.test_classes if split == "test" else bench.train_classes
        all_tasks = bench.test_tasks if split == "test" else bench.train_tasks
        seeds = sub_seeds(seed, num_envs)
        fns = []
        for c, class_name in enumerate(class_names):
            class_tasks = [t for t in all_tasks if t.env_name == class_name]
            for j in range(per_class):
                tasks = class_tasks[j::per_class] if is_ml else list(class_tasks)
                fns.append(
                    functools.partial(
                        _make_sub_env,
                        classes[class_name],
                        tasks,
                        seeds[c * per_class + j],
                        is_ml,
                        max_episode_steps,
                        terminate_on_success,
                    )
                )
        vec_cls = gym.vector.AsyncVectorEnv if vectorization == "async" else gym.vector.SyncVectorEnv
        self._vec = vec_cls(
            fns,
            observation_mode=(gym.vector.utils.batch_space(inner_space, num_envs), inner_space),
            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
        )
        self._tracker = EpisodeTracker(num_envs, has_success=True)

    # -- contract ---------------------------------------------------------------------------------
    def _obs(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float64)
        if self._one_hot is not None:
            obs = np.concatenate([obs, self._one_hot], axis=1)
        return obs

    def _reset(self, seed: int | None, options: dict | None) -> tuple[np.ndarray, dict]:
        unknown = sorted(set(options or {}) - {"sample_tasks"})
        if unknown:
            raise ValueError(f"unknown reset option(s) {unknown}; Meta-World envs accept only 'sample_tasks'")
        vec_seed = None if seed is None else sub_seeds(seed, self.num_envs)
        obs, _ = self._vec.reset(seed=vec_seed, options=dict(options) if options else None)
        self._tracker.clear()
        return self._obs(obs), {}

    def sample_tasks(self) -> tuple[np.ndarray, dict]:
        """Move every sub-env to its next task and reset all (ML); returns ``(obs, info)``."""
        if self._needs_reset:
            return self.reset()
        return self.reset(options={"sample_tasks": True})

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        """Step every sub-env; ended ones are reset in the same step (see ``envs.core``)."""
        actions = self.check_actions(actions)
        obs, reward, terminated, truncated, raw = self._vec.step(actions)
        reward, terminated, truncated, done = normalize_step(reward, terminated, truncated)
        info = self._step_info(raw, done)
        self._tracker.update(reward, done, info, success=info["success"] > 0)
        obs = self._obs(obs)
        if done.any():
            final = np.zeros((self.num_envs, OBS_DIM), dtype=np.float64)
            mask = np.asarray(raw["_final_obs"], dtype=bool)
            final[mask] = np.stack(raw["final_obs"][mask])
            info["final_obs"] = self._obs(final)
            if self._one_hot is not None:
                info["final_obs"][~mask] = 0.0
            info["_final_obs"] = mask.copy()
        return obs, reward, terminated, truncated, info

    def _step_info(self, raw: dict, done: np.ndarray) -> dict:
        """Per-step Meta-World metrics; for ended rows, those of the episode's last step."""
        final_info = raw.get("final_info", {})
        keys = [k for k in {*raw, *final_info} if not k.startswith("_") and k not in _SKIP_INFO]
        info = {}
        for key in sorted(keys):
            out = np.zeros(self.num_envs, dtype=np.float64)
            for source in (raw, final_info):
                if key in source:
                    mask = np.asarray(source[f"_{key}"], dtype=bool)
                    out[mask] = np.asarray(source[key], dtype=np.float64)[mask]
            info[key] = out
        info.setdefault("success", np.zeros(self.num_envs, dtype=np.float64))
        return info

    def _close(self) -> None:
        if self._vec is not None:
            self._vec.close()

    def __repr__(self) -> str:
        what = self.benchmark + (f"[{self.task}]" if self.task else "")
        what += f", split={self.split!r}" if self.split else ""
        return f"MetaWorldVectorEnv({what}, num_envs={getattr(self, 'num_envs', '?')})"


_SKIP_INFO = ("final_obs", "final_info", "episode")


# -- envpool fast path -------------------------------------------------------------------------------


def envpool_task_id(task: str) -> str:
    """envpool's id for a Meta-World task name: ``"reach-v3"`` -> ``"MetaWorld/Reach-v3"``."""
    stem, version = task.rsplit("-", 1)
    return "MetaWorld/" + "".join(part[:1].upper() + part[1:] for part in stem.split("-")) + f"-{version}"


def _make_envpool(name: str, task: str, num_envs: int | None, seed: int | None, options: dict) -> VectorEnv:
    """MT1 on envpool's native Meta-World (goal observable, as Meta-World's MT1)."""
    if name != "MT1":
        raise ValueError(
            f"backend='envpool' supports only MT1 (envpool runs one task class with its own goal sampling); "
            f"got {name}. Use backend='metaworld' for {name}"
        )
    bad = sorted(set(options) - set(_ENVPOOL_OPTIONS))
    if bad:
        raise ValueError(
            f"option(s) {bad} are not available with backend='envpool'; allowed: {sorted(_ENVPOOL_OPTIONS)}"
        )
    if options.get("one_hot"):
        raise ValueError("one_hot=True is not available with backend='envpool' (MT1 has a single class)")
    if options.get("terminate_on_success"):
        raise ValueError("terminate_on_success=True is not available with backend='envpool' (envpool never terminates)")
    num_envs = 1 if num_envs is None else check_num_envs(num_envs)
    max_steps = _check_max_steps(options.get("max_episode_steps", MAX_EPISODE_STEPS))
    clip_actions = _check_bool("clip_actions", options.get("clip_actions", False))
    extra = {"num_threads": options["num_threads"]} if "num_threads" in options else {}
    return make_envpool(  # has_success is read from the task's info keys
        envpool_task_id(task),
        num_envs=num_envs,
        seed=seed,
        partially_observable=False,
        max_episode_steps=max_steps,
        clip_actions=clip_actions,
        **extra,
    )


BACKEND = Backend(
    "metaworld", make_metaworld,
    "Meta-World benchmarks: MT1 (task=...), MT10, MT50, ML1 (task=...), ML10, ML45", lambda: BENCHMARKS,
)
