"""rlmeta environments: one vector-env contract for native Snake, envpool, gymnasium and Meta-World.

``envs.make(id, num_envs, seed, **options)`` builds a vector env; ``envs.register`` plugs in a
user's environment; ``envs.list()`` shows what is available. The contract is in ``envs.core``.
"""

from rlmeta.envs.core import VectorEnv
from rlmeta.envs.registry import list, make, register, unregister  # noqa: A004

__all__ = ["VectorEnv", "list", "make", "register", "unregister"]
