"""The ``rlmeta`` command line, the top floor: the one module that ties the core, ``rlmeta.envs`` and
``rlmeta.agents`` together (nothing below imports it).

Its head imports only the typed configs (``rlmeta.agents.config``: the standard library and the
torch-free ``rlmeta.catalog``), so ``rlmeta --help`` answers without loading torch, numba or
envpool; each command imports what it runs when it runs. Benchmarks and studies are scripts
(``scripts/``), not commands of the installed package.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, Union

import tyro

from rlmeta.agents.config import ESTrainConfig, MetaTrainConfig, TrainConfig, VarianceConfig, load_config


class InputError(SystemExit):
    """Bad input (config, env id, run directory, files): exit status 2, the message already on stderr."""

    def __init__(self, command: str, error: Exception | str):
        self.message = f"{command}: error: {error}"
        print(self.message, file=sys.stderr)
        super().__init__(2)

    def __str__(self) -> str:
        return self.message


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
            raise InputError("rlmeta train", error) from None
        try:
            summary = trainer.run()
        except TrainingFailed as error:
            print(f"rlmeta train: failed: {error}", file=sys.stderr)
            raise SystemExit(1) from None
        except TrainingInterrupted as error:
            print(f"rlmeta train: {error}", file=sys.stderr)
            raise SystemExit(error.exit_code) from None
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
    return parse_with_defaults(argv, Train, TrainConfig, "rlmeta train")


def parse_with_defaults(argv: list[str], command: type, config_type: type, prog: str):
    """A command's arguments, with ``--config FILE`` or ``--resume --run-dir DIR`` (its config.json) as defaults."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("--run-dir", "--run_dir", dest="run_dir")
    pre.add_argument("--resume", action="store_true")
    known, _ = pre.parse_known_args(argv)
    rest = [a for i, a in enumerate(argv) if not (a == "--config" or (i and argv[i - 1] == "--config"))]
    rest = [a for a in rest if not a.startswith("--config=")]
    default = config_type()
    options = None
    if hasattr(default, "env_options"):
        rest, options = _take_dict_options(rest, ("--env-options", "--env_options"))
    rest = _bool_values_as_flags(rest, config_type)
    if known.resume and known.run_dir:
        saved = Path(known.run_dir) / "config.json"
        if not saved.is_file():
            raise ValueError(f"cannot resume {known.run_dir!r}: it has no config.json")
        default = load_config(saved, config_type)
    elif known.config:
        default = load_config(known.config, config_type)
        # A run's saved config.json names its own directory: reproducing it goes to a new one
        # (the default, or --run-dir), never into the original run.
        default = dataclasses.replace(default, run_dir=None, resume=False, overwrite=False)
        default = _options_follow_env(default, rest)
    if options is not None:  # on top of the defaults' (tyro would take a default dict's keys as fixed fields)
        default = dataclasses.replace(default, env_options={**default.env_options,
                                                           **{k: _env_option(v) for k, v in options.items()}})
    return tyro.cli(command, default=command(**_fields(default)), args=rest, prog=prog)


def _options_follow_env(config: Any, argv: list[str]) -> Any:
    """The config file's ``env_options`` belong to its ``env``: an ``--env`` naming another env on the
    command line starts from none (``--env-options`` then gives its own), and says so on stderr."""
    env = _last_value(argv, ("--env",))
    if env is None or env == getattr(config, "env", env) or not getattr(config, "env_options", None):
        return config
    print(f"note: the config's env_options {config.env_options} are {config.env}'s; not passed to {env} "
          "(--env-options KEY VALUE sets its own)", file=sys.stderr)
    return dataclasses.replace(config, env_options={})


def _last_value(argv: list[str], names: tuple[str, ...]) -> str | None:
    """The value after the last of ``names`` in ``argv`` (``--name value`` or ``--name=value``), else None."""
    found = None
    for i, a in enumerate(argv):
        if a in names and i + 1 < len(argv):
            found = argv[i + 1]
        elif "=" in a and a.split("=", 1)[0] in names:
            found = a.split("=", 1)[1]
    return found


def _take_dict_options(argv: list[str], names: tuple[str, ...]) -> tuple[list[str], dict[str, str] | None]:
    """``argv`` without its dict options, and their key value pairs (None: none given). Repeated options
    (``--env-options rows 6 --env-options cols 6``) merge, later keys winning."""
    merged: list[str] = []
    out: list[str] = []
    given = False
    i = 0
    while i < len(argv):
        if argv[i] in names:
            j = i + 1
            while j < len(argv) and not argv[j].startswith("--"):
                j += 1
            merged += argv[i + 1:j]
            given = True
            i = j
            continue
        out.append(argv[i])
        i += 1
    if not given:
        return argv, None
    if len(merged) % 2:
        raise ValueError(f"{names[0]} takes key value pairs, got {merged}")
    return out, dict(zip(merged[0::2], merged[1::2]))


def _env_option(text: str) -> int | float | bool | str:
    """A command-line env option's value, typed as tyro types ``EnvOption``: int, float, True/False, else text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)


def _bool_fields(config_type: type, prefix: str = "") -> set[str]:
    """The command-line names of a config's bool fields (nested sections as ``section.name``)."""
    names = set()
    for f in fields(config_type):
        kind = f.type if not isinstance(f.type, str) else f.type.replace(" ", "")
        name = prefix + f.name.replace("_", "-")
        if kind in (bool, "bool"):
            names.add(name)
        elif dataclasses.is_dataclass(f.default_factory() if f.default_factory is not dataclasses.MISSING else None):
            names |= _bool_fields(type(f.default_factory()), name + ".")
    return names


def _bool_values_as_flags(argv: list[str], config_type: type) -> list[str]:
    """``--progress False`` as ``--no-progress`` (and ``True`` as the flag), for every bool field."""
    flags = _bool_fields(config_type)
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        name = token[2:].replace("_", "-") if token.startswith("--") else None
        value = argv[i + 1].lower() if i + 1 < len(argv) else None
        if name in flags and value in ("true", "false", "1", "0", "yes", "no"):
            section, _, last = name.rpartition(".")
            negated = f"{section}.no-{last}" if section else f"no-{last}"
            out.append("--" + (name if value in ("true", "1", "yes") else negated))
            i += 2
            continue
        out.append(token)
        i += 1
    return out


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
            raise InputError("rlmeta variance", error) from None


@dataclass
class ESTrain(ESTrainConfig):
    """Meta-train LPG or TA-LPG (grid worlds), LPO or TA-LPO (PPO lifetimes) by evolution strategies (--ray: on Ray)."""

    def run(self) -> None:
        from rlmeta.agents.es_train import ESTrainer, ESTrainingInterrupted  # deferred: loads torch

        try:
            trainer = ESTrainer(self)
        except ValueError as error:
            raise InputError("rlmeta es-train", error) from None
        try:
            summary = trainer.run()
        except ESTrainingInterrupted as error:
            print(f"rlmeta es-train: {error}", file=sys.stderr)
            raise SystemExit(error.exit_code) from None
        lines = [f"run: {summary['run_dir']}  ({summary['status']})",
                 f"generations: {summary['generations']} in {summary['wall_clock_seconds']:.0f} s",
                 f"learned objective (the search's center): {summary['objective_file']}"]
        for key in ("fitness_first_tenth", "fitness_last_tenth"):
            if key in summary:
                lines.append(f"{key.replace('_', ' ')}: {summary[key]:.3f}")
        print("\n".join(lines))


@dataclass
class MetaTrain(MetaTrainConfig):
    """Meta-train LPG on a population of grid-world agents (uniform levels or GROOVE's curriculum)."""

    def run(self) -> None:
        from rlmeta.agents.meta_train import MetaTrainer, MetaTrainingInterrupted  # deferred: loads torch

        try:
            trainer = MetaTrainer(self)
        except ValueError as error:
            raise InputError("rlmeta meta-train", error) from None
        try:
            summary = trainer.run()
        except MetaTrainingInterrupted as error:
            print(f"rlmeta meta-train: {error}", file=sys.stderr)
            raise SystemExit(error.exit_code) from None
        except FloatingPointError as error:
            print(f"rlmeta meta-train: failed: {error}", file=sys.stderr)
            raise SystemExit(1) from None
        lines = [f"run: {summary['run_dir']}  ({summary['status']})",
                 f"meta-steps: {summary['meta_steps']} in {summary['wall_clock_seconds']:.0f} s, "
                 f"{summary['lifetimes_finished']} agent lifetimes finished",
                 f"learned LPG: {summary['lpg']}"]
        for key in ("normalized_return_first_tenth", "normalized_return_last_tenth"):
            if key in summary:
                lines.append(f"{key.replace('_', ' ')}: {summary[key]['mean']:.3f} +- {summary[key]['se']:.3f}")
        print("\n".join(lines))


@dataclass
class MetaTest:
    """Score a learned objective: an LPG on held-out levels (normalised return against A2C, GROOVE's
    score), or an LPO drift on fresh PPO agents (return against PPO's clip on the same seeds)."""

    objective: tyro.conf.Positional[str] = "untrained"
    """A learned LPG (the lpg.pt of a meta-train or es-train run, a shipped name (--list), 'untrained'
    (a fresh LPG initialised with --seed) or 'untrained:N' (initialised with seed N, on the same levels)),
    or a learned LPO drift (an es-train run's lpo.pt, a shipped name)."""
    levels: str = "small"
    """LPG: level generator of the held-out levels (small, medium, large, all, or a named level: dense, sparse, ...)."""
    num_levels: int = 128
    """LPG: held-out levels."""
    lifetime: int = 250
    """LPG: agent updates each agent learns for."""
    seed: int = 1000
    """Seed of the held-out levels and agents (LPO: the agents' seeds are --seed, --seed+1, ...)."""
    episodes: int = 16
    """LPG: evaluation episodes per level and policy."""
    frozen_progress: float | None = None
    """TA-LPG: feed this n/N (in [0, 1]) at every update instead of the true fraction (a counterfactual)."""
    num_seeds: int = 32
    """LPO: fresh PPO agents, each trained with the drift and with PPO's clip."""
    steps: int | None = None
    """LPO: env steps per lifetime (default: the meta-training horizon)."""
    inner_config: str | None = None
    """LPO: the PPO config (TOML/JSON) to test in (default: the one the drift was meta-trained in)."""
    out: str = "meta_test.json"
    """Where the results go (JSON; LPG: the key normalized_score)."""
    a2c_cache: str | None = None
    """LPG: a JSON file that keeps A2C reference returns by test setup, so several objectives share them."""
    overwrite: bool = False
    torch_threads: int = 0
    list: bool = False
    """List the shipped objectives (with their kind) and exit."""

    def run(self) -> None:
        from rlmeta.agents.learned import objective_kind, shipped_card  # deferred: loads torch
        from rlmeta.agents.meta_test import (  # deferred
            format_lpo_results, format_results, meta_test, meta_test_lpo, shipped_objectives, write_results,
        )
        from rlmeta.agents.runs import set_threads  # deferred: loads torch

        if self.list:
            names = shipped_objectives()
            print("\n".join(f"{name} ({shipped_card(name)['kind']})" for name in names) or "(none)")
            return
        set_threads(self.torch_threads)
        out = Path(self.out)
        try:
            if out.exists() and not self.overwrite:
                raise ValueError(f"{str(out)!r} already exists; pass --overwrite or another --out")
            if objective_kind(self.objective) == "lpo":
                results = meta_test_lpo(self.objective, self.num_seeds, self.seed, self.steps, self.inner_config)
                report = format_lpo_results(results)
            else:
                results = meta_test(self.objective, self.levels, self.num_levels, self.lifetime, self.seed,
                                    self.episodes, a2c_cache=Path(self.a2c_cache) if self.a2c_cache else None,
                                    frozen_progress=self.frozen_progress)
                report = format_results(results)
            write_results(results, out, self.overwrite)
        except ValueError as error:
            raise InputError("rlmeta meta-test", error) from None
        print(report)


Command = Union[
    Annotated[Train, tyro.conf.subcommand("train")],
    Annotated[MetaTrain, tyro.conf.subcommand("meta-train")],
    Annotated[ESTrain, tyro.conf.subcommand("es-train")],
    Annotated[MetaTest, tyro.conf.subcommand("meta-test")],
    Annotated[ListEnvs, tyro.conf.subcommand("envs")],
    Annotated[Variance, tyro.conf.subcommand("variance")],
]


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``rlmeta`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    try:  # configs validate in __post_init__: a bad value stops here, before anything is built
        if argv[:1] == ["train"]:  # with --help too: --config FILE then shows the file's values as defaults
            command = parse_train(argv[1:])
        elif argv[:1] == ["meta-train"]:
            command = parse_with_defaults(argv[1:], MetaTrain, MetaTrainConfig, "rlmeta meta-train")
        elif argv[:1] == ["es-train"]:
            command = parse_with_defaults(argv[1:], ESTrain, ESTrainConfig, "rlmeta es-train")
        else:
            command = tyro.cli(Command, args=argv, prog="rlmeta")
    except ValueError as error:
        print(f"rlmeta: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    command.run()


if __name__ == "__main__":
    main()
