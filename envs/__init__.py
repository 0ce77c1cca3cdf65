"""rlmeta environments: one vector-env contract for native Snake, envpool, gymnasium, Meta-World and MinAtar.

``envs.make(id, num_envs, seed, **options)`` builds a vector env; ids are registered names
(``snake``), backend ids (``envpool:CartPole-v1``, ``gym:...``, ``metaworld:...``) or your own
``module:Class`` (a ``gymnasium.Env`` subclass or factory). ``envs.register`` names a user's
environment; ``envs.available()`` shows what there is. The contract is in ``envs.core``.

Layers, bottom up: ``core`` (the contract and shared helpers) <- the backends (``snake``,
``envpool_backend``, ``gym_backend``, ``metaworld_backend``, ``minatar_backend``) and ``entry_points`` <- ``registry``.
"""

from __future__ import annotations

import warnings

from rlmeta.envs.core import VectorEnv
from rlmeta.envs.registry import available, make, register, unregister
from rlmeta.envs.single import register_single_envs

register_single_envs(make)  # gymnasium.make("rlmeta/Snake-v0"), ... (envs.single)

__all__ = ["VectorEnv", "available", "make", "register", "unregister"]


def list() -> dict[str, str]:  # noqa: A001 - deprecated alias, kept for callers of the old name
    """Deprecated alias of :func:`available` (it shadowed the builtin ``list``)."""
    warnings.warn("envs.list() is deprecated; use envs.available()", DeprecationWarning, stacklevel=2)
    return available()
