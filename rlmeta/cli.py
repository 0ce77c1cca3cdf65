"""The ``rlmeta`` command line: the one module that ties ``rlmeta``, ``envs`` and ``agents`` together."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Annotated, Union

import tyro

from agents.bench_train import BenchTrainConfig
from agents.config import TrainConfig
from agents.variance import VarianceConfig
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


@dataclass
class Train(TrainConfig):
    """Train an actor-critic agent (A2C, V-trace, PPO); ``--config FILE`` and ``--resume`` accepted."""

    def run(self) -> None:
        from agents.train import Trainer, TrainingFailed, TrainingInterrupted

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
    import argparse
    from pathlib import Path

    from agents.config import load_config, to_dict

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
    from dataclasses import fields

    return {f.name: getattr(config, f.name) for f in fields(config)}


@dataclass
class BenchTrain(BenchTrainConfig):
    """Benchmark training: time to solve CartPole, ours vs Stable-Baselines3 PPO; A2C steps/s on Snake."""

    def run(self) -> None:
        from agents.bench_train import run

        run(self)


@dataclass
class Variance(VarianceConfig):
    """Meta-gradient variance study from a run's checkpoints: variance, cosine to a reference, SNR."""

    def run(self) -> None:
        from agents.variance import run

        try:
            run(self)
        except ValueError as error:  # no checkpoints, results already there, ...
            raise SystemExit(f"rlmeta variance: error: {error}") from None


Command = Union[
    Annotated[Train, tyro.conf.subcommand("train")],
    Annotated[ListEnvs, tyro.conf.subcommand("envs")],
    Annotated[BenchEnvs, tyro.conf.subcommand("bench-envs")],
    Annotated[BenchTrain, tyro.conf.subcommand("bench-train")],
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
