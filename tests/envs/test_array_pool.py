"""Native envs recycle their step outputs only once nobody holds them (envs.core.ArrayPool, ArrayGroupPool)."""

import copy

import numpy as np
import pytest
import torch

from rlmeta import envs
from rlmeta.envs.core import ArrayGroupPool, ArrayPool

NATIVE = [("snake-6x6", {}), ("snake-6x6", {"observation": "dict"}), ("grid-dense", {}), ("grid-dense", {"obs": "grid"}),
          ("chain", {}), ("snake-6x6", {"channels_first": True, "action_mask": True})]


def _grid(obs):
    return obs["grid"] if isinstance(obs, dict) else obs


def _actions(env, rng):
    return rng.integers(0, env.single_action_space.n, size=env.num_envs)


def test_pool_reuses_only_dropped_arrays():
    pool = ArrayPool((3, 2), np.float32, size=2)
    a, b = pool.take(), pool.take()
    assert a is not b
    view = a.reshape(6)
    del a
    c = pool.take()  # a is still held through its view, b directly: a fresh array
    assert c is not view.base and c is not b
    tensor = torch.from_numpy(b)
    del b
    d = pool.take()
    assert d is not tensor.numpy().base and d is not view.base
    del view
    e = pool.take(zero=True)  # the first pooled array is free again
    assert e.shape == (3, 2) and e.dtype == np.float32 and not e.any()


@pytest.mark.parametrize("env_id,options", NATIVE)
def test_step_outputs_are_recycled_when_dropped(env_id, options):
    env = envs.make(env_id, num_envs=16, seed=0, **options)
    env.reset()
    rng = np.random.default_rng(0)
    addresses = set()
    for t in range(60):
        obs = env.step(_actions(env, rng))[0]
        if t >= 10:
            addresses.add(_grid(obs).__array_interface__["data"][0])
        del obs
    assert len(addresses) <= 2, f"{len(addresses)} distinct observation buffers over 50 dropped steps"


@pytest.mark.parametrize("env_id,options", NATIVE)
def test_held_outputs_stay_valid(env_id, options):
    env = envs.make(env_id, num_envs=16, seed=0, **options)
    env.reset()
    rng = np.random.default_rng(1)
    held, copies = [], []
    for t in range(40):
        obs, _r, _te, _tr, info = env.step(_actions(env, rng))
        grid = _grid(obs)
        kept = (grid[::2], torch.from_numpy(grid), info.get("final_obs"))  # a view, a tensor, final obs
        held.append(kept)
        copies.append((grid[::2].copy(), grid.copy(), None if kept[2] is None else _grid(kept[2]).copy()))
        del obs, grid, info
    for t, ((view, tensor, final), (v, g, f)) in enumerate(zip(held, copies)):
        np.testing.assert_array_equal(view, v, err_msg=f"view of step {t}'s obs was overwritten")
        np.testing.assert_array_equal(tensor.numpy(), g, err_msg=f"tensor of step {t}'s obs was overwritten")
        if final is not None:
            np.testing.assert_array_equal(_grid(final), f, err_msg=f"final obs of step {t} was overwritten")


def test_group_pool_reuses_a_group_only_when_every_array_is_dropped():
    def make():
        buffer = np.empty(24, np.uint8)  # two views of one buffer, as Snake's small outputs
        return buffer[:16].view(np.float64), buffer[16:].view(np.int32), buffer

    def where(group):
        return [a.__array_interface__["data"][0] for a in group]

    pool = ArrayGroupPool(make, size=2)
    addresses = where(pool.take())
    holders = {  # one array of the group, a view of one, a tensor of one, the buffer they share
        "array": lambda g: g[0], "view": lambda g: g[1][1:], "tensor": lambda g: torch.from_numpy(g[1]),
        "base": lambda g: g[0].base,
    }
    for name, hold in holders.items():
        group = pool.take()
        assert where(group) == addresses, "a dropped group was not reused"
        kept = hold(group)
        del group
        assert all(a not in addresses for a in where(pool.take())), f"group reused while its {name} was held"
        del kept
    assert where(pool.take()) == addresses


def _every_array(out) -> list[np.ndarray]:
    """Every numpy array in a step's output (obs, reward, terminated, truncated, info), nested dicts included."""
    if isinstance(out, np.ndarray):
        return [out]
    if isinstance(out, dict):
        return [a for v in out.values() for a in _every_array(v)]
    if isinstance(out, (tuple, list)):
        return [a for v in out for a in _every_array(v)]
    return []


def _copy(out):
    if isinstance(out, np.ndarray):
        return out.copy()
    if isinstance(out, dict):
        return {k: _copy(v) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return type(out)(_copy(v) for v in out)
    return out


def _assert_same(a, b, what: str) -> None:
    assert type(a) is type(b), what
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, what
        np.testing.assert_array_equal(a, b, err_msg=what)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for k in a:
            _assert_same(a[k], b[k], f"{what}[{k!r}]")
    elif isinstance(a, (tuple, list)):
        for k, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{what}[{k}]")


@pytest.mark.parametrize("env_id,options", NATIVE)
def test_every_held_output_stays_valid(env_id, options):
    """Rewards, flags, masks, step counts and episode statistics a caller keeps are never overwritten."""
    env = envs.make(env_id, num_envs=16, seed=0, **options)
    env.reset()
    rng = np.random.default_rng(2)
    held, copies = [], []
    for t in range(40):
        out = env.step(_actions(env, rng))
        held.append(out[1:])  # reward, terminated, truncated, info (with final_obs, episode, masks)
        copies.append(_copy(out[1:]))
        del out
    for t, (kept, copy) in enumerate(zip(held, copies)):
        _assert_same(kept, copy, f"outputs of step {t}")


@pytest.mark.parametrize("env_id,options", NATIVE)
def test_outputs_do_not_depend_on_what_the_caller_wrote_into_them(env_id, options):
    """A caller may modify returned arrays in place and drop them: the recycled buffers must not leak it."""
    env, twin = envs.make(env_id, num_envs=16, seed=0, **options), envs.make(env_id, num_envs=16, seed=0, **options)
    env.reset()
    twin.reset()
    rng = np.random.default_rng(3)
    for t in range(60):
        actions = _actions(env, rng)
        out, expected = env.step(actions), _copy(twin.step(actions))
        _assert_same(out, expected, f"step {t}")
        for k, array in enumerate(_every_array(out)):  # scribble: normalised obs, -0.0, NaN, flipped flags
            if array.dtype.kind == "f":
                array[...] = [7.0, -0.0, np.nan][(t + k) % 3]
            else:
                array[...] = 1 if array.dtype.kind != "b" else (t + k) % 2 == 0
        del out, array


@pytest.mark.parametrize("env_id,options", NATIVE)
def test_a_deep_copy_steps_as_the_original(env_id, options):
    env = envs.make(env_id, num_envs=8, seed=0, **options)
    env.reset()
    rng = np.random.default_rng(4)
    for _ in range(5):
        env.step(_actions(env, rng))
    twin = copy.deepcopy(env)
    for t in range(30):
        actions = _actions(env, rng)
        _assert_same(env.step(actions), twin.step(actions), f"step {t} after the copy")
