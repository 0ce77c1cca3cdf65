"""Shared test setup: ``scripts/`` (the benchmarks and studies, which are not installed) and ``tests/``
(``helpers``) on ``sys.path``, markers, one thread per worker when pytest-xdist runs the suite on
several processes, and a tiny deterministic user env."""

from __future__ import annotations

import os
import sys

# Under pytest-xdist (the README's test command runs ``-n auto``) every worker shares the machine's
# cores: torch's and numba's thread pools get the worker's share, set before either is imported, and
# the processes a test starts (CLI runs, Ray workers) inherit it. Two workers with torch's own two
# threads each spin against one another (several times slower than one thread each; see
# ``rlmeta.agents.runs.set_threads``).
if os.environ.get("PYTEST_XDIST_WORKER"):
    _share = max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[_name] = str(_share)

import gymnasium as gym
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
TESTS = os.path.join(ROOT, "tests")  # tests/helpers: shared checks (finite differences)
for path in (SCRIPTS, TESTS):
    if path not in sys.path:
        sys.path.insert(0, path)


def pytest_configure(config):
    config.addinivalue_line("markers", "metaworld: builds a Meta-World env (about 1 s each)")
    config.addinivalue_line("markers", "slow: noticeably slower than the rest of the suite")


class CounterEnv(gym.Env):
    """A tiny deterministic user env with exactly known observations, rewards and episode ends.

    * ``reset`` draws ``start`` uniformly from 0..99 with ``self.np_random`` (so it depends on the
      seed) and returns ``[start, 0]``.
    * step ``t`` (1-based) returns obs ``[start, t]`` and reward ``t + 10 * action``
      (actions are ``Discrete(2)``).
    * The episode terminates at step ``goal_for(start)``: ``goal`` if given, else
      ``2 + start % 4`` (2..5 steps, so sub-envs end at different times).
    * With ``limit``, the episode is truncated at step ``limit``. When ``limit`` and the goal fall
      on the same step this env, like ``gymnasium.wrappers.TimeLimit``, returns *both*
      ``terminated`` and ``truncated``; rlmeta must report only ``terminated`` then.
    """

    metadata = {"render_modes": []}

    def __init__(self, goal: int | None = None, limit: int | None = None):
        self.goal = goal
        self.limit = limit
        self.observation_space = gym.spaces.Box(0.0, 1000.0, shape=(2,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.start = 0
        self.t = 0

    @staticmethod
    def goal_for(start: int, goal: int | None = None) -> int:
        return goal if goal is not None else 2 + int(start) % 4

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.start = int(self.np_random.integers(0, 100))
        self.t = 0
        return np.array([self.start, 0], dtype=np.float32), {}

    def step(self, action):
        action = int(action)
        assert action in (0, 1), action
        self.t += 1
        obs = np.array([self.start, self.t], dtype=np.float32)
        reward = float(self.t + 10 * action)
        terminated = self.t >= self.goal_for(self.start, self.goal)
        truncated = self.limit is not None and self.t >= self.limit
        return obs, reward, terminated, truncated, {}


@pytest.fixture(scope="session")
def counter_env_cls():
    return CounterEnv
