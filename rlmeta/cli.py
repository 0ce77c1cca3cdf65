"""The ``rlmeta`` command line: the one module that ties ``rlmeta``, ``envs`` and ``agents`` together."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Annotated, Union

import tyro

from envs.bench import BenchEnvsConfig


@dataclass
class ListEnvs:
    """List the registered environments and the backend id forms."""

    envpool_tasks: bool = False
    """Also list every envpool task id."""

    def run(self) -> None:
        import envs

        available = envs.list()
        width = max(map(len, available))
        for name, description in available.items():
            print(f"{name:<{width}}  {description}")
        if self.envpool_tasks:
            import envpool

            print("\n".join(f"envpool:{task}" for task in envpool.list_all_envs()))


@dataclass
class BenchEnvs(BenchEnvsConfig):
    """Benchmark env throughput: our Snake vs envpool's Snake-v1, and Meta-World paths."""

    def run(self) -> None:
        from envs.bench import run

        run(self)


Command = Union[
    Annotated[ListEnvs, tyro.conf.subcommand("envs")],
    Annotated[BenchEnvs, tyro.conf.subcommand("bench-envs")],
]


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``rlmeta`` console script."""
    command = tyro.cli(Command, args=sys.argv[1:] if argv is None else argv, prog="rlmeta")
    command.run()


if __name__ == "__main__":
    main()
