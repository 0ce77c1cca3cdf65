"""Native envs recycle their step outputs only once nobody holds them (envs.core.ArrayPool)."""

import numpy as np
import pytest
import torch

from rlmeta import envs
from rlmeta.envs.core import ArrayPool

NATIVE = [("snake-6x6", {}), ("snake-6x6", {"observation": "dict"}), ("grid-dense", {}), ("grid-dense", {"obs": "grid"}),
          ("chain", {})]


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
