"""``envs.make``, ``envs.register`` and ``envs.available``: one entry point for every backend.

Ids take one of three forms:

* a registered name: ``snake``, ``snake-6x6``, or a user's ``envs.register`` name;
* a backend prefix and a name: ``envpool:<task>``, ``gym:<gymnasium id>``, ``metaworld:<benchmark>``,
  ``minatar:<game>`` (the backend table, ``BACKENDS``);
* a gymnasium-style entry point ``module.path:Attribute`` naming a ``gymnasium.Env`` subclass or a
  factory returning one (see ``envs.entry_points``).

The registry sits on top: it imports the backends, which import ``envs.core`` (and, for Meta-World's
fast path, the envpool backend) but never the registry.
"""

from __future__ import annotations

from typing import Any, Callable

from rlmeta.envs import chain, envpool_backend, gridworld, gym_backend, metaworld_backend, minatar_backend, snake
from rlmeta.envs.core import (
    Backend, Builder, EnvSpec, VectorEnv, check_num_envs, check_seed, unknown_id_message,
)
from rlmeta.envs.entry_points import is_entry_point, load_entry_point
from rlmeta.envs.gym_backend import make_gym_vector

# The backend table: every id ``<prefix>:<name>`` is built by the backend of its prefix.
BACKENDS: dict[str, Backend] = {
    backend.prefix: backend
    for backend in (envpool_backend.BACKEND, gym_backend.BACKEND, metaworld_backend.BACKEND, minatar_backend.BACKEND)
}

ENTRY_POINT_FORM = "<module>:<attr>"
ENTRY_POINT_DESCRIPTION = (
    "your own gymnasium.Env subclass or factory, e.g. my_pkg.my_env:MyEnv, vectorized like envs.register"
)

# Named envs: the built-ins, then whatever users register (mutable: register/unregister change it).
_NAMED: dict[str, EnvSpec] = {spec.name: spec for spec in (*snake.NAMED_ENVS, *gridworld.NAMED_ENVS, *chain.NAMED_ENVS)}


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
    if not isinstance(name, str) or not name or ":" in name or name != name.strip():
        raise ValueError(f"env name must be a non-empty string without ':' or surrounding spaces, got {name!r}")
    if not callable(factory):
        raise ValueError(f"factory for {name!r} must be callable, got {factory!r}")
    if name in _NAMED and not overwrite:
        raise ValueError(f"an env named {name!r} is already registered; pass overwrite=True to replace it")
    builder = factory if vectorized else _gym_builder(factory, name)
    _NAMED[name] = EnvSpec(name, builder, dict(defaults), description)


def unregister(name: str) -> None:
    """Remove a registered name (KeyError if it is not registered)."""
    del _NAMED[name]


def available() -> dict[str, str]:
    """Map every registered name, backend id form (``envpool:<name>`` ...) and ``<module>:<attr>`` to a description."""
    out = {name: spec.description for name, spec in sorted(_NAMED.items())}
    for prefix, backend in BACKENDS.items():
        out[f"{prefix}:<name>"] = backend.description
    out[ENTRY_POINT_FORM] = ENTRY_POINT_DESCRIPTION
    return out


def make(id: str, num_envs: int = 1, seed: int | None = 0, **options: Any) -> VectorEnv:  # noqa: A002
    """Build the vector env ``id`` with ``num_envs`` sub-envs seeded from ``seed``.

    Options are passed to the backend (e.g. ``rows=6`` for snake, ``task="reach-v3"`` for
    Meta-World, ``vectorization="async"`` for gymnasium envs and entry points). Errors in the id,
    ``num_envs``, ``seed`` or options raise ``ValueError`` before anything is built.
    """
    num_envs = check_num_envs(num_envs)
    seed = check_seed(seed)
    if not isinstance(id, str):
        raise ValueError(f"env id must be a string, got {id!r}")
    if id in _NAMED:
        spec = _NAMED[id]
        return spec.builder(num_envs=num_envs, seed=seed, **{**spec.defaults, **options})
    prefix, sep, name = id.partition(":")
    if sep and prefix in BACKENDS and name:
        return BACKENDS[prefix].build(name, num_envs=num_envs, seed=seed, **options)
    if prefix not in BACKENDS and is_entry_point(id):
        factory = load_entry_point(id, BACKENDS)
        return make_gym_vector(factory, num_envs=num_envs, seed=seed, name=id, **options)
    raise ValueError(_unknown_id(id))


def known_ids() -> list[str]:
    """Every concrete id we can name in an error message (registered names, then each backend's names)."""
    ids = [*_NAMED]
    for prefix, backend in BACKENDS.items():
        try:
            names = [*backend.names()]
        except ImportError:  # pragma: no cover - a backend whose optional dependency is not installed
            continue
        ids += [f"{prefix}:{name}" for name in names]
    return ids


def _unknown_id(id: str) -> str:  # noqa: A002
    """Error text for an id that is neither a name, a backend id nor an entry point."""
    forms = ", ".join(f"'{prefix}:<name>'" for prefix in BACKENDS)
    return (
        f"{unknown_id_message(id, known_ids())}. Registered names: {sorted(_NAMED)}; backends: {forms}; "
        f"or your own env class or factory as '{ENTRY_POINT_FORM}'"
    )


def _gym_builder(factory: Callable[..., Any], name: str) -> Builder:
    """A builder vectorizing ``factory`` (one gymnasium.Env per call) with gymnasium's vector API."""

    def builder(num_envs: int, seed: int | None, **options: Any) -> VectorEnv:
        return make_gym_vector(factory, num_envs=num_envs, seed=seed, name=name, **options)

    return builder
