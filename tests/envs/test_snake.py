"""Snake rules, checked from hand-set states and against a plain reference of Jumanji's step.

The reference below is a direct transcription of the rules of Jumanji's ``Snake.step`` on a
``body_state`` grid (head = length, tail = 1), kept deliberately naive and independent of the
ring-buffer implementation in ``envs.snake``.
"""

import gc
import weakref

import numpy as np
import pytest

from rlmeta import envs
from rlmeta.envs.snake import DOWN, LEFT, RIGHT, UP

MOVES = {UP: (-1, 0), RIGHT: (0, 1), DOWN: (1, 0), LEFT: (0, -1)}


def reference_obs(body_state: np.ndarray, head, fruit) -> np.ndarray:
    """Jumanji's observation grid from its state."""
    rows, cols = body_state.shape
    grid = np.zeros((rows, cols, 5), np.float32)
    grid[..., 0] = body_state > 0
    grid[head[0], head[1], 1] = 1
    grid[..., 2] = body_state == 1
    if fruit is not None:
        grid[fruit[0], fruit[1], 3] = 1
    grid[..., 4] = body_state / max(1, body_state.max())
    return grid


def reference_mask(body_state: np.ndarray, head) -> np.ndarray:
    """Jumanji's action mask: on the board and not into the body once the tail has moved."""
    rows, cols = body_state.shape
    mask = np.zeros(4, bool)
    for a, (dr, dc) in MOVES.items():
        r, c = head[0] + dr, head[1] + dc
        mask[a] = 0 <= r < rows and 0 <= c < cols and max(body_state[r, c] - 1, 0) == 0
    return mask


def reference_step(body_state: np.ndarray, head, fruit, action: int):
    """One Jumanji step on a valid-or-invalid move; returns (body_state, head, ate, valid, full)."""
    valid = reference_mask(body_state, head)[action]
    if not valid:
        return body_state, head, False, False, False
    new_head = (head[0] + MOVES[action][0], head[1] + MOVES[action][1])
    ate = new_head == fruit
    length = body_state.max() + ate
    body_state = body_state.copy() if ate else np.clip(body_state - 1, 0, None)
    body_state[new_head] = length
    return body_state, new_head, ate, True, bool((body_state > 0).all())


def body_state_from(body, rows, cols) -> np.ndarray:
    """``body_state`` grid from a tail-to-head list of cells."""
    grid = np.zeros((rows, cols), np.int64)
    for order, (r, c) in enumerate(body, start=1):
        grid[r, c] = order
    return grid


@pytest.fixture
def env():
    e = envs.make("snake", num_envs=2, seed=0, rows=5, cols=5, time_limit=50, action_mask=True)
    e.reset()
    yield e
    e.close()


def step_one(env, action: int, index: int = 0):
    """Step sub-env ``index`` with ``action`` (the others move along a safe-ish default)."""
    actions = np.zeros(env.num_envs, dtype=np.int64)
    actions[index] = action
    return env.step(actions)


def test_eating_grows_snake_and_places_new_fruit(env):
    env.set_state(0, body=[(2, 1), (2, 2)], fruit=(2, 3))
    obs, reward, term, trunc, info = step_one(env, RIGHT)
    assert reward[0] == 1.0 and not term[0] and not trunc[0]
    state = env.get_state(0)
    assert state["body"] == [(2, 1), (2, 2), (2, 3)]  # the tail stayed: length 3
    assert state["fruit"] not in state["body"]
    expected = reference_obs(body_state_from(state["body"], 5, 5), (2, 3), state["fruit"])
    np.testing.assert_array_equal(obs[0], expected)
    np.testing.assert_allclose(obs[0][2, 1:4, 4], [1 / 3, 2 / 3, 1.0])


def test_moving_without_fruit_moves_tail(env):
    env.set_state(0, body=[(2, 0), (2, 1), (2, 2)], fruit=(0, 0))
    obs, reward, term, *_ = step_one(env, RIGHT)
    assert reward[0] == 0.0 and not term[0]
    assert env.get_state(0)["body"] == [(2, 1), (2, 2), (2, 3)]
    assert obs[0][2, 0].sum() == 0  # old tail cell is empty


@pytest.mark.parametrize("body, action", [
    ([(1, 0), (0, 0)], UP),      # top wall
    ([(1, 0), (0, 0)], LEFT),    # left wall
    ([(3, 4), (4, 4)], DOWN),    # bottom wall
    ([(4, 3), (4, 4)], RIGHT),   # right wall
])
def test_leaving_the_board_terminates(env, body, action):
    before = env.set_state(0, body=body, fruit=(2, 2))
    obs, reward, term, trunc, info = step_one(env, action)
    assert term[0] and not trunc[0] and reward[0] == 0.0
    assert info["_final_obs"][0]
    # The final observation is the board before the invalid move; obs[0] is a new episode.
    np.testing.assert_array_equal(info["final_obs"][0], before)
    assert obs[0][..., 0].sum() == 1  # a fresh length-1 snake
    assert info["episode"]["length"][0] == 1 and info["_episode"][0]


def test_self_collision_terminates(env):
    # Head at (1,1) moving DOWN into (2,1), which is body of order 2 (not the tail).
    body = [(3, 1), (2, 1), (2, 2), (1, 2), (1, 1)]
    env.set_state(0, body=body, fruit=(0, 0))
    _, reward, term, trunc, _ = step_one(env, DOWN)
    assert term[0] and not trunc[0] and reward[0] == 0.0


def test_moving_into_the_cell_the_tail_is_leaving_is_allowed(env):
    # A 2x2 loop, tail (0,0) and head (1,0): moving UP enters the cell the tail leaves.
    body = [(0, 0), (0, 1), (1, 1), (1, 0)]
    env.set_state(0, body=body, fruit=(4, 4))
    obs, reward, term, trunc, _ = step_one(env, UP)  # (1,0) -> (0,0), the tail's cell
    assert not term[0] and not trunc[0]
    assert env.get_state(0)["body"] == [(0, 1), (1, 1), (1, 0), (0, 0)]
    np.testing.assert_array_equal(obs[0], reference_obs(body_state_from(env.get_state(0)["body"], 5, 5), (0, 0), (4, 4)))


def test_length_two_snake_may_turn_back_onto_its_tail(env):
    env.set_state(0, body=[(2, 2), (2, 3)], fruit=(0, 0))
    _, _, term, *_ = step_one(env, LEFT)
    assert not term[0]
    assert env.get_state(0)["body"] == [(2, 3), (2, 2)]


def test_body_cell_that_is_not_the_tail_blocks_even_when_snake_is_long(env):
    # Head (0,1) moving LEFT into (0,0): order 2 of 4, so a collision.
    env.set_state(0, body=[(1, 0), (0, 0), (0, 1)], fruit=(4, 4))
    _, _, term, *_ = step_one(env, LEFT)
    assert term[0]


def test_full_board_terminates_with_reward():
    env = envs.make("snake", num_envs=1, seed=0, rows=2, cols=2)
    env.reset()
    env.set_state(0, body=[(0, 0), (0, 1), (1, 1)], fruit=(1, 0))
    obs, reward, term, trunc, info = env.step(np.array([LEFT]))
    assert reward[0] == 1.0 and term[0] and not trunc[0]
    final = info["final_obs"][0]
    assert final[..., 0].sum() == 4 and final[..., 3].sum() == 0  # all body, no fruit left
    np.testing.assert_allclose(np.sort(final[..., 4].ravel()), [0.25, 0.5, 0.75, 1.0])
    assert info["episode"]["return"][0] == 1.0


def test_time_limit_truncates_and_keeps_final_observation():
    env = envs.make("snake", num_envs=1, seed=3, rows=6, cols=6, time_limit=4)
    env.reset()
    env.set_state(0, body=[(3, 0)], fruit=(0, 5))
    for t in range(4):
        obs, reward, term, trunc, info = env.step(np.array([RIGHT]))
        if t < 3:
            assert not term[0] and not trunc[0]
    assert trunc[0] and not term[0]
    np.testing.assert_array_equal(info["final_obs"][0], reference_obs(body_state_from([(3, 4)], 6, 6), (3, 4), (0, 5)))
    assert info["episode"]["length"][0] == 4
    assert env.get_state(0)["step_count"] == 0  # new episode


def test_time_limit_step_that_also_terminates_is_terminated_only():
    env = envs.make("snake", num_envs=1, seed=3, rows=3, cols=3, time_limit=2)
    env.reset()
    env.set_state(0, body=[(0, 0)], fruit=(2, 2), step_count=1)
    _, _, term, trunc, _ = env.step(np.array([UP]))
    assert term[0] and not trunc[0]


def test_observation_channels_match_jumanji_definition(env):
    body = [(4, 0), (4, 1), (3, 1), (2, 1), (2, 2)]
    obs = env.set_state(0, body=body, fruit=(0, 4))
    bs = body_state_from(body, 5, 5)
    np.testing.assert_array_equal(obs, reference_obs(bs, (2, 2), (0, 4)))
    assert obs[..., 0].sum() == 5 and obs[2, 2, 1] == 1 and obs[4, 0, 2] == 1 and obs[0, 4, 3] == 1
    assert obs[4, 0, 4] == pytest.approx(0.2) and obs[2, 2, 4] == 1.0


def test_length_one_snake_is_head_tail_and_body(env):
    obs = env.set_state(0, body=[(1, 1)], fruit=(3, 3))
    np.testing.assert_array_equal(obs[1, 1], [1, 1, 1, 0, 1])


def test_channels_first_and_dict_observation_carry_the_same_grid():
    kw = dict(num_envs=3, seed=11, rows=6, cols=7)
    a, b, c = (envs.make("snake", **kw), envs.make("snake", channels_first=True, **kw),
               envs.make("snake", observation="dict", **kw))
    assert b.single_observation_space.shape == (5, 6, 7)
    oa, _ = a.reset()
    ob, _ = b.reset()
    oc, _ = c.reset()
    rng = np.random.default_rng(0)
    for _ in range(50):
        np.testing.assert_array_equal(oa, np.moveaxis(ob, 1, -1))
        np.testing.assert_array_equal(oa, oc["grid"])
        actions = rng.integers(0, 4, 3)
        oa, *_ = a.step(actions)
        ob, *_ = b.step(actions)
        oc, _, _, _, ic = c.step(actions)
        assert oc["action_mask"].shape == (3, 4) and oc["step_count"].dtype == np.int32


@pytest.mark.parametrize("rows, cols", [(5, 5), (2, 3), (6, 4)])
def test_matches_reference_rules_step_by_step(rows, cols):
    """Random play on several boards: every observation, reward, mask and ending as Jumanji's."""
    n = 8
    env = envs.make("snake", num_envs=n, seed=7, rows=rows, cols=cols, time_limit=40, action_mask=True)
    obs, info = env.reset()
    states = []
    for i in range(n):
        s = env.get_state(i)
        states.append([body_state_from(s["body"], rows, cols), s["body"][-1], s["fruit"], 0])
        np.testing.assert_array_equal(obs[i], reference_obs(*states[i][:3]))
    rng = np.random.default_rng(0)
    endings = {"terminated": 0, "truncated": 0, "ate": 0}
    for _ in range(1500):
        masks = info["action_mask"]
        # Mostly valid moves, so that snakes grow and episodes reach the time limit.
        actions = np.array([
            rng.choice(np.flatnonzero(m)) if m.any() and rng.random() < 0.9 else rng.integers(4) for m in masks
        ])
        obs, reward, term, trunc, info = env.step(actions)
        for i in range(n):
            bs, head, fruit, t = states[i]
            np.testing.assert_array_equal(masks[i], reference_mask(bs, head))
            bs2, head2, ate, valid, full = reference_step(bs, head, fruit, actions[i])
            t += 1
            assert reward[i] == float(ate)
            assert term[i] == (not valid or full)
            assert trunc[i] == (not term[i] and t >= 40)
            endings["ate"] += ate
            if term[i] or trunc[i]:
                endings["terminated" if term[i] else "truncated"] += 1
                if valid:
                    fruit2 = None if full else fruit if not ate else tuple(np.argwhere(info["final_obs"][i][..., 3])[0])
                    np.testing.assert_array_equal(info["final_obs"][i], reference_obs(bs2, head2, fruit2))
                s = env.get_state(i)
                states[i] = [body_state_from(s["body"], rows, cols), s["body"][-1], s["fruit"], 0]
            else:
                fruit2 = env.get_state(i)["fruit"] if ate else fruit
                if ate:  # the new fruit must be on a free cell
                    assert fruit2 is not None and bs2[fruit2] == 0
                states[i] = [bs2, head2, fruit2, t]
            np.testing.assert_array_equal(obs[i], reference_obs(*states[i][:3]))
    assert min(endings.values()) > 0, endings  # every kind of event was exercised


def test_fruit_is_uniform_over_free_cells():
    env = envs.make("snake", num_envs=1, seed=5, rows=3, cols=3)
    env.reset()
    counts = np.zeros((3, 3))
    body = [(0, 0), (0, 1), (1, 1)]
    draws = 6000
    for _ in range(draws):
        # Eat a fruit at (1,2) from head (1,1): the new fruit is drawn among the 5 free cells.
        env.set_state(0, body=body, fruit=(1, 2))
        env.step(np.array([RIGHT]))
        counts[env.get_state(0)["fruit"]] += 1
    free = [(0, 2), (1, 0), (2, 0), (2, 1), (2, 2)]
    assert sum(counts[c] for c in free) == draws
    expected = draws / 5
    for c in free:  # each count within 5 standard deviations of uniform
        assert abs(counts[c] - expected) < 5 * np.sqrt(expected * 0.8), counts


def test_same_seed_same_game_different_seed_different_game():
    def play(seed):
        env = envs.make("snake", num_envs=4, seed=seed)
        obs, _ = env.reset()
        frames = [obs]
        rng = np.random.default_rng(1)
        for _ in range(30):
            frames.append(env.step(rng.integers(0, 4, 4))[0])
        return np.stack(frames)

    np.testing.assert_array_equal(play(1), play(1))
    assert not np.array_equal(play(1), play(2))


def test_parallel_kernel_gives_the_same_trajectory():
    a = envs.make("snake", num_envs=32, seed=9, parallel=False)
    b = envs.make("snake", num_envs=32, seed=9, parallel=True)
    oa, _ = a.reset()
    ob, _ = b.reset()
    rng = np.random.default_rng(0)
    for _ in range(100):
        actions = rng.integers(0, 4, 32)
        oa, ra, ta, *_ = a.step(actions)
        ob, rb, tb, *_ = b.step(actions)
        np.testing.assert_array_equal(oa, ob)
        np.testing.assert_array_equal(ra, rb)
        np.testing.assert_array_equal(ta, tb)


def test_any_integer_actions_give_the_same_trajectory():
    """int64 C-contiguous actions take a direct call of the compiled kernel, the others numba's dispatcher."""
    kinds = {
        "int64": lambda a: a.astype(np.int64),
        "int32": lambda a: a.astype(np.int32),
        "uint8": lambda a: a.astype(np.uint8),
        "strided int64": lambda a: np.repeat(a.astype(np.int64), 2)[::2],
        "read-only int64": lambda a: a.astype(np.int64),  # made read-only below
        "list": lambda a: a.tolist(),
    }
    made = {k: envs.make("snake", num_envs=9, seed=4, observation="dict") for k in kinds}
    first = {k: e.reset() for k, e in made.items()}
    assert all(np.array_equal(first[k][0]["grid"], first["int64"][0]["grid"]) for k in kinds)
    rng = np.random.default_rng(0)
    for t in range(200):
        actions = rng.integers(0, 4, 9)
        outs = {}
        for k, convert in kinds.items():
            a = convert(actions)
            if k == "read-only int64":
                a.flags.writeable = False
            obs, reward, term, trunc, info = made[k].step(a)
            outs[k] = (obs["grid"].copy(), obs["action_mask"].copy(), obs["step_count"].copy(), reward.copy(),
                       term.copy(), trunc.copy(), info["final_obs"]["grid"].copy() if "final_obs" in info else None)
        for k in kinds:
            for x, y in zip(outs[k], outs["int64"]):
                assert (x is None and y is None) or np.array_equal(x, y), f"step {t}: {k} actions differ from int64"


def test_env_is_freed_as_soon_as_it_is_dropped():
    """No reference cycle: a dropped env (and its pooled buffers) goes at once, not at the next garbage collection."""
    gc.disable()
    try:
        for options in ({}, {"observation": "dict"}):
            env = envs.make("snake", num_envs=4, seed=0, **options)
            env.reset()
            for actions in (np.zeros(4, np.int64), np.zeros(4, np.int32), [0, 1, 2, 3]):  # every path of step
                env.step(actions)
            ref = weakref.ref(env)
            del env
            assert ref() is None, f"snake {options} was kept alive by a reference cycle"
    finally:
        gc.enable()


def test_set_state_rejects_impossible_states(env):
    with pytest.raises(ValueError, match="not next to each other"):
        env.set_state(0, body=[(0, 0), (2, 2)], fruit=(4, 4))
    with pytest.raises(ValueError, match="on the snake's body"):
        env.set_state(0, body=[(0, 0)], fruit=(0, 0))
    with pytest.raises(ValueError, match="off the 5x5 board"):
        env.set_state(0, body=[(5, 0)], fruit=(0, 0))


def test_presets():
    big, small = envs.make("snake"), envs.make("snake-6x6")
    assert big.single_observation_space.shape == (12, 12, 5) and big.time_limit == 4000
    assert small.single_observation_space.shape == (6, 6, 5) and small.time_limit == 500
    assert envs.make("snake-6x6", time_limit=100).time_limit == 100
