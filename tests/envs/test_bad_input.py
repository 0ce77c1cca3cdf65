"""Bad input raises ValueError with a helpful message, and a rejected step leaves no trace."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from rlmeta import envs


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def names(*parts: str) -> str:
    """A regex matching a message that contains every one of ``parts`` (literal), in any order."""
    return "(?s)" + "".join(f"(?=.*{p})" for p in parts)


def discrete_msg(num_envs: int, lo: int, hi: int) -> str:
    """The message names the batch shape ``(num_envs,`` and the range ``[lo, hi]``."""
    return names(re.escape(f"({num_envs},"), rf"\[\s*{lo}\s*,\s*{hi}\s*\]")


def box_msg(num_envs: int, shape: tuple, lo: float, hi: float) -> str:
    """The message names the batch or single shape and the range ``[lo, hi]``."""
    num = lambda x: rf"{re.escape(str(int(x)))}(\.0*)?"  # noqa: E731 - "2", "2.0", "-2.0"
    shapes = "|".join(re.escape(str(s)) for s in ((num_envs, *shape), shape))
    return names(f"(?:{shapes})", rf"\[\s*{num(lo)}\s*,\s*{num(hi)}\s*\]")


def outputs_equal(a, b) -> bool:
    """Two step outputs (obs, reward, terminated, truncated, info) are identical."""
    if isinstance(a, dict) or isinstance(b, dict):
        return isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys() and all(
            outputs_equal(a[k], b[k]) for k in a
        )
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(outputs_equal(x, y) for x, y in zip(a, b))
    return np.array_equal(np.asarray(a), np.asarray(b))


def assert_twins_agree(env, twin, actions, what: str) -> None:
    for t, a in enumerate(actions):
        out, out_twin = env.step(a), twin.step(a)
        assert outputs_equal(out, out_twin), f"{what}: step {t} after the rejected action differs from the twin"


def random_discrete(n: int, num_envs: int, steps: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, size=num_envs) for _ in range(steps)]


# --------------------------------------------------------------------------------------------
# ids, num_envs, seed
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad_id, nearest",
    [
        ("snak", "snake"),
        ("snake-6x7", "snake-6x6"),
        ("envpool:CartPole-v9", "envpool:CartPole-v1"),
        ("envpool:Snak-v1", "envpool:Snake-v1"),
        ("gym:CartPol-v1", "gym:CartPole-v1"),
        ("cartpole:CartPole-v1", "CartPole-v1"),
    ],
)
def test_unknown_id_names_the_nearest_known_ids(bad_id, nearest):
    with pytest.raises(ValueError, match=re.escape(nearest)):
        envs.make(bad_id)


def test_non_string_id_is_rejected():
    with pytest.raises(ValueError, match="id"):
        envs.make(42)


@pytest.mark.parametrize("env_id", ["snake", "envpool:CartPole-v1", "gym:CartPole-v1"])
@pytest.mark.parametrize("num_envs", [0, -1, 2.5, "2", True])
def test_bad_num_envs(env_id, num_envs):
    with pytest.raises(ValueError, match="num_envs"):
        envs.make(env_id, num_envs=num_envs)


@pytest.mark.parametrize("env_id", ["snake", "envpool:CartPole-v1", "gym:CartPole-v1"])
@pytest.mark.parametrize("seed", [-1, 1.5, "0"])
def test_bad_seed_at_make(env_id, seed):
    with pytest.raises(ValueError, match="seed"):
        envs.make(env_id, num_envs=2, seed=seed)


@pytest.mark.parametrize("env_id", ["snake", "envpool:CartPole-v1", "gym:CartPole-v1"])
def test_bad_seed_at_reset(env_id):
    env = envs.make(env_id, num_envs=2)
    try:
        with pytest.raises(ValueError, match="seed"):
            env.reset(seed=-1)
    finally:
        env.close()


# --------------------------------------------------------------------------------------------
# options
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options, word",
    [
        ({"rows": 1}, "rows"),
        ({"cols": 1}, "cols"),
        ({"rows": 0, "cols": 6}, "rows"),
        ({"rows": 1, "cols": 1}, "rows|cols"),
        ({"time_limit": 0}, "time_limit"),
        ({"time_limit": -3}, "time_limit"),
        ({"colour": "red"}, "colour"),
    ],
)
@pytest.mark.parametrize("env_id", ["snake", "snake-6x6"])
def test_bad_snake_options(env_id, options, word):
    with pytest.raises(ValueError, match=word):
        envs.make(env_id, num_envs=2, **options)


@pytest.mark.parametrize("env_id", ["envpool:CartPole-v1", "gym:CartPole-v1"])
def test_unknown_option_for_envpool_and_gym(env_id):
    with pytest.raises(ValueError, match="colour"):
        envs.make(env_id, num_envs=2, colour="red")


@pytest.mark.metaworld
def test_unknown_metaworld_task_names_the_nearest():
    with pytest.raises(ValueError, match=re.escape("reach-v3")):
        envs.make("metaworld:MT1", num_envs=1, task="reach-v9")


# --------------------------------------------------------------------------------------------
# registration
# --------------------------------------------------------------------------------------------
class _Constant:
    """A factory of CounterEnv variants, to tell registrations apart."""

    def __init__(self, cls, goal):
        self.cls, self.goal = cls, goal

    def __call__(self, **options):
        return self.cls(goal=self.goal, **options)


def test_register_twice_needs_overwrite(counter_env_cls):
    name = "bad-input-twice"
    envs.register(name, _Constant(counter_env_cls, 2))
    try:
        with pytest.raises(ValueError, match=names(re.escape(name), "overwrite")):
            envs.register(name, _Constant(counter_env_cls, 3))
        # the first registration is still the one in use
        env = envs.make(name, num_envs=1)
        env.reset()
        *_, info = env.step(np.array([0]))
        assert "final_obs" not in info
        *_, info = env.step(np.array([0]))
        assert info["episode"]["length"][0] == 2
        env.close()

        envs.register(name, _Constant(counter_env_cls, 3), overwrite=True)
        env = envs.make(name, num_envs=1)
        env.reset()
        for _ in range(2):
            *_, info = env.step(np.array([0]))
            assert "final_obs" not in info
        *_, info = env.step(np.array([0]))
        assert info["episode"]["length"][0] == 3
        env.close()
    finally:
        envs.unregister(name)


@pytest.mark.parametrize("builtin", ["snake", "snake-6x6"])
def test_register_over_a_builtin_needs_overwrite(builtin, counter_env_cls):
    assert builtin in envs.available()  # the built-ins are registered as soon as rlmeta.envs is imported
    with pytest.raises(ValueError, match=names(re.escape(builtin), "overwrite")):
        envs.register(builtin, counter_env_cls)
    assert envs.make(builtin, num_envs=1).single_action_space.n == 4  # still the real snake


def test_register_over_a_builtin_in_a_fresh_process_needs_overwrite():
    """The built-in names exist before the first make/list, so registering one must fail too."""
    code = textwrap.dedent(
        """
        import gymnasium as gym
        from rlmeta import envs
        try:
            envs.register("snake", lambda: gym.make("CartPole-v1"))
        except ValueError as e:
            print("REJECTED", e)
        else:
            print("ACCEPTED")
        env = envs.make("snake", num_envs=1)
        print("SPACE", env.single_observation_space.shape)
        """
    )
    root = __file__.rsplit("/tests/", 1)[0]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert "REJECTED" in done.stdout, f"registering 'snake' without overwrite was not refused:\n{done.stdout}{done.stderr}"
    assert "SPACE (12, 12, 5)" in done.stdout, f"'snake' is no longer the built-in snake:\n{done.stdout}{done.stderr}"


# --------------------------------------------------------------------------------------------
# discrete actions
# --------------------------------------------------------------------------------------------
SNAKE_BAD_ACTIONS = {
    "too-many": np.zeros(3, dtype=np.int64),
    "too-few": np.zeros(1, dtype=np.int64),
    "extra-dim": np.zeros((2, 1), dtype=np.int64),
    "scalar": np.int64(0),
    "empty-list": [],
    "float-dtype": np.zeros(2, dtype=np.float32),
    "float-integral-values": np.array([1.0, 2.0]),
    "out-of-range-4": np.array([0, 4]),
    "out-of-range-minus-1": np.array([-1, 0]),
    "out-of-range-big": np.array([2**40, 0]),
    "string": np.array(["0", "1"]),
    "none": None,
}


@pytest.mark.parametrize("bad", list(SNAKE_BAD_ACTIONS), ids=list(SNAKE_BAD_ACTIONS))
def test_snake_rejects_bad_actions_without_changing_state(bad):
    env, twin = envs.make("snake", num_envs=2, seed=3), envs.make("snake", num_envs=2, seed=3)
    try:
        assert outputs_equal(env.reset(), twin.reset())
        actions = random_discrete(4, 2, 30, seed=1)
        assert_twins_agree(env, twin, actions[:4], "before")
        with pytest.raises(ValueError, match=discrete_msg(2, 0, 3)):
            env.step(SNAKE_BAD_ACTIONS[bad])
        assert_twins_agree(env, twin, actions[4:], f"after rejecting {bad}")
    finally:
        env.close()
        twin.close()


def test_snake_rejected_first_step_leaves_no_trace():
    env, twin = envs.make("snake-6x6", num_envs=3, seed=5), envs.make("snake-6x6", num_envs=3, seed=5)
    try:
        env.reset()
        twin.reset()
        for bad in ([4, 0, 0], [0, 0, -1], np.zeros(3, dtype=np.float64)):
            with pytest.raises(ValueError, match=discrete_msg(3, 0, 3)):
                env.step(np.asarray(bad))
        assert_twins_agree(env, twin, random_discrete(4, 3, 40, seed=2), "after three rejected steps")
    finally:
        env.close()
        twin.close()


@pytest.mark.parametrize(
    "env_id, options",
    [
        ("envpool:CartPole-v1", {}),
        ("envpool:Snake-v1", {}),
        ("gym:CartPole-v1", {}),
        ("gym:CartPole-v1", {"vectorization": "async"}),
    ],
    ids=["envpool-cartpole", "envpool-snake", "gym-cartpole", "gym-cartpole-async"],
)
def test_backends_reject_bad_discrete_actions_without_changing_state(env_id, options):
    env, twin = envs.make(env_id, num_envs=2, seed=4, **options), envs.make(env_id, num_envs=2, seed=4, **options)
    try:
        n = int(env.single_action_space.n)
        assert outputs_equal(env.reset(), twin.reset())
        actions = random_discrete(n, 2, 20, seed=3)
        assert_twins_agree(env, twin, actions[:3], "before")
        for bad in (np.array([0, n]), np.array([-1, 0]), np.zeros(3, dtype=np.int64), np.zeros(2, np.float32)):
            with pytest.raises(ValueError, match=discrete_msg(2, 0, n - 1)):
                env.step(bad)
        assert_twins_agree(env, twin, actions[3:], "after the rejected actions")
    finally:
        env.close()
        twin.close()


# --------------------------------------------------------------------------------------------
# continuous actions
# --------------------------------------------------------------------------------------------
PENDULUM_BAD = {
    "nan": (np.array([[np.nan], [0.0]]), "(?i)nan"),
    "inf": (np.array([[0.0], [np.inf]]), "(?i)inf"),
    "above": (np.array([[2.5], [0.0]]), "(?i)bound|range|outside"),
    "below": (np.array([[0.0], [-2.01]]), "(?i)bound|range|outside"),
    "flat-shape": (np.zeros(2), None),
    "too-many": (np.zeros((3, 1)), None),
    "string": (np.array([["a"], ["b"]]), None),
}


@pytest.mark.parametrize("bad", list(PENDULUM_BAD), ids=list(PENDULUM_BAD))
def test_pendulum_rejects_bad_actions_without_changing_state(bad):
    env, twin = envs.make("gym:Pendulum-v1", num_envs=2, seed=1), envs.make("gym:Pendulum-v1", num_envs=2, seed=1)
    try:
        assert outputs_equal(env.reset(), twin.reset())
        rng = np.random.default_rng(0)
        actions = [rng.uniform(-2, 2, size=(2, 1)).astype(np.float32) for _ in range(10)]
        assert_twins_agree(env, twin, actions[:3], "before")
        action, extra = PENDULUM_BAD[bad]
        with pytest.raises(ValueError, match=box_msg(2, (1,), -2, 2)) as excinfo:
            env.step(action)
        if extra is not None:
            assert re.search(extra, str(excinfo.value)), f"message does not say what is wrong: {excinfo.value}"
        assert_twins_agree(env, twin, actions[3:], f"after rejecting {bad}")
    finally:
        env.close()
        twin.close()


def test_pendulum_clip_actions_clips_instead_of_raising():
    clipped = envs.make("gym:Pendulum-v1", num_envs=2, seed=1, clip_actions=True)
    twin = envs.make("gym:Pendulum-v1", num_envs=2, seed=1)
    try:
        assert outputs_equal(clipped.reset(), twin.reset())
        for big, inside in (([[5.0], [-7.0]], [[2.0], [-2.0]]), ([[2.5], [1.0]], [[2.0], [1.0]])):
            out = clipped.step(np.array(big, dtype=np.float32))
            assert outputs_equal(out, twin.step(np.array(inside, dtype=np.float32)))
        with pytest.raises(ValueError, match="(?i)nan"):  # clipping does not make NaN valid
            clipped.step(np.array([[np.nan], [0.0]], dtype=np.float32))
    finally:
        clipped.close()
        twin.close()


@pytest.mark.metaworld
def test_metaworld_rejects_nan_and_out_of_bounds_actions():
    env = envs.make("metaworld:MT1", num_envs=2, seed=0, task="reach-v3", max_episode_steps=20)
    twin = envs.make("metaworld:MT1", num_envs=2, seed=0, task="reach-v3", max_episode_steps=20)
    try:
        assert outputs_equal(env.reset(), twin.reset())
        good = np.zeros((2, 4), dtype=np.float32)
        assert_twins_agree(env, twin, [good] * 2, "before")
        nan = good.copy()
        nan[1, 2] = np.nan
        with pytest.raises(ValueError, match="(?i)nan"):
            env.step(nan)
        outside = good.copy()
        outside[0, 0] = 1.5
        with pytest.raises(ValueError, match=box_msg(2, (4,), -1, 1)):
            env.step(outside)
        with pytest.raises(ValueError, match=box_msg(2, (4,), -1, 1)):
            env.step(np.zeros((2, 3), dtype=np.float32))
        rng = np.random.default_rng(0)
        assert_twins_agree(env, twin, [rng.uniform(-1, 1, (2, 4)).astype(np.float32) for _ in range(3)], "after")
    finally:
        env.close()
        twin.close()
