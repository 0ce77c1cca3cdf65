"""The ``rlmeta`` command line, the top floor: the one module that ties the core, ``rlmeta.envs`` and
``rlmeta.agents`` together (nothing below imports it).

Its head imports only the typed configs (``rlmeta.agents.config``: the standard library and the
torch-free ``rlmeta.catalog``), so ``rlmeta --help`` answers without loading torch, numba or
envpool; each command imports what it runs when it runs. Benchmarks and studies are scripts
(``scripts/``), not commands of the installed package.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Union

import tyro

from rlmeta.agents.config import TrainConfig, VarianceConfig, load_config


@dataclass
class ListEnvs:
    """List the registered environments and the backend id forms."""

    envpool_tasks: bool = False
    """Also list every envpool task id."""

    def run(self) -> None:
        from rlmeta import envs  # deferred: loads numba and the env backends

        available = envs.available()
        width = max(map(len, available))
        for name, description in available.items():
            print(f"{name:<{width}}  {description}")
        if self.envpool_tasks:
            import envpool  # deferred: heavy, needed for this listing only

            print("\n".join(f"envpool:{task}" for task in envpool.list_all_envs()))


@dataclass
class Train(TrainConfig):
    """Train an actor-critic agent (A2C, V-trace, PPO); ``--config FILE`` and ``--resume`` accepted."""

    def run(self) -> None:
        from rlmeta.agents.train import Trainer, TrainingFailed, TrainingInterrupted  # deferred: loads torch

        try:
            trainer = Trainer(self)
        except ValueError as error:  # bad config, run dir, env id or options: nothing was started
            raise SystemExit(f"rlmeta train: error: {error}") from None
        try:
            summary = trainer.run()
        except TrainingFailed as error:
            print(f"rlmeta train: failed: {error}", file=sys.stderr)
            raise SystemExit(1) from None
        except TrainingInterrupted as error:
            print(f"rlmeta train: {error}", file=sys.stderr)
            raise SystemExit(130) from None
        print(format_summary(summary))


def format_summary(summary: dict) -> str:
    """A few readable lines about a finished run."""
    ev = summary.get("eval") or {}
    lines = [
        f"run: {summary['run_dir']}  ({summary['status']})",
        f"env steps: {summary['total_steps']:,} in {summary['wall_clock_seconds']:.1f} s "
        f"({summary['steps_per_second'] or 0:,.0f} steps/s)",
    ]
    if ev:
        line = f"evaluation over {ev['episodes']} episodes: return {ev['return_mean']:.2f} +- {ev['return_std']:.2f}"
        if "success_rate" in ev:
            line += f", success rate {ev['success_rate']:.2f}"
        lines.append(line)
    if summary.get("meta"):
        lines.append("meta-learned: " + ", ".join(f"{name} {v['initial']:.4g} -> {v['final']:.4g}"
                                                  for name, v in summary["meta"].items()))
    if "target_reached" in summary:
        lines.append(f"target return {summary['target_return']}: {'reached' if summary['target_reached'] else 'not reached'}")
    return "\n".join(lines)


def parse_train(argv: list[str]) -> Train:
    """``rlmeta train`` arguments: ``--config FILE`` or ``--resume`` (with ``--run-dir``) give defaults."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("--run-dir", "--run_dir", dest="run_dir")
    pre.add_argument("--resume", action="store_true")
    known, _ = pre.parse_known_args(argv)
    rest = [a for i, a in enumerate(argv) if not (a == "--config" or (i and argv[i - 1] == "--config"))]
    rest = [a for a in rest if not a.startswith("--config=")]
    default = TrainConfig()
    if known.resume and known.run_dir:
        saved = Path(known.run_dir) / "config.json"
        if not saved.is_file():
            raise ValueError(f"cannot resume {known.run_dir!r}: it has no config.json")
        default = load_config(saved)
    elif known.config:
        default = load_config(known.config)
    return tyro.cli(Train, default=Train(**_fields(default)), args=rest, prog="rlmeta train")


def _fields(config: TrainConfig) -> dict:
    return {f.name: getattr(config, f.name) for f in fields(config)}


@dataclass
class Variance(VarianceConfig):
    """Meta-gradient variance study from a run's checkpoints: variance, cosine to a reference, SNR."""

    def run(self) -> None:
        from rlmeta.agents.variance import run  # deferred: loads torch

        try:
            run(self)
        except ValueError as error:  # no checkpoints, results already there, ...
            raise SystemExit(f"rlmeta variance: error: {error}") from None


Command = Union[
    Annotated[Train, tyro.conf.subcommand("train")],
    Annotated[ListEnvs, tyro.conf.subcommand("envs")],
    Annotated[Variance, tyro.conf.subcommand("variance")],
]


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``rlmeta`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    try:  # configs validate in __post_init__: a bad value stops here, before anything is built
        if argv[:1] == ["train"] and not {"-h", "--help"} & set(argv):
            command = parse_train(argv[1:])
        else:
            command = tyro.cli(Command, args=argv, prog="rlmeta")
    except ValueError as error:
        print(f"rlmeta: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    command.run()


if __name__ == "__main__":
    main()
