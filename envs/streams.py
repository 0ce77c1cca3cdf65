"""Per-sub-env random streams for the numba envs: one SplitMix64 state per sub-env, ``uint64 [B]``.

SplitMix64 (Steele, Lea and Flood 2014) is tiny, fast and statistically sound for this use; each
sub-env draws from its own stream in a documented order, so a plain-Python transcription of an
env's rules can be fed exactly the same numbers (the tests do). ``envs.snake``, ``envs.gridworld``
and ``envs.chain`` share these.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, inline="always")
def splitmix_next(rng: np.ndarray, i: int) -> np.uint64:
    """Next 64-bit word of sub-env ``i``'s SplitMix64 stream."""
    rng[i] += np.uint64(0x9E3779B97F4A7C15)
    z = rng[i]
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@numba.njit(cache=True, inline="always")
def random_below(rng: np.ndarray, i: int, n: int) -> int:
    """Uniform integer in [0, n) from sub-env ``i``'s stream (Lemire's multiply-shift on the high 32 bits)."""
    return int(((splitmix_next(rng, i) >> np.uint64(32)) * np.uint64(n)) >> np.uint64(32))


@numba.njit(cache=True, inline="always")
def random_uniform(rng: np.ndarray, i: int) -> float:
    """Uniform float in [0, 1) from sub-env ``i``'s stream (53 bits)."""
    return float(splitmix_next(rng, i) >> np.uint64(11)) * (1.0 / 9007199254740992.0)
