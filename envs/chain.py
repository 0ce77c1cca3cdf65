"""Delayed chain MDPs (Oh et al. 2020, "Discovering Reinforcement Learning Algorithms", LPG, appendix).

A credit-assignment test: the first action decides a reward that arrives only at the end.

* An episode is a chain of ``length`` steps. At the start state the agent picks one of two
  actions, which moves it onto branch 0 or branch 1; every later action just moves it one state
  along its branch (actions 0 and 1 do the same there).
* The last step (step ``length``) pays **+1** if the first action was the lifetime's
  ``correct_action`` and **-1** otherwise, and the episode **terminates**. There is no time limit:
  every episode has exactly ``length`` steps.
* ``noisy=True`` ("noisy rewards"): every step but the last pays a random reward, +1 or -1 with
  probability 1/2 each, independent of everything, so the optimal expected return is still 1.
* ``distractor_bits=k`` ("state distraction"): ``k`` random 0/1 features, fresh at every
  observation, are appended to the observation.

Observation: float32 one-hot over ``1 + 2 * max_length`` states (index 0: the start state; index
``1 + branch * max_length + step - 1`` after ``step`` steps on ``branch``), then the distractor
bits. It tells the branch, so the chain is a Markov decision process that temporal-difference
learners can solve; the difficulty is the delay alone (and the noise or distractors).

**Lifetimes.** The vector env is one agent's lifetime: ``correct_action`` and ``length`` are
drawn once from the seed (``length`` uniformly in ``[min_length, max_length]``) and shared by every
sub-env, so the task is learnable by one agent across all its sub-envs; ``reset(seed=s)`` draws a
new lifetime, a plain ``reset()`` keeps it. Give ``correct_action=`` or ``length=`` to fix them.

Variants (the LPG appendix's table, registered as named envs): ``chain`` (lengths 5-30),
``chain-noisy`` (5-30, noisy rewards), ``chain-long`` (5-50), ``chain-long-noisy`` (5-50, noisy),
``chain-distractor`` (5-30, 20 distractor bits). The paper's own implementation is not public; these
follow its appendix and the independent reimplementations we could read (the number of distractor
bits is theirs), with the two choices above (branch in the observation; one correct action per
lifetime) made so that the task is learnable by construction.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numba
import numpy as np

from rlmeta.envs.core import ArrayPool, EnvSpec, VectorEnv, check_num_envs, check_options, check_seed
from rlmeta.envs.streams import random_below, splitmix_next

NUM_ACTIONS = 2
STEP, BRANCH = 0, 1  # fields of the int64 state [B, 2]; BRANCH is -1 before the first action


@numba.njit(cache=True)
def _write_obs(out, step, branch, max_length, rng, i, distractor_bits) -> None:
    """One-hot state then fresh distractor bits into ``out`` ([D], float32)."""
    states = 1 + 2 * max_length
    out[:states] = 0.0
    if step == 0:
        out[0] = 1.0
    else:
        out[1 + branch * max_length + step - 1] = 1.0
    word = np.uint64(0)
    for b in range(distractor_bits):
        if b % 64 == 0:
            word = splitmix_next(rng, i)
        out[states + b] = np.float32((word >> np.uint64(b % 64)) & np.uint64(1))


@numba.njit(cache=True)
def _reset_kernel(state, rng, max_length, distractor_bits, obs) -> None:
    """Every sub-env at the start state; writes the first observations."""
    for i in range(state.shape[0]):
        state[i, STEP] = 0
        state[i, BRANCH] = -1
        _write_obs(obs[i], 0, -1, max_length, rng, i, distractor_bits)


@numba.njit(cache=True)
def _step_kernel(actions, state, rng, length, correct_action, noisy, max_length, distractor_bits,
                 ep_return, obs, final_obs, reward, terminated, done_return) -> int:
    """Advance every sub-env one state; returns the number of ended episodes, or -1 on a bad action."""
    num_envs = state.shape[0]
    for i in range(num_envs):
        if actions[i] < 0 or actions[i] >= NUM_ACTIONS:
            return -1
    num_done = 0
    for i in range(num_envs):
        if state[i, STEP] == 0:
            state[i, BRANCH] = actions[i]
        state[i, STEP] += 1
        r = 0.0
        end = state[i, STEP] >= length
        if end:
            r = 1.0 if state[i, BRANCH] == correct_action else -1.0
        elif noisy:
            r = 2.0 * random_below(rng, i, 2) - 1.0
        reward[i] = np.float32(r)
        ep_return[i] += r
        terminated[i] = end
        if end:
            num_done += 1
            _write_obs(final_obs[i], state[i, STEP], state[i, BRANCH], max_length, rng, i, distractor_bits)
            done_return[i] = ep_return[i]
            ep_return[i] = 0.0
            state[i, STEP] = 0
            state[i, BRANCH] = -1
        _write_obs(obs[i], state[i, STEP], state[i, BRANCH], max_length, rng, i, distractor_bits)
    return num_done


class ChainVectorEnv(VectorEnv):
    """``num_envs`` delayed chains sharing one lifetime (correct action, length); see the module docstring."""

    def __init__(
        self,
        num_envs: int = 1,
        seed: int | None = 0,
        min_length: int = 5,
        max_length: int = 30,
        length: int | None = None,
        correct_action: int | None = None,
        noisy: bool = False,
        distractor_bits: int = 0,
    ):
        num_envs = check_num_envs(num_envs)
        _check_int("min_length", min_length, 1)
        _check_int("max_length", max_length, 1)
        if min_length > max_length:
            raise ValueError(f"chain min_length {min_length} is larger than max_length {max_length}")
        if length is not None:
            _check_int("length", length, 1)
            if not min_length <= length <= max_length:
                raise ValueError(f"chain length must be in [min_length, max_length] = [{min_length}, {max_length}], "
                                 f"got {length}")
        if correct_action is not None and (
            isinstance(correct_action, bool) or not isinstance(correct_action, (int, np.integer))
            or correct_action not in (0, 1)
        ):
            raise ValueError(f"chain correct_action must be 0, 1 or None (drawn from the seed), got {correct_action!r}")
        if not isinstance(noisy, (bool, np.bool_)):
            raise ValueError(f"chain noisy must be True or False, got {noisy!r}")
        _check_int("distractor_bits", distractor_bits, 0)
        self.min_length, self.max_length = int(min_length), int(max_length)
        self.noisy = bool(noisy)
        self.distractor_bits = int(distractor_bits)
        self._fixed_length = None if length is None else int(length)
        self._fixed_action = None if correct_action is None else int(correct_action)
        dim = 1 + 2 * self.max_length + self.distractor_bits
        super().__init__(num_envs, gym.spaces.Box(0.0, 1.0, (dim,), np.float32), gym.spaces.Discrete(NUM_ACTIONS),
                         seed=check_seed(seed))
        self.length = self._fixed_length if self._fixed_length is not None else self.min_length
        self.correct_action = self._fixed_action if self._fixed_action is not None else 0
        self._state = np.zeros((num_envs, 2), dtype=np.int64)
        self._rng = np.zeros(num_envs, dtype=np.uint64)
        self._ep_return = np.zeros(num_envs, dtype=np.float64)
        self._done_return = np.zeros(num_envs, dtype=np.float64)
        self._final_scratch = np.zeros((num_envs, dim), dtype=np.float32)
        # Step outputs recycled once the caller drops them (see envs.core.ArrayPool).
        self._obs_pool = ArrayPool((num_envs, dim), np.float32)
        self._final_pool = ArrayPool((num_envs, dim), np.float32)

    @property
    def optimal_return(self) -> float:
        """Expected return of the optimal policy (the correct first action): 1."""
        return 1.0

    def _reset(self, seed: int | None, options: dict | None) -> tuple[np.ndarray, dict]:
        if seed is not None or not self._rng.any():
            lifetime, streams = np.random.SeedSequence(seed).spawn(2)
            draw = np.random.default_rng(lifetime)
            length = int(draw.integers(self.min_length, self.max_length + 1))
            action = int(draw.integers(0, NUM_ACTIONS))
            self.length = self._fixed_length if self._fixed_length is not None else length
            self.correct_action = self._fixed_action if self._fixed_action is not None else action
            self._rng[:] = streams.generate_state(self.num_envs, dtype=np.uint64)
        self._ep_return[:] = 0.0
        obs = np.empty((self.num_envs, self.single_observation_space.shape[0]), dtype=np.float32)
        _reset_kernel(self._state, self._rng, self.max_length, self.distractor_bits, obs)
        return obs, {}

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        """Advance every chain; see the module docstring for the rules and ``envs.core`` for the contract."""
        if (
            self.closed or self._needs_reset or type(actions) is not np.ndarray or actions.ndim != 1
            or actions.shape[0] != self.num_envs or actions.dtype.kind not in "iu"
        ):
            actions = self.check_actions(actions)
        n = self.num_envs
        obs = self._obs_pool.take()
        reward = np.empty(n, dtype=np.float32)
        terminated = np.empty(n, dtype=np.bool_)
        num_done = _step_kernel(actions, self._state, self._rng, self.length, self.correct_action, self.noisy,
                                self.max_length, self.distractor_bits, self._ep_return, obs, self._final_scratch,
                                reward, terminated, self._done_return)
        if num_done < 0:
            self.check_actions(actions)  # raises the contract's error message
        truncated = np.zeros(n, dtype=np.bool_)
        info: dict = {}
        if num_done > 0:
            done = terminated.copy()
            final = self._final_pool.take(zero=True)
            final[done] = self._final_scratch[done]
            info["final_obs"] = final
            info["_final_obs"] = done
            info["episode"] = {
                "return": np.where(done, self._done_return, 0.0),
                "length": np.where(done, self.length, 0).astype(np.int64),
            }
            info["_episode"] = done.copy()
        return obs, reward, terminated, truncated, info

    def __repr__(self) -> str:
        return f"ChainVectorEnv(num_envs={self.num_envs}, lengths=[{self.min_length}, {self.max_length}])"


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"chain {name} must be an integer >= {low}, got {value!r}")


CHAIN_OPTIONS = ("min_length", "max_length", "length", "correct_action", "noisy", "distractor_bits")


def make_chain(num_envs: int = 1, seed: int | None = 0, **options: Any) -> ChainVectorEnv:
    """Build a :class:`ChainVectorEnv`; unknown options raise ValueError listing the allowed ones."""
    check_options("chain", options, CHAIN_OPTIONS)
    return ChainVectorEnv(num_envs=num_envs, seed=seed, **options)


# The LPG appendix's variants; the registry lists and builds them by name.
NAMED_ENVS = (
    EnvSpec("chain", make_chain, {"min_length": 5, "max_length": 30},
            description="LPG delayed chain MDP: first action decides a +1/-1 reward at the end, length 5-30 per lifetime"),
    EnvSpec("chain-noisy", make_chain, {"min_length": 5, "max_length": 30, "noisy": True},
            description="LPG delayed chain MDP, length 5-30, random +1/-1 rewards on the way"),
    EnvSpec("chain-long", make_chain, {"min_length": 5, "max_length": 50},
            description="LPG delayed chain MDP, length 5-50"),
    EnvSpec("chain-long-noisy", make_chain, {"min_length": 5, "max_length": 50, "noisy": True},
            description="LPG delayed chain MDP, length 5-50, random +1/-1 rewards on the way"),
    EnvSpec("chain-distractor", make_chain, {"min_length": 5, "max_length": 30, "distractor_bits": 20},
            description="LPG delayed chain MDP, length 5-30, 20 random distractor bits in the observation"),
)
