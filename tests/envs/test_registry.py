"""The registry's backend table, its listing (``envs.available``) and the named built-ins."""

from __future__ import annotations

import re
import warnings

import gymnasium as gym
import numpy as np
import pytest

from rlmeta import envs
from rlmeta.envs import registry
from rlmeta.envs.core import Backend, VectorEnv, unknown_id_message
from rlmeta.envs.envpool_backend import EnvpoolVectorEnv
from rlmeta.envs.gym_backend import GymVectorEnv


class _FakeVectorEnv(VectorEnv):
    """What the fake backend builds: it only remembers how it was asked for."""

    def __init__(self, name: str, num_envs: int, seed: int | None, **options):
        super().__init__(num_envs, gym.spaces.Discrete(2), gym.spaces.Discrete(2), seed=seed)
        self.name, self.options = name, options


def _build_fake(name: str, num_envs: int = 1, seed: int | None = 0, **options) -> _FakeVectorEnv:
    if name not in ("alpha", "beta"):
        raise ValueError(unknown_id_message(f"fake:{name}", ["fake:alpha", "fake:beta"]))
    return _FakeVectorEnv(name, num_envs, seed, **options)


@pytest.fixture
def fake_backend(monkeypatch):
    """A backend ``fake:<name>`` added to the table for one test."""
    backend = Backend("fake", _build_fake, "a fake backend for tests", lambda: ["alpha", "beta"])
    monkeypatch.setitem(registry.BACKENDS, "fake", backend)
    return backend


def test_the_table_holds_the_four_backends():
    assert set(registry.BACKENDS) == {"envpool", "gym", "metaworld", "minatar"}
    for prefix, backend in registry.BACKENDS.items():
        assert isinstance(backend, Backend) and backend.prefix == prefix and backend.description


def test_every_backend_is_listed_with_its_description():
    listing = envs.available()
    for prefix, backend in registry.BACKENDS.items():
        assert listing[f"{prefix}:<name>"] == backend.description
    assert "<module>:<attr>" in listing
    assert listing["snake"] and listing["snake-6x6"]


def test_a_backend_in_the_table_lists_builds_and_suggests(fake_backend):
    assert envs.available()["fake:<name>"] == "a fake backend for tests"
    env = envs.make("fake:beta", num_envs=3, seed=7, colour="red")
    assert isinstance(env, _FakeVectorEnv)
    assert (env.name, env.num_envs, env.seed, env.options) == ("beta", 3, 7, {"colour": "red"})
    assert {"fake:alpha", "fake:beta"} <= set(registry.known_ids())
    with pytest.raises(ValueError, match=re.escape("fake:alpha")):
        envs.make("fake:alpah")
    with pytest.raises(ValueError, match=re.escape("fake:alpha")):  # a typo in the prefix: nearest known ids
        envs.make("fak:alpha-1")


def test_backend_ids_never_reach_the_entry_point_loader(monkeypatch):
    def no_entry_points(*args, **kwargs):
        raise AssertionError("a backend id was treated as module:attr")

    monkeypatch.setattr(registry, "load_entry_point", no_entry_points)
    env = envs.make("gym:CartPole-v1", num_envs=2, seed=0)
    assert isinstance(env, GymVectorEnv) and env.name == "gym:CartPole-v1"
    env.close()
    env = envs.make("envpool:CartPole-v1", num_envs=2, seed=0)
    assert isinstance(env, EnvpoolVectorEnv)
    env.close()
    with pytest.raises(ValueError, match="MT10"):
        envs.make("metaworld:MT11")


def test_known_ids_name_each_backend():
    ids = set(registry.known_ids())
    assert {"snake", "snake-6x6", "envpool:CartPole-v1", "gym:CartPole-v1", "metaworld:MT10"} <= ids


@pytest.mark.parametrize("name, size, time_limit", [("snake", 12, 4000), ("snake-6x6", 6, 500)])
def test_builtins_are_named_envs_with_their_defaults(name, size, time_limit):
    env = envs.make(name, num_envs=2, seed=0)
    assert (env.rows, env.cols, env.time_limit) == (size, size, time_limit)
    env.close()
    env = envs.make(name, num_envs=2, seed=0, time_limit=7)  # an option given to make wins over a default
    assert (env.rows, env.time_limit) == (size, 7)
    env.close()


def test_listing_name_does_not_shadow_the_builtin():
    assert "list" not in envs.__all__
    with pytest.warns(DeprecationWarning, match="envs.available"):
        assert envs.list() == envs.available()


def test_available_warns_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        envs.available()


def test_registered_factories_build_like_before(counter_env_cls):
    envs.register("registry-counter", counter_env_cls, goal=2)
    try:
        env = envs.make("registry-counter", num_envs=2, seed=0)
        assert isinstance(env, GymVectorEnv) and env.name == "registry-counter"
        env.reset()
        env.step(np.zeros(2, dtype=np.int64))
        *_, terminated, _, info = env.step(np.zeros(2, dtype=np.int64))
        assert terminated.all() and (info["episode"]["length"] == 2).all()
        env.close()
    finally:
        envs.unregister("registry-counter")


@pytest.mark.parametrize("task, actions, limit", [
    ("Snake-v1", lambda t: 0 if t % 2 == 0 else 2, 4000),  # back and forth between two cells: it never dies
    ("CartPole-v1", None, 20),  # random actions: some episodes outlive a 20-step limit
])
def test_envpool_time_limits_are_truncations(task, actions, limit):
    """envpool reports Snake-v1's own 4000-step limit as a termination; the backend reports it as a truncation
    (bootstrap), as it does for every task's limit."""
    options = {} if task == "Snake-v1" else {"max_episode_steps": limit}
    env = envs.make(f"envpool:{task}", num_envs=4, seed=0, **options)
    env.reset()
    rng = np.random.default_rng(0)
    at_limit = []
    for t in range(limit + 5):
        action = np.full(4, actions(t) if actions else int(rng.integers(0, 2)), dtype=np.int64)
        _, _, terminated, truncated, info = env.step(action)
        if "episode" in info:
            ended = info["_episode"] & (info["episode"]["length"] == limit)
            at_limit.append((terminated[ended], truncated[ended]))
    env.close()
    hits = [(te, tr) for te, tr in at_limit if len(te)]
    assert hits, "no episode reached the time limit"
    for terminated, truncated in hits:
        assert truncated.all() and not terminated.any()
