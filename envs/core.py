"""The one vector-environment contract shared by every rlmeta backend.

Every environment returned by :func:`envs.make` is a :class:`VectorEnv`, a subclass of
``gymnasium.vector.VectorEnv``, and follows these rules (also in ``docs/envs.md``):

* **Batch-first numpy.** ``reset(seed=None) -> (obs, info)`` and
  ``step(actions) -> (obs, reward, terminated, truncated, info)``; ``obs`` is an array of shape
  ``[num_envs, *single_observation_space.shape]`` (or a dict of such arrays for dict spaces),
  ``reward`` is float32 ``[num_envs]``, ``terminated`` and ``truncated`` are bool ``[num_envs]``.
* **Same-step autoreset.** When sub-env ``i`` ends at a step, that same step already returns the
  first observation of its next episode in ``obs[i]``. The true last observation of the ended
  episode is in ``info["final_obs"][i]``; ``info["_final_obs"]`` is the bool mask of the rows that
  hold one (other rows are zero). Both keys are present only on steps where some episode ended.
  So every transition returned is a real one, and a learner bootstraps a truncated episode from
  ``info["final_obs"]``.
* **Terminated vs truncated.** ``terminated[i]`` means the episode reached a terminal state (no
  bootstrapping); ``truncated[i]`` means it was cut by a time limit. When both would hold on the
  same step, only ``terminated`` is set, so ``truncated`` always means "bootstrap from final_obs".
* **Episode statistics.** On a step where some episode ended, ``info["episode"]`` is a dict of
  ``[num_envs]`` arrays: ``return`` (float64, undiscounted sum of rewards), ``length`` (int64,
  steps), and ``success`` (bool, the episode succeeded at some step) for environments that have a
  notion of success (``env.has_success``); ``info["_episode"]`` is the mask of the rows that ended.
* **Seeding.** ``make(id, num_envs, seed)`` fixes the seed that the first ``reset()`` uses;
  ``reset(seed=s)`` re-seeds every sub-env from ``s``. Same seed and same actions give the same
  trajectory.
* **Checked actions.** Actions of the wrong shape, dtype or range raise ``ValueError`` naming the
  expected shape and range, before the environment changes state. Continuous actions outside the
  bounds are an error unless the env was made with ``clip_actions=True``.
* **Lifecycle.** ``close()`` may be called any number of times; ``step`` or ``reset`` on a closed
  env raises ``RuntimeError``; ``step`` before the first ``reset`` raises ``RuntimeError``.
"""

from __future__ import annotations

import difflib
import inspect
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

Obs = Any  # np.ndarray or dict[str, np.ndarray]


def check_num_envs(num_envs: Any) -> int:
    """Return ``num_envs`` as an int, or raise ValueError if it is not an integer >= 1."""
    if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
        raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
    return int(num_envs)


def check_seed(seed: Any) -> int | None:
    """Return ``seed`` as an int (or None), or raise ValueError if it is not a non-negative int."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    return int(seed)


def sub_seeds(seed: int | None, num_envs: int) -> list[int | None]:
    """Derive ``num_envs`` independent 32-bit seeds from one seed (all None if seed is None)."""
    if seed is None:
        return [None] * num_envs
    words = np.random.SeedSequence(seed).generate_state(num_envs, dtype=np.uint32)
    return [int(w) for w in words]


def describe_space(space: gym.Space) -> str:
    """Human-readable shape, dtype and range of a single-env action space, for error messages."""
    if isinstance(space, gym.spaces.Discrete):
        return f"integers in [{space.start}, {space.start + space.n - 1}]"
    if isinstance(space, gym.spaces.Box):
        low, high = np.min(space.low), np.max(space.high)
        return f"{space.dtype} values of shape {space.shape} in [{low}, {high}]"
    if isinstance(space, gym.spaces.MultiDiscrete):
        return f"integers of shape {space.shape} in [0, nvec-1] with nvec={space.nvec.tolist()}"
    if isinstance(space, gym.spaces.MultiBinary):
        return f"0/1 integers of shape {space.shape}"
    return repr(space)


def map_obs(fn, obs: Obs) -> Obs:
    """Apply ``fn`` to an observation array, or to each array of a dict observation."""
    if isinstance(obs, dict):
        return {key: map_obs(fn, value) for key, value in obs.items()}
    return fn(obs)


def zeros_like_batch(space: gym.Space, num_envs: int) -> Obs:
    """A zero-filled batch ``[num_envs, ...]`` of observations of a single-env space."""
    if isinstance(space, gym.spaces.Dict):
        return {key: zeros_like_batch(sub, num_envs) for key, sub in space.spaces.items()}
    return np.zeros((num_envs, *space.shape), dtype=space.dtype)


def set_rows(target: Obs, rows: np.ndarray, source: Obs, source_rows: Any = slice(None)) -> None:
    """In place: ``target[rows] = source[source_rows]`` for array or dict observations."""
    if isinstance(target, dict):
        for key in target:
            set_rows(target[key], rows, source[key], source_rows)
    else:
        target[rows] = source[source_rows]


def normalize_step(reward: Any, terminated: Any, truncated: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Backend step outputs as the contract's dtypes, truncated only where not terminated; plus done."""
    reward = np.asarray(reward, dtype=np.float32)
    terminated = np.asarray(terminated, dtype=bool)
    truncated = np.asarray(truncated, dtype=bool) & ~terminated
    return reward, terminated, truncated, terminated | truncated


class ArrayPool:
    """Recycled output arrays for a native env's ``step``: no large allocation in steady state.

    A fresh 1.4 MB array per step (Snake's observations at 512 envs) is served by glibc through
    ``mmap`` depending on the process's allocation history, and then every step page-faults the
    whole block again: measured 10x slower steps after a smaller env had run first. ``take()``
    hands out an array that nobody outside the pool references any more (CPython reference
    count), so the returned arrays stay valid for as long as a caller holds them (or a view of
    them, or a tensor made by ``torch.from_numpy``), exactly as with fresh arrays; only arrays
    that were dropped are written again. When every pooled array is still held, ``take()``
    allocates a fresh one (the behaviour without a pool).
    """

    # References to a free pooled array seen by ``sys.getrefcount`` inside ``take``: the pool's
    # list, the loop variable and getrefcount's own argument.
    _FREE = 3

    def __init__(self, shape: tuple[int, ...], dtype: Any, size: int = 4):
        self.shape, self.dtype, self.size = tuple(shape), np.dtype(dtype), size
        self._arrays: list[np.ndarray] = []

    def take(self, zero: bool = False) -> np.ndarray:
        """An array of the pool's shape and dtype with undefined contents (zeros if ``zero``)."""
        for array in self._arrays:
            if sys.getrefcount(array) == self._FREE:
                if zero:
                    array.fill(0)
                return array
        array = np.zeros(self.shape, self.dtype) if zero else np.empty(self.shape, self.dtype)
        if len(self._arrays) < self.size:
            self._arrays.append(array)
        return array


class ArrayGroupPool:
    """Recycled groups of arrays handed out together (a native env's small per-step outputs).

    ``make()`` returns a tuple of arrays; ``take()`` returns a pooled group that nobody outside the
    pool references any more, else a new ``make()``. A group is free only when *every* array in it is:
    the reference count of each array is back to what it was when the group was made (so arrays that
    are views of one buffer of the group, or hold one another as ``base``, are handled: a caller's
    view of any of them raises the count of the buffer that owns the memory). As with
    :class:`ArrayPool`, arrays a caller keeps (or views, or ``torch.from_numpy`` tensors of them)
    stay valid; contents of a recycled group are undefined, so the env must rewrite every element it
    returns.

    Why: at 64 sub-envs a ``np.empty`` costs about as much as stepping a few sub-envs; Snake returns
    eleven small arrays per step, and checking a pooled group is about ten times cheaper than
    allocating it.
    """

    def __init__(self, make: Callable[[], tuple[np.ndarray, ...]], size: int = 4):
        self._make, self.size = make, size
        self._groups: list[tuple[tuple[np.ndarray, ...], int, int]] = []

    def take(self) -> tuple[np.ndarray, ...]:
        """A group of arrays with undefined contents."""
        for arrays, first, free in self._groups:
            # The group's own references stay, so no count is ever below its free value: the sum
            # is back to the free sum only when every array is free. The free counts are measured
            # by the same expressions when the group is made, so they do not depend on how CPython
            # counts the references of a loop or a call. The first array alone is checked first: a
            # caller that keeps outputs most likely keeps that one (the reward).
            if sys.getrefcount(arrays[0]) == first and sum(map(sys.getrefcount, arrays)) == free:
                return arrays
        arrays = self._make()
        if len(self._groups) < self.size:
            self._groups.append((arrays, sys.getrefcount(arrays[0]), sum(map(sys.getrefcount, arrays))))
        return arrays

    def __deepcopy__(self, memo: dict) -> "ArrayGroupPool":
        # An empty pool: copied groups would lose the views-of-one-buffer structure their free
        # counts were measured with (and a pooled group's contents do not matter).
        return ArrayGroupPool(self._make, self.size)


class EpisodeTracker:
    """Accumulates per-env return, length and success, and reports ended episodes in ``info``."""

    def __init__(self, num_envs: int, has_success: bool):
        self.has_success = has_success
        self.returns = np.zeros(num_envs, dtype=np.float64)
        self.lengths = np.zeros(num_envs, dtype=np.int64)
        self.success = np.zeros(num_envs, dtype=bool)

    def clear(self) -> None:
        """Forget the episodes in progress (called on reset)."""
        self.returns[:] = 0.0
        self.lengths[:] = 0
        self.success[:] = False

    def update(self, reward: np.ndarray, done: np.ndarray, info: dict, success: np.ndarray | None = None) -> None:
        """Add one step; on rows where ``done``, write ``info['episode']`` and restart the count."""
        self.returns += reward
        self.lengths += 1
        if self.has_success and success is not None:
            self.success |= success.astype(bool)
        if done.any():
            add_episode_info(info, done, self.returns, self.lengths, self.success if self.has_success else None)
            self.returns[done] = 0.0
            self.lengths[done] = 0
            self.success[done] = False


def add_episode_info(
    info: dict, done: np.ndarray, returns: np.ndarray, lengths: np.ndarray, success: np.ndarray | None
) -> None:
    """Write the contract's ``info['episode']`` (rows where ``done``, zeros elsewhere) and mask."""
    episode = {
        "return": np.where(done, returns, 0.0).astype(np.float64),
        "length": np.where(done, lengths, 0).astype(np.int64),
    }
    if success is not None:
        episode["success"] = done & success.astype(bool)
    info["episode"] = episode
    info["_episode"] = done.copy()


class VectorEnv(gym.vector.VectorEnv):
    """Base class of every rlmeta vector env; see the module docstring for the contract."""

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP}
    #: Whether ``info['episode']`` carries a ``success`` entry.
    has_success: bool = False

    def __init__(
        self,
        num_envs: int,
        single_observation_space: gym.Space,
        single_action_space: gym.Space,
        seed: int | None = None,
        clip_actions: bool = False,
    ):
        self.num_envs = check_num_envs(num_envs)
        self.single_observation_space = single_observation_space
        self.single_action_space = single_action_space
        self.observation_space = batch_space(single_observation_space, self.num_envs)
        self.action_space = batch_space(single_action_space, self.num_envs)
        self.seed = check_seed(seed)
        self.clip_actions = bool(clip_actions)
        self.closed = False
        self._needs_reset = True
        self._action_checker = _make_action_checker(single_action_space, self.num_envs, self.clip_actions)

    # -- lifecycle ---------------------------------------------------------------------------
    def _check_open(self, what: str) -> None:
        if self.closed:
            raise RuntimeError(f"cannot {what} a closed environment ({self!r}); make a new one with envs.make")

    def check_actions(self, actions: Any) -> np.ndarray:
        """Validate a batch of actions against ``single_action_space``; return it as numpy."""
        self._check_open("step")
        if self._needs_reset:
            raise RuntimeError("call reset() before step()")
        return self._action_checker(actions)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Obs, dict]:
        """Reset every sub-env; ``seed`` re-seeds them all (default: the seed given to make)."""
        self._check_open("reset")
        seed = check_seed(seed)
        if seed is None and self._needs_reset:
            seed = self.seed
        obs, info = self._reset(seed, options)
        self._needs_reset = False
        return obs, info

    def _reset(self, seed: int | None, options: dict | None) -> tuple[Obs, dict]:
        raise NotImplementedError

    def close(self, **kwargs: Any) -> None:
        """Release resources; safe to call more than once."""
        if self.closed:
            return
        self.closed = True
        self._close()

    def _close(self) -> None:
        pass

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_envs={getattr(self, 'num_envs', '?')})"


def _make_action_checker(space: gym.Space, num_envs: int, clip: bool):
    """Build a fast validator for batches of actions of one single-env space."""
    expected = describe_space(space)

    def fail(problem: str) -> None:
        raise ValueError(
            f"invalid actions: {problem}; expected an array of shape ({num_envs}, ...) of {expected} "
            f"(one action per sub-env)"
        )

    if isinstance(space, gym.spaces.Discrete):
        lo, hi = int(space.start), int(space.start + space.n - 1)

        def check_discrete(actions: Any) -> np.ndarray:
            actions = np.asarray(actions)
            if actions.shape != (num_envs,):
                fail(f"got shape {actions.shape}, need ({num_envs},)")
            if actions.dtype.kind not in "iu":
                fail(f"got dtype {actions.dtype}, need an integer dtype")
            if num_envs and (actions.min() < lo or actions.max() > hi):
                bad = actions[(actions < lo) | (actions > hi)]
                fail(f"got out-of-range value(s) {bad[:5].tolist()}")
            return actions

        return check_discrete

    if isinstance(space, gym.spaces.Box):
        shape = (num_envs, *space.shape)
        low, high = space.low, space.high

        def check_box(actions: Any) -> np.ndarray:
            actions = np.asarray(actions)
            if actions.shape != shape:
                fail(f"got shape {actions.shape}, need {shape}")
            if actions.dtype.kind not in "fiu":
                fail(f"got dtype {actions.dtype}, need a numeric dtype")
            actions = actions.astype(space.dtype, copy=False)
            if not np.isfinite(actions).all() and np.issubdtype(space.dtype, np.floating):
                fail("got NaN or infinite values")
            if clip:
                return np.clip(actions, low, high)
            if (actions < low).any() or (actions > high).any():
                fail(
                    f"got values outside the bounds (min {actions.min():.4g}, max {actions.max():.4g}); "
                    "clip them or make the env with clip_actions=True"
                )
            return actions

        return check_box

    if isinstance(space, gym.spaces.MultiDiscrete):
        shape = (num_envs, *space.shape)

        def check_multi_discrete(actions: Any) -> np.ndarray:
            actions = np.asarray(actions)
            if actions.shape != shape:
                fail(f"got shape {actions.shape}, need {shape}")
            if actions.dtype.kind not in "iu":
                fail(f"got dtype {actions.dtype}, need an integer dtype")
            if (actions < space.start).any() or (actions >= space.start + space.nvec).any():
                fail("got out-of-range values")
            return actions

        return check_multi_discrete

    batch = batch_space(space, num_envs)

    def check_generic(actions: Any) -> Any:
        if not batch.contains(actions):
            fail(f"got {actions!r}")
        return actions

    return check_generic


# -- what the registry and the backends share ---------------------------------------------------

# A builder makes a vector env: builder(num_envs=..., seed=..., **options) -> VectorEnv.
Builder = Callable[..., VectorEnv]


@dataclass(frozen=True)
class EnvSpec:
    """A named environment (``snake``, a user's ``envs.register`` name): its builder and default options."""

    name: str
    builder: Builder
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class Backend:
    """A family of ids ``<prefix>:<name>`` (``envpool:CartPole-v1``): one row of the registry's backend table.

    ``build(name, num_envs=..., seed=..., **options)`` returns the VectorEnv and raises ValueError for an
    unknown name or option; ``names()`` lists the names it knows (for nearest-id suggestions).
    """

    prefix: str
    build: Callable[..., VectorEnv]
    description: str
    names: Callable[[], Iterable[str]]


def check_options(where: str, options: dict[str, Any], allowed: Callable | Iterable[str]) -> None:
    """Raise ValueError naming any option not accepted by ``allowed`` (a function or names)."""
    names = [p for p in inspect.signature(allowed).parameters] if callable(allowed) else [*allowed]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {where}; allowed: {sorted(names)}")


def nearest_ids(id: str, candidates: Iterable[str]) -> list[str]:  # noqa: A002 - gymnasium's word for it
    """Up to five ``candidates`` closest to ``id``, also comparing them without their ``prefix:``."""
    candidates = [*candidates]
    near = difflib.get_close_matches(id, candidates, n=5, cutoff=0.5)
    if not near:  # also try without the prefix, e.g. "CartPole-v1" -> "envpool:CartPole-v1"
        bare = {c.partition(":")[2] or c: c for c in candidates}
        near = [bare[b] for b in difflib.get_close_matches(id.partition(":")[2] or id, bare, n=5, cutoff=0.6)]
    return near


def unknown_id_message(id: str, candidates: Iterable[str]) -> str:  # noqa: A002 - gymnasium's word for it
    """Error text for an unknown id, naming the closest of ``candidates``."""
    near = nearest_ids(id, candidates)
    hint = f"; nearest known ids: {', '.join(near)}" if near else ""
    return f"unknown env id {id!r}{hint}"
