"""The vector-env contract of ``envs.core``, checked for every backend with one parametrized suite.

Each :class:`Case` names an id, its options, options that force a short time limit (``short``)
and the same env with a time limit far beyond the rollout (``long``), plus optional hooks that
recognise a first observation and check a final observation for envs whose observations we
understand. Rollouts are recorded once per case (``_rollout``) and several tests inspect them.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector.utils import batch_space

from rlmeta import envs
from rlmeta.envs.levels import LEVELS

SEED = 7
STEPS = 25
COUNTER_ID = "contract-counter"


# --------------------------------------------------------------------------------------------
# observation helpers (arrays or dicts of arrays)
# --------------------------------------------------------------------------------------------
def obs_map(fn, obs):
    if isinstance(obs, dict):
        return {k: obs_map(fn, v) for k, v in obs.items()}
    return fn(obs)


def obs_row(obs, i):
    return obs_map(lambda a: a[i, ...], obs)  # 0-d arrays, not numpy scalars, for per-env scalars


def obs_copy(obs):
    return obs_map(lambda a: np.array(a, copy=True), obs)


def obs_equal(a, b) -> bool:
    if isinstance(a, dict) or isinstance(b, dict):
        return isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys() and all(
            obs_equal(a[k], b[k]) for k in a
        )
    return np.array_equal(np.asarray(a), np.asarray(b))


def obs_is_zero(row) -> bool:
    if isinstance(row, dict):
        return all(obs_is_zero(v) for v in row.values())
    return not np.any(np.asarray(row))


def assert_batched_obs(obs, space: gym.Space, num_envs: int, what: str) -> None:
    """``obs`` is ``[num_envs, *space.shape]`` of ``space.dtype`` (per key for Dict spaces)."""
    if isinstance(space, gym.spaces.Dict):
        assert isinstance(obs, dict), f"{what}: expected a dict observation, got {type(obs)}"
        assert obs.keys() == space.spaces.keys(), f"{what}: keys {sorted(obs)} != {sorted(space.spaces)}"
        for key, sub in space.spaces.items():
            assert_batched_obs(obs[key], sub, num_envs, f"{what}[{key!r}]")
        return
    assert isinstance(obs, np.ndarray), f"{what}: expected a numpy array, got {type(obs)}"
    assert obs.shape == (num_envs, *space.shape), f"{what}: shape {obs.shape} != {(num_envs, *space.shape)}"
    if isinstance(space, gym.spaces.Box):
        assert obs.dtype == space.dtype, f"{what}: dtype {obs.dtype} != space dtype {space.dtype}"
    else:  # the contract fixes no dtype here (envpool gives int32 for Discrete); it must fit the space's
        assert np.can_cast(obs.dtype, space.dtype, "safe"), f"{what}: dtype {obs.dtype} vs space {space.dtype}"


def assert_rows_in_space(obs, space: gym.Space, rows, what: str) -> None:
    for i in rows:
        row = obs_row(obs, i)
        assert space.contains(row), f"{what}: row {i} is not in single_observation_space {space}: {row}"


# --------------------------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------------------------
CARTPOLE_X, CARTPOLE_THETA = 2.4, 12 * 2 * math.pi / 360


def cartpole_is_first(row) -> bool:
    return bool(np.all(np.abs(row) <= 0.05))


def cartpole_check_final(row, terminated: bool, length: int) -> None:
    out = abs(row[0]) > CARTPOLE_X or abs(row[2]) > CARTPOLE_THETA
    if terminated:
        assert out, f"terminated CartPole episode has a final_obs inside the bounds: {row}"
    else:
        assert not out, f"truncated CartPole episode has a terminal-looking final_obs: {row}"


def envpool_snake_is_first(row) -> bool:  # also the native snake's observation="dict"
    return int(row["step_count"]) == 0


def envpool_snake_check_final(row, terminated: bool, length: int) -> None:
    assert int(row["step_count"]) == length, f"final_obs step_count {row['step_count']} != length {length}"


def counter_is_first(row) -> bool:
    return row[1] == 0 and 0 <= row[0] < 100 and row[0] == int(row[0])


def counter_check_final(row, terminated: bool, length: int) -> None:
    assert row[1] == length, f"final_obs {row} should be [start, {length}]"
    if terminated:
        assert length == 2 + int(row[0]) % 4, f"counter episode {row} terminated at the wrong step {length}"


@dataclass(frozen=True)
class Case:
    name: str
    id: str
    limit: int  # the time limit that ``short`` imposes
    short: dict[str, Any]  # options forcing time limit ``limit``
    long: dict[str, Any]  # options giving a time limit far beyond STEPS
    options: dict[str, Any] = field(default_factory=dict)  # options common to every variant
    num_envs: int = 3
    stochastic_reset: bool = True  # different seeds give different first observations
    has_success: bool | None = False  # expected env.has_success (None: either)
    is_first: Callable[[Any], bool] | None = None  # recognises a first observation (one row)
    check_final: Callable[[Any, bool, int], None] | None = None  # checks a final_obs row
    final_differs_from_first: bool = True  # obs[i] != final_obs[i] on an autoreset step
    only_first_is_first: bool = False  # is_first is False for every later observation too


CASES = [
    Case("snake", "snake", 10, {"time_limit": 10}, {"time_limit": 1000}),
    Case("snake-6x6", "snake-6x6", 10, {"time_limit": 10}, {"time_limit": 1000}, num_envs=4),
    Case(
        "snake-dict", "snake", 10, {"time_limit": 10}, {"time_limit": 1000}, options={"observation": "dict"},
        is_first=envpool_snake_is_first, check_final=envpool_snake_check_final, only_first_is_first=True,
    ),
    Case(
        "envpool-cartpole", "envpool:CartPole-v1", 10, {"max_episode_steps": 10}, {"max_episode_steps": 1000},
        is_first=cartpole_is_first, check_final=cartpole_check_final,
    ),
    Case(
        "envpool-snake", "envpool:Snake-v1", 10, {"max_episode_steps": 10}, {"max_episode_steps": 1000},
        is_first=envpool_snake_is_first, check_final=envpool_snake_check_final, only_first_is_first=True,
    ),
    Case(
        "gym-cartpole", "gym:CartPole-v1", 10, {"max_episode_steps": 10}, {"max_episode_steps": 1000},
        is_first=cartpole_is_first, check_final=cartpole_check_final,
    ),
    Case(
        "gym-cartpole-vector", "gym:CartPole-v1", 10, {"max_episode_steps": 10}, {"max_episode_steps": 1000},
        options={"vectorization": "vector"}, num_envs=4,
        is_first=cartpole_is_first, check_final=cartpole_check_final,
    ),
    Case(
        "gym-cartpole-async", "gym:CartPole-v1", 10, {"max_episode_steps": 10}, {"max_episode_steps": 1000},
        options={"vectorization": "async"}, num_envs=2,
        is_first=cartpole_is_first, check_final=cartpole_check_final,
    ),
    Case(
        "user-counter", COUNTER_ID, 4, {"limit": 4}, {},
        is_first=counter_is_first, check_final=counter_check_final, only_first_is_first=True,
    ),
    *(Case(f"grid-dense-{obs}", "grid", 10, {"level": dataclasses.replace(LEVELS["dense"], max_steps=10)},
           {"level": dataclasses.replace(LEVELS["dense"], max_steps=1000)}, options={"obs": obs},
           stochastic_reset=False, final_differs_from_first=False) for obs in ("tabular", "index", "grid")),
    Case("grid-random-start", "grid", 10, {"level": dataclasses.replace(LEVELS["dense"], max_steps=10, start=None)},
         {"level": dataclasses.replace(LEVELS["dense"], max_steps=1000, start=None)}, options={"obs": "grid"},
         final_differs_from_first=False),
    Case(
        "metaworld-mt1-reach", "metaworld:MT1", 10, {"max_episode_steps": 10}, {"max_episode_steps": 200},
        options={"task": "reach-v3"}, num_envs=2, has_success=True,  # MT1 draws a task per reset
    ),
]

PARAMS = [
    pytest.param(case, id=case.name, marks=[pytest.mark.metaworld, pytest.mark.slow] if "metaworld" in case.id else [])
    for case in CASES
]
STOCHASTIC_PARAMS = [p for p in PARAMS if p.values[0].stochastic_reset]


@pytest.fixture(scope="module", autouse=True)
def _register_counter(counter_env_cls):
    envs.register(COUNTER_ID, counter_env_cls, description="test counter env", overwrite=True)
    yield
    envs.unregister(COUNTER_ID)


def make(case: Case, variant: str = "short", seed: int = SEED, **extra):
    return envs.make(case.id, num_envs=case.num_envs, seed=seed, **case.options, **getattr(case, variant), **extra)


def sample_actions(env, steps: int, seed: int = 123) -> list[np.ndarray]:
    """``steps`` batches of valid actions, sampled from a seeded copy of ``single_action_space``."""
    space = copy.deepcopy(env.single_action_space)
    space.seed(seed)
    return [np.stack([np.asarray(space.sample()) for _ in range(env.num_envs)]) for _ in range(steps)]


# --------------------------------------------------------------------------------------------
# rollouts
# --------------------------------------------------------------------------------------------
@dataclass
class Step:
    actions: np.ndarray
    obs: Any
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    info: dict


@dataclass
class Rollout:
    num_envs: int
    is_vector_env: bool
    single_observation_space: gym.Space
    observation_space: gym.Space
    single_action_space: gym.Space
    action_space: gym.Space
    has_success: bool
    reset_obs: Any
    reset_info: dict
    steps: list[Step]
    raw: list[tuple]  # the objects exactly as returned, to detect buffers reused by later calls

    @property
    def done(self) -> np.ndarray:  # [steps, num_envs]
        return np.array([s.terminated | s.truncated for s in self.steps])


def run_steps(env, actions) -> tuple[list[Step], list[tuple]]:
    steps, raw = [], []
    for a in actions:
        out = env.step(a)
        raw.append(out)
        obs, reward, terminated, truncated, info = out
        steps.append(
            Step(a, obs_copy(obs), np.array(reward, copy=True), np.array(terminated, copy=True),
                 np.array(truncated, copy=True), copy.deepcopy(info))
        )
    return steps, raw


def record(env, actions=None, reset_seed=None, steps=STEPS) -> Rollout:
    obs, info = env.reset() if reset_seed is None else env.reset(seed=reset_seed)
    raw = [(obs, info)]
    reset_obs, reset_info = obs_copy(obs), copy.deepcopy(info)
    if actions is None:
        actions = sample_actions(env, steps)
    step_list, step_raw = run_steps(env, actions)
    return Rollout(
        env.num_envs, isinstance(env, envs.VectorEnv) and isinstance(env, gym.vector.VectorEnv),
        env.single_observation_space, env.observation_space, env.single_action_space, env.action_space,
        bool(getattr(env, "has_success", False)), reset_obs, reset_info, step_list, raw + step_raw,
    )


_CACHE: dict[tuple, Rollout] = {}


def _rollout(case: Case, variant: str = "short") -> Rollout:
    """The rollout of ``make(case, variant, seed=SEED)`` with the default actions, recorded once."""
    key = (case.name, variant)
    if key not in _CACHE:
        # every variant replays the actions of the short rollout
        actions = None if variant == "short" else [s.actions for s in _rollout(case).steps]
        env = make(case, variant)
        try:
            _CACHE[key] = record(env, actions=actions)
        finally:
            env.close()
    return _CACHE[key]


def assert_same_trajectory(a: Rollout, b: Rollout, what: str) -> None:
    assert obs_equal(a.reset_obs, b.reset_obs), f"{what}: reset observations differ"
    for t, (x, y) in enumerate(zip(a.steps, b.steps, strict=True)):
        assert obs_equal(x.obs, y.obs), f"{what}: obs differ at step {t}"
        np.testing.assert_array_equal(x.reward, y.reward, err_msg=f"{what}: reward at step {t}")
        np.testing.assert_array_equal(x.terminated, y.terminated, err_msg=f"{what}: terminated at step {t}")
        np.testing.assert_array_equal(x.truncated, y.truncated, err_msg=f"{what}: truncated at step {t}")
        assert ("final_obs" in x.info) == ("final_obs" in y.info), f"{what}: final_obs presence at step {t}"
        if "final_obs" in x.info:
            assert obs_equal(x.info["final_obs"], y.info["final_obs"]), f"{what}: final_obs at step {t}"
        assert ("episode" in x.info) == ("episode" in y.info), f"{what}: episode presence at step {t}"
        if "episode" in x.info:
            for k in x.info["episode"]:
                np.testing.assert_array_equal(
                    x.info["episode"][k], y.info["episode"][k], err_msg=f"{what}: episode[{k!r}] at step {t}"
                )


# --------------------------------------------------------------------------------------------
# API shape: spaces, types, dtypes
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", PARAMS)
def test_is_a_vector_env_with_batched_spaces(case):
    r = _rollout(case)
    assert r.is_vector_env, "envs.make must return an envs.VectorEnv (a gymnasium.vector.VectorEnv)"
    assert r.num_envs == case.num_envs
    assert r.observation_space == batch_space(r.single_observation_space, case.num_envs)
    assert r.action_space == batch_space(r.single_action_space, case.num_envs)
    if case.has_success is not None:
        assert r.has_success is case.has_success


@pytest.mark.parametrize("case", PARAMS)
def test_reset_returns_batched_obs_and_info(case):
    r = _rollout(case)
    assert_batched_obs(r.reset_obs, r.single_observation_space, case.num_envs, "reset obs")
    assert_rows_in_space(r.reset_obs, r.single_observation_space, range(case.num_envs), "reset obs")
    assert r.observation_space.contains(r.reset_obs)
    assert isinstance(r.reset_info, dict)
    assert "final_obs" not in r.reset_info and "episode" not in r.reset_info
    if case.is_first is not None:
        for i in range(case.num_envs):
            assert case.is_first(obs_row(r.reset_obs, i)), f"reset obs row {i} is not a first observation"


@pytest.mark.parametrize("case", PARAMS)
def test_step_returns_batched_arrays(case):
    r = _rollout(case)
    n = case.num_envs
    for t, s in enumerate(r.steps):
        assert_batched_obs(s.obs, r.single_observation_space, n, f"step {t} obs")
        assert_rows_in_space(s.obs, r.single_observation_space, range(n), f"step {t} obs")
        assert r.observation_space.contains(s.obs), f"step {t} obs not in observation_space"
        for name, arr, dtype in (("reward", s.reward, np.float32), ("terminated", s.terminated, np.bool_),
                                 ("truncated", s.truncated, np.bool_)):
            assert isinstance(arr, np.ndarray) and arr.shape == (n,), f"step {t} {name}: {arr!r}"
            assert arr.dtype == dtype, f"step {t} {name} dtype {arr.dtype} != {np.dtype(dtype)}"
        assert np.all(np.isfinite(s.reward))
        assert isinstance(s.info, dict)


@pytest.mark.parametrize("case", PARAMS)
def test_returned_arrays_are_not_overwritten_by_later_calls(case):
    r = _rollout(case)
    obs, info = r.raw[0]
    assert obs_equal(obs, r.reset_obs), "reset obs was modified in place by later step() calls"
    for t, (out, s) in enumerate(zip(r.raw[1:], r.steps)):
        assert obs_equal(out[0], s.obs), f"obs returned at step {t} was modified in place by later calls"
        assert np.array_equal(out[1], s.reward) and np.array_equal(out[2], s.terminated)
        assert np.array_equal(out[3], s.truncated)
        if "final_obs" in out[4]:
            assert obs_equal(out[4]["final_obs"], s.info["final_obs"]), f"final_obs of step {t} modified later"


# --------------------------------------------------------------------------------------------
# same-step autoreset, terminated vs truncated, episode statistics
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", PARAMS)
def test_final_obs_present_exactly_on_steps_where_an_episode_ended(case):
    r = _rollout(case)
    n, space = case.num_envs, r.single_observation_space
    assert r.done.any(), f"no episode ended in {STEPS} steps with time limit {case.limit}"
    for t, s in enumerate(r.steps):
        done = s.terminated | s.truncated
        if not done.any():
            assert "final_obs" not in s.info and "_final_obs" not in s.info, f"step {t}: final_obs without an end"
            assert not np.any(s.info.get("_episode", False)), f"step {t}: _episode set without an end"
            continue
        assert "final_obs" in s.info and "_final_obs" in s.info, f"step {t}: episode ended but no final_obs"
        mask = np.asarray(s.info["_final_obs"])
        assert mask.dtype == np.bool_ and mask.shape == (n,)
        np.testing.assert_array_equal(mask, done, err_msg=f"step {t}: _final_obs != terminated | truncated")
        final = s.info["final_obs"]
        assert_batched_obs(final, space, n, f"step {t} final_obs")
        assert_rows_in_space(final, space, np.flatnonzero(done), f"step {t} final_obs")
        for i in np.flatnonzero(~done):
            assert obs_is_zero(obs_row(final, i)), f"step {t}: final_obs row {i} (not ended) is not zero"


@pytest.mark.parametrize("case", PARAMS)
def test_autoreset_obs_is_a_first_obs_and_final_obs_the_last(case):
    r = _rollout(case)
    lengths = np.zeros(case.num_envs, dtype=np.int64)
    for t, s in enumerate(r.steps):
        lengths += 1
        for i in np.flatnonzero(s.terminated | s.truncated):
            new, final = obs_row(s.obs, i), obs_row(s.info["final_obs"], i)
            if case.final_differs_from_first:
                assert not obs_equal(new, final), f"step {t} row {i}: obs equals final_obs (no autoreset?)"
            if case.is_first is not None:
                assert case.is_first(new), f"step {t} row {i}: obs {new} is not a first observation"
            if case.check_final is not None:
                case.check_final(final, bool(s.terminated[i]), int(lengths[i]))
            lengths[i] = 0
        if case.only_first_is_first:
            for i in np.flatnonzero(~(s.terminated | s.truncated)):
                assert not case.is_first(obs_row(s.obs, i)), f"step {t} row {i}: reset without an episode end"


@pytest.mark.parametrize("case", PARAMS)
def test_truncation_exactly_at_time_limit_and_never_with_termination(case):
    r = _rollout(case)
    lengths = np.zeros(case.num_envs, dtype=np.int64)
    for t, s in enumerate(r.steps):
        lengths += 1
        both = s.terminated & s.truncated
        assert not both.any(), f"step {t}: rows {np.flatnonzero(both)} are both terminated and truncated"
        for i in range(case.num_envs):
            if s.truncated[i]:
                assert lengths[i] == case.limit, f"step {t} row {i}: truncated after {lengths[i]} steps"
            elif not s.terminated[i]:
                assert lengths[i] < case.limit, f"step {t} row {i}: not truncated after {lengths[i]} steps"
        lengths[s.terminated | s.truncated] = 0
    assert any(s.truncated.any() for s in r.steps), "no episode was truncated by the short time limit"


@pytest.mark.parametrize("case", PARAMS)
def test_truncated_final_obs_is_what_a_longer_episode_sees(case):
    """With a longer time limit, the same seed and actions, the env at step T is the final obs.

    Each row runs in lockstep in both envs (through terminations, which both see) until its
    first truncation in the short env; there ``final_obs`` must be the long env's observation.
    This assumes each sub-env has its own random stream (true of every backend: per-sub-env
    seeds), so another row's reset cannot change this row's dynamics.
    """
    short, long = _rollout(case, "short"), _rollout(case, "long")
    compared = 0
    for i in range(case.num_envs):
        for t, (s, lg) in enumerate(zip(short.steps, long.steps)):
            assert s.reward[i] == lg.reward[i], f"row {i}: rewards differ at step {t} before any truncation"
            if s.truncated[i]:
                assert not (lg.terminated[i] or lg.truncated[i]), f"row {i}: long env ended at the short limit"
                assert obs_equal(obs_row(s.info["final_obs"], i), obs_row(lg.obs, i)), (
                    f"row {i}: final_obs at the time limit (step {t}) is not what the longer episode sees"
                )
                compared += 1
                break
            assert s.terminated[i] == lg.terminated[i], f"row {i}: terminated differs at step {t}"
            if s.terminated[i]:
                assert obs_equal(obs_row(s.info["final_obs"], i), obs_row(lg.info["final_obs"], i)), (
                    f"row {i}: final_obs of a terminated episode differs at step {t}"
                )
            assert obs_equal(obs_row(s.obs, i), obs_row(lg.obs, i)), f"row {i}: obs differ at step {t}"
    assert compared or case.name == "user-counter", "no episode was truncated; nothing compared"


@pytest.mark.parametrize("case", PARAMS)
def test_episode_statistics_match_accumulated_rewards(case):
    r = _rollout(case)
    n = case.num_envs
    returns, lengths = np.zeros(n, dtype=np.float64), np.zeros(n, dtype=np.int64)
    seen = 0
    for t, s in enumerate(r.steps):
        returns += s.reward.astype(np.float64)
        lengths += 1
        done = s.terminated | s.truncated
        if not done.any():
            continue
        assert "episode" in s.info and "_episode" in s.info, f"step {t}: episode ended but no info['episode']"
        ep, mask = s.info["episode"], np.asarray(s.info["_episode"])
        np.testing.assert_array_equal(mask, done, err_msg=f"step {t}: _episode != terminated | truncated")
        assert ("success" in ep) == r.has_success, f"success key present iff has_success ({r.has_success})"
        assert ep["return"].dtype == np.float64 and ep["return"].shape == (n,)
        assert ep["length"].dtype == np.int64 and ep["length"].shape == (n,)
        if r.has_success:
            assert ep["success"].dtype == np.bool_ and ep["success"].shape == (n,)
            assert not ep["success"][~done].any()
        np.testing.assert_array_equal(ep["length"], np.where(done, lengths, 0), err_msg=f"step {t}: lengths")
        np.testing.assert_allclose(
            ep["return"], np.where(done, returns, 0.0), rtol=1e-5, atol=1e-5, err_msg=f"step {t}: returns"
        )
        seen += int(done.sum())
        returns[done], lengths[done] = 0.0, 0
    assert seen > 0


# --------------------------------------------------------------------------------------------
# seeding
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", PARAMS)
def test_same_seed_and_actions_give_the_same_trajectory(case):
    ref = _rollout(case)
    env = make(case)
    try:
        again = record(env, actions=[s.actions for s in ref.steps])
    finally:
        env.close()
    assert_same_trajectory(ref, again, "two envs made with the same seed")


@pytest.mark.parametrize("case", PARAMS)
def test_reset_seed_reproduces_the_trajectory(case):
    """reset(seed=s) twice on one env, the second time mid-episode, gives the same trajectory."""
    actions = [s.actions for s in _rollout(case).steps]
    env = make(case, seed=0)
    try:
        first = record(env, actions=actions, reset_seed=SEED)
        run_steps(env, actions[:3])  # leave episodes in progress; reset must forget them
        again = record(env, actions=actions, reset_seed=SEED)
    finally:
        env.close()
    assert_same_trajectory(first, again, "reset(seed=SEED) again after some steps")


@pytest.mark.parametrize("case", PARAMS)
def test_make_seed_is_the_seed_of_the_first_reset(case):
    """make(seed=SEED).reset() == make(seed=0).reset(seed=SEED): the make seed is the first reset's."""
    ref = _rollout(case)
    env = make(case, seed=0)
    try:
        via_reset = record(env, actions=[s.actions for s in ref.steps], reset_seed=SEED)
    finally:
        env.close()
    assert_same_trajectory(ref, via_reset, "make(seed=0).reset(seed=SEED) vs make(seed=SEED).reset()")


@pytest.mark.parametrize("case", STOCHASTIC_PARAMS)
def test_different_seeds_give_different_first_observations(case):
    ref = _rollout(case)
    env = make(case, seed=SEED + 1)
    try:
        obs, _ = env.reset()
    finally:
        env.close()
    assert not obs_equal(obs, ref.reset_obs), "seed SEED and SEED + 1 gave the same first observations"


@pytest.mark.parametrize("case", STOCHASTIC_PARAMS)
def test_sub_envs_are_not_identical_copies(case):
    r = _rollout(case)
    rows = [obs_row(r.reset_obs, i) for i in range(case.num_envs)]
    assert not all(obs_equal(rows[0], row) for row in rows[1:]), "every sub-env got the same first observation"


# --------------------------------------------------------------------------------------------
# lifecycle
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", PARAMS)
def test_step_before_reset_raises_runtime_error(case):
    env = make(case)
    try:
        actions = sample_actions(env, 1)[0]
        with pytest.raises(RuntimeError):
            env.step(actions)
        obs, _ = env.reset()  # the env is still usable
        assert_batched_obs(obs, env.single_observation_space, case.num_envs, "reset obs")
        env.step(actions)
    finally:
        env.close()


@pytest.mark.parametrize("case", PARAMS)
def test_close_is_idempotent_and_a_closed_env_refuses_step_and_reset(case):
    env = make(case)
    actions = sample_actions(env, 1)[0]
    env.reset()
    env.step(actions)
    env.close()
    env.close()
    with pytest.raises(RuntimeError):
        env.step(actions)
    with pytest.raises(RuntimeError):
        env.reset()
    env.close()


def test_close_before_reset_is_fine():
    env = envs.make("gym:CartPole-v1", num_envs=2)
    env.close()
    env.close()
    with pytest.raises(RuntimeError):
        env.reset()
