"""Snake, vectorized in numba, following Jumanji's rules (InstaDeep, ``jumanji`` ``Snake``).

The game, per sub-env, on a board of ``rows x cols`` cells:

* Reset: a snake of length 1 on a uniformly random cell, a fruit uniformly on a free cell.
* Actions 0, 1, 2, 3 move the head Up, Right, Down, Left (row -1, col +1, row +1, col -1).
* A move is valid when the new head cell is on the board and is not part of the body once the tail
  has moved: moving into the cell the tail is leaving is allowed, as in Jumanji (this also allows a
  length-2 snake to turn back onto its tail).
* Eating the fruit gives reward 1 and grows the snake by one (the tail stays this step); a new
  fruit is placed uniformly on a free cell.
* The episode **terminates** on an invalid move (wall or body) or when the snake fills the board,
  and is **truncated** after ``time_limit`` steps. Jumanji reports the time limit as a termination;
  we follow gymnasium, so learners can bootstrap from ``info["final_obs"]``.
* Observation ``(rows, cols, 5)`` float32 (or ``(5, rows, cols)`` with ``channels_first=True``):
  body, head, tail, fruit, and the body order divided by the snake's length (head 1, tail
  1/length), as Jumanji's ``norm_body_state``. With ``observation="dict"`` it is Jumanji's
  observation: ``{"grid", "step_count", "action_mask"}``.
* Jumanji's action mask (the valid moves from the current state) is in ``info["action_mask"]``
  when made with ``action_mask=True`` (and in the dict observation).

On an invalid move the snake does not enter the wall or its body: the final observation of the
episode shows the board as it was before that move (Jumanji's own last frame is undefined there).

Every sub-env has its own random stream (SplitMix64) derived from the seed, so a trajectory
depends only on the seed, the env index and the actions, never on threading.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numba
import numpy as np

from rlmeta.envs.core import ArrayPool, EnvSpec, VectorEnv, check_num_envs, check_options, check_seed
from rlmeta.envs.streams import random_below, splitmix_next

UP, RIGHT, DOWN, LEFT = 0, 1, 2, 3
MOVES = np.array([[-1, 0], [0, 1], [1, 0], [0, -1]], dtype=np.int64)
NUM_CHANNELS = 5  # body, head, tail, fruit, normalized body order

# Indices into the int64 state matrix [B, NUM_FIELDS]. The body is a ring buffer of cells per
# sub-env, tail first: queue[i, (start + j) % cells] is the cell of body order j + 1 (the tail has
# order 1, the head order LENGTH), so a move costs O(1) and no per-cell decrement is needed.
HEAD, FRUIT, LENGTH, STEP, START = 0, 1, 2, 3, 4
NUM_FIELDS = 5


@numba.njit(cache=True)
def _place_fruit(occupied: np.ndarray, state: np.ndarray, rng: np.ndarray, i: int) -> None:
    """Put the fruit of sub-env ``i`` on a uniformly chosen free cell (the board must not be full)."""
    cells = occupied.shape[1]
    k = random_below(rng, i, cells - state[i, LENGTH])
    for cell in range(cells):
        if occupied[i, cell] == 0:
            if k == 0:
                state[i, FRUIT] = cell
                return
            k -= 1


@numba.njit(cache=True)
def _reset_one(occupied: np.ndarray, queue: np.ndarray, state: np.ndarray, rng: np.ndarray, i: int) -> None:
    """New episode for sub-env ``i``: length-1 snake on a random cell, fruit on a free cell."""
    cells = occupied.shape[1]
    occupied[i, :] = 0
    head = random_below(rng, i, cells)
    occupied[i, head] = 1
    queue[i, 0] = head
    state[i, HEAD] = head
    state[i, LENGTH] = 1
    state[i, STEP] = 0
    state[i, START] = 0
    _place_fruit(occupied, state, rng, i)


@numba.njit(cache=True, inline="always")
def _target_cell(state: np.ndarray, i: int, action: int, rows: int, cols: int) -> int:
    """Cell the head of sub-env ``i`` moves to under ``action``, or -1 if that leaves the board."""
    head = state[i, HEAD]
    row = head // cols  # one division: integer division dominates a step's cost
    r = row + MOVES[action, 0]
    c = head - row * cols + MOVES[action, 1]
    if r < 0 or r >= rows or c < 0 or c >= cols:
        return -1
    return r * cols + c


@numba.njit(cache=True, inline="always")
def _is_free(occupied: np.ndarray, queue: np.ndarray, state: np.ndarray, i: int, cell: int) -> bool:
    """Jumanji's rule: a cell is enterable if not in the body once the tail has moved."""
    return occupied[i, cell] == 0 or cell == queue[i, state[i, START]]


@numba.njit(cache=True)
def _write_obs(queue: np.ndarray, state: np.ndarray, i: int, out: np.ndarray, channels_first: bool) -> None:
    """Write sub-env ``i``'s observation into ``out`` ([cells, 5] or [5, cells] float32)."""
    cells = queue.shape[1]
    out[:] = 0.0
    length = state[i, LENGTH]
    start = state[i, START]
    fl = np.float32(length)
    k = start  # ring-buffer index of body order j + 1 (no modulo per cell)
    for j in range(length):
        cell = queue[i, k]
        k += 1
        if k == cells:
            k = 0
        order = np.float32(j + 1) / fl  # body order / length, exactly as Jumanji divides
        if channels_first:
            out[0, cell] = 1.0
            out[4, cell] = order
        else:
            out[cell, 0] = 1.0
            out[cell, 4] = order
    tail = queue[i, start]
    head = state[i, HEAD]
    fruit = state[i, FRUIT]
    if channels_first:
        out[1, head] = 1.0
        out[2, tail] = 1.0
        if fruit >= 0:
            out[3, fruit] = 1.0
    else:
        out[head, 1] = 1.0
        out[tail, 2] = 1.0
        if fruit >= 0:
            out[fruit, 3] = 1.0


@numba.njit(cache=True)
def _write_extras(occupied, queue, state, i, rows, cols, mask_out, step_out) -> None:
    """Write the action mask and step count of sub-env ``i`` (arrays of size 0 are skipped).

    The mask is ``_target_cell`` and ``_is_free`` for each action, written out with one integer
    division per sub-env instead of eight (divisions dominated the step's cost)."""
    if mask_out.shape[0] > 0:
        head = state[i, HEAD]
        r = head // cols
        c = head - r * cols
        tail = queue[i, state[i, START]]  # the cell the tail leaves: enterable (Jumanji's rule)
        up, right, down, left = head - cols, head + 1, head + cols, head - 1
        mask_out[i, UP] = r > 0 and (occupied[i, up] == 0 or up == tail)
        mask_out[i, RIGHT] = c < cols - 1 and (occupied[i, right] == 0 or right == tail)
        mask_out[i, DOWN] = r < rows - 1 and (occupied[i, down] == 0 or down == tail)
        mask_out[i, LEFT] = c > 0 and (occupied[i, left] == 0 or left == tail)
    if step_out.shape[0] > 0:
        step_out[i] = state[i, STEP]


@numba.njit(cache=True)
def _reset_kernel(occupied, queue, state, rng, rows, cols, obs, channels_first, mask_out, step_out) -> None:
    """Reset every sub-env and write its first observation."""
    for i in range(occupied.shape[0]):
        _reset_one(occupied, queue, state, rng, i)
        _write_obs(queue, state, i, obs[i], channels_first)
        _write_extras(occupied, queue, state, i, rows, cols, mask_out, step_out)


def _make_step_kernel(parallel: bool):
    """Compile the step kernel, with ``prange`` over sub-envs when ``parallel``."""

    @numba.njit(cache=True, parallel=parallel)
    def step_kernel(
        actions, occupied, queue, state, rng, rows, cols, time_limit, ep_return, channels_first,
        obs, reward, terminated, truncated, mask_out, step_out,
        final_obs, done, done_return, done_length, final_mask, final_step,
    ) -> int:
        """Advance every sub-env by one move; returns the number of ended episodes, or -1 on a bad action.

        ``done``, ``done_return`` and ``done_length`` are written for every sub-env (zero where no
        episode ended). When some episode ended, ``final_obs``, ``final_mask`` and ``final_step``
        hold the ended sub-envs' last observations and zero rows elsewhere; when none ended they
        are left unwritten (the caller does not return them).
        """
        num_envs = occupied.shape[0]
        cells = occupied.shape[1]
        for i in range(num_envs):  # validate everything before changing any state
            if actions[i] < 0 or actions[i] > 3:
                return -1
        num_done = 0
        for i in numba.prange(num_envs):
            new_head = _target_cell(state, i, actions[i], rows, cols)
            valid = new_head >= 0 and _is_free(occupied, queue, state, i, new_head)
            state[i, STEP] += 1
            ate = False
            full = False
            if valid:
                ate = new_head == state[i, FRUIT]
                if ate:
                    state[i, LENGTH] += 1
                else:  # the tail leaves its cell (it may be the cell the head enters)
                    occupied[i, queue[i, state[i, START]]] = 0
                    state[i, START] = (state[i, START] + 1) % cells
                queue[i, (state[i, START] + state[i, LENGTH] - 1) % cells] = new_head
                occupied[i, new_head] = 1
                state[i, HEAD] = new_head
                if ate:
                    if state[i, LENGTH] == cells:
                        full = True
                        state[i, FRUIT] = -1
                    else:
                        _place_fruit(occupied, state, rng, i)
            r = np.float32(1.0) if ate else np.float32(0.0)
            reward[i] = r
            ep_return[i] += r
            term = (not valid) or full
            trunc = (not term) and state[i, STEP] >= time_limit
            terminated[i] = term
            truncated[i] = trunc
            done[i] = term or trunc
            if term or trunc:
                num_done += 1
                _write_obs(queue, state, i, final_obs[i], channels_first)
                _write_extras(occupied, queue, state, i, rows, cols, final_mask, final_step)
                done_return[i] = ep_return[i]
                done_length[i] = state[i, STEP]
                ep_return[i] = 0.0
                _reset_one(occupied, queue, state, rng, i)
            else:
                done_return[i] = 0.0
                done_length[i] = 0
            _write_obs(queue, state, i, obs[i], channels_first)
            _write_extras(occupied, queue, state, i, rows, cols, mask_out, step_out)
        if num_done > 0:  # the contract's zero rows, only on steps that return final_obs
            extras = final_mask.shape[0] > 0
            for i in numba.prange(num_envs):
                if not done[i]:
                    final_obs[i] = 0.0
                    if extras:
                        final_step[i] = 0
                        for a in range(4):
                            final_mask[i, a] = False
        return num_done

    return step_kernel


_step_serial = _make_step_kernel(parallel=False)
_step_parallel = _make_step_kernel(parallel=True)


class SnakeVectorEnv(VectorEnv):
    """``num_envs`` Snake games stepped together by one numba kernel (see module docstring)."""

    def __init__(
        self,
        num_envs: int = 1,
        seed: int | None = 0,
        rows: int = 12,
        cols: int = 12,
        time_limit: int = 4000,
        observation: str = "grid",
        channels_first: bool = False,
        action_mask: bool = False,
        parallel: bool = False,
    ):
        num_envs = check_num_envs(num_envs)
        for name, value in (("rows", rows), ("cols", cols)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 2:
                raise ValueError(f"snake board needs {name} >= 2 (a board of at least 2x2), got {name}={value!r}")
        if isinstance(time_limit, bool) or not isinstance(time_limit, (int, np.integer)) or time_limit < 1:
            raise ValueError(f"snake time_limit must be an integer >= 1, got {time_limit!r}")
        if observation not in ("grid", "dict"):
            raise ValueError(f"snake observation must be 'grid' or 'dict', got {observation!r}")
        self.rows, self.cols, self.time_limit = int(rows), int(cols), int(time_limit)
        self.channels_first = bool(channels_first)
        self.dict_obs = observation == "dict"
        self.want_mask = bool(action_mask) or self.dict_obs
        grid_shape = (NUM_CHANNELS, rows, cols) if channels_first else (rows, cols, NUM_CHANNELS)
        grid_space = gym.spaces.Box(0.0, 1.0, grid_shape, np.float32)
        if self.dict_obs:
            obs_space: gym.Space = gym.spaces.Dict(
                {
                    "grid": grid_space,
                    "step_count": gym.spaces.Box(0, self.time_limit, (), np.int32),
                    "action_mask": gym.spaces.MultiBinary(4),
                }
            )
        else:
            obs_space = grid_space
        super().__init__(num_envs, obs_space, gym.spaces.Discrete(4), seed=check_seed(seed))
        cells = self.rows * self.cols
        self._grid_shape = grid_shape
        self._kernel_shape = (NUM_CHANNELS, cells) if channels_first else (cells, NUM_CHANNELS)
        self._occupied = np.zeros((num_envs, cells), dtype=np.uint8)
        self._queue = np.zeros((num_envs, cells), dtype=np.int32)
        self._state = np.zeros((num_envs, NUM_FIELDS), dtype=np.int64)
        self._rng = np.zeros(num_envs, dtype=np.uint64)
        self._ep_return = np.zeros(num_envs, dtype=np.float64)
        self._step_kernel = _step_parallel if parallel else _step_serial
        self._empty_i8 = np.zeros((0, 4), dtype=np.bool_)
        self._empty_i32 = np.zeros(0, dtype=np.int32)
        # Step outputs recycled once the caller drops them (see envs.core.ArrayPool).
        self._grid_pool = ArrayPool((num_envs, *self._kernel_shape), np.float32)
        self._final_pool = ArrayPool((num_envs, *self._kernel_shape), np.float32)

    def _seed_streams(self, seed: int | None) -> None:
        ss = np.random.SeedSequence(seed)  # seed None draws fresh OS entropy
        self._rng[:] = ss.generate_state(self.num_envs, dtype=np.uint64)

    def _new_obs(self) -> np.ndarray:
        return np.empty((self.num_envs, *self._kernel_shape), dtype=np.float32)

    def _extras(self) -> tuple[np.ndarray, np.ndarray]:
        mask = np.empty((self.num_envs, 4), dtype=np.bool_) if self.want_mask else self._empty_i8
        steps = np.empty(self.num_envs, dtype=np.int32) if self.dict_obs else self._empty_i32
        return mask, steps

    def _package(self, grid: np.ndarray, mask: np.ndarray, steps: np.ndarray, info: dict) -> Any:
        grid = grid.reshape(self.num_envs, *self._grid_shape)
        if self.want_mask:
            info["action_mask"] = mask
        if self.dict_obs:
            return {"grid": grid, "step_count": steps, "action_mask": mask}
        return grid

    def _reset(self, seed: int | None, options: dict | None) -> tuple[Any, dict]:
        if seed is not None or not self._rng.any():
            self._seed_streams(seed)
        self._ep_return[:] = 0.0
        grid = self._new_obs()
        mask, steps = self._extras()
        _reset_kernel(self._occupied, self._queue, self._state, self._rng, self.rows, self.cols, grid, self.channels_first, mask, steps)
        info: dict = {}
        return self._package(grid, mask, steps, info), info

    def set_state(self, index: int, body: list[tuple[int, int]], fruit: tuple[int, int] | None,
                  step_count: int = 0) -> Any:
        """Place sub-env ``index`` in a hand-made state and return its observation.

        ``body`` lists the snake's cells ``(row, col)`` from tail to head, each next to the one
        before; ``fruit`` is a free cell (None only when the body fills the board).
        """
        if self._needs_reset:
            raise RuntimeError("call reset() before set_state()")
        if not 0 <= index < self.num_envs:
            raise ValueError(f"index must be in [0, {self.num_envs - 1}], got {index}")
        cells = [self._cell(rc, "body cell") for rc in body]
        if not cells or len(set(cells)) != len(cells):
            raise ValueError(f"body must be a non-empty list of distinct cells, got {body}")
        for (r0, c0), (r1, c1) in zip(body, body[1:]):
            if abs(r0 - r1) + abs(c0 - c1) != 1:
                raise ValueError(f"body cells {(r0, c0)} and {(r1, c1)} are not next to each other")
        if fruit is None and len(cells) != self.rows * self.cols:
            raise ValueError("fruit may be None only when the body fills the board")
        fruit_cell = -1 if fruit is None else self._cell(fruit, "fruit")
        if fruit_cell in cells:
            raise ValueError(f"fruit {fruit} is on the snake's body")
        if not 0 <= step_count < self.time_limit:
            raise ValueError(f"step_count must be in [0, {self.time_limit - 1}], got {step_count}")
        self._occupied[index] = 0
        self._occupied[index, cells] = 1
        self._queue[index, : len(cells)] = cells
        self._state[index] = 0
        self._state[index, HEAD] = cells[-1]
        self._state[index, FRUIT] = fruit_cell
        self._state[index, LENGTH] = len(cells)
        self._state[index, STEP] = step_count
        self._ep_return[index] = 0.0
        grid = np.empty(self._kernel_shape, dtype=np.float32)
        _write_obs(self._queue, self._state, index, grid, self.channels_first)
        return grid.reshape(self._grid_shape)

    def get_state(self, index: int) -> dict[str, Any]:
        """Sub-env ``index``'s state: body cells tail to head, fruit cell (or None), step count."""
        cells = self.rows * self.cols
        start, length = int(self._state[index, START]), int(self._state[index, LENGTH])
        body = [divmod(int(self._queue[index, (start + j) % cells]), self.cols) for j in range(length)]
        fruit = int(self._state[index, FRUIT])
        return {
            "body": body,
            "fruit": None if fruit < 0 else divmod(fruit, self.cols),
            "step_count": int(self._state[index, STEP]),
        }

    def _cell(self, rc: tuple[int, int], what: str) -> int:
        r, c = rc
        if not (0 <= r < self.rows and 0 <= c < self.cols):
            raise ValueError(f"{what} {rc} is off the {self.rows}x{self.cols} board")
        return int(r) * self.cols + int(c)

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict]:
        """Move every snake; see the module docstring for the rules and ``envs.core`` for the contract."""
        if (
            self.closed or self._needs_reset or type(actions) is not np.ndarray or actions.ndim != 1
            or actions.shape[0] != self.num_envs or actions.dtype.kind not in "iu"
        ):
            actions = self.check_actions(actions)  # slow path: full checks and clear errors
        n = self.num_envs
        grid = self._grid_pool.take()
        reward = np.empty(n, dtype=np.float32)
        terminated = np.empty(n, dtype=np.bool_)
        truncated = np.empty(n, dtype=np.bool_)
        mask, steps = self._extras()
        final = self._final_pool.take()
        done = np.empty(n, dtype=np.bool_)
        returns = np.empty(n, dtype=np.float64)
        lengths = np.empty(n, dtype=np.int64)
        final_mask, final_step = self._extras() if self.dict_obs else (self._empty_i8, self._empty_i32)
        num_done = self._step_kernel(
            actions, self._occupied, self._queue, self._state, self._rng, self.rows, self.cols, self.time_limit,
            self._ep_return, self.channels_first, grid, reward, terminated, truncated, mask, steps,
            final, done, returns, lengths, final_mask, final_step,
        )
        if num_done < 0:
            self.check_actions(actions)  # raises the contract's error message
        info: dict = {}
        if num_done > 0:
            final = final.reshape(n, *self._grid_shape)
            if self.dict_obs:
                final = {"grid": final, "step_count": final_step, "action_mask": final_mask}
            info["final_obs"] = final
            info["_final_obs"] = done
            info["episode"] = {"return": returns, "length": lengths}
            info["_episode"] = done.copy()
        return self._package(grid, mask, steps, info), reward, terminated, truncated, info


def make_snake(num_envs: int = 1, seed: int | None = 0, **options: Any) -> SnakeVectorEnv:
    """Build a :class:`SnakeVectorEnv`; unknown options raise ValueError listing the allowed ones."""
    check_options("snake", options, ["rows", "cols", "time_limit", "observation", "channels_first", "action_mask", "parallel"])
    return SnakeVectorEnv(num_envs=num_envs, seed=seed, **options)


# The built-in Snake presets; the registry lists and builds them by name.
NAMED_ENVS = (
    EnvSpec("snake", make_snake, description="native numba Snake (Jumanji rules), 12x12, time limit 4000"),
    EnvSpec(
        "snake-6x6", make_snake, {"rows": 6, "cols": 6, "time_limit": 500},
        description="native numba Snake (Jumanji rules), 6x6, time limit 500",
    ),
)
