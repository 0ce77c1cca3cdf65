"""Grid-world throughput: the numba ``grid`` env with many levels in parallel vs a plain-Python loop.

Run with ``NUMBA_NUM_THREADS=1 python scripts/bench_gridworld.py``. Every sub-env plays its own level
drawn from GROOVE's ``all`` distribution (or one named level with ``--level``). The peer steps the
same levels with the same rules in a plain Python loop (one sub-env after the other, Python's
``random``) and writes the same observation arrays, in the same process. Each measurement steps
for ``seconds`` with random actions and is repeated ``repeats`` times, interleaving the
contenders; the median steps/second (sub-env steps) is reported with its ratio to the peer.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from rlmeta.envs.gridworld import GridVectorEnv, make_grid
from rlmeta.envs.levels import Level


@dataclass
class BenchGridConfig:
    """What to measure; the defaults take about half a minute on 2 cores."""

    num_envs: int = 512
    """Sub-envs (levels) stepped together."""
    generator: str = "all"
    """Level distribution of the sub-envs (ignored when ``level`` is given)."""
    level: str | None = None
    """One named level for every sub-env instead (e.g. ``dense``)."""
    observations: tuple[str, ...] = ("tabular", "index", "grid")
    seconds: float = 1.0
    """Stepping time per measurement (the Python peer gets a quarter of it)."""
    repeats: int = 3
    parallel: bool = False
    """Also measure the numba ``prange`` kernel."""
    seed: int = 0
    json_out: str | None = None

    def __post_init__(self) -> None:
        if self.num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {self.num_envs}")
        if self.seconds <= 0 or self.repeats < 1:
            raise ValueError(f"seconds must be > 0 and repeats >= 1, got {self.seconds}, {self.repeats}")
        bad = sorted(set(self.observations) - {"tabular", "index", "grid"})
        if bad or not self.observations:
            raise ValueError(f"observations must be a non-empty subset of ('tabular', 'index', 'grid'), got {self.observations}")


@dataclass
class Row:
    """One line: a contender's median steps/second and its ratio to the Python peer."""

    obs: str
    contender: str
    num_envs: int
    steps_per_second: float
    samples: list[float] = field(default_factory=list)
    ratio: float | None = None


class PythonGrid:
    """The grid-world rules in plain Python, one sub-env at a time (static object cells; the peer)."""

    def __init__(self, levels: tuple[Level, ...], padded: int, max_objects: int, max_types: int, obs: str, seed: int):
        self.levels, self.padded, self.max_objects, self.max_types, self.obs = levels, padded, max_objects, max_types, obs
        self.rng = random.Random(seed)
        self.size = [lv.size for lv in levels]
        self.walls = [{r * lv.size + c for r, c in lv.walls} for lv in levels]
        self.cells = [[o.position[0] * lv.size + o.position[1] for o in lv.objects] for lv in levels]
        self.types = [lv.object_types() for lv in levels]
        self.pos = [0] * len(levels)
        self.time = [0] * len(levels)
        self.exists: list[list[bool]] = [[] for _ in levels]
        for i in range(len(levels)):
            self.reset_one(i)

    def reset_one(self, i: int) -> None:
        lv = self.levels[i]
        self.pos[i] = lv.start[0] * lv.size + lv.start[1]
        self.time[i] = 0
        self.exists[i] = [True] * lv.num_objects

    def write_obs(self, out: np.ndarray, i: int) -> None:
        g, s = self.size[i], self.padded
        if self.obs in ("tabular", "index"):
            index = self.pos[i] + s * s * sum(1 << k for k, e in enumerate(self.exists[i]) if e)
            if self.obs == "index":
                out[0] = index
            else:
                out[index] = 1.0
            return
        for r in range(s):
            for c in range(s):
                if r >= g or c >= g or r * g + c in self.walls[i]:
                    out[r, c, 1] = 1.0
        out[self.pos[i] // g, self.pos[i] % g, 0] = 1.0
        for k, e in enumerate(self.exists[i]):
            if e:
                cell = self.cells[i][k]
                out[cell // g, cell % g, 2 + self.types[i][k]] = 1.0

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        n = len(self.levels)
        if self.obs == "index":
            obs = np.zeros((n, 1), np.int64)
        elif self.obs == "tabular":
            obs = np.zeros((n, self.padded ** 2 * 2 ** self.max_objects), np.float32)
        else:
            obs = np.zeros((n, self.padded, self.padded, 2 + self.max_types), np.float32)
        reward = np.zeros(n, np.float32)
        terminated = np.zeros(n, bool)
        truncated = np.zeros(n, bool)
        for i in range(n):
            lv, g, pos, a = self.levels[i], self.size[i], self.pos[i], int(actions[i])
            row, col = divmod(pos, g)
            target = pos
            if a == 0 and row > 0:
                target = pos - g
            elif a == 1 and row < g - 1:
                target = pos + g
            elif a == 2 and col > 0:
                target = pos - 1
            elif a == 3 and col < g - 1:
                target = pos + 1
            pos = pos if target in self.walls[i] else target
            exists = self.exists[i]
            collected = -1
            for k, cell in enumerate(self.cells[i]):
                if exists[k] and cell == pos:
                    collected = k
            was = list(exists)
            for k, obj in enumerate(lv.objects):
                if self.rng.random() < obj.p_respawn and not was[k]:
                    exists[k] = True
            if collected >= 0:
                exists[collected] = False
            u = self.rng.random()
            term = collected >= 0 and u < lv.objects[collected].p_terminate
            reward[i] = lv.objects[collected].reward if collected >= 0 else 0.0
            self.pos[i] = pos
            self.time[i] += 1
            trunc = not term and self.time[i] >= lv.max_steps
            terminated[i], truncated[i] = term, trunc
            if term or trunc:
                self.reset_one(i)
            self.write_obs(obs[i], i)
        return (obs[:, 0] if self.obs == "index" else obs), reward, terminated, truncated


def _rate(step: Callable[[int], Any], num_envs: int, seconds: float) -> float:
    """Sub-env steps per second of ``step(k)`` called repeatedly for about ``seconds``."""
    for k in range(3):  # warm-up (JIT, caches)
        step(k)
    calls, start = 0, time.perf_counter()
    while True:
        step(calls)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls * num_envs / elapsed


def _make_env(cfg: BenchGridConfig, obs: str, parallel: bool = False) -> GridVectorEnv:
    source = {"level": cfg.level} if cfg.level else {"generator": cfg.generator}
    return make_grid(num_envs=cfg.num_envs, seed=cfg.seed, obs=obs, parallel=parallel, **source)


def _contenders(cfg: BenchGridConfig, obs: str) -> dict[str, tuple[Callable[[], Callable[[int], Any]], float]]:
    """Name -> (build a step function, seconds per measurement); the Python peer first."""
    actions = np.random.default_rng(cfg.seed).integers(0, 5, size=(256, cfg.num_envs))

    def peer():
        env = _make_env(cfg, obs)  # for its levels and padding only
        python = PythonGrid(env.levels, env.max_grid_size, env.max_objects, env.max_types, obs, cfg.seed)
        return lambda k: python.step(actions[k % 256])

    def ours(parallel: bool):
        def build():
            env = _make_env(cfg, obs, parallel)
            env.reset()
            return lambda k: env.step(actions[k % 256])
        return build

    out = {"python loop (same rules)": (peer, cfg.seconds / 4), "rlmeta grid (numba)": (ours(False), cfg.seconds)}
    if cfg.parallel:
        out["rlmeta grid (numba, parallel)"] = (ours(True), cfg.seconds)
    return out


def run(cfg: BenchGridConfig) -> list[Row]:
    """Measure every contender for each observation kind; print a table with the ratios to the peer."""
    rows: list[Row] = []
    for obs in cfg.observations:
        contenders = _contenders(cfg, obs)
        built = {name: (make(), seconds) for name, (make, seconds) in contenders.items()}
        samples: dict[str, list[float]] = {name: [] for name in built}
        for _ in range(cfg.repeats):
            for name, (step, seconds) in built.items():
                samples[name].append(_rate(step, cfg.num_envs, seconds))
        group = [Row(obs, name, cfg.num_envs, statistics.median(s), s) for name, s in samples.items()]
        for row in group:
            row.ratio = row.steps_per_second / group[0].steps_per_second
        rows += group
    print(f"levels: {cfg.level or cfg.generator!r}, one per sub-env")
    print(format_table(rows))
    if cfg.json_out:
        with open(cfg.json_out, "w") as f:
            json.dump({"config": asdict(cfg), "rows": [asdict(r) for r in rows]}, f, indent=2)
    return rows


def format_table(rows: list[Row]) -> str:
    """Plain-text table of benchmark rows."""
    lines = [f"{'obs':<8} {'contender':<32} {'envs':>5} {'steps/s':>13} {'vs peer':>8}"]
    lines.append("-" * len(lines[0]))
    for r in rows:
        lines.append(f"{r.obs:<8} {r.contender:<32} {r.num_envs:>5} {r.steps_per_second:>13,.0f} {r.ratio:>7.1f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    import tyro

    run(tyro.cli(BenchGridConfig))
