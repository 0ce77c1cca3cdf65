"""A user's own environment through ``envs.register``: listed, vectorized, exact episodes, defaults."""

from __future__ import annotations

import numpy as np
import pytest

from rlmeta import envs


@pytest.fixture
def registered():
    """Register names for one test and unregister them afterwards, whatever happens."""
    names: list[str] = []

    def register(name, factory, **kwargs):
        envs.register(name, factory, **kwargs)
        names.append(name)

    yield register
    for name in names:
        try:
            envs.unregister(name)
        except KeyError:
            pass


def goal_for(start, goal=None):
    return goal if goal is not None else 2 + int(start) % 4


def check_counter_run(env, steps, *, goal=None, limit=None, seed_actions=0):
    """Step ``env`` (a CounterEnv vector env) and check every output exactly against a model.

    Returns the (length, terminated) pairs of the episodes that ended.
    """
    n = env.num_envs
    obs, info = env.reset()
    assert obs.shape == (n, 2) and obs.dtype == np.float32
    assert np.all(obs[:, 1] == 0) and np.all((obs[:, 0] >= 0) & (obs[:, 0] < 100))
    start = obs[:, 0].copy()
    t = np.zeros(n, dtype=np.int64)
    ret = np.zeros(n, dtype=np.float64)
    rng = np.random.default_rng(seed_actions)
    ended = []
    for step in range(steps):
        a = rng.integers(0, 2, size=n)
        obs, reward, terminated, truncated, info = env.step(a)
        t += 1
        exp_reward = (t + 10 * a).astype(np.float32)
        exp_goal = np.array([goal_for(s, goal) for s in start])
        exp_term = t >= exp_goal
        exp_trunc = (t >= limit if limit is not None else np.zeros(n, bool)) & ~exp_term
        exp_done = exp_term | exp_trunc
        ret += exp_reward
        np.testing.assert_array_equal(reward, exp_reward, err_msg=f"step {step}: reward")
        assert reward.dtype == np.float32
        np.testing.assert_array_equal(terminated, exp_term, err_msg=f"step {step}: terminated")
        np.testing.assert_array_equal(truncated, exp_trunc, err_msg=f"step {step}: truncated")
        if exp_done.any():
            np.testing.assert_array_equal(info["_final_obs"], exp_done)
            np.testing.assert_array_equal(info["_episode"], exp_done)
            exp_final = np.where(exp_done[:, None], np.stack([start, t], axis=1), 0).astype(np.float32)
            np.testing.assert_array_equal(info["final_obs"], exp_final, err_msg=f"step {step}: final_obs")
            assert info["final_obs"].dtype == np.float32
            np.testing.assert_array_equal(info["episode"]["length"], np.where(exp_done, t, 0))
            np.testing.assert_array_equal(info["episode"]["return"], np.where(exp_done, ret, 0.0))
            assert "success" not in info["episode"] and not env.has_success
            for i in np.flatnonzero(exp_done):
                ended.append((int(t[i]), bool(exp_term[i])))
        else:
            assert "final_obs" not in info and "_final_obs" not in info, f"step {step}: final_obs without an end"
        # ongoing rows continue; ended rows already show the first observation of the next episode
        np.testing.assert_array_equal(obs[~exp_done], np.stack([start, t], axis=1)[~exp_done].astype(np.float32))
        new = obs[exp_done]
        assert np.all(new[:, 1] == 0), f"step {step}: autoreset rows {new} are not first observations"
        assert np.all((new[:, 0] >= 0) & (new[:, 0] < 100) & (new[:, 0] == np.round(new[:, 0])))
        start[exp_done] = new[:, 0]
        t[exp_done] = 0
        ret[exp_done] = 0.0
    return ended


# --------------------------------------------------------------------------------------------
# registration and listing
# --------------------------------------------------------------------------------------------
def test_registered_env_is_listed_and_unregistered(registered, counter_env_cls):
    registered("my-counter", counter_env_cls, description="counts to a goal")
    listing = envs.available()
    assert "my-counter" in listing and listing["my-counter"] == "counts to a goal"
    assert "snake" in listing and "snake-6x6" in listing
    envs.unregister("my-counter")
    assert "my-counter" not in envs.available()
    with pytest.raises(ValueError, match="my-counter|unknown"):
        envs.make("my-counter")
    with pytest.raises(KeyError):
        envs.unregister("my-counter")


@pytest.mark.parametrize("name", ["", "a:b", " padded", 3])
def test_register_rejects_bad_names(name, counter_env_cls):
    with pytest.raises(ValueError, match="name"):
        envs.register(name, counter_env_cls)


def test_register_rejects_a_non_callable_factory():
    with pytest.raises(ValueError, match="callable"):
        envs.register("not-callable", object())
    assert "not-callable" not in envs.available()


# --------------------------------------------------------------------------------------------
# exact episodes
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("vectorization", [None, "sync", "async"])
def test_counter_episodes_are_exact(registered, counter_env_cls, vectorization):
    registered("my-counter", counter_env_cls)
    extra = {} if vectorization is None else {"vectorization": vectorization}
    env = envs.make("my-counter", num_envs=3, seed=11, **extra)
    try:
        assert isinstance(env, envs.VectorEnv)
        assert env.single_observation_space == counter_env_cls().observation_space
        assert env.single_action_space.n == 2
        ended = check_counter_run(env, 30)
    finally:
        env.close()
    assert len(ended) >= 3 * 30 // 5, "fewer episodes than the counter's goals allow"
    lengths = {length for length, _ in ended}
    assert lengths <= {2, 3, 4, 5} and len(lengths) > 1, lengths


def test_counter_time_limit_from_the_env_itself(registered, counter_env_cls):
    registered("my-counter", counter_env_cls)
    env = envs.make("my-counter", num_envs=3, seed=2, limit=4)
    try:
        ended = check_counter_run(env, 40, limit=4)
    finally:
        env.close()
    assert any(not term for _, term in ended), "no truncated episode"
    assert all(length <= 4 for length, _ in ended)


def test_terminated_and_truncated_on_the_same_step_reports_terminated_only(registered, counter_env_cls):
    """The env returns terminated=True and truncated=True at step 4; rlmeta keeps only terminated."""
    registered("my-counter", counter_env_cls)
    env = envs.make("my-counter", num_envs=2, seed=0, goal=4, limit=4)
    try:
        ended = check_counter_run(env, 12, goal=4, limit=4)
    finally:
        env.close()
    assert ended and all(term and length == 4 for length, term in ended)


def test_max_episode_steps_option_truncates_a_registered_env(registered, counter_env_cls):
    registered("my-counter", counter_env_cls)
    env = envs.make("my-counter", num_envs=2, seed=0, goal=8, max_episode_steps=3)
    try:
        ended = check_counter_run(env, 10, goal=8, limit=3)
    finally:
        env.close()
    assert ended and all(not term and length == 3 for length, term in ended)


def test_seeds_drive_the_user_env(registered, counter_env_cls):
    registered("my-counter", counter_env_cls)
    first = {}
    for seed in (0, 0, 1):
        env = envs.make("my-counter", num_envs=4, seed=seed)
        obs, _ = env.reset()
        first.setdefault(seed, []).append(obs)
        again, _ = env.reset(seed=seed)
        np.testing.assert_array_equal(again, obs)
        env.close()
    np.testing.assert_array_equal(first[0][0], first[0][1])
    assert not np.array_equal(first[0][0], first[1][0])
    assert len(set(first[0][0][:, 0].tolist())) > 1, "all sub-envs got the same start"


def test_bad_action_for_the_user_env(registered, counter_env_cls):
    registered("my-counter", counter_env_cls)
    env = envs.make("my-counter", num_envs=2)
    try:
        env.reset()
        with pytest.raises(ValueError, match=r"(?s)(?=.*\(2,)(?=.*\[0, 1\])"):
            env.step(np.array([0, 2]))
    finally:
        env.close()


def test_unknown_option_for_the_user_env_is_a_value_error(registered, counter_env_cls):
    registered("my-counter", counter_env_cls)
    with pytest.raises(ValueError, match="colour"):
        envs.make("my-counter", num_envs=2, colour="red")


class SuccessCounter:
    """CounterEnv whose info says ``success`` on the step where ``action == 1`` and ``t == 1``."""

    def __init__(self, cls):
        self.cls = cls

    def __call__(self, **options):
        env = self.cls(goal=3, **options)
        step = env.step

        def step_with_success(action):
            obs, reward, terminated, truncated, info = step(action)
            return obs, reward, terminated, truncated, {"success": bool(int(action) == 1 and env.t == 1)}

        env.step = step_with_success
        return env


def test_user_env_with_success_reports_episode_success(registered, counter_env_cls):
    registered("my-success", SuccessCounter(counter_env_cls))
    env = envs.make("my-success", num_envs=2, seed=0)
    try:
        env.reset()
        firsts = None
        for k, actions in enumerate([[1, 0], [0, 1], [0, 0]] * 2):
            if k % 3 == 0:
                firsts = np.array(actions)
            *_, info = env.step(np.array(actions))
        assert env.has_success
        np.testing.assert_array_equal(info["_episode"], [True, True])
        np.testing.assert_array_equal(info["episode"]["success"], firsts == 1)
        assert info["episode"]["success"].dtype == np.bool_
    finally:
        env.close()


# --------------------------------------------------------------------------------------------
# default options
# --------------------------------------------------------------------------------------------
class RecordingFactory:
    def __init__(self, cls):
        self.cls, self.calls = cls, []

    def __call__(self, **options):
        self.calls.append(dict(options))
        return self.cls(**options)


def test_registered_defaults_apply_and_make_options_override(registered, counter_env_cls):
    factory = RecordingFactory(counter_env_cls)
    registered("my-counter-short", factory, goal=8, limit=3)

    env = envs.make("my-counter-short", num_envs=2, seed=0)
    ended = check_counter_run(env, 10, goal=8, limit=3)
    env.close()
    assert factory.calls and all(c == {"goal": 8, "limit": 3} for c in factory.calls), factory.calls
    assert ended and all(not term and length == 3 for length, term in ended)

    factory.calls.clear()
    env = envs.make("my-counter-short", num_envs=2, seed=0, limit=5)
    ended = check_counter_run(env, 12, goal=8, limit=5)
    env.close()
    assert factory.calls and all(c == {"goal": 8, "limit": 5} for c in factory.calls), factory.calls
    assert ended and all(not term and length == 5 for length, term in ended)

    env = envs.make("my-counter-short", num_envs=2, seed=0, goal=2)
    ended = check_counter_run(env, 6, goal=2, limit=3)
    env.close()
    assert ended and all(term and length == 2 for length, term in ended)


# --------------------------------------------------------------------------------------------
# vectorized factories
# --------------------------------------------------------------------------------------------
class VecSnakeFactory:
    def __init__(self):
        self.calls = []

    def __call__(self, num_envs, seed, **options):
        self.calls.append({"num_envs": num_envs, "seed": seed, **options})
        return envs.make("snake", num_envs=num_envs, seed=seed, **options)


def test_vectorized_factory_with_defaults(registered):
    factory = VecSnakeFactory()
    registered("my-vec-snake", factory, vectorized=True, rows=6, cols=6)
    env = envs.make("my-vec-snake", num_envs=2, seed=3)
    ref = envs.make("snake", num_envs=2, seed=3, rows=6, cols=6)
    try:
        assert factory.calls == [{"num_envs": 2, "seed": 3, "rows": 6, "cols": 6}]
        assert isinstance(env, envs.VectorEnv) and env.num_envs == 2
        obs, _ = env.reset()
        ref_obs, _ = ref.reset()
        assert obs.shape[:3] == (2, 6, 6)
        np.testing.assert_array_equal(obs, ref_obs)
        rng = np.random.default_rng(0)
        for _ in range(30):
            a = rng.integers(0, 4, size=2)
            out, ref_out = env.step(a), ref.step(a)
            for x, y in zip(out[:4], ref_out[:4]):
                np.testing.assert_array_equal(x, y)
    finally:
        env.close()
        ref.close()


def test_vectorized_factory_make_options_override_defaults(registered):
    factory = VecSnakeFactory()
    registered("my-vec-snake", factory, vectorized=True, rows=6, cols=6, time_limit=50)
    env = envs.make("my-vec-snake", num_envs=3, seed=1, time_limit=5, cols=8)
    try:
        assert factory.calls == [{"num_envs": 3, "seed": 1, "rows": 6, "cols": 8, "time_limit": 5}]
        obs, _ = env.reset()
        assert obs.shape[:3] == (3, 6, 8)
        lengths = np.zeros(3, dtype=np.int64)
        truncations = 0
        rng = np.random.default_rng(1)
        for _ in range(20):
            _, _, terminated, truncated, info = env.step(rng.integers(0, 4, size=3))
            lengths += 1
            assert np.all(lengths[truncated] == 5)
            assert np.all(lengths <= 5)
            truncations += int(truncated.sum())
            lengths[terminated | truncated] = 0
        assert truncations > 0
    finally:
        env.close()
