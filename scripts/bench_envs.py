"""Environment throughput benchmark: our Snake vs envpool's ``Snake-v1``, and Meta-World paths.

Run with ``python scripts/bench_envs.py``. Every number comes from the
same process and machine; each measurement steps for ``seconds`` with random valid actions and is
repeated ``repeats`` times, interleaving the contenders, and the median steps/second is reported.
"""

from __future__ import annotations

import json
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np


@dataclass
class BenchEnvsConfig:
    """What to measure; the defaults take about a minute on 2 cores."""

    num_envs: tuple[int, ...] = (8, 64, 512)
    """Batch sizes for the Snake comparison."""
    seconds: float = 1.0
    """Stepping time per measurement."""
    repeats: int = 3
    """Measurements per contender (median reported)."""
    history: bool = True
    """Also time Snake at the largest size in a fresh process and again in this one after the
    smallest size ran (64 then 512 then 64 by default): a native env's speed must not depend on
    what the process did before (PASS within 20% of the fresh figure)."""
    metaworld: bool = True
    """Also compare Meta-World MT1 through our wrapper with raw metaworld and envpool's native task."""
    metaworld_task: str = "reach-v3"
    metaworld_num_envs: int = 4
    seed: int = 0
    json_out: str | None = None
    """Write the results as JSON to this path."""

    def __post_init__(self) -> None:
        if not self.num_envs or any(n < 1 for n in self.num_envs):
            raise ValueError(f"num_envs must be a non-empty list of integers >= 1, got {self.num_envs}")
        if self.seconds <= 0:
            raise ValueError(f"seconds must be > 0, got {self.seconds}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if self.metaworld_num_envs < 1:
            raise ValueError(f"metaworld_num_envs must be >= 1, got {self.metaworld_num_envs}")


@dataclass
class Row:
    """One benchmark line: a contender's median steps/second and its ratio to the peer."""

    group: str
    contender: str
    num_envs: int
    steps_per_second: float
    samples: list[float] = field(default_factory=list)
    ratio: float | None = None


def _rate(step: Callable[[int], Any], num_envs: int, seconds: float) -> float:
    """Env steps per second of ``step(k)`` called repeatedly for about ``seconds``."""
    for k in range(3):  # warm-up (JIT, caches)
        step(k)
    calls, start = 0, time.perf_counter()
    while True:
        for _ in range(16):
            step(calls)
            calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls * num_envs / elapsed


def _measure(contenders: dict[str, Callable[[], tuple[Callable[[int], Any], Callable[[], None]]]],
             num_envs: int, cfg: BenchEnvsConfig, group: str) -> list[Row]:
    """Build each contender once, then interleave ``repeats`` timed runs; medians as Rows."""
    built = {name: make() for name, make in contenders.items()}
    samples: dict[str, list[float]] = {name: [] for name in built}
    try:
        for _ in range(cfg.repeats):
            for name, (step, _close) in built.items():
                samples[name].append(_rate(step, num_envs, cfg.seconds))
    finally:
        for _step, close in built.values():
            close()
    return [Row(group, name, num_envs, statistics.median(s), s) for name, s in samples.items()]


def _snake_contenders(num_envs: int, seed: int) -> dict[str, Callable]:
    import envpool

    from rlmeta import envs

    rng = np.random.default_rng(seed)
    actions = rng.integers(0, 4, size=(1024, num_envs))
    actions32 = actions.astype(np.int32)

    def ours(observation: str) -> Callable:
        def make():
            env = envs.make("snake", num_envs=num_envs, seed=seed, observation=observation)
            env.reset()
            return (lambda k: env.step(actions[k % 1024])), env.close
        return make

    def peer():
        env = envpool.make("Snake-v1", env_type="gymnasium", num_envs=num_envs, seed=seed)
        env.reset()
        return (lambda k: env.step(actions32[k % 1024])), env.close

    return {
        "envpool Snake-v1 (dict obs)": peer,
        "rlmeta snake (dict obs, same as envpool)": ours("dict"),
        "rlmeta snake (grid obs)": ours("grid"),
    }


_FRESH = """
import sys, time, numpy as np
from rlmeta import envs
n, seed, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
env = envs.make("snake", num_envs=n, seed=seed, observation="dict")
env.reset()
actions = np.random.default_rng(seed).integers(0, 4, size=(1024, n))
for k in range(3):
    env.step(actions[k])
calls, start = 0, time.perf_counter()
while time.perf_counter() - start < seconds:
    for _ in range(16):
        env.step(actions[calls % 1024])
        calls += 1
print(calls * n / (time.perf_counter() - start))
"""


def _history_rows(cfg: BenchEnvsConfig) -> list[Row]:
    """Snake (dict obs) at the largest size: fresh process vs after the smallest size ran here."""
    import subprocess
    import sys

    small, large = min(cfg.num_envs), max(cfg.num_envs)
    fresh = [float(subprocess.run([sys.executable, "-c", _FRESH, str(large), str(cfg.seed), str(cfg.seconds)],
                                  check=True, capture_output=True, text=True).stdout) for _ in range(cfg.repeats)]
    group = f"snake history {small}->{large}"
    contenders = _snake_contenders(small, cfg.seed)
    mixed: list[float] = []
    for _ in range(cfg.repeats):
        for n in (small, large, small):
            step, close = contenders["rlmeta snake (dict obs, same as envpool)"]() if n == small else \
                _snake_contenders(large, cfg.seed)["rlmeta snake (dict obs, same as envpool)"]()
            rate = _rate(step, n, cfg.seconds)
            close()
            if n == large:
                mixed.append(rate)
    return [Row(group, f"rlmeta snake {large} envs, fresh process", large, statistics.median(fresh), fresh),
            Row(group, f"rlmeta snake {large} envs after {small} envs here", large, statistics.median(mixed), mixed)]


def _metaworld_contenders(cfg: BenchEnvsConfig) -> dict[str, Callable]:
    import gymnasium as gym
    import metaworld  # noqa: F401 - registers the Meta-World/ gymnasium ids

    from rlmeta import envs

    n = cfg.metaworld_num_envs
    rng = np.random.default_rng(cfg.seed)
    actions = rng.uniform(-1, 1, size=(256, n, 4)).astype(np.float32)

    def raw():
        # gym.make_vec's passive checker warns about Meta-World's declared observation bounds.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"gymnasium\.utils\.passive_env_checker")
        env = gym.make_vec("Meta-World/MT1", env_name=cfg.metaworld_task, num_envs=n, seed=cfg.seed,
                           vector_strategy="sync")
        env.reset(seed=cfg.seed)
        return (lambda k: env.step(actions[k % 256])), env.close

    def ours(backend: str) -> Callable:
        def make():
            env = envs.make("metaworld:MT1", num_envs=n, seed=cfg.seed, task=cfg.metaworld_task, backend=backend)
            env.reset()
            return (lambda k: env.step(actions[k % 256])), env.close
        return make

    return {
        "raw metaworld (gym.make_vec MT1)": raw,
        "rlmeta metaworld:MT1": ours("metaworld"),
        "rlmeta metaworld:MT1 backend=envpool": ours("envpool"),
    }


def run(cfg: BenchEnvsConfig) -> list[Row]:
    """Run the benchmark and print a table with the ratios to the peer (first contender)."""
    rows: list[Row] = []
    groups: list[list[Row]] = []
    for n in cfg.num_envs:
        groups.append(_measure(_snake_contenders(n, cfg.seed), n, cfg, "snake 12x12"))
    if cfg.history and len(set(cfg.num_envs)) > 1:
        groups.append(_history_rows(cfg))
    if cfg.metaworld:
        groups.append(_measure(_metaworld_contenders(cfg), cfg.metaworld_num_envs, cfg, f"Meta-World MT1 {cfg.metaworld_task}"))
    for group in groups:
        peer = group[0].steps_per_second
        for row in group:
            row.ratio = row.steps_per_second / peer
        rows += group
    print(format_table(rows))
    history = [r for r in rows if r.group.startswith("snake history")]
    if history:
        ratio = history[1].ratio
        print(f"history: {ratio:.2f} of the fresh-process speed after a smaller env ran "
              f"({'PASS' if ratio >= 0.8 else 'FAIL'}: >= 0.80)")
    for n in cfg.num_envs:
        peer = [r for r in rows if r.group == "snake 12x12" and r.num_envs == n and r.contender.startswith("rlmeta snake (dict")]
        if peer and n >= 64:
            print(f"snake dict obs vs envpool at {n} envs: {peer[0].ratio:.0f}x ({'PASS' if peer[0].ratio >= 100 else 'FAIL'}: >= 100x)")
    if cfg.json_out:
        with open(cfg.json_out, "w") as f:
            json.dump({"config": asdict(cfg), "rows": [asdict(r) for r in rows]}, f, indent=2)
    return rows


def format_table(rows: list[Row]) -> str:
    """Plain-text table of benchmark rows."""
    lines = [f"{'group':<28} {'contender':<42} {'envs':>5} {'steps/s':>13} {'vs peer':>8}"]
    lines.append("-" * len(lines[0]))
    for r in rows:
        lines.append(
            f"{r.group:<28} {r.contender:<42} {r.num_envs:>5} {r.steps_per_second:>13,.0f} {r.ratio:>7.1f}x"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    import tyro

    run(tyro.cli(BenchEnvsConfig))
