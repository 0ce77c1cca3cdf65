"""gymnasium-style entry-point ids: ``envs.make("module:Attr", ...)`` for a user's own env class or factory."""

from __future__ import annotations

import itertools
import re
import sys
import textwrap

import numpy as np
import pytest

from rlmeta import envs
from rlmeta.envs.entry_points import is_entry_point
from rlmeta.envs.gym_backend import GymVectorEnv

MODULE_SOURCE = textwrap.dedent(
    '''
    """A user's module: a tiny env, factories, and things that are not envs."""
    import gymnasium as gym
    import numpy as np

    CALLS = {"make_not_env": 0}


    class Walk(gym.Env):
        """Observation [start, t]; each episode terminates after ``length`` steps with reward ``bonus`` per step."""

        def __init__(self, length: int = 3, bonus: float = 1.0):
            self.length, self.bonus = length, bonus
            self.observation_space = gym.spaces.Box(0.0, 1000.0, shape=(2,), dtype=np.float32)
            self.action_space = gym.spaces.Discrete(2)
            self.start, self.t = 0, 0

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.start, self.t = int(self.np_random.integers(0, 100)), 0
            return np.array([self.start, 0], dtype=np.float32), {}

        def step(self, action):
            self.t += 1
            obs = np.array([self.start, self.t], dtype=np.float32)
            return obs, self.bonus, self.t >= self.length, False, {}


    def make_walk(length: int = 4):
        """A factory: a Walk of ``length`` steps."""
        return Walk(length=length)


    def make_not_env():
        CALLS["make_not_env"] += 1
        return {"not": "an env"}


    class Nested:
        make = staticmethod(make_walk)


    class NotAnEnv:
        pass


    NOT_CALLABLE = 42
    INSTANCE = Walk()
    '''
)

_counter = itertools.count()


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Write a uniquely named user module to ``tmp_path`` and put that folder on ``sys.path``."""
    name = f"user_walk_envs_{next(_counter)}"
    (tmp_path / f"{name}.py").write_text(MODULE_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def episode_lengths(env, steps: int) -> list[int]:
    """Step ``env`` with zeros and return the lengths of the episodes that ended."""
    env.reset()
    lengths: list[int] = []
    for _ in range(steps):
        *_, info = env.step(np.zeros(env.num_envs, dtype=np.int64))
        if "episode" in info:
            lengths += info["episode"]["length"][info["_episode"]].tolist()
    return lengths


@pytest.mark.parametrize(
    "id, expected",
    [
        ("my_pkg.my_module:MyEnv", True),
        ("mod:make", True),
        ("mod:Outer.make", True),
        ("envpool:CartPole-v1", False),  # not a Python name after ':'; and a backend prefix anyway
        ("cartpole:CartPole-v1", False),
        ("snake", False),
        ("mod:", False),
        (":Attr", False),
        ("my-pkg:Env", False),
    ],
)
def test_entry_point_form(id, expected):
    assert is_entry_point(id) is expected


def test_a_class_is_vectorized(user_module):
    env = envs.make(f"{user_module}:Walk", num_envs=3, seed=0)
    try:
        assert isinstance(env, envs.VectorEnv) and isinstance(env, GymVectorEnv)
        assert env.num_envs == 3 and env.name == f"{user_module}:Walk"
        assert episode_lengths(env, 3) == [3, 3, 3]
    finally:
        env.close()


def test_a_factory_gets_the_options(user_module):
    env = envs.make(f"{user_module}:make_walk", num_envs=2, seed=0)
    assert episode_lengths(env, 4) == [4, 4]  # the factory's own default
    env.close()
    env = envs.make(f"{user_module}:make_walk", num_envs=2, seed=0, length=2)
    assert episode_lengths(env, 4) == [2, 2, 2, 2]
    env.close()


def test_options_go_to_the_class_and_to_the_vectorizer(user_module):
    env = envs.make(f"{user_module}:Walk", num_envs=2, seed=0, length=5, bonus=2.5, max_episode_steps=2)
    env.reset()
    *_, info = env.step(np.zeros(2, dtype=np.int64))
    _, reward, terminated, truncated, info = env.step(np.zeros(2, dtype=np.int64))
    np.testing.assert_array_equal(reward, [2.5, 2.5])
    assert truncated.all() and not terminated.any()  # the time limit cut the 5-step episodes
    env.close()


def test_async_vectorization(user_module):
    env = envs.make(f"{user_module}:Walk", num_envs=2, seed=0, vectorization="async", length=2)
    try:
        assert episode_lengths(env, 2) == [2, 2]
    finally:
        env.close()


def test_a_nested_attribute(user_module):
    env = envs.make(f"{user_module}:Nested.make", num_envs=1, seed=0, length=1)
    assert episode_lengths(env, 1) == [1]
    env.close()


def test_same_as_register(user_module):
    module = __import__(user_module)
    envs.register("entry-point-twin", module.Walk, length=3)
    try:
        by_name = envs.make("entry-point-twin", num_envs=2, seed=5)
        by_entry_point = envs.make(f"{user_module}:Walk", num_envs=2, seed=5, length=3)
        first_obs = [by_name.reset()[0], by_entry_point.reset()[0]]
        np.testing.assert_array_equal(*first_obs)
        for _ in range(4):
            actions = np.array([0, 1])
            for a, b in zip(by_name.step(actions)[:4], by_entry_point.step(actions)[:4]):
                np.testing.assert_array_equal(a, b)
        by_name.close()
        by_entry_point.close()
    finally:
        envs.unregister("entry-point-twin")


# --------------------------------------------------------------------------------------------
# bad ids: a clear ValueError before anything is built
# --------------------------------------------------------------------------------------------
def test_module_not_found_mentions_pythonpath(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty folder: the cwd retry finds nothing either
    before = list(sys.path)
    with pytest.raises(ValueError, match=r"(?s)(?=.*no module named 'no_such_user_module')(?=.*PYTHONPATH)"):
        envs.make("no_such_user_module:MyEnv")
    assert sys.path == before  # the retry left sys.path as it was


def test_a_missing_submodule_names_the_package_found(tmp_path, monkeypatch):
    (tmp_path / "user_env_package").mkdir()
    (tmp_path / "user_env_package" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(ValueError, match=r"no module named 'user_env_package.grid'.*found at .*user_env_package"):
            envs.make("user_env_package.grid:GridEnv")
    finally:
        sys.modules.pop("user_env_package", None)


def test_a_typo_in_a_backend_prefix_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=re.escape("did you mean 'envpool:Pong'")):
        envs.make("evnpool:Pong")


def test_missing_attribute_lists_nearby_names(user_module):
    with pytest.raises(ValueError, match=r"(?s)(?=.*has no attribute 'Wlak')(?=.*nearest names: Walk)"):
        envs.make(f"{user_module}:Wlak")
    with pytest.raises(ValueError, match=r"(?s)(?=.*has no attribute 'Zebra')(?=.*gymnasium.Env classes: Walk)"):
        envs.make(f"{user_module}:Zebra")
    with pytest.raises(ValueError, match=re.escape(f"'{user_module}:Nested' has no attribute 'mkae'")):
        envs.make(f"{user_module}:Nested.mkae")


def test_not_callable(user_module):
    with pytest.raises(ValueError, match=r"names 42 \(type int\), which is not callable"):
        envs.make(f"{user_module}:NOT_CALLABLE")


def test_an_env_instance_is_rejected(user_module):
    with pytest.raises(ValueError, match=r"names a gymnasium.Env instance \(Walk\); name its class"):
        envs.make(f"{user_module}:INSTANCE")


def test_a_class_that_is_not_an_env(user_module):
    with pytest.raises(ValueError, match=r"names the class NotAnEnv, which is not a gymnasium.Env subclass"):
        envs.make(f"{user_module}:NotAnEnv")


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_a_factory_returning_something_else(user_module, vectorization):
    message = r"make_not_env.* returned \{'not': 'an env'\} \(type dict\), expected a gymnasium.Env"
    with pytest.raises(ValueError, match=message):
        envs.make(f"{user_module}:make_not_env", num_envs=3, vectorization=vectorization)
    assert sys.modules[user_module].CALLS["make_not_env"] == 1  # stopped at the first sub-env


def test_an_unknown_option(user_module):
    with pytest.raises(ValueError, match="colour"):
        envs.make(f"{user_module}:Walk", num_envs=2, colour="red")


def test_a_broken_import_inside_the_module_is_not_hidden(tmp_path, monkeypatch):
    (tmp_path / "user_env_with_missing_dependency.py").write_text("import no_such_dependency_of_the_user\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(ModuleNotFoundError, match="no_such_dependency_of_the_user"):
            envs.make("user_env_with_missing_dependency:Env")
    finally:
        sys.modules.pop("user_env_with_missing_dependency", None)


# --------------------------------------------------------------------------------------------
# the current directory, as console scripts see it
# --------------------------------------------------------------------------------------------
def test_a_module_in_the_current_directory_is_found(tmp_path, monkeypatch):
    """A console script does not put the cwd on sys.path; make retries once with it there."""
    name = f"cwd_walk_envs_{next(_counter)}"
    (tmp_path / f"{name}.py").write_text(MODULE_SOURCE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])  # restored afterwards
    try:
        env = envs.make(f"{name}:Walk", num_envs=2, seed=0, length=2)
        assert episode_lengths(env, 2) == [2, 2]
        env.close()
        assert sys.path[0] == str(tmp_path)  # kept, so later imports (and async workers) find the module too
    finally:
        sys.modules.pop(name, None)
