"""A user's project with its own top-level ``envs`` and ``agents`` packages, next to rlmeta.

rlmeta installs its packages as ``rlmeta.envs`` and ``rlmeta.agents``, so a user's ``envs/`` and
``agents/`` do not collide with them; and a user's env class is reached by an entry-point id
(``envs.grid:GridEnv``), from Python and from the ``rlmeta`` console script run in the project.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RLMETA_SCRIPT = Path(sys.executable).parent / "rlmeta"

USER_ENVS_INIT = '''
"""The user's own envs package: it has a make of its own."""
OWNER = "user"


def make(*args, **kwargs):
    return "the user's own make"
'''

USER_GRID = '''
"""A 3x3 grid: start in a corner, reward 1 for reaching the opposite one; 20 steps at most."""
import gymnasium as gym
import numpy as np


class GridEnv(gym.Env):
    def __init__(self, size: int = 3, max_steps: int = 20):
        self.size, self.max_steps = size, max_steps
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(size * size,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(4)
        self.pos, self.t = (0, 0), 0

    def _obs(self):
        obs = np.zeros(self.size * self.size, dtype=np.float32)
        obs[self.pos[0] * self.size + self.pos[1]] = 1.0
        return obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos, self.t = (0, 0), 0
        return self._obs(), {}

    def step(self, action):
        dr, dc = [(-1, 0), (1, 0), (0, -1), (0, 1)][int(action)]
        row = min(max(self.pos[0] + dr, 0), self.size - 1)
        col = min(max(self.pos[1] + dc, 0), self.size - 1)
        self.pos, self.t = (row, col), self.t + 1
        goal = self.pos == (self.size - 1, self.size - 1)
        return self._obs(), float(goal), goal, self.t >= self.max_steps, {}
'''

USER_AGENTS_INIT = '''
"""The user's own agents package."""
OWNER = "user"
'''

SCRIPT = '''
import sys
from pathlib import Path

import envs, agents  # the user's own packages

from rlmeta import envs as rl_envs
from rlmeta.agents.config import TrainConfig
from rlmeta.agents.train import train

project = Path.cwd().resolve()
assert envs.OWNER == "user" and agents.OWNER == "user"
assert Path(envs.__file__).resolve().parent == project / "envs", envs.__file__
assert Path(agents.__file__).resolve().parent == project / "agents", agents.__file__
assert envs.make() == "the user's own make"
assert rl_envs.__name__ == "rlmeta.envs" and rl_envs is not envs
assert project not in Path(rl_envs.__file__).resolve().parents, rl_envs.__file__
assert sys.modules["envs"] is envs and sys.modules["agents"] is agents

env = rl_envs.make("envs.grid:GridEnv", num_envs=2, seed=0)
assert isinstance(env, rl_envs.VectorEnv) and env.num_envs == 2
obs, _ = env.reset()
assert obs.shape == (2, 9)
env.close()

summary = train(TrainConfig(
    env="envs.grid:GridEnv", algo="a2c", num_envs=2, num_steps=8, total_steps=256,
    run_dir=sys.argv[1], progress=False, eval_episodes=2,
))
assert summary["status"] == "completed", summary
print("USER PROJECT OK", summary["total_steps"])
'''


@pytest.fixture
def user_project(tmp_path: Path) -> Path:
    """A project folder with the user's own ``envs`` (with ``grid.py``) and ``agents`` packages."""
    project = tmp_path / "project"
    (project / "envs").mkdir(parents=True)
    (project / "agents").mkdir()
    (project / "envs" / "__init__.py").write_text(USER_ENVS_INIT)
    (project / "envs" / "grid.py").write_text(USER_GRID)
    (project / "agents" / "__init__.py").write_text(USER_AGENTS_INIT)
    return project


def _environment() -> dict[str, str]:
    """The test's environment without PYTHONPATH: the project is found from the current directory only."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")  # tiny networks: one thread is fastest, and kind to a shared machine
    return env


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=_environment(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_user_packages_and_rlmeta_side_by_side(user_project, tmp_path):
    script = user_project / "train_grid.py"
    script.write_text(SCRIPT)
    result = _run([sys.executable, str(script), str(tmp_path / "run")], cwd=user_project)
    assert "USER PROJECT OK 256" in result.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["env"] == "envs.grid:GridEnv"


def test_console_script_trains_and_studies_a_user_env(user_project, tmp_path):
    assert RLMETA_SCRIPT.is_file(), f"no rlmeta console script next to {sys.executable}"
    run_dir = tmp_path / "run2"
    _run(
        [str(RLMETA_SCRIPT), "train", "--env", "envs.grid:GridEnv", "--algo", "a2c", "--num-envs", "2",
         "--num-steps", "8", "--total-steps", "256", "--run-dir", str(run_dir), "--no-progress",
         "--eval-episodes", "2", "--checkpoint-interval", "128"],
        cwd=user_project,
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["env"] == "envs.grid:GridEnv"
    assert sorted(path.name for path in (run_dir / "checkpoints").glob("ckpt-*.pt"))

    _run(
        [str(RLMETA_SCRIPT), "variance", "--run-dir", str(run_dir), "--ks", "1", "--samples", "2",
         "--reference-samples", "2", "--reference-k", "1", "--estimators", "one-step", "--learn", "gamma"],
        cwd=user_project,
    )
    assert (run_dir / "variance" / "variance.csv").is_file()
    assert (run_dir / "variance" / "summary.md").is_file()
