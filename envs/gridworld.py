"""The LPG/GROOVE grid worlds, vectorized in numba: one :class:`~envs.levels.Level` per sub-env.

Dynamics of GROOVE's ``GridWorld.step_env`` (repository ``EmptyJackson/groove``,
``environments/gridworld/gridworld.py``; Oh et al. 2020, LPG), per sub-env and step, in this order:

1. **move**: actions 0..4 are up, down, left, right, stay; off the grid or into a wall: no move;
2. **collect**: an object that exists at the start of the step and sits on the agent's new cell is
   collected (its reward is paid below);
3. **respawn**: every object draws ``u < p_respawn``; those that did not exist at the start of the
   step reappear (at their own cell, or at a random free cell when their position is ``None``:
   not the agent's cell, not any object's current cell, as GROOVE's random respawn, and not a
   wall, where GROOVE differs by a bug: its ``jnp.isin(cells, params.walls)`` compares cell
   indices with the boolean wall mask, so it excludes cells 0 and 1 instead of the walls); a
   collected object is removed after this, so it cannot reappear in the same step;
4. **termination** draw ``u < p_terminate`` of the collected object (GROOVE draws it every step);
5. **reward** of the collected object (0 if none);
6. **time limit**: after ``max_steps`` steps the episode is **truncated** (GROOVE reports one ``done``;
   we follow gymnasium, so learners bootstrap from ``info["final_obs"]``). A terminating step at
   the limit is reported as terminated only.

Ended sub-envs reset in the same step (the agent at the start cell, or a random free cell when
``start=None``; every object present, random ones on distinct random free cells).

Levels: every sub-env plays its own :class:`~envs.levels.Level` (``make_grid``'s ``level=``,
``levels=`` or ``generator=``). Levels drawn from a generator belong to the seed, like the rest of
the env's randomness: every ``reset(seed=s)`` draws ``sample_levels(generator, num_envs, s)`` (so
``make(seed=s)`` and ``reset(seed=s)`` agree), a plain ``reset()`` keeps them. ``set_levels`` swaps
in levels of your choice (a curriculum's) at the next reset and keeps them from then on.

Observations (``obs=``):

* ``"tabular"``: a one-hot float32 vector over (cell, object-existence pattern), index
  ``cell + S*S * pattern`` with ``cell = row * size + col`` in the level's own size and bit ``k`` of
  ``pattern`` set when object ``k`` exists: GROOVE's tabular observation. ``S`` and the number of
  pattern bits ``K`` are the largest grid size and object count the env was built for (the
  maximum over its levels, or the generator's bounds, or ``max_grid_size``/``max_objects``), so a
  batch of mixed levels has one padded size ``S*S * 2**K``; indices of smaller levels never reach
  the padding. Levels with random object cells have no tabular observation (GROOVE: "random object
  respawn not defined for tabular environments").
* ``"index"``: the same tabular state as one int64 per sub-env (``Discrete(S*S * 2**K)``), the
  position of the one in ``"tabular"``: for table lookups without moving the one-hot vectors.
* ``"grid"``: float32 planes ``(S, S, 2 + T)`` (``(2 + T, S, S)`` with ``channels_first=True``):
  agent, walls, then one plane per object type (GROOVE's non-tabular observation is the agent
  plane and one plane per object type, flattened; we keep the image shape and add the walls
  plane, where cells outside a smaller level's grid are walls). ``T`` is the largest number of
  object types; object ``k``'s type is ``Level.object_types()[k]``.

GROOVE appends the raw step counter ``time * 0.001`` to both observations; we do not (the
project's design notes list raw step counters as inputs among GROOVE's quirks not to copy, and
with it a "tabular" state would not be tabular).

Random numbers: every sub-env has its own SplitMix64 stream derived from the seed. Each step draws,
in this order, one uniform per object (respawn), one uniform per random-cell placement of a
reappearing object (``random_below`` over the free cells), and one uniform for termination; a
reset draws only for random placements (start first, then objects in order). A Bernoulli(p) draw
is ``u < p`` with ``u = (x >> 11) * 2**-53``. So a trajectory depends only on the seed, the sub-env's
index, its levels and the actions (tests replay these streams in a plain-Python transcription).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numba
import numpy as np

from rlmeta.envs.core import ArrayPool, EnvSpec, VectorEnv, check_num_envs, check_options, check_seed, nearest_ids
from rlmeta.envs.streams import random_below, random_uniform, splitmix_next
from rlmeta.envs.levels import (
    GENERATORS, LEVELS, LPG_LEVELS, MAX_OBJECTS, NUM_ACTIONS, Generator, Level, RandomLayout, RandomTables, next_cell,
    optimal_return, sample_levels,
)

OBSERVATIONS = ("tabular", "index", "grid")
AGENT_PLANE, WALL_PLANE, FIRST_OBJECT_PLANE = 0, 1, 2

# Per-sub-env level fields, int64 [B, NUM_LEVEL_FIELDS]; START is a flat cell or -1 (random).
SIZE, NUM_OBJ, START, MAX_STEPS = 0, 1, 2, 3
NUM_LEVEL_FIELDS = 4
# Per-sub-env state, int64 [B, NUM_STATE_FIELDS]; EXISTS is the object-existence bit pattern.
POS, TIME, EXISTS = 0, 1, 2
NUM_STATE_FIELDS = 3


# --------------------------------------------------------------------------------------------
# the kernels
# --------------------------------------------------------------------------------------------
@numba.njit(cache=True, inline="always")
def _is_free(cell: int, walls: np.ndarray, taken: np.ndarray, num_taken: int) -> bool:
    """Neither a wall nor one of ``taken[:num_taken]``."""
    if walls[cell]:
        return False
    for j in range(num_taken):
        if taken[j] == cell:
            return False
    return True


@numba.njit(cache=True)
def _free_cell(rng: np.ndarray, i: int, size: int, walls: np.ndarray, taken: np.ndarray, num_taken: int) -> int:
    """A uniformly chosen cell that is neither a wall nor in ``taken[:num_taken]``; -1 if there is none."""
    count = 0
    for cell in range(size * size):
        if _is_free(cell, walls, taken, num_taken):
            count += 1
    if count == 0:
        return -1
    pick = random_below(rng, i, count)
    for cell in range(size * size):
        if _is_free(cell, walls, taken, num_taken):
            if pick == 0:
                return cell
            pick -= 1
    return -1


@numba.njit(cache=True)
def _reset_one(i, level_int, level_walls, level_home, state, object_pos, rng) -> None:
    """New episode for sub-env ``i``: agent at the start (or a random free cell), every object present."""
    size = level_int[i, SIZE]
    num_objects = level_int[i, NUM_OBJ]
    taken = np.empty(num_objects + 1, dtype=np.int64)
    num_taken = 0
    for k in range(num_objects):
        object_pos[i, k] = level_home[i, k]
        if object_pos[i, k] >= 0:
            taken[num_taken] = object_pos[i, k]
            num_taken += 1
    pos = level_int[i, START]
    if pos < 0:
        pos = _free_cell(rng, i, size, level_walls[i], taken, num_taken)
    taken[num_taken] = pos
    num_taken += 1
    for k in range(num_objects):
        if level_home[i, k] < 0:
            cell = _free_cell(rng, i, size, level_walls[i], taken, num_taken)
            object_pos[i, k] = cell
            taken[num_taken] = cell
            num_taken += 1
    state[i, POS] = pos
    state[i, TIME] = 0
    state[i, EXISTS] = (1 << num_objects) - 1


@numba.njit(cache=True)
def _step_one(i, action, level_int, level_walls, level_home, level_reward, level_p_terminate, level_p_respawn,
              state, object_pos, rng):
    """One GROOVE step of sub-env ``i``; returns ``(reward, terminated, truncated)``."""
    size = level_int[i, SIZE]
    num_objects = level_int[i, NUM_OBJ]
    walls = level_walls[i]
    pos = next_cell(state[i, POS], action, size, walls)  # 1. move
    exists = state[i, EXISTS]
    collected = -1
    for k in range(num_objects):  # 2. collect (cells are distinct: at most one)
        if (exists >> k) & 1 and object_pos[i, k] == pos:
            collected = k
    respawn = 0
    for k in range(num_objects):  # 3. respawn
        if random_uniform(rng, i) < level_p_respawn[i, k]:
            respawn |= 1 << k
    new_exists = exists | respawn
    if collected >= 0:
        new_exists &= ~(1 << collected)
    born = respawn & ~exists
    random_born = False
    for k in range(num_objects):
        if (born >> k) & 1 and level_home[i, k] < 0:
            random_born = True
    if random_born:  # new random cells: not the agent's, not any object's (old or new), not a wall
        taken = np.empty(2 * num_objects + 1, dtype=np.int64)
        taken[0] = pos
        num_taken = 1
        for k in range(num_objects):
            taken[num_taken] = object_pos[i, k]
            num_taken += 1
        for k in range(num_objects):
            if (born >> k) & 1 and level_home[i, k] < 0:
                cell = _free_cell(rng, i, size, walls, taken, num_taken)
                if cell < 0:  # no free cell: the object stays away this step
                    new_exists &= ~(1 << k)
                else:
                    object_pos[i, k] = cell
                    taken[num_taken] = cell
                    num_taken += 1
    u = random_uniform(rng, i)  # 4. termination
    terminated = collected >= 0 and u < level_p_terminate[i, collected]
    reward = level_reward[i, collected] if collected >= 0 else 0.0  # 5. reward
    state[i, POS] = pos
    state[i, EXISTS] = new_exists
    state[i, TIME] += 1
    truncated = (not terminated) and state[i, TIME] >= level_int[i, MAX_STEPS]  # 6. time limit
    return reward, terminated, truncated


@numba.njit(cache=True)
def _write_tabular(out, i, level_int, level_walls, level_type, state, object_pos, padded, channels_first, clear):
    """One-hot of ``cell + padded**2 * pattern`` into ``out`` ([D], zero-filled unless ``clear``)."""
    if clear:
        out[:] = 0.0
    out[state[i, POS] + padded * padded * state[i, EXISTS]] = 1.0


@numba.njit(cache=True)
def _write_index(out, i, level_int, level_walls, level_type, state, object_pos, padded, channels_first, clear):
    """The tabular index ``cell + padded**2 * pattern`` into ``out`` ([1], int64)."""
    out[0] = state[i, POS] + padded * padded * state[i, EXISTS]


@numba.njit(cache=True, inline="always")
def _set_plane(out, cell, plane, channels_first) -> None:
    if channels_first:
        out[plane, cell] = 1.0
    else:
        out[cell, plane] = 1.0


@numba.njit(cache=True)
def _write_grid(out, i, level_int, level_walls, level_type, state, object_pos, padded, channels_first, clear):
    """Agent, wall and object-type planes into ``out`` ([S*S, C] or [C, S*S], zero-filled unless ``clear``).

    Cells outside a level smaller than the padding are walls.
    """
    if clear:
        out[:] = 0.0
    size = level_int[i, SIZE]
    for row in range(padded):
        for col in range(padded):
            if row >= size or col >= size or level_walls[i, row * size + col]:
                _set_plane(out, row * padded + col, WALL_PLANE, channels_first)
    pos = state[i, POS]
    _set_plane(out, (pos // size) * padded + pos % size, AGENT_PLANE, channels_first)
    exists = state[i, EXISTS]
    for k in range(level_int[i, NUM_OBJ]):
        if (exists >> k) & 1:
            cell = object_pos[i, k]
            _set_plane(out, (cell // size) * padded + cell % size, FIRST_OBJECT_PLANE + level_type[i, k], channels_first)


_WRITERS = {"tabular": _write_tabular, "index": _write_index, "grid": _write_grid}


def _make_kernels(parallel: bool, obs: str):
    """Compile the reset and step kernels for one observation kind, with ``prange`` when ``parallel``."""
    write = _WRITERS[obs]

    @numba.njit(cache=True)
    def reset_kernel(level_int, level_walls, level_home, level_type, state, object_pos, rng, padded,
                     channels_first, obs) -> None:
        """Reset every sub-env and write its first observation (``obs`` zero-filled)."""
        for i in range(state.shape[0]):
            _reset_one(i, level_int, level_walls, level_home, state, object_pos, rng)
            write(obs[i], i, level_int, level_walls, level_type, state, object_pos, padded, channels_first, False)

    @numba.njit(cache=True, parallel=parallel)
    def step_kernel(actions, level_int, level_walls, level_home, level_type, level_reward, level_p_terminate,
                    level_p_respawn, state, object_pos, rng, ep_return, padded, channels_first,
                    obs, final_obs, reward, terminated, truncated, done_return, done_length) -> int:
        """Step every sub-env; returns the number of ended episodes, or -1 (nothing changed) on a bad action.

        ``obs`` must be zero-filled. Rows of ``final_obs`` (a scratch buffer), ``done_return`` and
        ``done_length`` are written only for sub-envs whose episode ended; the others keep stale values.
        """
        num_envs = state.shape[0]
        for i in range(num_envs):  # validate everything before changing any state
            if actions[i] < 0 or actions[i] >= NUM_ACTIONS:
                return -1
        num_done = 0
        for i in numba.prange(num_envs):
            r, term, trunc = _step_one(i, actions[i], level_int, level_walls, level_home, level_reward,
                                       level_p_terminate, level_p_respawn, state, object_pos, rng)
            reward[i] = np.float32(r)
            ep_return[i] += r
            terminated[i] = term
            truncated[i] = trunc
            if term or trunc:
                num_done += 1
                write(final_obs[i], i, level_int, level_walls, level_type, state, object_pos, padded, channels_first,
                      True)
                done_return[i] = ep_return[i]
                done_length[i] = state[i, TIME]
                ep_return[i] = 0.0
                _reset_one(i, level_int, level_walls, level_home, state, object_pos, rng)
            write(obs[i], i, level_int, level_walls, level_type, state, object_pos, padded, channels_first, False)
        return num_done

    return reset_kernel, step_kernel


_KERNELS: dict[tuple[bool, str], tuple[Any, Any]] = {}


def _kernels(parallel: bool, obs: str) -> tuple[Any, Any]:
    """The (reset, step) kernels of one kind, built on first use (numba compiles lazily anyway)."""
    key = (parallel, obs)
    if key not in _KERNELS:
        _KERNELS[key] = _make_kernels(parallel, obs)
    return _KERNELS[key]


# --------------------------------------------------------------------------------------------
# levels -> arrays
# --------------------------------------------------------------------------------------------
def encode_levels(levels: Sequence[Level], max_objects: int) -> dict[str, np.ndarray]:
    """The kernel's per-sub-env level arrays (``[B, ...]``) for ``levels``, objects padded to ``max_objects``."""
    n = len(levels)
    biggest = max(level.num_cells for level in levels)
    arrays = {
        "int": np.zeros((n, NUM_LEVEL_FIELDS), dtype=np.int64),
        "walls": np.zeros((n, biggest), dtype=np.uint8),
        "home": np.full((n, max_objects), -1, dtype=np.int64),
        "type": np.zeros((n, max_objects), dtype=np.int64),
        "reward": np.zeros((n, max_objects), dtype=np.float64),
        "p_terminate": np.zeros((n, max_objects), dtype=np.float64),
        "p_respawn": np.zeros((n, max_objects), dtype=np.float64),
    }
    for i, level in enumerate(levels):
        size = level.size
        start = -1 if level.start is None else level.start[0] * size + level.start[1]
        arrays["int"][i] = (size, level.num_objects, start, level.max_steps)
        arrays["walls"][i, : level.num_cells] = level.walls_mask().ravel()
        for k, (obj, kind) in enumerate(zip(level.objects, level.object_types())):
            arrays["home"][i, k] = -1 if obj.position is None else obj.position[0] * size + obj.position[1]
            arrays["type"][i, k] = kind
            arrays["reward"][i, k] = obj.reward
            arrays["p_terminate"][i, k] = obj.p_terminate
            arrays["p_respawn"][i, k] = obj.p_respawn
    return arrays


# --------------------------------------------------------------------------------------------
# the vector env
# --------------------------------------------------------------------------------------------
class GridVectorEnv(VectorEnv):
    """``num_envs`` GROOVE grid worlds, one level each, stepped by one numba kernel (see module docstring)."""

    def __init__(
        self,
        levels: Sequence[Level],
        seed: int | None = 0,
        obs: str = "tabular",
        channels_first: bool = False,
        max_grid_size: int | None = None,
        max_objects: int | None = None,
        max_types: int | None = None,
        parallel: bool = False,
        generator: str | Generator | None = None,
        levels_seed: int | None = None,
    ):
        levels = _check_levels(levels, None)
        num_envs = check_num_envs(len(levels))
        if obs not in OBSERVATIONS:
            raise ValueError(f"grid obs must be one of {list(OBSERVATIONS)}, got {obs!r}")
        self.tabular = obs in ("tabular", "index")
        self.obs_kind = obs
        self.channels_first = bool(channels_first)
        self.max_grid_size = _bound("max_grid_size", max_grid_size, max(level.size for level in levels), 2, None)
        self.max_objects = _bound("max_objects", max_objects, max(level.num_objects for level in levels), 0, MAX_OBJECTS)
        types_needed = max(level.num_types for level in levels)
        self.max_types = _bound("max_types", max_types, types_needed, 0, self.max_objects)
        padded = self.max_grid_size
        num_states = padded * padded * (1 << self.max_objects)
        self._obs_dtype = np.int64 if obs == "index" else np.float32
        space: gym.Space
        if obs == "index":  # the kernel writes [B, 1]; the env returns [B]
            self._kernel_shape: tuple[int, ...] = (1,)
            self._obs_shape: tuple[int, ...] = ()
            space = gym.spaces.Discrete(num_states)
        elif obs == "tabular":
            self._kernel_shape = self._obs_shape = (num_states,)
            space = gym.spaces.Box(0.0, 1.0, self._obs_shape, np.float32)
        else:  # the kernel writes cells flattened: [B, S*S, C] or [B, C, S*S]
            planes, cells = FIRST_OBJECT_PLANE + self.max_types, padded * padded
            self._kernel_shape = (planes, cells) if self.channels_first else (cells, planes)
            self._obs_shape = (planes, padded, padded) if self.channels_first else (padded, padded, planes)
            space = gym.spaces.Box(0.0, 1.0, self._obs_shape, np.float32)
        super().__init__(num_envs, space, gym.spaces.Discrete(NUM_ACTIONS), seed=check_seed(seed))
        self._check_fit(levels)
        self._levels: tuple[Level, ...] = tuple(levels)
        self._staged: tuple[Level, ...] | None = None
        # With a generator, a seeded reset draws the levels from its seed (``levels_seed``: the seed
        # the current levels were drawn with); set_levels pins levels and drops the generator.
        self._generator = generator
        self._levels_seed = levels_seed
        self._encode(self._levels)
        self._state = np.zeros((num_envs, NUM_STATE_FIELDS), dtype=np.int64)
        self._object_pos = np.full((num_envs, max(self.max_objects, 1)), -1, dtype=np.int64)
        self._rng = np.zeros(num_envs, dtype=np.uint64)
        self._ep_return = np.zeros(num_envs, dtype=np.float64)
        self._done_return = np.zeros(num_envs, dtype=np.float64)
        self._done_length = np.zeros(num_envs, dtype=np.int64)
        self._final_scratch = np.zeros((num_envs, *self._kernel_shape), dtype=self._obs_dtype)
        # Step outputs recycled once the caller drops them (see envs.core.ArrayPool).
        self._obs_pool = ArrayPool((num_envs, *self._kernel_shape), self._obs_dtype)
        self._final_pool = ArrayPool((num_envs, *self._kernel_shape), self._obs_dtype)
        self._reset_kernel, self._step_kernel = _kernels(bool(parallel), obs)

    # -- levels ----------------------------------------------------------------------------------
    @property
    def levels(self) -> tuple[Level, ...]:
        """The level of each sub-env (``[num_envs]``)."""
        return self._levels

    def set_levels(self, levels: Sequence[Level]) -> None:
        """Give each sub-env a new level from the next ``reset()`` on and keep them (one per sub-env; they must fit).

        The levels stay through later ``reset(seed=...)`` calls: they replace a generator's draws.
        """
        levels = _check_levels(levels, self.num_envs)
        self._check_fit(levels)
        self._staged = tuple(levels)

    def replace_levels(self, indices: Sequence[int], levels: Sequence[Level]) -> np.ndarray:
        """Put sub-envs ``indices`` on new ``levels`` now and start a fresh episode there (the others
        go on untouched); returns their first observations ``[len(indices), ...]``.

        For populations whose members start new lifetimes at different times: the episodes in
        progress on those sub-envs are dropped, not reported.
        """
        rows = np.asarray(indices, dtype=np.int64).reshape(-1)
        levels = _check_levels(levels, len(rows))
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_envs or len(set(rows.tolist())) != rows.size):
            raise ValueError(f"indices must be distinct sub-env indices in [0, {self.num_envs - 1}], got {rows.tolist()}")
        self._check_fit(levels)
        updated = list(self._levels)
        for row, level in zip(rows.tolist(), levels):
            updated[row] = level
        self._levels = tuple(updated)
        self._generator = None  # the levels are pinned now
        self._encode(self._levels)
        out = np.zeros((rows.size, *self._kernel_shape), dtype=self._obs_dtype)
        write = _WRITERS[self.obs_kind]
        for j, i in enumerate(rows.tolist()):
            _reset_one(i, self._level_int, self._level_walls, self._level_home, self._state, self._object_pos,
                       self._rng)
            self._ep_return[i] = 0.0
            write(out[j], i, self._level_int, self._level_walls, self._level_type, self._state, self._object_pos,
                  self.max_grid_size, self.channels_first, False)
        return out.reshape(rows.size, *self._obs_shape)

    def optimal_returns(self, gamma: float = 1.0) -> np.ndarray:
        """:func:`envs.levels.optimal_return` of each sub-env's level (``[num_envs]`` float64)."""
        return np.array([optimal_return(level, gamma) for level in self._levels], dtype=np.float64)

    def _check_fit(self, levels: Sequence[Level]) -> None:
        for i, level in enumerate(levels):
            where = f"level {i} ({level.name or 'unnamed'})"
            if level.size > self.max_grid_size:
                raise ValueError(f"{where} is {level.size}x{level.size}, larger than this env's max_grid_size "
                                 f"{self.max_grid_size}; build the env with a larger max_grid_size")
            if level.num_objects > self.max_objects:
                raise ValueError(f"{where} has {level.num_objects} objects, more than this env's max_objects "
                                 f"{self.max_objects}; build the env with a larger max_objects")
            if not self.tabular and level.num_types > self.max_types:
                raise ValueError(f"{where} has {level.num_types} object types, more than this env's "
                                 f"max_types {self.max_types}; build the env with a larger max_types")
            if self.tabular and level.random_positions:
                raise ValueError(f"{where} places objects at random cells, which the tabular observation cannot "
                                 "show (GROOVE defines random respawn for non-tabular observations only); "
                                 "use obs='grid'")

    def _encode(self, levels: Sequence[Level]) -> None:
        arrays = encode_levels(levels, max(self.max_objects, 1))
        self._level_int = arrays["int"]
        self._level_walls = arrays["walls"]
        self._level_home = arrays["home"]
        self._level_type = arrays["type"]
        self._level_reward = arrays["reward"]
        self._level_p_terminate = arrays["p_terminate"]
        self._level_p_respawn = arrays["p_respawn"]

    # -- the contract ----------------------------------------------------------------------------
    def _reset(self, seed: int | None, options: dict | None) -> tuple[np.ndarray, dict]:
        if self._staged is not None:
            self._levels, self._staged, self._generator = self._staged, None, None
            self._encode(self._levels)
        elif self._generator is not None and seed is not None and seed != self._levels_seed:
            self._levels = tuple(sample_levels(self._generator, self.num_envs, seed))
            self._levels_seed = seed
            self._encode(self._levels)
        if seed is not None or not self._rng.any():
            self._rng[:] = np.random.SeedSequence(seed).generate_state(self.num_envs, dtype=np.uint64)
        self._ep_return[:] = 0.0
        obs = np.zeros((self.num_envs, *self._kernel_shape), dtype=self._obs_dtype)
        self._reset_kernel(self._level_int, self._level_walls, self._level_home, self._level_type, self._state,
                           self._object_pos, self._rng, self.max_grid_size, self.channels_first, obs)
        return obs.reshape(self.num_envs, *self._obs_shape), {}

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        """Step every sub-env; see the module docstring for the rules and ``envs.core`` for the contract."""
        if (
            self.closed or self._needs_reset or type(actions) is not np.ndarray or actions.ndim != 1
            or actions.shape[0] != self.num_envs or actions.dtype.kind not in "iu"
        ):
            actions = self.check_actions(actions)  # slow path: full checks and clear errors
        n = self.num_envs
        obs = self._obs_pool.take(zero=True)
        reward = np.empty(n, dtype=np.float32)
        terminated = np.empty(n, dtype=np.bool_)
        truncated = np.empty(n, dtype=np.bool_)
        num_done = self._step_kernel(
            actions, self._level_int, self._level_walls, self._level_home, self._level_type, self._level_reward,
            self._level_p_terminate, self._level_p_respawn, self._state, self._object_pos, self._rng,
            self._ep_return, self.max_grid_size, self.channels_first, obs, self._final_scratch, reward,
            terminated, truncated, self._done_return, self._done_length,
        )
        if num_done < 0:
            self.check_actions(actions)  # raises the contract's error message
        info: dict = {}
        if num_done > 0:
            done = terminated | truncated
            rows = np.flatnonzero(done)
            final = self._final_pool.take(zero=True)
            final[rows] = self._final_scratch[rows]
            info["final_obs"] = final.reshape(n, *self._obs_shape)
            info["_final_obs"] = done
            info["episode"] = {
                "return": np.where(done, self._done_return, 0.0),
                "length": np.where(done, self._done_length, 0),
            }
            info["_episode"] = done.copy()
        return obs.reshape(n, *self._obs_shape), reward, terminated, truncated, info

    def get_state(self, index: int) -> dict[str, Any]:
        """Sub-env ``index``'s state: agent cell, steps taken, existing objects and every object's cell (``(row, col)``)."""
        if not 0 <= index < self.num_envs:
            raise ValueError(f"index must be in [0, {self.num_envs - 1}], got {index}")
        size = int(self._level_int[index, SIZE])
        exists = int(self._state[index, EXISTS])
        count = int(self._level_int[index, NUM_OBJ])
        return {
            "pos": divmod(int(self._state[index, POS]), size),
            "time": int(self._state[index, TIME]),
            "exists": tuple(bool((exists >> k) & 1) for k in range(count)),
            "objects": tuple(divmod(int(self._object_pos[index, k]), size) for k in range(count)),
        }

    def __repr__(self) -> str:
        return f"GridVectorEnv(num_envs={self.num_envs}, obs={self.obs_kind!r}, max_grid_size={self.max_grid_size})"


def _bound(name: str, value: Any, needed: int, low: int, high: int | None) -> int:
    """``value`` (or ``needed`` when None) as an int in range and at least ``needed``."""
    if value is None:
        return needed
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer or None, got {value!r}")
    if value < max(low, needed) or (high is not None and value > high):
        top = "" if high is None else f" and at most {high}"
        raise ValueError(f"{name} must be at least {max(low, needed)} (what the levels need){top}, got {value}")
    return int(value)


def _check_levels(levels: Any, count: int | None) -> list[Level]:
    """``levels`` as a list of Level (``count`` of them when given), or ValueError."""
    if isinstance(levels, (Level, str)) or not isinstance(levels, Sequence):
        raise ValueError(f"levels must be a list of envs.levels.Level (one per sub-env), got {levels!r}")
    levels = list(levels)
    bad = [i for i, level in enumerate(levels) if not isinstance(level, Level)]
    if bad:
        raise ValueError(f"levels must be envs.levels.Level values; entries {bad[:5]} are not "
                         f"(e.g. {levels[bad[0]]!r}); use Level.from_dict for dicts")
    if count is not None and len(levels) != count:
        raise ValueError(f"need one level per sub-env: {count} levels, got {len(levels)}")
    if not levels:
        raise ValueError("levels must not be empty")
    return levels


# --------------------------------------------------------------------------------------------
# the factory and the named envs
# --------------------------------------------------------------------------------------------
GRID_OPTIONS = ("level", "generator", "levels", "level_seed", "obs", "channels_first", "max_grid_size",
                "max_objects", "max_types", "parallel")


def make_grid(num_envs: int = 1, seed: int | None = 0, **options: Any) -> GridVectorEnv:
    """Build a :class:`GridVectorEnv`; give at most one of ``level``, ``generator``, ``levels`` (default ``level="dense"``).

    * ``level``: a name of ``envs.levels.LEVELS`` or a ``Level``: every sub-env plays it.
    * ``generator``: a name of ``envs.levels.GENERATORS`` (or a generator): ``num_envs`` levels,
      ``sample_levels(generator, num_envs, s)``, drawn from the seed ``s`` of every seeded reset
      (make's ``seed`` for the first one), like the rest of the env's randomness; a plain
      ``reset()`` keeps them. ``level_seed=k`` pins them to ``sample_levels(generator, num_envs, k)``
      instead. The observation is padded to the generator's bounds, so any of its levels fits.
    * ``levels``: a list of ``Level``, one per sub-env.
    * ``obs``: ``"tabular"`` (default), ``"index"`` or ``"grid"``; ``channels_first`` for grid planes first.
    * ``max_grid_size``, ``max_objects``, ``max_types``: room in the observation for later levels.
    * ``parallel``: step sub-envs in numba threads.

    Named or given levels stay through every reset; ``env.set_levels`` replaces them (or a
    generator's draws) from the next reset on.
    """
    check_options("grid", options, GRID_OPTIONS)
    given = [name for name in ("level", "generator", "levels") if options.get(name) is not None]
    if len(given) > 1:
        raise ValueError(f"grid takes one of level=, generator=, levels=; got {given}")
    num_envs = check_num_envs(num_envs)
    seed = check_seed(seed)
    level_seed = options.pop("level_seed", None)
    level = options.pop("level", None)
    generator = options.pop("generator", None)
    levels = options.pop("levels", None)
    if level_seed is not None and generator is None:
        raise ValueError("level_seed only applies with generator=")
    if generator is not None:
        gen = _resolve_generator(generator)
        source = generator if isinstance(generator, str) else gen  # a name labels the levels
        pinned = level_seed is not None
        if not pinned:  # levels follow the reset seed; without one, a fresh draw
            level_seed = seed if seed is not None else int(np.random.SeedSequence().generate_state(1)[0])
        level_seed = check_seed(level_seed)
        levels = sample_levels(source, num_envs, level_seed)
        for name, bound in zip(("max_grid_size", "max_objects", "max_types"), gen.bounds()):
            if options.get(name) is None:
                options[name] = bound
        if not pinned:
            options.update(generator=source, levels_seed=level_seed)
    elif levels is not None:
        levels = _check_levels(levels, num_envs)
    else:
        levels = [_resolve_level("dense" if level is None else level)] * num_envs
    return GridVectorEnv(levels, seed=seed, **options)


def _resolve_level(level: Any) -> Level:
    """A named level or a Level, as a Level (ValueError naming the nearest names otherwise)."""
    if isinstance(level, Level):
        return level
    if isinstance(level, str):
        if level not in LEVELS:
            near = nearest_ids(level, LEVELS)
            hint = f"; nearest: {', '.join(near)}" if near else ""
            raise ValueError(f"unknown grid level {level!r}{hint}; named levels: {sorted(LEVELS)}")
        return LEVELS[level]
    raise ValueError(f"level must be a name of {sorted(LEVELS)} or an envs.levels.Level, got {level!r}")


def _resolve_generator(generator: Any) -> Generator:
    """A generator name or generator, as a generator (ValueError naming the nearest names otherwise)."""
    if isinstance(generator, str):
        if generator not in GENERATORS:
            near = nearest_ids(generator, GENERATORS)
            hint = f"; nearest: {', '.join(near)}" if near else ""
            raise ValueError(f"unknown level generator {generator!r}{hint}; known: {sorted(GENERATORS)}")
        return GENERATORS[generator]
    if isinstance(generator, (RandomLayout, RandomTables)):
        return generator
    raise ValueError(f"generator must be a name of {sorted(GENERATORS)} or a RandomLayout/RandomTables, got {generator!r}")


def _describe(level: Level) -> str:
    """One line for ``envs.available()``."""
    walls = f", {len(level.walls)} walls" if level.walls else ""
    return (f"LPG/GROOVE grid world '{level.name}': {level.size}x{level.size}, {level.num_objects} objects{walls}, "
            f"{level.max_steps} steps; options as 'grid'")


# The registry lists and builds these by name.
NAMED_ENVS = (
    EnvSpec("grid", make_grid,
            description="LPG/GROOVE grid world; options: level=<name>|Level, generator=small|all|..., "
                        "levels=[Level], obs=tabular|index|grid (default level dense)"),
    *(EnvSpec(f"grid-{name}", make_grid, {"level": name}, description=_describe(LEVELS[name]))
      for name in LPG_LEVELS),
    EnvSpec("grid-small", make_grid, {"generator": "small"},
            description="GROOVE's 'small' level distribution (4-6 grid, 1-3 objects, 20-100 steps), one level per sub-env"),
    EnvSpec("grid-all", make_grid, {"generator": "all"},
            description="GROOVE's 'all' level distribution (4-10 grid, 1-5 objects, 20-750 steps), one level per sub-env"),
)
