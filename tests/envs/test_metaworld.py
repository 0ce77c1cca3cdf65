"""Meta-World backend (``envs.make("metaworld:...")``): contract, task sampling, seeding, errors.

Only MT1/ML1 (one task class, ~1 s to build) are built here; MT10/MT50/ML10/ML45 take 7-30 s to
build, so only their error paths (raised before anything is built) are tested.
"""

from __future__ import annotations

import numpy as np
import pytest

from rlmeta import envs

pytest.importorskip("metaworld")
pytestmark = pytest.mark.metaworld

REACH = "reach-v3"
GOAL = slice(36, 39)


def reach_controller(obs: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Move the hand (obs[:, :3]) straight at ``goal``; enough to solve reach-v3 in ~20 steps."""
    move = np.clip((goal - obs[:, :3]) * 20.0, -1.0, 1.0)
    return np.concatenate([move, np.zeros((len(obs), 1))], axis=1)


def run_steps(env: envs.VectorEnv, actions_fn, steps: int):
    """Step ``steps`` times; return the list of (obs, reward, terminated, truncated, info)."""
    obs, _ = env.reset()
    out = []
    for _ in range(steps):
        result = env.step(actions_fn(obs))
        out.append(result)
        obs = result[0]
    return out


def test_mt1_short_episode_contract():
    env = envs.make("metaworld:MT1", num_envs=2, seed=0, task=REACH, max_episode_steps=30)
    try:
        assert env.has_success
        assert env.single_observation_space.shape == (39,)
        obs, _ = env.reset()
        assert obs.dtype == np.float64 and obs.shape == (2, 39)
        goal = obs[:, GOAL].copy()
        assert np.all(goal != 0.0)  # MT: the goal is observable
        succeeded = np.zeros(2, dtype=bool)
        for step in range(30):
            prev = obs
            obs, reward, terminated, truncated, info = env.step(reach_controller(obs, goal))
            assert reward.dtype == np.float32 and reward.shape == (2,)
            assert terminated.dtype == bool and truncated.dtype == bool
            assert set(info) >= {"success", "near_object", "obj_to_target"}
            succeeded |= info["success"] > 0
            if step < 29:
                assert "final_obs" not in info and "episode" not in info
                assert not truncated.any() and not terminated.any()
        assert truncated.all() and not terminated.any()  # time limit -> truncated
        assert info["_final_obs"].all() and info["_episode"].all()
        final = info["final_obs"]
        assert final.shape == (2, 39) and final.dtype == np.float64
        np.testing.assert_array_equal(final[:, GOAL], goal)  # the ended episode's goal
        assert not np.array_equal(final, prev)  # the true last obs, not the one before
        episode = info["episode"]
        np.testing.assert_array_equal(episode["length"], [30, 30])
        assert episode["success"].dtype == bool
        np.testing.assert_array_equal(episode["success"], succeeded)  # success at any step
        assert succeeded.any()  # the controller reaches at least one goal within 30 steps
        assert np.all(episode["return"] > 0)
        assert info["success"].shape == (2,)
    finally:
        env.close()


def test_ml1_short_episode_contract():
    env = envs.make("metaworld:ML1", num_envs=2, seed=0, task=REACH, max_episode_steps=20)
    try:
        assert not env.terminate_on_success  # ML train, as Meta-World
        results = run_steps(env, lambda obs: np.zeros((2, 4)), 20)
        for obs, *_ in results:
            assert np.all(obs[:, GOAL] == 0.0)  # ML: the goal is hidden
        _, reward, terminated, truncated, info = results[-1]
        assert truncated.all() and not terminated.any()
        assert info["final_obs"].shape == (2, 39) and info["_final_obs"].all()
        np.testing.assert_array_equal(info["episode"]["length"], [20, 20])
        assert "success" in info["episode"] and not info["episode"]["success"].any()  # did not move
    finally:
        env.close()


def test_ml1_test_split_terminates_on_success():
    env = envs.make("metaworld:ML1", num_envs=1, seed=0, task=REACH, split="test", max_episode_steps=60)
    try:
        assert env.terminate_on_success  # Meta-World's make_ml_envs_test
        obs, _ = env.reset()
        goal = np.array([env._vec.envs[0].unwrapped._target_pos])  # hidden from obs in ML
        for _ in range(60):
            obs, reward, terminated, truncated, info = env.step(reach_controller(obs, goal))
            if terminated[0]:
                break
        assert terminated[0] and not truncated[0]
        assert info["episode"]["success"][0] and info["episode"]["length"][0] < 60
        assert info["success"][0] == 1.0 and info["_final_obs"][0]
    finally:
        env.close()


def test_mt1_new_goal_every_episode():
    env = envs.make("metaworld:MT1", num_envs=1, seed=1, task=REACH, max_episode_steps=1)
    try:
        obs, _ = env.reset()
        goals = [tuple(obs[0, GOAL])]
        for _ in range(8):
            obs, _, _, truncated, info = env.step(np.zeros((1, 4)))
            assert truncated[0]
            assert tuple(info["final_obs"][0, GOAL]) == goals[-1]
            goals.append(tuple(obs[0, GOAL]))
        assert len(set(goals)) > 1  # 9 draws among 50 goals
    finally:
        env.close()


def test_ml1_tasks_fixed_until_sample_tasks():
    env = envs.make("metaworld:ML1", num_envs=2, seed=0, task=REACH, max_episode_steps=1)
    try:
        first, _ = env.reset()
        for _ in range(3):  # every autoreset restarts the same task: the same first obs
            obs, *_ = env.step(np.full((2, 4), 0.5))
            np.testing.assert_array_equal(obs, first)
        np.testing.assert_array_equal(env.reset()[0], first)
        sampled, _ = env.sample_tasks()
        assert np.all(np.abs(sampled - first).max(axis=1) > 0)  # new task in every sub-env
        np.testing.assert_array_equal(env.reset()[0], sampled)  # fixed again
        np.testing.assert_array_equal(env.reset(seed=0)[0], first)  # seeding restarts the task sequence
    finally:
        env.close()


def test_seeding_determinism():
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (7, 2, 4))

    def rollout(env, seed=None):
        obs, _ = env.reset(seed=seed)
        out = [obs]
        for a in actions:
            obs, reward, _, truncated, info = env.step(a)
            out += [obs, reward, info.get("final_obs", 0)]
        return out

    a = envs.make("metaworld:MT1", num_envs=2, seed=3, task="push-v3", max_episode_steps=3)
    b = envs.make("metaworld:MT1", num_envs=2, seed=3, task="push-v3", max_episode_steps=3)
    c = envs.make("metaworld:MT1", num_envs=2, seed=4, task="push-v3", max_episode_steps=3)
    try:
        ra = rollout(a)
        for x, y in zip(ra, rollout(b)):
            np.testing.assert_array_equal(x, y)
        assert not np.array_equal(ra[0], c.reset()[0])
        assert not np.array_equal(ra[0][0], ra[0][1])  # sub-envs get their own seeds
        for x, y in zip(ra, rollout(a, seed=3)):  # reset(seed=s) replays make(seed=s)
            np.testing.assert_array_equal(x, y)
        for x, y in zip(ra, rollout(c, seed=3)):  # ... also on an env made with another seed
            np.testing.assert_array_equal(x, y)
    finally:
        for env in (a, b, c):
            env.close()


def test_benchmark_seed_picks_the_task_set():
    a = envs.make("metaworld:ML1", num_envs=1, seed=0, task=REACH)
    b = envs.make("metaworld:ML1", num_envs=1, seed=0, task=REACH, benchmark_seed=1)
    try:
        assert a.benchmark_seed == 0 and b.benchmark_seed == 1
        assert not np.array_equal(a.reset()[0], b.reset()[0])  # other tasks, same sub-env seed
    finally:
        a.close()
        b.close()


def test_async_matches_sync():
    sync = envs.make("metaworld:MT1", num_envs=2, seed=5, task=REACH, max_episode_steps=2)
    asyn = envs.make("metaworld:MT1", num_envs=2, seed=5, task=REACH, max_episode_steps=2, vectorization="async")
    try:
        np.testing.assert_array_equal(sync.reset()[0], asyn.reset()[0])
        for _ in range(4):
            s, a = sync.step(np.full((2, 4), 0.3)), asyn.step(np.full((2, 4), 0.3))
            for x, y in zip(s[:4], a[:4]):
                np.testing.assert_array_equal(x, y)
            assert sorted(s[4]) == sorted(a[4])
            for key in ("final_obs", "success"):
                np.testing.assert_array_equal(s[4].get(key), a[4].get(key))
        assert s[3].all()  # the last step ended episodes
    finally:
        sync.close()
        asyn.close()


def test_one_hot_and_actions():
    env = envs.make("metaworld:MT1", num_envs=2, seed=0, task=REACH, one_hot=True, max_episode_steps=1)
    try:
        assert env.single_observation_space.shape == (40,)
        obs, _ = env.reset()
        np.testing.assert_array_equal(obs[:, 39], [1.0, 1.0])
        obs, *_, info = env.step(np.zeros((2, 4)))
        np.testing.assert_array_equal(info["final_obs"][:, 39], [1.0, 1.0])
        with pytest.raises(ValueError, match="outside the bounds"):
            env.step(np.full((2, 4), 1.5))
        with pytest.raises(ValueError, match=r"need \(2, 4\)"):
            env.step(np.zeros((2, 3)))
    finally:
        env.close()
    with pytest.raises(RuntimeError, match="closed"):
        env.step(np.zeros((2, 4)))
    env.close()  # idempotent

    clipped = envs.make("metaworld:MT1", num_envs=1, seed=0, task=REACH, clip_actions=True)
    try:
        clipped.reset()
        clipped.step(np.full((1, 4), 3.0))
    finally:
        clipped.close()


@pytest.mark.parametrize(
    "env_id, kwargs, match",
    [
        ("metaworld:MT3", {}, r"unknown Meta-World benchmark 'MT3'.*did you mean 'MT1'"),
        ("metaworld:reach-v3", {}, r"use metaworld:MT1 or metaworld:ML1 with task='reach-v3'"),
        ("metaworld:MT1", {"task": "reech-v3"}, r"unknown Meta-World task 'reech-v3'; nearest task names: reach-v3"),
        ("metaworld:ML1", {"task": "reach-v2"}, r"nearest task names: reach-v3"),
        ("metaworld:MT1", {}, r"MT1 needs task="),
        ("metaworld:ML1", {}, r"ML1 needs task="),
        ("metaworld:MT10", {"task": REACH, "num_envs": 10}, r"MT10 .* takes no task="),
        ("metaworld:ML10", {"task": REACH, "num_envs": 10}, r"ML10 .* takes no task="),
        ("metaworld:ML1", {"task": REACH, "split": "val"}, r"split must be 'train' or 'test'"),
        ("metaworld:MT1", {"task": REACH, "split": "test"}, r"MT1 has no train/test split"),
        ("metaworld:MT10", {}, r"MT10 needs num_envs a multiple of 10.*got 1"),
        ("metaworld:MT50", {"num_envs": 60}, r"MT50 needs num_envs a multiple of 50.*got 60"),
        ("metaworld:ML10", {"num_envs": 15}, r"ML10 \(split='train'\) needs num_envs.*10, 20, 50.*got 15"),
        ("metaworld:ML10", {"num_envs": 10, "split": "test"}, None),  # 5 test classes x 2: valid (not built)
        ("metaworld:ML45", {"num_envs": 135}, r"ML45 .* 45, 90, 225.*got 135"),
        ("metaworld:ML1", {"task": REACH, "num_envs": 20}, r"ML1 .*dividing the 50 tasks.*1, 2, 5, 10, 25, 50; got 20"),
        ("metaworld:MT1", {"task": REACH, "colour": "red"}, r"unknown option\(s\) \['colour'\] for metaworld:MT1"),
        ("metaworld:MT1", {"task": REACH, "max_episode_steps": 501}, r"max_episode_steps must be .* in \[1, 500\]"),
        ("metaworld:ML1", {"task": REACH, "one_hot": True}, r"one_hot is for MT benchmarks"),
        ("metaworld:MT1", {"task": REACH, "benchmark_seed": -1}, r"benchmark_seed must be a non-negative integer"),
        ("metaworld:MT1", {"task": REACH, "vectorization": "threads"}, r"vectorization must be 'sync' or 'async'"),
        ("metaworld:MT1", {"task": REACH, "backend": "gym"}, r"backend must be 'metaworld' or 'envpool'"),
        ("metaworld:MT10", {"num_envs": 10, "backend": "envpool"}, r"backend='envpool' supports only MT1"),
        ("metaworld:MT1", {"task": REACH, "backend": "envpool", "one_hot": True}, r"one_hot=True is not available"),
        ("metaworld:MT1", {"task": REACH, "num_threads": 2}, r"num_threads is an option of backend='envpool' only"),
    ],
)
def test_bad_inputs_raise_before_building(env_id, kwargs, match, monkeypatch):
    from rlmeta.envs import metaworld_backend

    def no_build(*args, **kwargs):
        raise AssertionError("an env was built before the inputs were checked")

    monkeypatch.setattr(metaworld_backend, "MetaWorldVectorEnv", no_build)
    if match is None:  # a valid request reaches the builder
        with pytest.raises(AssertionError, match="was built"):
            envs.make(env_id, **kwargs)
        return
    with pytest.raises(ValueError, match=match):
        envs.make(env_id, **kwargs)


def test_known_ids_list_benchmarks():
    from rlmeta.envs.registry import known_ids

    ids = known_ids()
    for name in ("MT1", "MT10", "MT50", "ML1", "ML10", "ML45"):
        assert f"metaworld:{name}" in ids


def test_envpool_fast_path():
    pytest.importorskip("envpool")
    env = envs.make("metaworld:MT1", num_envs=2, seed=0, task=REACH, backend="envpool", max_episode_steps=5)
    try:
        assert env.has_success
        obs, _ = env.reset()
        assert obs.shape == (2, 39) and obs.dtype == np.float64
        goal = obs[:, GOAL].copy()
        assert np.all(goal != 0.0)  # made goal-observable, like Meta-World's MT1
        for _ in range(5):
            obs, reward, terminated, truncated, info = env.step(np.zeros((2, 4)))
        assert reward.dtype == np.float32
        assert truncated.all() and not terminated.any()
        np.testing.assert_array_equal(info["episode"]["length"], [5, 5])
        assert "success" in info["episode"] and "success" in info
        np.testing.assert_array_equal(info["final_obs"][:, GOAL], goal)
        assert not np.array_equal(obs[:, GOAL], goal)  # new goal for the next episode
    finally:
        env.close()
