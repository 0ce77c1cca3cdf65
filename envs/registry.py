"""``envs.make``, ``envs.register`` and ``envs.list``: one entry point for every backend.

Ids are either registered names (``snake``, ``snake-6x6``, or a user's ``envs.register`` name) or
a backend prefix and a name: ``envpool:<task>``, ``gym:<gymnasium id>``, ``metaworld:<benchmark>``.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import gymnasium as gym

from rlmeta.envs.core import VectorEnv, check_num_envs, check_seed

# A builder makes a vector env: builder(num_envs=..., seed=..., **options) -> VectorEnv.
Builder = Callable[..., VectorEnv]


@dataclass(frozen=True)
class EnvSpec:
    """A registered environment: its name, how to build it, and its default options."""

    name: str
    builder: Builder
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""


_REGISTRY: dict[str, EnvSpec] = {}

PREFIXES = {
    "envpool": "any envpool task, e.g. envpool:CartPole-v1, envpool:Snake-v1, envpool:Pong-v5",
    "gym": "any gymnasium id, e.g. gym:CartPole-v1, vectorized with gymnasium's vector API",
    "metaworld": "Meta-World benchmarks: MT1 (task=...), MT10, MT50, ML1 (task=...), ML10, ML45",
}


def register(
    name: str,
    factory: Callable[..., Any],
    *,
    vectorized: bool = False,
    description: str = "",
    overwrite: bool = False,
    **defaults: Any,
) -> None:
    """Register ``name`` so that ``envs.make(name, ...)`` builds it.

    ``factory(**options)`` returns one ``gymnasium.Env``; rlmeta vectorizes it with gymnasium's
    vector API (``vectorization="sync"`` or ``"async"`` at make time). With ``vectorized=True``,
    ``factory(num_envs=..., seed=..., **options)`` must itself return an ``envs.VectorEnv``.
    ``defaults`` are options used when make does not give them. Re-registering an existing name
    (a built-in one too) raises unless ``overwrite=True``.
    """
    _ensure_builtins()
    if not isinstance(name, str) or not name or ":" in name or name != name.strip():
        raise ValueError(f"env name must be a non-empty string without ':' or surrounding spaces, got {name!r}")
    if not callable(factory):
        raise ValueError(f"factory for {name!r} must be callable, got {factory!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"an env named {name!r} is already registered; pass overwrite=True to replace it")
    if vectorized:
        builder = factory
    else:
        from rlmeta.envs.gym_backend import make_gym_vector

        def builder(num_envs: int, seed: int | None, **options: Any) -> VectorEnv:
            return make_gym_vector(factory, num_envs=num_envs, seed=seed, **options)

    _REGISTRY[name] = EnvSpec(name, builder, dict(defaults), description)


def unregister(name: str) -> None:
    """Remove a registered name (KeyError if it is not registered)."""
    del _REGISTRY[name]


def list() -> dict[str, str]:  # noqa: A001 - the public name asked for is envs.list()
    """Map every registered name and backend prefix (``envpool:<task>`` ...) to a description."""
    _ensure_builtins()
    out = {name: spec.description for name, spec in sorted(_REGISTRY.items())}
    for prefix, text in PREFIXES.items():
        out[f"{prefix}:<name>"] = text
    return out


def make(id: str, num_envs: int = 1, seed: int | None = 0, **options: Any) -> VectorEnv:  # noqa: A002
    """Build the vector env ``id`` with ``num_envs`` sub-envs seeded from ``seed``.

    Options are passed to the backend (e.g. ``rows=6`` for snake, ``task="reach-v3"`` for
    Meta-World, ``vectorization="async"`` for gymnasium envs). Errors in the id, ``num_envs``,
    ``seed`` or options raise ``ValueError`` before anything is built.
    """
    _ensure_builtins()
    num_envs = check_num_envs(num_envs)
    seed = check_seed(seed)
    if not isinstance(id, str):
        raise ValueError(f"env id must be a string, got {id!r}")
    if id in _REGISTRY:
        spec = _REGISTRY[id]
        return spec.builder(num_envs=num_envs, seed=seed, **{**spec.defaults, **options})
    prefix, sep, name = id.partition(":")
    if sep and prefix in PREFIXES and name:
        if prefix == "envpool":
            from rlmeta.envs.envpool_backend import make_envpool

            return make_envpool(name, num_envs=num_envs, seed=seed, **options)
        if prefix == "gym":
            from rlmeta.envs.gym_backend import make_gym

            return make_gym(name, num_envs=num_envs, seed=seed, **options)
        if prefix == "metaworld":
            from rlmeta.envs.metaworld_backend import make_metaworld

            return make_metaworld(name, num_envs=num_envs, seed=seed, **options)
    raise ValueError(unknown_id_message(id, known_ids()))


def known_ids() -> list[str]:
    """Every concrete id we can name in an error message (registered, envpool, gym, Meta-World)."""
    ids = [*_REGISTRY]
    try:
        import envpool

        ids += [f"envpool:{task}" for task in envpool.list_all_envs()]
    except ImportError:  # pragma: no cover - envpool is a dependency
        pass
    ids += [f"gym:{env_id}" for env_id in gym.registry]
    from rlmeta.envs.metaworld_backend import BENCHMARKS

    ids += [f"metaworld:{name}" for name in BENCHMARKS]
    return ids


def unknown_id_message(id: str, candidates: list[str]) -> str:  # noqa: A002
    """Error text for an unknown id, naming the closest known ids."""
    near = difflib.get_close_matches(id, candidates, n=5, cutoff=0.5)
    if not near:  # also try without the prefix, e.g. "CartPole-v1" -> "envpool:CartPole-v1"
        bare = {c.partition(":")[2] or c: c for c in candidates}
        near = [bare[b] for b in difflib.get_close_matches(id.partition(":")[2] or id, bare, n=5, cutoff=0.6)]
    hint = f"; nearest known ids: {', '.join(near)}" if near else ""
    forms = ", ".join(f"'{p}:<name>'" for p in PREFIXES)
    return f"unknown env id {id!r}{hint}. Registered names: {sorted(_REGISTRY)}; backends: {forms}"


def check_options(where: str, options: dict[str, Any], allowed: Callable | list[str]) -> None:
    """Raise ValueError naming any option not accepted by ``allowed`` (a function or names)."""
    names = [p for p in inspect.signature(allowed).parameters] if callable(allowed) else allowed
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {where}; allowed: {sorted(names)}")


_BUILTINS_LOADED = False


def _ensure_builtins() -> None:
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    from rlmeta.envs.snake import register_snake

    register_snake()
