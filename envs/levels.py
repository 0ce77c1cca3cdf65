"""Grid-world levels as values: the LPG levels, GROOVE's level generators, and DP optimal returns.

A :class:`Level` is one grid-world MDP (Oh et al. 2020, "Discovering Reinforcement Learning
Algorithms", LPG; Jackson et al. 2023, "Discovering General Reinforcement Learning Algorithms with
Adversarial Environment Design", GROOVE): a ``size x size`` grid, walls, a start cell and a table of objects, each
with a reward, a termination probability and a respawn probability. It is a frozen, hashable value
that round-trips through JSON, so a curriculum can store, compare and replay it. The dynamics are
those of GROOVE's ``GridWorld`` (repository ``EmptyJackson/groove``,
``environments/gridworld/gridworld.py``) and are implemented by ``envs.gridworld``; the facts below
come from that file and from ``environments/gridworld/configs.py``.

* **Actions** 0..4: up (row - 1), down (row + 1), left (col - 1), right (col + 1), stay. A move off
  the grid or into a wall leaves the agent where it is.
* **Objects** are collected by entering (or staying on) their cell while they exist: the agent gets
  their reward, they disappear, and the episode terminates with their ``p_terminate``. Every step,
  each object that did not exist at the start of the step reappears with probability
  ``p_respawn`` (at its fixed cell, or at a random free cell when its position is ``None``); an
  object collected this step cannot reappear in the same step.
* **Time limit**: ``max_steps`` steps (GROOVE's ``max_steps_in_episode``).

Named levels (:data:`LEVELS`): the five tabular LPG levels with GROOVE's object tables, plus the
five "random" LPG levels (``rand_*``, object positions drawn at every reset and respawn). GROOVE
draws the start and object cells of every level per lifetime (``configs.reset_env_params``); a
named level fixes one such draw so that it is a single MDP (``dense`` uses the layout of GROOVE's
``GridWorld.default_params``, which is LPG's dense map). ``sample_levels(name, n, seed)`` with the
same name gives GROOVE's per-lifetime distribution.

Generators (:data:`GENERATORS`): ``small``, ``medium``, ``large``, ``all`` (GROOVE's random level
distributions, :class:`RandomTables`) and one :class:`RandomLayout` per named level.

Optimal returns (:func:`optimal_return`) by dynamic programming over (cell, object-existence
pattern, steps left), as GROOVE's ``GridWorld.optimal_return``.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from typing import Any, Union

import numba
import numpy as np

UP, DOWN, LEFT, RIGHT, STAY = 0, 1, 2, 3, 4
NUM_ACTIONS = 5
#: The most objects a level may have (the tabular observation has ``2 ** num_objects`` patterns).
MAX_OBJECTS = 8

Cell = tuple[int, int]


# --------------------------------------------------------------------------------------------
# the level value
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GridObject:
    """One object of a level: reward on collection, termination and respawn probabilities, cell (None: random)."""

    reward: float
    p_terminate: float
    p_respawn: float
    position: Cell | None = None

    def __post_init__(self) -> None:
        for name in ("reward", "p_terminate", "p_respawn"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise ValueError(f"object {name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"object {name} must be finite, got {value!r}")
            object.__setattr__(self, name, float(value))
        for name in ("p_terminate", "p_respawn"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"object {name} must be a probability in [0, 1], got {getattr(self, name)!r}")
        if self.position is not None:
            object.__setattr__(self, "position", _as_cell(self.position, "object position"))

    @property
    def kind(self) -> tuple[float, float, float]:
        """What makes two objects the same type: ``(reward, p_terminate, p_respawn)``."""
        return (self.reward, self.p_terminate, self.p_respawn)


@dataclass(frozen=True)
class Level:
    """One grid-world MDP: ``size x size`` cells, walls, start cell (None: random), objects, time limit.

    Cells are ``(row, col)``; a cell's flat index is ``row * size + col``. ``name`` is a label only:
    it is not part of equality or the hash.
    """

    size: int
    objects: tuple[GridObject, ...]
    walls: tuple[Cell, ...] = ()
    start: Cell | None = (0, 0)
    max_steps: int = 500
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        size = self.size
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 2:
            raise ValueError(f"level size must be an integer >= 2, got {size!r}")
        object.__setattr__(self, "size", int(size))
        steps = self.max_steps
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ValueError(f"level max_steps must be an integer >= 1, got {steps!r}")
        object.__setattr__(self, "max_steps", int(steps))
        objects = tuple(o if isinstance(o, GridObject) else _object_from(o) for o in self.objects)
        if len(objects) > MAX_OBJECTS:
            raise ValueError(f"a level has at most {MAX_OBJECTS} objects, got {len(objects)}")
        object.__setattr__(self, "objects", objects)
        walls = tuple(sorted({_as_cell(w, "wall") for w in self.walls}))
        if len(walls) != len(tuple(self.walls)):
            raise ValueError(f"walls must be distinct cells, got {list(self.walls)}")
        object.__setattr__(self, "walls", walls)
        if self.start is not None:
            object.__setattr__(self, "start", _as_cell(self.start, "start"))
        for cell, what in [(w, "wall") for w in walls] + [(self.start, "start")] + [
            (o.position, f"object {k}") for k, o in enumerate(objects)
        ]:
            if cell is not None and not (0 <= cell[0] < self.size and 0 <= cell[1] < self.size):
                raise ValueError(f"{what} {cell} is off the {self.size}x{self.size} grid")
        wall_set = set(walls)
        if self.start in wall_set:
            raise ValueError(f"start {self.start} is a wall")
        fixed = [o.position for o in objects if o.position is not None]
        for k, o in enumerate(objects):
            if o.position is not None and o.position in wall_set:
                raise ValueError(f"object {k} at {o.position} is on a wall")
            if o.position is not None and o.position == self.start:
                raise ValueError(f"object {k} at {o.position} is on the start cell")
        if len(set(fixed)) != len(fixed):
            raise ValueError(f"objects must be on distinct cells, got {fixed}")
        free = self.size * self.size - len(walls)
        if free < len(objects) + 1:
            raise ValueError(f"a {self.size}x{self.size} grid with {len(walls)} walls has {free} free cells, "
                             f"fewer than the agent and {len(objects)} objects")

    # -- derived ---------------------------------------------------------------------------------
    @property
    def num_objects(self) -> int:
        """Number of objects."""
        return len(self.objects)

    @property
    def num_cells(self) -> int:
        """``size * size``."""
        return self.size * self.size

    @property
    def random_positions(self) -> bool:
        """Whether some object is placed at random (at each reset and respawn)."""
        return any(o.position is None for o in self.objects)

    def object_types(self) -> tuple[int, ...]:
        """Type of each object: objects with equal ``(reward, p_terminate, p_respawn)`` share one, numbered by first appearance.

        GROOVE gives each object a type id (``obj_ids``) and each type its parameters; in all its
        levels distinct types have distinct parameters, so the type is recovered from them.
        """
        kinds: dict[tuple[float, float, float], int] = {}
        return tuple(kinds.setdefault(o.kind, len(kinds)) for o in self.objects)

    @property
    def num_types(self) -> int:
        """Number of distinct object types."""
        return len(set(o.kind for o in self.objects))

    def walls_mask(self) -> np.ndarray:
        """Bool ``[size, size]``, True on walls."""
        mask = np.zeros((self.size, self.size), dtype=bool)
        for r, c in self.walls:
            mask[r, c] = True
        return mask

    # -- serialization ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (lists, floats, None) that :meth:`from_dict` turns back into an equal level."""
        return {
            "name": self.name,
            "size": self.size,
            "max_steps": self.max_steps,
            "start": None if self.start is None else list(self.start),
            "walls": [list(w) for w in self.walls],
            "objects": [
                {
                    "reward": o.reward,
                    "p_terminate": o.p_terminate,
                    "p_respawn": o.p_respawn,
                    "position": None if o.position is None else list(o.position),
                }
                for o in self.objects
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Level:
        """The level of a :meth:`to_dict` dict; unknown or missing keys raise ValueError."""
        if not isinstance(data, dict):
            raise ValueError(f"a level dict must be a dict, got {type(data).__name__}")
        allowed = {"name", "size", "max_steps", "start", "walls", "objects"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"unknown level key(s) {unknown}; allowed: {sorted(allowed)}")
        missing = sorted({"size", "objects"} - set(data))
        if missing:
            raise ValueError(f"level dict is missing {missing}")
        return cls(
            size=data["size"],
            objects=tuple(_object_from(o) for o in data["objects"]),
            walls=tuple(_as_cell(w, "wall") for w in data.get("walls", ())),
            start=data.get("start", (0, 0)),
            max_steps=data.get("max_steps", 500),
            name=data.get("name", ""),
        )

    def to_json(self) -> str:
        """The level as a JSON string."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Level:
        """The level of a :meth:`to_json` string."""
        return cls.from_dict(json.loads(text))


def _as_cell(value: Any, what: str) -> Cell:
    """``value`` as a ``(row, col)`` tuple of ints, or ValueError."""
    try:
        row, col = value
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a (row, col) pair, got {value!r}") from None
    for v in (row, col):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{what} must be a (row, col) pair of integers, got {value!r}")
    return (int(row), int(col))


def _object_from(data: Any) -> GridObject:
    """A :class:`GridObject` from a dict of its fields."""
    if not isinstance(data, dict):
        raise ValueError(f"an object must be a GridObject or a dict, got {data!r}")
    allowed = {"reward", "p_terminate", "p_respawn", "position"}
    unknown = sorted(set(data) - allowed)
    missing = sorted(allowed - {"position"} - set(data))
    if unknown or missing:
        raise ValueError(f"object dict {data!r}: unknown keys {unknown}, missing keys {missing}")
    position = data.get("position")
    return GridObject(data["reward"], data["p_terminate"], data["p_respawn"],
                      None if position is None else _as_cell(position, "object position"))


# --------------------------------------------------------------------------------------------
# the named levels
# --------------------------------------------------------------------------------------------
def _objects(table: list[tuple[float, float, float]], ids: list[int], cells: list[Cell | None]) -> tuple[GridObject, ...]:
    """Objects from GROOVE's per-type table, per-object type ids and cells."""
    return tuple(GridObject(*table[t], position=cell) for t, cell in zip(ids, cells, strict=True))


def _column_wall(size: int, col: int, gaps: tuple[int, ...]) -> list[Cell]:
    """Wall cells down column ``col``, open at the rows ``gaps``."""
    return [(r, col) for r in range(size) if r not in gaps]


def _row_wall(size: int, row: int, gaps: tuple[int, ...]) -> list[Cell]:
    """Wall cells along row ``row``, open at the columns ``gaps``."""
    return [(row, c) for c in range(size) if c not in gaps]


# The object tables (reward, p_terminate, p_respawn) per type, the type ids per object, sizes, time
# limits and walls are GROOVE's ``ENV_MODE_PARAMS`` (configs.py). Cells: ``dense`` is GROOVE's
# ``GridWorld.default_params`` (start 0, objects at flat 1*11+3, 3*11+7, 8*11+7, 9*11+2); the others
# are one draw of GROOVE's per-lifetime layout rule (start and objects on distinct free cells),
# ``RandomLayout(level).sample(np.random.default_rng(0))``, fixed here so that each named level is one MDP.
LEVELS: dict[str, Level] = {
    level.name: level
    for level in (
        Level(11, _objects([(1.0, 0.0, 0.05), (-1.0, 0.5, 0.1), (-1.0, 0.0, 0.5)], [0, 0, 1, 2],
                           [(1, 3), (3, 7), (8, 7), (9, 2)]),
              start=(0, 0), max_steps=500, name="dense"),
        Level(13, _objects([(1.0, 1.0, 0.0), (-1.0, 1.0, 0.0)], [0, 1], [(6, 8), (10, 12)]),
              start=(8, 3), max_steps=50, name="sparse"),
        Level(11, _objects([(1.0, 0.0, 0.01), (-1.0, 0.5, 1.0)], [0, 0, 1, 1],
                           [(5, 5), (2, 10), (3, 4), (9, 0)]),
              start=(6, 9), max_steps=1000, name="long"),
        Level(9, _objects([(1.0, 0.1, 0.01), (-1.0, 0.8, 1.0)], [0, 0, 1, 1, 1],
                          [(5, 3), (4, 3), (2, 6), (0, 3), (7, 1)]),
              walls=tuple(_column_wall(9, 4, gaps=(1, 7))), start=(2, 2), max_steps=2000, name="longer"),
        Level(11, _objects([(1.0, 0.0, 0.005)], [0, 0, 0, 0], [(5, 10), (2, 7), (3, 1), (9, 1)]),
              walls=tuple(sorted(set(_column_wall(11, 5, gaps=(0, 7)) + _row_wall(11, 4, gaps=(2, 8))))),
              start=(7, 1), max_steps=2000, name="long_dense"),
        # LPG's random grid worlds (GROOVE's rand_* modes): objects at random cells at every reset and
        # respawn; GROOVE keeps the start cell fixed per lifetime.
        Level(11, _objects([(1.0, 0.0, 0.05), (-1.0, 0.5, 0.1), (-1.0, 0.0, 0.5)], [0, 0, 1, 2], [None] * 4),
              start=(6, 9), max_steps=500, name="rand_dense"),
        Level(11, _objects([(1.0, 0.0, 0.01), (-1.0, 0.5, 1.0)], [0, 0, 1, 1], [None] * 4),
              start=(6, 9), max_steps=1000, name="rand_long"),
        Level(7, _objects([(1.0, 0.0, 0.05), (-1.0, 0.5, 0.1)], [0, 0, 1, 1], [None] * 4),
              walls=((1, 2), (3, 4)), start=(4, 2), max_steps=500, name="rand_small"),
        Level(7, _objects([(1.0, 1.0, 1.0), (-1.0, 1.0, 1.0)], [0, 1, 1], [None] * 3),
              start=(1, 6), max_steps=50, name="rand_sparse"),
        Level(11, _objects([(1.0, 0.0, 1.0)], [0], [None]), start=(9, 3), max_steps=2000, name="rand_very_dense"),
    )
}
#: The five tabular LPG levels (LPG's training set; GROOVE's ``tabular`` mode lists them).
LPG_LEVELS = ("dense", "sparse", "long", "longer", "long_dense")


# --------------------------------------------------------------------------------------------
# generators
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RandomLayout:
    """A template level whose start and object cells are drawn per level (GROOVE's fixed-table modes).

    As ``configs.reset_env_params``: the start and every object get distinct cells, uniformly among
    the non-wall cells. Objects of the template placed at random (``position=None``) stay random.
    """

    template: Level

    def sample(self, rng: np.random.Generator) -> Level:
        """One level: the template with freshly drawn start and object cells."""
        t = self.template
        cells = _draw_cells(rng, t.size, set(t.walls), t.num_objects + 1)
        objects = tuple(
            GridObject(o.reward, o.p_terminate, o.p_respawn, None if o.position is None else cells[k + 1])
            for k, o in enumerate(t.objects)
        )
        return Level(t.size, objects, t.walls, cells[0], t.max_steps)

    def bounds(self) -> tuple[int, int, int]:
        """``(largest size, most objects, most object types)`` of the levels it draws."""
        return self.template.size, self.template.num_objects, self.template.num_types


@dataclass(frozen=True)
class RandomTables:
    """Random sizes, walls and object tables (GROOVE's ``small``/``medium``/``large``/``all`` modes).

    Per level, as ``configs.reset_env_params`` with those modes' ``ENV_MODE_PARAMS``:

    * grid size uniform in ``sizes`` (inclusive), number of objects uniform in ``num_objects``;
    * every object its own type; the first object's reward ~ U[0, hi] and the others' ~ U[lo, hi]
      (GROOVE's ``uniform_first_pos``), ``p_terminate`` and ``p_respawn`` log-uniform in their ranges;
    * time limit ``round(exp(U[log lo, log hi]))`` (``log_uniform_int``);
    * walls: ``num_walls`` distinct flat indices drawn from ``wall_area ** 2`` (``uniform_wall_idxs``
      with the mode's ``max_grid_size``) and read with the level's own row stride, so only the
      indices below ``size ** 2`` become walls: a GROOVE quirk kept here (fewer walls on smaller
      grids, ``num_walls * size**2 / wall_area**2`` on average). Walls may cut the grid in parts;
    * start and objects on distinct non-wall cells, uniformly.

    A draw with fewer free cells than the agent and its objects is drawn again (GROOVE would place
    objects on invalid cells then; it is very rare).
    """

    sizes: tuple[int, int]
    num_objects: tuple[int, int]
    max_steps: tuple[int, int]
    num_walls: int
    wall_area: int
    first_reward: tuple[float, float] = (0.0, 1.0)
    reward: tuple[float, float] = (-1.0, 1.0)
    p_terminate: tuple[float, float] = (1e-2, 1.0)
    p_respawn: tuple[float, float] = (1e-3, 1e-1)

    def sample(self, rng: np.random.Generator) -> Level:
        """One level drawn from the distribution."""
        while True:
            size = int(rng.integers(self.sizes[0], self.sizes[1] + 1))
            n = int(rng.integers(self.num_objects[0], self.num_objects[1] + 1))
            rewards = [rng.uniform(*self.first_reward)] + [rng.uniform(*self.reward) for _ in range(n - 1)]
            p_terminate = _log_uniform(rng, self.p_terminate, n)
            p_respawn = _log_uniform(rng, self.p_respawn, n)
            steps = int(np.rint(_log_uniform(rng, self.max_steps, 1)[0]))
            flat = rng.choice(self.wall_area * self.wall_area, size=self.num_walls, replace=False)
            walls = {(int(i) // size, int(i) % size) for i in flat if i < size * size}
            if size * size - len(walls) < n + 1:
                continue
            cells = _draw_cells(rng, size, walls, n + 1)
            objects = tuple(
                GridObject(float(rewards[k]), float(p_terminate[k]), float(p_respawn[k]), cells[k + 1]) for k in range(n)
            )
            return Level(size, objects, tuple(walls), cells[0], steps)

    def bounds(self) -> tuple[int, int, int]:
        """``(largest size, most objects, most object types)`` of the levels it draws."""
        return self.sizes[1], self.num_objects[1], self.num_objects[1]


Generator = Union[RandomLayout, RandomTables]


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float], n: int) -> np.ndarray:
    """``n`` draws of ``exp(U[log lo, log hi])``."""
    return np.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1]), size=n))


def _draw_cells(rng: np.random.Generator, size: int, walls: set[Cell], count: int) -> list[Cell]:
    """``count`` distinct non-wall cells, uniformly."""
    free = [(r, c) for r in range(size) for c in range(size) if (r, c) not in walls]
    picks = rng.choice(len(free), size=count, replace=False)
    return [free[int(i)] for i in picks]


# GROOVE's distribution modes (configs.py ENV_MODE_PARAMS with ENV_MODE_KWARGS' max_grid_size as wall_area).
GENERATORS: dict[str, Generator] = {
    "small": RandomTables(sizes=(4, 6), num_objects=(1, 3), max_steps=(20, 100), num_walls=7, wall_area=6),
    "medium": RandomTables(sizes=(6, 8), num_objects=(2, 4), max_steps=(100, 250), num_walls=10, wall_area=8),
    "large": RandomTables(sizes=(8, 10), num_objects=(2, 5), max_steps=(250, 750), num_walls=15, wall_area=10),
    "all": RandomTables(sizes=(4, 10), num_objects=(1, 5), max_steps=(20, 750), num_walls=15, wall_area=10),
    **{name: RandomLayout(level) for name, level in LEVELS.items()},
}


def sample_levels(generator: str | Generator, n: int, seed: int) -> list[Level]:
    """``n`` levels from a generator (a name of :data:`GENERATORS` or a generator), deterministic in ``seed``.

    Level ``i`` depends only on ``seed`` and ``i`` (not on ``n``); its name is ``"<generator>/<seed>/<i>"``.
    """
    if isinstance(generator, str):
        if generator not in GENERATORS:
            raise ValueError(f"unknown level generator {generator!r}; known: {sorted(GENERATORS)}")
        label, chosen = generator, GENERATORS[generator]
    elif isinstance(generator, (RandomLayout, RandomTables)):
        label, chosen = "custom", generator
    else:
        raise ValueError(f"generator must be a name of {sorted(GENERATORS)} or a RandomLayout/RandomTables, got {generator!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    children = np.random.SeedSequence(int(seed)).spawn(int(n))
    levels = []
    for i, child in enumerate(children):
        level = chosen.sample(np.random.default_rng(child))
        levels.append(Level(level.size, level.objects, level.walls, level.start, level.max_steps,
                            name=f"{label}/{seed}/{i}"))
    return levels


def get_level(name: str) -> Level:
    """The named level ``name`` of :data:`LEVELS` (ValueError listing the names otherwise)."""
    if name not in LEVELS:
        raise ValueError(f"unknown level {name!r}; named levels: {sorted(LEVELS)}")
    return LEVELS[name]


# --------------------------------------------------------------------------------------------
# movement (shared with envs.gridworld) and dynamic programming
# --------------------------------------------------------------------------------------------
@numba.njit(cache=True, inline="always")
def next_cell(cell: int, action: int, size: int, walls: np.ndarray) -> int:
    """Flat cell after ``action`` from ``cell`` on a ``size`` grid; ``walls[flat]`` blocks (GROOVE's ``_get_next_pos``)."""
    row = cell // size
    col = cell - row * size
    target = cell
    if action == UP and row > 0:
        target = cell - size
    elif action == DOWN and row < size - 1:
        target = cell + size
    elif action == LEFT and col > 0:
        target = cell - 1
    elif action == RIGHT and col < size - 1:
        target = cell + 1
    if walls[target]:
        return cell
    return target


@numba.njit(cache=True)
def _respawn_expectation(values: np.ndarray, p_respawn: np.ndarray, skip: int) -> None:
    """In place, ``values[p]`` ([P, ...]) becomes E ``values[p | R]``: objects absent from p respawn (``skip`` never)."""
    num_patterns = values.shape[0]
    for k in range(p_respawn.shape[0]):
        if k == skip:
            continue
        bit = 1 << k
        q = p_respawn[k]
        for p in range(num_patterns):
            if p & bit == 0:
                values[p] = (1.0 - q) * values[p] + q * values[p | bit]


@numba.njit(cache=True)
def _value_iteration(moves, object_at, positions, rewards, p_terminate, p_respawn, valid, horizon, gamma, policy):
    """Backward induction over steps left; returns V at step 0 as ``[patterns, cells]``.

    ``policy`` is ``[horizon, patterns, cells]`` int8 (filled with the greedy actions) or size 0.
    """
    num_objects = rewards.shape[0]
    num_patterns = 1 << num_objects
    num_cells = moves.shape[0]
    after = np.zeros((num_patterns, num_cells))  # V at the next step (0 once the time limit is reached)
    now = np.zeros((num_patterns, num_cells))
    expect = np.empty((num_patterns, num_cells))
    # expect_without[k]: expectation at object k's cell when k was collected (it cannot respawn this step).
    expect_without = np.empty((num_objects, num_patterns))
    write_policy = policy.shape[0] > 0
    for t in range(horizon - 1, -1, -1):
        expect[:, :] = after
        _respawn_expectation(expect, p_respawn, -1)
        for k in range(num_objects):
            expect_without[k, :] = after[:, positions[k]]
            _respawn_expectation(expect_without[k], p_respawn, k)
        for p in range(num_patterns):
            for cell in range(num_cells):
                if not valid[cell]:
                    now[p, cell] = 0.0
                    continue
                best = -np.inf
                best_action = 0
                for a in range(NUM_ACTIONS):
                    target = moves[cell, a]
                    k = object_at[target]
                    if k >= 0 and (p >> k) & 1:
                        q = rewards[k] + gamma * (1.0 - p_terminate[k]) * expect_without[k, p & ~(1 << k)]
                    else:
                        q = gamma * expect[p, target]
                    if q > best:
                        best = q
                        best_action = a
                now[p, cell] = best
                if write_policy:
                    policy[t, p, cell] = best_action
        after, now = now, after
    return after


def _dp_tables(level: Level) -> tuple[np.ndarray, ...]:
    """Move table ``[cells, 5]``, object at each cell (-1 none), object cells, rewards, probabilities, valid cells."""
    if level.random_positions:
        raise ValueError(
            f"optimal_return needs fixed object cells; level {level.name or level} places objects at random "
            "(GROOVE defines its optimal return for tabular levels only)"
        )
    walls = level.walls_mask().ravel()
    cells = level.num_cells
    moves = np.array([[next_cell(c, a, level.size, walls) for a in range(NUM_ACTIONS)] for c in range(cells)],
                     dtype=np.int64)
    object_at = np.full(cells, -1, dtype=np.int64)
    positions = np.array([o.position[0] * level.size + o.position[1] for o in level.objects], dtype=np.int64)
    object_at[positions] = np.arange(level.num_objects)
    rewards = np.array([o.reward for o in level.objects], dtype=np.float64)
    p_terminate = np.array([o.p_terminate for o in level.objects], dtype=np.float64)
    p_respawn = np.array([o.p_respawn for o in level.objects], dtype=np.float64)
    return moves, object_at, positions.reshape(-1), rewards, p_terminate, p_respawn, ~walls


def _check_gamma(gamma: float) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float, np.floating)) or not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be a number in [0, 1], got {gamma!r}")
    return float(gamma)


def start_cells(level: Level) -> list[int]:
    """Flat cells an episode may start on: the start cell, or every free cell when the start is random."""
    if level.start is not None:
        return [level.start[0] * level.size + level.start[1]]
    taken = set(level.walls) | {o.position for o in level.objects if o.position is not None}
    return [r * level.size + c for r in range(level.size) for c in range(level.size) if (r, c) not in taken]


def optimal_return(level: Level, gamma: float = 1.0) -> float:
    """Expected return of one episode under the optimal policy, from the start (averaged over random starts).

    The optimum is over all (time-dependent) policies of ``E[sum_t gamma^t r_t]`` for an episode
    that starts with every object present and ends at termination or after ``max_steps`` steps:
    backward induction over (cell, object-existence pattern, steps left), as GROOVE's
    ``GridWorld.optimal_return``. With ``gamma=1`` (the default) it is GROOVE's normalizer: the best
    expected *undiscounted return per episode*, which GROOVE/LPG compare with an agent's mean
    undiscounted episode return (``agents.eval_agent``). Levels with random object cells raise ValueError.
    """
    if not isinstance(level, Level):
        raise ValueError(f"expected a Level, got {level!r}")
    return _cached_optimal_return(level, _check_gamma(gamma))


@functools.lru_cache(maxsize=4096)
def _cached_optimal_return(level: Level, gamma: float) -> float:
    """:func:`optimal_return`, memoized on the (hashable) level; a curriculum asks for the same levels again."""
    values = _solve(level, gamma, with_policy=False)[0]
    full = (1 << level.num_objects) - 1
    return float(np.mean([values[full, cell] for cell in start_cells(level)]))


def optimal_policy(level: Level, gamma: float = 1.0) -> np.ndarray:
    """Greedy optimal actions ``[max_steps, 2**num_objects, size*size]`` int8, by steps taken, existence pattern, cell.

    The pattern has bit ``k`` set when object ``k`` exists. Following it from the start achieves
    :func:`optimal_return` in expectation (the lowest action index wins ties).
    """
    gamma = _check_gamma(gamma)
    return _solve(level, gamma, with_policy=True)[1]


def optimal_values(level: Level, gamma: float = 1.0) -> np.ndarray:
    """Optimal values at the first step ``[2**num_objects, size*size]`` (all patterns and cells)."""
    return _solve(level, _check_gamma(gamma), with_policy=False)[0]


def _solve(level: Level, gamma: float, with_policy: bool) -> tuple[np.ndarray, np.ndarray]:
    """Values at step 0 and (if asked) the greedy policy."""
    if not isinstance(level, Level):
        raise ValueError(f"expected a Level, got {level!r}")
    tables = _dp_tables(level)
    shape = (level.max_steps, 1 << level.num_objects, level.num_cells) if with_policy else (0, 0, 0)
    policy = np.zeros(shape, dtype=np.int8)
    values = _value_iteration(*tables, level.max_steps, gamma, policy)
    return values, policy
