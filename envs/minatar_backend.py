"""MinAtar games behind rlmeta's vector-env contract (``envs.make("minatar:Breakout")``).

MinAtar (Young & Tian, "MinAtar: An Atari-Inspired Testbed for Thorough and Reproducible
Reinforcement Learning Experiments", arXiv:1903.03176, 2019; https://github.com/kenjyoung/MinAtar)
has five games on a 10x10 grid: ``asterix``, ``breakout``, ``freeway``, ``seaquest`` and
``space_invaders``. MinAtar is GPL-3.0 licensed: it is an optional extra
(``pip install 'rlmeta[minatar]'``), never bundled, and imported only when a ``minatar:`` env is
built (``envs.available()`` and the name checks below do not import it).

Ids: ``minatar:<game>`` with the game in any case, with or without the underscore
(``minatar:Breakout``, ``minatar:space_invaders``, ``minatar:SpaceInvaders``), optionally as
MinAtar's gymnasium ids ``MinAtar/<Game>-v0`` (full action set) and ``-v1`` (minimal action set),
e.g. ``minatar:Breakout-v0`` or ``minatar:MinAtar/Breakout-v1``.

Each of the ``num_envs`` sub-envs is one ``minatar.Environment`` stepped in a Python loop, so a
step is exactly MinAtar's own: observations are MinAtar's ``state()`` (``[num_envs, 10, 10, C]``
bool, channels last like Snake's; ``C`` is 4 to 10 by game), rewards and terminations are those of
``Environment.act``. Sub-env ``i`` is seeded with ``Environment.seed(sub_seeds(seed, num_envs)[i])``
and reset, so ``minatar.Environment(game)``, seeded and reset the same way and driven with the
same actions (reset when it terminates), reproduces sub-env ``i`` step for step
(``tests/envs/test_minatar.py``). As in MinAtar's own loops, an autoreset keeps the sticky-action
memory (the last action) of the ended episode; an explicit ``reset()`` clears it, as a fresh env.

Options
-------
``minimal_action_set``   True (default): the game's minimal action set (``Discrete(3)`` for
                         Breakout: no-op, left, right); False: all 6 MinAtar actions. The ids'
                         ``-v1``/``-v0`` suffix sets it too (giving both must agree).
``sticky_action_prob``   probability that the previous action repeats (MinAtar's default 0.1).
``difficulty_ramping``   MinAtar's difficulty ramp (default True; Asterix and Seaquest ramp,
                         the other games ignore it).
``max_episode_steps``    a time limit (default None: MinAtar's own episodes, which only
                         terminate); hitting it is reported as ``truncated``.
"""

from __future__ import annotations

import re
from numbers import Real
from typing import Any

import gymnasium as gym
import numpy as np

from rlmeta.envs.core import (
    ArrayPool, Backend, EpisodeTracker, VectorEnv, check_num_envs, check_options, nearest_ids, sub_seeds,
)

# MinAtar's games (module names in ``minatar.environments``) and the names of its gymnasium ids.
GAMES = {
    "asterix": "Asterix",
    "breakout": "Breakout",
    "freeway": "Freeway",
    "seaquest": "Seaquest",
    "space_invaders": "SpaceInvaders",
}
NUM_ACTIONS = 6  # MinAtar's full action set: no-op, left, up, right, down, fire
INSTALL_HINT = "pip install 'rlmeta[minatar]'"
_KEYS = {game.replace("_", ""): game for game in GAMES}  # "spaceinvaders" -> "space_invaders"
_NAME = re.compile(r"(?:minatar/)?(?P<game>[a-z_\-]+?)(?:-v(?P<version>\d+))?", re.IGNORECASE)
_OPTIONS = ("minimal_action_set", "sticky_action_prob", "difficulty_ramping", "max_episode_steps")


class MissingDependency(ModuleNotFoundError, ValueError):
    """An optional package a backend needs is not installed (a ValueError too, so the CLI reports it as bad input)."""


def names() -> list[str]:
    """Every id name after ``minatar:`` in its canonical spelling (``Breakout``, ``Breakout-v0``, ``Breakout-v1``)."""
    return [f"{title}{suffix}" for title in GAMES.values() for suffix in ("", "-v0", "-v1")]


def parse_name(name: str) -> tuple[str, bool | None]:
    """``(game, minimal_action_set)`` of an id name; the flag is None without a ``-v0``/``-v1`` suffix.

    ``"Breakout"`` -> ``("breakout", None)``, ``"MinAtar/SpaceInvaders-v0"`` -> ``("space_invaders", False)``;
    an unknown name raises ValueError naming the nearest ones and the games.
    """
    match = _NAME.fullmatch(name) if isinstance(name, str) else None
    key = re.sub(r"[_\-]", "", match["game"].lower()) if match else ""
    version = match["version"] if match else None
    if key not in _KEYS or version not in (None, "0", "1"):
        raise ValueError(_unknown_name_message(name))
    return _KEYS[key], None if version is None else version == "1"


def _unknown_name_message(name: Any) -> str:
    candidates = {n.lower(): f"minatar:{n}" for n in names()}  # compared without the prefix and case
    near = [candidates[c] for c in nearest_ids(str(name).lower(), candidates)[:3]]
    hint = f"; nearest known ids: {', '.join(near)}" if near else ""
    games = ", ".join(GAMES)
    return (
        f"unknown env id {f'minatar:{name}'!r}{hint}. MinAtar's games are {games} (any case, e.g. "
        f"minatar:Breakout; a -v0 suffix gives the full 6-action set, -v1 the minimal one)"
    )


def _import_environment(env_id: str) -> type:
    """MinAtar's ``Environment`` class, or a MissingDependency saying how to install it."""
    try:
        from minatar import Environment  # deferred: GPL-3.0 optional extra, loaded only for minatar: envs
    except ImportError as error:
        raise MissingDependency(
            f"{env_id} needs the MinAtar package, which is not installed: {INSTALL_HINT} "
            f"(or pip install minatar==1.0.15). MinAtar is licensed under the GPL-3.0, so rlmeta does not "
            f"bundle it and imports it only for minatar: envs",
            name="minatar",
        ) from error
    return Environment


class MinAtarVectorEnv(VectorEnv):
    """``num_envs`` MinAtar environments of one game, with same-step autoreset and episode statistics."""

    def __init__(
        self,
        game: str,
        num_envs: int,
        seed: int | None,
        minimal_action_set: bool = True,
        sticky_action_prob: float = 0.1,
        difficulty_ramping: bool = True,
        max_episode_steps: int | None = None,
    ):
        environment = _import_environment(f"minatar:{GAMES[game]}")
        num_envs = check_num_envs(num_envs)
        self.game = game
        self.sticky_action_prob = float(sticky_action_prob)
        self.difficulty_ramping = bool(difficulty_ramping)
        self.max_episode_steps = max_episode_steps
        self._envs = [
            environment(game, sticky_action_prob=self.sticky_action_prob, difficulty_ramping=self.difficulty_ramping)
            for _ in range(num_envs)
        ]
        first = self._envs[0]
        #: MinAtar action of each of our actions (``env.action_set[a]``).
        self.action_set = np.asarray(first.minimal_action_set() if minimal_action_set else range(NUM_ACTIONS))
        shape = tuple(int(s) for s in first.state_shape())
        super().__init__(
            num_envs, gym.spaces.Box(0, 1, shape, dtype=bool), gym.spaces.Discrete(len(self.action_set)), seed=seed
        )
        self._obs = ArrayPool((self.num_envs, *shape), bool)
        self._elapsed = np.zeros(self.num_envs, dtype=np.int64)
        self._tracker = EpisodeTracker(self.num_envs, has_success=False)

    def _observe(self) -> np.ndarray:
        return np.stack([env.state() for env in self._envs], out=self._obs.take())

    def _reset(self, seed: int | None, options: dict | None) -> tuple[np.ndarray, dict]:
        seeds = sub_seeds(seed, self.num_envs)
        for env, sub_seed in zip(self._envs, seeds):
            env.seed(sub_seed)  # None keeps the env's random stream
            env.last_action = 0  # a fresh episode: no sticky action from before the reset
            env.reset()
        self._elapsed[:] = 0
        self._tracker.clear()
        return self._observe(), {}

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        """Step every sub-env; ended ones are reset in the same step (their last state is ``info['final_obs']``)."""
        actions = self.check_actions(actions)
        outcome = np.array(  # (reward, terminal) per sub-env
            [env.act(move) for env, move in zip(self._envs, self.action_set[actions].tolist())], dtype=np.float32
        )
        reward, terminated = outcome[:, 0].copy(), outcome[:, 1] != 0
        self._elapsed += 1
        if self.max_episode_steps is None:
            truncated = np.zeros(self.num_envs, dtype=bool)
        else:
            truncated = (self._elapsed >= self.max_episode_steps) & ~terminated
        done = terminated | truncated
        info: dict = {}
        self._tracker.update(reward, done, info)
        if done.any():
            final = np.zeros((self.num_envs, *self.single_observation_space.shape), dtype=bool)
            for i in np.flatnonzero(done):
                env = self._envs[i]
                final[i] = env.state()
                env.reset()
            self._elapsed[done] = 0
            info["final_obs"] = final
            info["_final_obs"] = done.copy()
        return self._observe(), reward, terminated, truncated, info

    def _close(self) -> None:
        self._envs = []

    def __repr__(self) -> str:
        return f"MinAtarVectorEnv({self.game!r}, num_envs={getattr(self, 'num_envs', '?')})"


def _check_bool(option: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{option} must be True or False, got {value!r}")
    return bool(value)


def make_minatar(name: str, num_envs: int = 1, seed: int | None = 0, **options: Any) -> MinAtarVectorEnv:
    """Build ``num_envs`` MinAtar environments of the game ``name``; see the module docstring for ids and options.

    Bad names and options raise ValueError before MinAtar is imported; a missing MinAtar raises
    :class:`MissingDependency` (a ModuleNotFoundError and a ValueError) saying how to install it.
    """
    game, minimal_from_id = parse_name(name)
    check_options(f"minatar:{name}", options, _OPTIONS)
    minimal = options.get("minimal_action_set", True if minimal_from_id is None else minimal_from_id)
    minimal = _check_bool("minimal_action_set", minimal)
    if minimal_from_id is not None and minimal != minimal_from_id:
        raise ValueError(
            f"minatar:{name} is the {'minimal' if minimal_from_id else 'full'} action set, but minimal_action_set="
            f"{minimal} was given; drop the -v0/-v1 suffix or the option"
        )
    prob = options.get("sticky_action_prob", 0.1)
    if isinstance(prob, (bool, np.bool_)) or not isinstance(prob, Real) or not 0.0 <= float(prob) <= 1.0:
        raise ValueError(f"sticky_action_prob must be a number in [0, 1], got {prob!r}")
    ramping = _check_bool("difficulty_ramping", options.get("difficulty_ramping", True))
    limit = options.get("max_episode_steps")
    bad_limit = isinstance(limit, (bool, np.bool_)) or not isinstance(limit, (int, np.integer)) or limit < 1
    if limit is not None and bad_limit:
        raise ValueError(f"max_episode_steps must be an integer >= 1 or None, got {limit!r}")
    return MinAtarVectorEnv(
        game, num_envs, seed, minimal_action_set=minimal, sticky_action_prob=float(prob),
        difficulty_ramping=ramping, max_episode_steps=None if limit is None else int(limit),
    )


BACKEND = Backend(
    "minatar", make_minatar,
    "MinAtar's 10x10 games (optional extra, GPL-3.0): minatar:Asterix, Breakout, Freeway, Seaquest, SpaceInvaders",
    names,
)
