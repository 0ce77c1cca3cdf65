"""The GROOVE grid world: step by step against a plain transcription of GROOVE's ``GridWorld``, DP optimal
returns against Monte-Carlo returns of the DP-greedy policy, and the vector-env contract.

``GrooveReference`` below transcribes ``reset_env``/``step_env``/``_get_next_pos``/``get_obs`` of
GROOVE's ``environments/gridworld/gridworld.py`` (repository ``EmptyJackson/groove``) into plain
Python, one level at a time, deliberately naive and independent of the numba kernel. It draws its
random numbers from a plain-Python SplitMix64 stream seeded like the env's sub-env streams and in
the order ``envs.gridworld`` documents (one uniform per object for respawn, placements, one uniform
for termination), so both sides see the same randomness and must agree exactly.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rlmeta import envs
from rlmeta.envs.gridworld import GridVectorEnv, make_grid
from rlmeta.envs.levels import (
    DOWN, LEFT, LEVELS, LPG_LEVELS, RIGHT, STAY, UP, GridObject, Level, optimal_policy, optimal_return, sample_levels,
)

MASK64 = (1 << 64) - 1


class Stream:
    """SplitMix64 in plain Python (the env's per-sub-env generator)."""

    def __init__(self, state: int):
        self.state = int(state)

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def uniform(self) -> float:
        return (self.next() >> 11) * 2.0 ** -53

    def below(self, n: int) -> int:
        return ((self.next() >> 32) * n) >> 32


def streams_for(seed: int, num_envs: int) -> list[Stream]:
    """The sub-env streams the env derives from ``seed``."""
    return [Stream(s) for s in np.random.SeedSequence(seed).generate_state(num_envs, dtype=np.uint64)]


class GrooveReference:
    """GROOVE's ``GridWorld`` for one level, transcribed; flat cells ``pos = row * grid_size + col``."""

    def __init__(self, level: Level, stream: Stream, padded: int, max_objects: int, max_types: int, tabular: bool):
        g = level.size
        self.grid_size = g
        self.walls = [False] * (g * g)
        for r, c in level.walls:
            self.walls[r * g + c] = True
        self.start_pos = None if level.start is None else level.start[0] * g + level.start[1]
        self.static_obj_poss = [None if o.position is None else o.position[0] * g + o.position[1] for o in level.objects]
        self.obj_rewards = [o.reward for o in level.objects]
        self.obj_p_terminate = [o.p_terminate for o in level.objects]
        self.obj_p_respawn = [o.p_respawn for o in level.objects]
        self.obj_ids = list(level.object_types())
        self.n_objs = level.num_objects
        self.max_steps_in_episode = level.max_steps
        self.stream, self.padded, self.max_objects, self.max_types, self.tabular = stream, padded, max_objects, max_types, tabular

    def _random_cell(self, taken: list[int]) -> int:
        """Uniform among non-wall cells not in ``taken``, enumerated in order (the documented placement draw)."""
        free = [c for c in range(self.grid_size ** 2) if not self.walls[c] and c not in taken]
        if not free:
            return -1
        return free[self.stream.below(len(free))]

    def reset_env(self):
        taken = [p for p in self.static_obj_poss if p is not None]
        self.pos = self.start_pos if self.start_pos is not None else self._random_cell(taken)
        taken.append(self.pos)
        self.obj_poss = []
        for p in self.static_obj_poss:
            if p is None:
                p = self._random_cell(taken)
                taken.append(p)
            self.obj_poss.append(p)
        self.obj_existss = [True] * self.n_objs
        self.time = 0
        return self.get_obs()

    def _get_next_pos(self, pos: int, action: int) -> int:
        g = self.grid_size
        top_row, bottom_row = pos < g, pos >= g * (g - 1)
        left_column, right_column = pos % g == 0, pos % g == g - 1
        step = ((action == 0) * (1 - top_row) * -g + (action == 1) * (1 - bottom_row) * g
                + (action == 2) * (1 - left_column) * -1 + (action == 3) * (1 - right_column) * 1)
        next_pos = pos + step
        return pos if self.walls[next_pos] else next_pos

    def step_env(self, action: int):
        pos = self._get_next_pos(self.pos, action)
        obj_collected = [self.obj_existss[k] and self.obj_poss[k] == pos for k in range(self.n_objs)]
        respawn = [self.stream.uniform() < self.obj_p_respawn[k] for k in range(self.n_objs)]
        obj_existss = [e or r for e, r in zip(self.obj_existss, respawn)]
        use_new_poss = [(not self.obj_existss[k]) and respawn[k] and self.static_obj_poss[k] is None
                        for k in range(self.n_objs)]
        if any(use_new_poss):
            taken = [pos] + list(self.obj_poss)
            for k in range(self.n_objs):
                if use_new_poss[k]:
                    cell = self._random_cell(taken)
                    if cell < 0:
                        obj_existss[k] = False
                    else:
                        self.obj_poss[k] = cell
                        taken.append(cell)
        obj_existss = [e and not c for e, c in zip(obj_existss, obj_collected)]
        p_term = sum(p for p, c in zip(self.obj_p_terminate, obj_collected) if c)
        term = self.stream.uniform() < p_term
        self.time += 1
        reward = sum(r for r, c in zip(self.obj_rewards, obj_collected) if c)
        self.pos, self.obj_existss = pos, obj_existss
        truncated = (not term) and self.time >= self.max_steps_in_episode
        return self.get_obs(), reward, term, truncated, any(obj_collected)

    def get_obs(self) -> np.ndarray:
        g, s = self.grid_size, self.padded
        if self.tabular:
            obs = np.zeros(s * s * 2 ** self.max_objects, np.float32)
            pattern = sum(2 ** k for k, e in enumerate(self.obj_existss) if e)
            obs[self.pos + s * s * pattern] = 1.0
            return obs
        obs = np.zeros((s, s, 2 + self.max_types), np.float32)
        for r in range(s):
            for c in range(s):
                obs[r, c, 1] = r >= g or c >= g or self.walls[r * g + c]
        obs[self.pos // g, self.pos % g, 0] = 1.0
        for k in range(self.n_objs):
            if self.obj_existss[k]:
                obs[self.obj_poss[k] // g, self.obj_poss[k] % g, 2 + self.obj_ids[k]] = 1.0
        return obs


def run_against_reference(env: GridVectorEnv, seed: int, steps: int, action_seed: int = 0) -> dict[str, int]:
    """Random play: every obs, reward, ending, final obs and episode statistic equal the reference's."""
    n = env.num_envs
    refs = [GrooveReference(level, stream, env.max_grid_size, env.max_objects, env.max_types, env.tabular)
            for level, stream in zip(env.levels, streams_for(seed, n))]
    obs, _ = env.reset(seed=seed)
    for i, ref in enumerate(refs):
        np.testing.assert_array_equal(obs[i], ref.reset_env(), err_msg=f"reset obs of sub-env {i}")
    rng = np.random.default_rng(action_seed)
    returns, lengths = np.zeros(n), np.zeros(n, dtype=np.int64)
    events = {"collected": 0, "respawned": 0, "terminated": 0, "truncated": 0}
    for t in range(steps):
        actions = rng.integers(0, 5, n)
        obs, reward, term, trunc, info = env.step(actions)
        for i, ref in enumerate(refs):
            before = list(ref.obj_existss)
            ref_obs, ref_reward, ref_term, ref_trunc, collected = ref.step_env(int(actions[i]))
            events["collected"] += collected
            events["respawned"] += sum((not b) and a for b, a in zip(before, ref.obj_existss))
            where = f"step {t} sub-env {i}"
            assert reward[i] == np.float32(ref_reward), where
            assert (term[i], trunc[i]) == (ref_term, ref_trunc), where
            returns[i] += reward[i]
            lengths[i] += 1
            if ref_term or ref_trunc:
                events["terminated" if ref_term else "truncated"] += 1
                np.testing.assert_array_equal(info["final_obs"][i], ref_obs, err_msg=f"final obs, {where}")
                assert info["_final_obs"][i] and info["_episode"][i]
                assert info["episode"]["return"][i] == pytest.approx(returns[i], abs=1e-4)
                assert info["episode"]["length"][i] == lengths[i]
                returns[i], lengths[i] = 0.0, 0
                ref_obs = ref.reset_env()
            elif "final_obs" in info:
                assert not info["_final_obs"][i] and not info["final_obs"][i].any()
            np.testing.assert_array_equal(obs[i], ref_obs, err_msg=f"obs, {where}")
    return events


# --------------------------------------------------------------------------------------------
# dynamics: against the transcription of GROOVE
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LPG_LEVELS)
def test_lpg_levels_match_groove_step_by_step(name):
    level = LEVELS[name]
    env = make_grid(num_envs=6, seed=0, level=name)
    events = run_against_reference(env, seed=11, steps=max(1000, level.max_steps + 50))
    # The same level with a short time limit, so that every level also reaches its limit.
    short = make_grid(num_envs=6, seed=0, level=dataclasses.replace(level, max_steps=40))
    for key, count in run_against_reference(short, seed=12, steps=300).items():
        events[key] += count
    assert events["collected"] > 0, events
    assert events["truncated"] > 0, events
    if any(o.p_respawn > 0 for o in level.objects):
        assert events["respawned"] > 0, events
    if any(o.p_terminate > 0 for o in level.objects):
        assert events["terminated"] > 0, events


@pytest.mark.parametrize("name", ["rand_dense", "rand_small", "rand_sparse"])
def test_random_object_levels_match_the_reference_with_grid_obs(name):
    env = make_grid(num_envs=3, seed=0, level=name, obs="grid")
    events = run_against_reference(env, seed=5, steps=600)
    assert events["collected"] > 0, events
    if name != "rand_sparse":  # there every collection ends the episode, and the reset places the objects
        assert events["respawned"] > 0, events


def test_mixed_levels_with_padded_observations_match_the_reference():
    levels = sample_levels("small", 6, seed=3) + [LEVELS["sparse"], LEVELS["longer"]]
    for obs in ("tabular", "grid"):
        env = make_grid(num_envs=8, seed=0, levels=levels, obs=obs)
        assert env.max_grid_size == 13 and env.max_objects == 5
        events = run_against_reference(env, seed=9, steps=400)
        assert events["collected"] > 0 and events["terminated"] > 0 and events["truncated"] > 0, events


def tiny(objects, size=3, walls=(), start=(0, 0), max_steps=50) -> Level:
    return Level(size, tuple(objects), walls, start, max_steps)


def step(env, action):
    return env.step(np.array([action]))


def test_walls_and_edges_block_moves_and_stay_stays():
    level = tiny([GridObject(1.0, 0.0, 0.0, (2, 2))], walls=((0, 1),))
    env = make_grid(level=level, obs="grid")
    env.reset()
    for action, expected in [(UP, (0, 0)), (LEFT, (0, 0)), (RIGHT, (0, 0)), (DOWN, (1, 0)), (STAY, (1, 0)),
                             (RIGHT, (1, 1)), (UP, (1, 1)), (RIGHT, (1, 2)), (RIGHT, (1, 2)), (UP, (0, 2))]:
        step(env, action)
        assert env.get_state(0)["pos"] == expected, (action, expected)


def test_collecting_pays_removes_and_a_collected_object_cannot_respawn_the_same_step():
    level = tiny([GridObject(0.5, 0.0, 1.0, (0, 1))])  # respawns with probability 1
    env = make_grid(level=level)
    env.reset()
    _, reward, term, trunc, _ = step(env, RIGHT)
    assert reward[0] == 0.5 and not term[0] and not trunc[0]
    assert env.get_state(0)["exists"] == (False,)  # collected: gone even though respawn was drawn
    _, reward, *_ = step(env, STAY)  # absent at the start of the step: no reward; it respawns under the agent
    assert reward[0] == 0.0 and env.get_state(0)["exists"] == (True,)
    _, reward, *_ = step(env, STAY)  # staying on it collects it
    assert reward[0] == 0.5 and env.get_state(0)["exists"] == (False,)


def test_termination_probability_one_ends_the_episode_with_the_reward():
    level = tiny([GridObject(-1.0, 1.0, 0.0, (1, 0)), GridObject(1.0, 0.0, 0.0, (0, 1))])
    env = make_grid(level=level)
    env.reset()
    _, reward, term, trunc, info = step(env, DOWN)
    assert reward[0] == -1.0 and term[0] and not trunc[0]
    assert info["episode"]["return"][0] == -1.0 and info["episode"]["length"][0] == 1
    final = info["final_obs"][0]
    cell, pattern = divmod(int(final.argmax()), 9)[::-1]
    assert (cell, pattern) == (3, 0b10)  # on (1, 0); object 0 gone, object 1 present
    assert env.get_state(0) == {"pos": (0, 0), "time": 0, "exists": (True, True), "objects": ((1, 0), (0, 1))}


def test_time_limit_truncates_and_a_terminating_last_step_is_terminated_only():
    level = tiny([GridObject(1.0, 1.0, 0.0, (0, 2))], max_steps=2)
    env = make_grid(level=level)
    env.reset()
    _, _, term, trunc, info = step(env, DOWN)
    assert not term[0] and not trunc[0]
    _, _, term, trunc, info = step(env, DOWN)
    assert trunc[0] and not term[0] and info["episode"]["length"][0] == 2
    step(env, RIGHT)
    _, reward, term, trunc, _ = step(env, RIGHT)  # collects a p_terminate=1 object on the last step
    assert reward[0] == 1.0 and term[0] and not trunc[0]


def test_respawn_and_termination_frequencies_match_their_probabilities():
    # A two-cell corridor: RIGHT enters the object's cell and then keeps the agent there. The object is
    # collected, absent for one step, back with probability p_respawn per step, collected again.
    p_respawn, p_terminate = 0.25, 0.2
    level = Level(2, (GridObject(1.0, p_terminate, p_respawn, (0, 1)),), walls=((1, 0), (1, 1)), start=(0, 0),
                  max_steps=10_000)
    env = make_grid(num_envs=64, seed=1, level=level)
    env.reset()
    since = np.full(64, -1)  # steps since the episode's last collection (-1: none yet)
    collections = terminations = gap_sum = gap_count = 0
    for _ in range(500):
        _, reward, term, _, _ = env.step(np.full(64, RIGHT))
        hit = reward > 0
        assert not (term & ~hit).any()  # only a collection can terminate
        collections += hit.sum()
        terminations += (hit & term).sum()
        counted = hit & (since >= 0)
        gap_sum += (since[counted] + 1).sum()
        gap_count += counted.sum()
        since = np.where(since >= 0, since + 1, since)
        since[hit] = 0
        since[term] = -1
    # P(terminate | collected) = p_terminate; gap between collections = 1 + Geometric(p_respawn): mean 1 + 1/p.
    frac = terminations / collections
    assert abs(frac - p_terminate) < 4 * np.sqrt(p_terminate * (1 - p_terminate) / collections), frac
    mean_gap = gap_sum / gap_count
    sd = np.sqrt((1 - p_respawn) / p_respawn ** 2 / gap_count)
    assert abs(mean_gap - (1 + 1 / p_respawn)) < 4 * sd, mean_gap


def test_random_placements_avoid_walls_agent_and_other_objects():
    env = make_grid(num_envs=16, seed=2, level="rand_small", obs="grid")
    obs, _ = env.reset()
    rng = np.random.default_rng(0)
    for _ in range(300):
        for i in range(16):
            s = env.get_state(i)
            present = [cell for cell, e in zip(s["objects"], s["exists"]) if e]
            assert len(set(s["objects"])) == len(s["objects"])
            assert not set(s["objects"]) & {(1, 2), (3, 4)}
            assert s["pos"] not in present  # entering collects; a respawn never lands on the agent
        env.step(rng.integers(0, 5, 16))


# --------------------------------------------------------------------------------------------
# optimal returns: DP value = Monte-Carlo return of the DP-greedy policy
# --------------------------------------------------------------------------------------------
def greedy_first_episodes(level: Level, num_envs: int, seed: int, gamma: float = 1.0) -> np.ndarray:
    """Discounted return of each sub-env's first episode when acting with ``optimal_policy``."""
    policy = optimal_policy(level, gamma)
    env = make_grid(num_envs=num_envs, seed=seed, level=level)
    obs, _ = env.reset()
    cells = env.max_grid_size ** 2
    t = np.zeros(num_envs, dtype=np.int64)
    returns = np.zeros(num_envs)
    active = np.ones(num_envs, dtype=bool)
    while active.any():
        index = obs.argmax(axis=1)
        actions = policy[np.minimum(t, level.max_steps - 1), index // cells, index % cells].astype(np.int64)
        obs, reward, term, trunc, _ = env.step(actions)
        returns += np.where(active, reward * gamma ** t, 0.0)
        t += 1
        active &= ~(term | trunc)
    return returns


def test_dp_is_exact_on_deterministic_levels():
    assert optimal_return(LEVELS["sparse"]) == 1.0
    np.testing.assert_array_equal(greedy_first_episodes(LEVELS["sparse"], 4, 0), 1.0)
    # Respawn every step, no termination: best is to shuttle between two +1 objects next to each other.
    level = Level(4, (GridObject(1.0, 0.0, 1.0, (3, 2)), GridObject(1.0, 0.0, 1.0, (3, 3)),
                      GridObject(-1.0, 0.0, 1.0, (2, 3))), walls=((1, 1),), start=(0, 0), max_steps=12)
    value = optimal_return(level)
    assert value == 8.0  # 5 moves to collect at (3, 2), then a collection on each of the 7 steps left
    np.testing.assert_array_equal(greedy_first_episodes(level, 4, 0), value)
    discounted = optimal_return(level, gamma=0.9)
    np.testing.assert_allclose(greedy_first_episodes(level, 2, 0, gamma=0.9), discounted, rtol=1e-12)
    assert discounted == pytest.approx(sum(0.9 ** t for t in range(4, 12)))


@pytest.mark.parametrize("name", ["dense", "long", "longer", "long_dense"])
def test_dp_matches_monte_carlo_on_stochastic_lpg_levels(name):
    level = LEVELS[name]
    returns = greedy_first_episodes(level, 192, seed=1)
    value = optimal_return(level)
    se = returns.std(ddof=1) / np.sqrt(len(returns))
    assert abs(returns.mean() - value) < 4 * se + 1e-9, (returns.mean(), value, se)


def test_discounted_dp_and_random_start_match_monte_carlo():
    level = dataclasses.replace(LEVELS["dense"], start=None, max_steps=60, name="dense-random-start")
    for gamma in (1.0, 0.9):
        returns = greedy_first_episodes(level, 1024, seed=2, gamma=gamma)
        value = optimal_return(level, gamma)
        se = returns.std(ddof=1) / np.sqrt(len(returns))
        assert abs(returns.mean() - value) < 4 * se, (gamma, returns.mean(), value, se)


def test_dp_on_sampled_levels_beats_random_play_and_is_cached():
    for level in sample_levels("small", 5, seed=0):
        value = optimal_return(level)
        policy = optimal_policy(level)
        assert policy.shape == (level.max_steps, 2 ** level.num_objects, level.num_cells)
        assert policy.dtype == np.int8 and policy.min() >= 0 and policy.max() <= 4
        assert value >= 0.0  # staying put never costs anything
        assert optimal_return(level) == value
    env = make_grid(num_envs=3, seed=0, generator="small")
    np.testing.assert_array_equal(env.optimal_returns(), [optimal_return(lv) for lv in env.levels])


def test_dp_rejects_random_object_levels_and_bad_gamma():
    with pytest.raises(ValueError, match="fixed object cells"):
        optimal_return(LEVELS["rand_dense"])
    with pytest.raises(ValueError, match="gamma"):
        optimal_return(LEVELS["dense"], gamma=1.5)
    with pytest.raises(ValueError, match="Level"):
        optimal_return("dense")


# --------------------------------------------------------------------------------------------
# the vector-env contract, options, levels
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("obs, shape", [("tabular", (121 * 16,)), ("grid", (11, 11, 5))])
def test_spaces_shapes_and_dtypes(obs, shape):
    env = envs.make("grid-dense", num_envs=4, seed=0, obs=obs)
    assert isinstance(env, envs.VectorEnv) and env.single_observation_space.shape == shape
    assert env.single_action_space.n == 5
    o, info = env.reset()
    assert o.shape == (4, *shape) and o.dtype == np.float32 and info == {}
    assert env.observation_space.contains(o)
    o, r, te, tr, info = env.step(np.zeros(4, dtype=np.int64))
    assert o.shape == (4, *shape) and r.dtype == np.float32 and te.dtype == tr.dtype == np.bool_
    if obs == "tabular":
        np.testing.assert_array_equal(o.sum(axis=1), 1.0)


def test_index_obs_is_the_position_of_the_tabular_one():
    levels = sample_levels("small", 6, seed=1)
    tab = make_grid(num_envs=6, seed=3, levels=levels)
    idx = make_grid(num_envs=6, seed=3, levels=levels, obs="index")
    assert idx.single_observation_space.n == tab.single_observation_space.shape[0]
    ot, _ = tab.reset()
    oi, _ = idx.reset()
    assert oi.shape == (6,) and oi.dtype == np.int64 and idx.observation_space.contains(oi)
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(300):
        np.testing.assert_array_equal(oi, ot.argmax(axis=1))
        actions = rng.integers(0, 5, 6)
        ot, rt, tt, ut, it = tab.step(actions)
        oi, ri, ti, ui, ii = idx.step(actions)
        np.testing.assert_array_equal(rt, ri)
        np.testing.assert_array_equal(tt | ut, ti | ui)
        if "final_obs" in it:
            ended += 1
            rows = it["_final_obs"]
            np.testing.assert_array_equal(ii["final_obs"][rows], it["final_obs"][rows].argmax(axis=1))
            np.testing.assert_array_equal(ii["final_obs"][~rows], 0)
    assert ended > 0


def test_grid_obs_channels_first_and_padding_of_small_levels():
    levels = [LEVELS["dense"], sample_levels("small", 1, seed=0)[0]]
    a = make_grid(num_envs=2, seed=0, levels=levels, obs="grid")
    b = make_grid(num_envs=2, seed=0, levels=levels, obs="grid", channels_first=True)
    oa, _ = a.reset()
    ob, _ = b.reset()
    assert oa.shape == (2, 11, 11, 5) and ob.shape == (2, 5, 11, 11)
    np.testing.assert_array_equal(oa, np.moveaxis(ob, 1, -1))
    size = levels[1].size
    assert oa[1, size:, :, 1].all() and oa[1, :, size:, 1].all()  # outside the small level: walls
    assert oa[1, :, :, 0].sum() == 1 and oa[1, size:, :, 0].sum() == 0


def test_generator_envs_are_padded_to_the_generator_bounds_and_accept_new_levels():
    env = envs.make("grid-all", num_envs=4, seed=3)
    assert env.max_grid_size == 10 and env.max_objects == 5
    assert env.single_observation_space.shape == (100 * 32,)
    assert env.levels == tuple(sample_levels("all", 4, seed=3))
    assert make_grid(num_envs=4, seed=0, generator="all", level_seed=3).levels == env.levels
    env.reset()
    new = sample_levels("all", 4, seed=4)
    env.set_levels(new)
    assert env.levels != tuple(new)  # staged until the next reset
    env.step(np.zeros(4, dtype=np.int64))
    env.reset()
    assert env.levels == tuple(new)
    env.reset(seed=3)
    assert env.levels == tuple(new)  # chosen levels stay through seeded resets
    with pytest.raises(ValueError, match="max_grid_size"):
        env.set_levels([LEVELS["dense"]] * 4)
    with pytest.raises(ValueError, match="one level per sub-env"):
        env.set_levels(new[:2])


def test_generator_levels_follow_the_seed_of_each_seeded_reset():
    env = make_grid(num_envs=3, seed=0, generator="small")
    assert env.levels == tuple(sample_levels("small", 3, seed=0))
    first, _ = env.reset(seed=5)
    assert env.levels == tuple(sample_levels("small", 3, seed=5)) == make_grid(num_envs=3, seed=5, generator="small").levels
    np.testing.assert_array_equal(first, make_grid(num_envs=3, seed=5, generator="small").reset()[0])
    env.reset()
    assert env.levels == tuple(sample_levels("small", 3, seed=5))  # a plain reset keeps them
    pinned = make_grid(num_envs=3, seed=0, generator="small", level_seed=9)
    pinned.reset(seed=5)
    assert pinned.levels == tuple(sample_levels("small", 3, seed=9))


def test_same_seed_same_trajectory_and_reset_seed_replays():
    def play(seed, env=None):
        env = env or make_grid(num_envs=5, seed=seed, generator="small")
        frames = [env.reset(seed=seed)[0]]
        rng = np.random.default_rng(0)
        for _ in range(60):
            frames.append(env.step(rng.integers(0, 5, 5))[0])
        return np.stack(frames)

    env = make_grid(num_envs=5, seed=1, generator="small")
    first = play(1, env)
    np.testing.assert_array_equal(first, play(1, env))  # reset(seed=1) replays on the same env
    np.testing.assert_array_equal(first, play(1))
    assert not np.array_equal(first, play(2))


def test_parallel_kernel_gives_the_same_trajectory():
    a = make_grid(num_envs=32, seed=4, generator="all", obs="grid")
    b = make_grid(num_envs=32, seed=4, generator="all", obs="grid", parallel=True)
    oa, _ = a.reset()
    ob, _ = b.reset()
    rng = np.random.default_rng(0)
    for _ in range(100):
        actions = rng.integers(0, 5, 32)
        oa, ra, ta, ua, ia = a.step(actions)
        ob, rb, tb, ub, ib = b.step(actions)
        np.testing.assert_array_equal(oa, ob)
        np.testing.assert_array_equal(ra, rb)
        np.testing.assert_array_equal(ta | ua, tb | ub)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"colour": "red"}, "unknown option"),
        ({"level": "dense", "generator": "all"}, "one of level=, generator=, levels="),
        ({"level": "dnese"}, "dense"),
        ({"generator": "alll"}, "all"),
        ({"obs": "pixels"}, "tabular"),
        ({"level": "rand_dense", "obs": "index"}, "obs='grid'"),
        ({"level": "rand_dense"}, "obs='grid'"),
        ({"level": "dense", "max_grid_size": 5}, "max_grid_size"),
        ({"level": "dense", "max_objects": 99}, "max_objects"),
        ({"levels": [LEVELS["dense"]]}, "one level per sub-env"),
        ({"levels": [{"size": 3}] * 2}, "Level"),
        ({"level": "dense", "level_seed": 3}, "level_seed"),
        ({"level": 7}, "level must be"),
    ],
)
def test_bad_options_raise_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        envs.make("grid", num_envs=2, seed=0, **options)


def test_named_envs_and_bad_actions():
    for name in LPG_LEVELS:
        env = envs.make(f"grid-{name}", num_envs=2)
        assert env.levels == (LEVELS[name],) * 2
    with pytest.raises(ValueError, match="one of level="):
        envs.make("grid-dense", generator="small")
    env = envs.make("grid", num_envs=3, seed=0)
    assert env.levels[0] == LEVELS["dense"]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(3, dtype=np.int64))
    env.reset()
    before = [env.get_state(i) for i in range(3)]
    for bad in (np.array([0, 1, 5]), np.array([0, -1, 2]), np.zeros(4, dtype=np.int64), np.zeros(3)):
        with pytest.raises(ValueError, match=r"\(3,"):
            env.step(bad)
    assert [env.get_state(i) for i in range(3)] == before  # a rejected step leaves no trace
    env.close()
    env.close()
    with pytest.raises(RuntimeError, match="closed"):
        env.reset()


def test_replace_levels_restarts_only_the_given_sub_envs():
    levels = sample_levels("small", 4, seed=3)
    new = sample_levels("small", 2, seed=9)
    env = make_grid(num_envs=4, seed=0, levels=levels, obs="index")
    twin = make_grid(num_envs=4, seed=0, levels=levels, obs="index")
    obs, _ = env.reset(seed=0)
    twin.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        actions = rng.integers(0, 5, 4)
        env.step(actions)
        twin.step(actions)
    first = env.replace_levels([1, 3], new)
    assert first.shape == (2,) and env.levels[1] == new[0] and env.levels[3] == new[1]
    assert env.levels[0] == levels[0] and env.levels[2] == levels[2]
    assert all(env.get_state(i)["time"] == 0 for i in (1, 3))
    assert env.get_state(1)["pos"] == (new[0].start if new[0].start is not None else env.get_state(1)["pos"])
    for _ in range(30):
        actions = rng.integers(0, 5, 4)
        a, r, te, tr, _ = env.step(actions)
        b, r2, te2, tr2, _ = twin.step(actions)
        for i in (0, 2):  # the untouched sub-envs go on exactly as before
            assert a[i] == b[i] and r[i] == r2[i] and te[i] == te2[i] and tr[i] == tr2[i]
    with pytest.raises(ValueError, match="distinct sub-env indices"):
        env.replace_levels([1, 1], new)
    with pytest.raises(ValueError, match="distinct sub-env indices"):
        env.replace_levels([4, 0], new)
