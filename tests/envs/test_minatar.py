"""MinAtar backend (``envs.make("minatar:Breakout")``): the vector-env contract, step-by-step equality with
MinAtar's own ``Environment``, the missing-package error, names and options.

MinAtar is an optional extra (GPL-3.0): tests that build an env take the ``minatar`` fixture and skip
when it is not installed; the name, option and missing-package checks run without it.
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import test_bad_input  # the bad-action checks (tests/envs is on sys.path: pytest's rootdir-less prepend mode)
import test_contract as contract  # the contract suite: its cases, recorded rollouts and checks
from rlmeta import envs
from rlmeta.envs import minatar_backend, registry
from rlmeta.envs.core import sub_seeds
from rlmeta.envs.minatar_backend import GAMES, MissingDependency, parse_name


@pytest.fixture(scope="module")
def minatar():
    return pytest.importorskip("minatar")


# --------------------------------------------------------------------------------------------
# the contract suite, on MinAtar cases
# --------------------------------------------------------------------------------------------
PADDLE, BALL, TRAIL, BRICK = range(4)  # Breakout's channels


def breakout_is_first(row) -> bool:
    """A first Breakout state: ball (and its trail) at row 3 on a side wall, paddle in column 4, 3 full brick rows."""
    ball, trail = np.argwhere(row[:, :, BALL]), np.argwhere(row[:, :, TRAIL])
    bricks = np.zeros((10, 10), dtype=bool)
    bricks[1:4] = True
    return (
        len(ball) == 1 and tuple(ball[0]) in ((3, 0), (3, 9)) and np.array_equal(ball, trail)
        and np.array_equal(np.argwhere(row[:, :, PADDLE]), [[9, 4]]) and np.array_equal(row[:, :, BRICK], bricks)
    )


def breakout_check_final(row, terminated: bool, length: int) -> None:
    """The ball is on the bottom row exactly when the episode terminated (it was missed)."""
    ball_row = int(np.argwhere(row[:, :, BALL])[0][0])
    assert (ball_row == 9) == terminated, f"final_obs ball row {ball_row}, terminated={terminated}"


LIMITS = {"short": {"max_episode_steps": 10}, "long": {"max_episode_steps": 1000}}
CASES = [
    contract.Case(
        "minatar-breakout", "minatar:Breakout", 10, LIMITS["short"], LIMITS["long"], num_envs=4,
        is_first=breakout_is_first, check_final=breakout_check_final,
    ),
    contract.Case("minatar-freeway-full-actions", "minatar:Freeway-v0", 10, LIMITS["short"], LIMITS["long"]),
    contract.Case(
        "minatar-seaquest-options", "minatar:seaquest", 10, LIMITS["short"], LIMITS["long"],
        options={"sticky_action_prob": 0.0, "difficulty_ramping": False}, stochastic_reset=False,
    ),
    contract.Case(  # every row ends within a few steps under random actions: many autoresets
        "minatar-space-invaders", "minatar:SpaceInvaders", 10, LIMITS["short"], LIMITS["long"],
        stochastic_reset=False,
    ),
]


def _contract_checks() -> list[tuple[str, bool]]:
    """``(name, stochastic only)`` of every parametrized check of the contract suite that takes a case."""
    checks = []
    for name, fn in vars(contract).items():
        if not (name.startswith("test_") and callable(fn) and [*inspect.signature(fn).parameters] == ["case"]):
            continue
        marks = [mark for mark in getattr(fn, "pytestmark", []) if mark.name == "parametrize"]
        checks.append((name, any(mark.args[1] is contract.STOCHASTIC_PARAMS for mark in marks)))
    return checks


CONTRACT_CHECKS = _contract_checks()
CONTRACT_PARAMS = [
    pytest.param(name, case, id=f"{name}[{case.name}]")
    for name, stochastic_only in CONTRACT_CHECKS
    for case in CASES
    if case.stochastic_reset or not stochastic_only
]


def test_the_contract_suite_is_found():
    names = {name for name, _ in CONTRACT_CHECKS}
    assert len(names) >= 15 and {
        "test_truncated_final_obs_is_what_a_longer_episode_sees", "test_same_seed_and_actions_give_the_same_trajectory",
        "test_close_is_idempotent_and_a_closed_env_refuses_step_and_reset",
    } <= names
    assert dict(CONTRACT_CHECKS)["test_sub_envs_are_not_identical_copies"]  # stochastic cases only


@pytest.mark.parametrize("check, case", CONTRACT_PARAMS)
def test_contract(minatar, check, case):
    getattr(contract, check)(case)


@pytest.mark.parametrize("env_id", ["minatar:Breakout", "minatar:Seaquest-v0"])
def test_rejects_bad_actions_without_changing_state(minatar, env_id):
    test_bad_input.test_backends_reject_bad_discrete_actions_without_changing_state(env_id, {})


# --------------------------------------------------------------------------------------------
# step for step the same as MinAtar's own Environment
# --------------------------------------------------------------------------------------------
EQUALITY = [
    ("breakout", {}),
    ("space_invaders", {"minimal_action_set": False}),
    ("asterix", {"sticky_action_prob": 0.3}),
    ("seaquest", {"difficulty_ramping": False}),
]


@pytest.mark.parametrize("game, options", EQUALITY, ids=[game for game, _ in EQUALITY])
def test_steps_equal_raw_minatar(minatar, game, options):
    """Sub-env i is minatar.Environment(game) seeded with sub_seeds(seed)[i], reset, and reset again when it ends."""
    num_envs, seed, steps = 3, 11, 300
    env = envs.make(f"minatar:{game}", num_envs=num_envs, seed=seed, **options)
    raw = []
    for sub_seed in sub_seeds(seed, num_envs):
        one = minatar.Environment(
            game, sticky_action_prob=options.get("sticky_action_prob", 0.1),
            difficulty_ramping=options.get("difficulty_ramping", True),
        )
        one.seed(sub_seed)
        one.reset()
        raw.append(one)
    action_set = raw[0].minimal_action_set() if options.get("minimal_action_set", True) else list(range(6))
    assert env.single_action_space.n == len(action_set) and env.action_set.tolist() == action_set
    rng = np.random.default_rng(0)
    try:
        obs, _ = env.reset()
        np.testing.assert_array_equal(obs, np.stack([one.state() for one in raw]))
        ended, total = 0, 0.0
        returns, lengths = np.zeros(num_envs), np.zeros(num_envs, dtype=int)
        for t in range(steps):
            actions = rng.integers(0, len(action_set), num_envs)
            obs, reward, terminated, truncated, info = env.step(actions)
            assert not truncated.any()
            for i, one in enumerate(raw):
                raw_reward, raw_done = one.act(action_set[actions[i]])
                assert reward[i] == raw_reward and terminated[i] == raw_done, f"step {t} sub-env {i}"
                returns[i] += raw_reward
                lengths[i] += 1
                if raw_done:
                    np.testing.assert_array_equal(info["final_obs"][i], one.state(), err_msg=f"final obs, step {t}")
                    assert (info["episode"]["return"][i], info["episode"]["length"][i]) == (returns[i], lengths[i])
                    returns[i], lengths[i] = 0.0, 0
                    one.reset()
                    ended += 1
                np.testing.assert_array_equal(obs[i], one.state(), err_msg=f"obs at step {t}, sub-env {i}")
                total += float(raw_reward)
        assert ended >= 3 and total > 0, (ended, total)  # the comparison went through resets and rewards
    finally:
        env.close()


def test_time_limit_is_a_truncation_and_the_episode_goes_on_in_a_longer_one(minatar):
    """With a time limit the env at the limit is the same as without it, reported as truncated."""
    cut = envs.make("minatar:Freeway", num_envs=2, seed=3, max_episode_steps=40)
    free = envs.make("minatar:Freeway", num_envs=2, seed=3)  # Freeway only ends itself after 2500 steps
    try:
        cut.reset(), free.reset()
        for t in range(40):
            actions = np.full(2, 1)  # up
            obs, _, terminated, truncated, info = cut.step(actions)
            free_obs, *_ = free.step(actions)
        assert truncated.all() and not terminated.any()
        np.testing.assert_array_equal(info["final_obs"], free_obs)
        assert not np.array_equal(obs, free_obs)  # the truncated rows started new episodes
        np.testing.assert_array_equal(info["episode"]["length"], [40, 40])
    finally:
        cut.close(), free.close()


# --------------------------------------------------------------------------------------------
# names, options and action sets
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, expected", [
    ("Breakout", ("breakout", None)),
    ("breakout", ("breakout", None)),
    ("BREAKOUT", ("breakout", None)),
    ("space_invaders", ("space_invaders", None)),
    ("SpaceInvaders", ("space_invaders", None)),
    ("space-invaders", ("space_invaders", None)),
    ("Seaquest-v0", ("seaquest", False)),
    ("asterix-v1", ("asterix", True)),
    ("MinAtar/Freeway-v1", ("freeway", True)),
    ("minatar/freeway", ("freeway", None)),
])
def test_names_are_case_insensitive_with_minatar_gym_ids(name, expected):
    assert parse_name(name) == expected


@pytest.mark.parametrize("name, nearest", [
    ("Breakuot", "minatar:Breakout"),
    ("Breakout-v2", "minatar:Breakout-v1"),
    ("space_invader", "minatar:SpaceInvaders"),
    ("Asterisk", "minatar:Asterix"),
    ("pong", None),
    ("Breakout ", "minatar:Breakout"),
    ("MinAtar/Seaquest-v5", "minatar:Seaquest-v1"),
])
def test_unknown_names_list_the_games_and_the_nearest(name, nearest):
    with pytest.raises(ValueError) as excinfo:
        envs.make(f"minatar:{name}")
    message = str(excinfo.value)
    assert repr(f"minatar:{name}") in message
    assert all(game in message for game in GAMES), message
    if nearest:
        assert re.search(rf"nearest known ids: {re.escape(nearest)}\b", message), message


def test_a_typo_in_the_prefix_suggests_the_minatar_id():
    with pytest.raises(ValueError, match=re.escape("minatar:Breakout")):
        envs.make("minatr:Breakout")
    assert "minatar:Breakout" in registry.known_ids()


@pytest.mark.parametrize("name, options, word", [
    ("Breakout", {"colour": "red"}, "colour"),
    ("Breakout", {"sticky_action_prob": 1.5}, "sticky_action_prob"),
    ("Breakout", {"sticky_action_prob": -0.1}, "sticky_action_prob"),
    ("Breakout", {"sticky_action_prob": True}, "sticky_action_prob"),
    ("Breakout", {"sticky_action_prob": "0.1"}, "sticky_action_prob"),
    ("Breakout", {"difficulty_ramping": 1}, "difficulty_ramping"),
    ("Breakout", {"minimal_action_set": "yes"}, "minimal_action_set"),
    ("Breakout-v0", {"minimal_action_set": True}, "minimal_action_set"),
    ("Breakout-v1", {"minimal_action_set": False}, "minimal_action_set"),
    ("Breakout", {"max_episode_steps": 0}, "max_episode_steps"),
    ("Breakout", {"max_episode_steps": 2.5}, "max_episode_steps"),
])
def test_bad_options_are_value_errors_before_minatar_is_needed(monkeypatch, name, options, word):
    monkeypatch.setitem(sys.modules, "minatar", None)  # the checks come first: they need no MinAtar
    with pytest.raises(ValueError, match=word) as excinfo:
        envs.make(f"minatar:{name}", num_envs=2, **options)
    assert not isinstance(excinfo.value, ImportError)


@pytest.mark.parametrize("name, options, minimal", [
    ("Breakout", {}, [0, 1, 3]),
    ("Breakout-v1", {}, [0, 1, 3]),
    ("Breakout-v0", {}, [0, 1, 2, 3, 4, 5]),
    ("Breakout", {"minimal_action_set": False}, [0, 1, 2, 3, 4, 5]),
    ("Breakout-v0", {"minimal_action_set": False}, [0, 1, 2, 3, 4, 5]),
    ("SpaceInvaders", {}, [0, 1, 3, 5]),
    ("Freeway", {}, [0, 2, 4]),
    ("Asterix", {}, [0, 1, 2, 3, 4]),
    ("Seaquest", {}, [0, 1, 2, 3, 4, 5]),
])
def test_action_sets(minatar, name, options, minimal):
    env = envs.make(f"minatar:{name}", num_envs=2, **options)
    assert env.action_set.tolist() == minimal and env.single_action_space.n == len(minimal)
    env.close()


@pytest.mark.parametrize("game, channels", [
    ("asterix", 4), ("breakout", 4), ("freeway", 7), ("seaquest", 10), ("space_invaders", 6),
])
def test_observations_are_minatar_state_channels_last(minatar, game, channels):
    env = envs.make(f"minatar:{game}", num_envs=2, seed=0)
    try:
        assert env.single_observation_space.shape == (10, 10, channels)
        assert env.single_observation_space.dtype == np.bool_
        obs, _ = env.reset()
        assert obs.shape == (2, 10, 10, channels) and obs.dtype == np.bool_ and obs.any()
        assert (env.sticky_action_prob, env.difficulty_ramping, env.max_episode_steps) == (0.1, True, None)
    finally:
        env.close()


# --------------------------------------------------------------------------------------------
# MinAtar is optional (GPL-3.0): never imported unless a minatar: env is built
# --------------------------------------------------------------------------------------------
def test_missing_minatar_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "minatar", None)  # `import minatar` now fails as if it were not installed
    with pytest.raises(ModuleNotFoundError) as excinfo:
        envs.make("minatar:Breakout", num_envs=2)
    message = str(excinfo.value)
    assert "pip install 'rlmeta[minatar]'" in message and "GPL" in message and "minatar:Breakout" in message
    assert isinstance(excinfo.value, (MissingDependency, ValueError))  # the CLI reports ValueErrors as bad input
    assert excinfo.value.name == "minatar"


def test_listing_and_naming_never_import_minatar():
    code = textwrap.dedent(
        """
        import sys
        from rlmeta import envs
        from rlmeta.envs import registry
        listing = envs.available()
        ids = registry.known_ids()
        for bad in ("minatar:Breakuot", "minatr:Breakout"):
            try:
                envs.make(bad)
            except ValueError:
                pass
        print("LISTED", "minatar:<name>" in listing, "minatar:Breakout" in ids)
        print("IMPORTED", "minatar" in sys.modules)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "LISTED True True" in done.stdout and "IMPORTED False" in done.stdout, done.stdout + done.stderr


def test_the_backend_is_in_the_table():
    assert registry.BACKENDS["minatar"] is minatar_backend.BACKEND
    assert "GPL" in envs.available()["minatar:<name>"]
