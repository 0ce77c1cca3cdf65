"""A training run from a :class:`~agents.config.TrainConfig`: one agent lifetime
(:mod:`rlmeta.agents.lifetime`) with a run directory, checkpoints, TensorBoard, evaluation and a summary.

    summary = train(TrainConfig(env="envpool:CartPole-v1", total_steps=50_000))

A run lives in one directory::

    config.json        the full config (what --resume reads back)
    events.out.tfevents.*   TensorBoard logs
    checkpoints/       ckpt-<step>.pt every checkpoint_interval steps, and latest.pt
    summary.json       env, agent, steps, wall-clock, evaluation (written at the end, also on failure)

Failures: an invalid config or an existing run directory raises ``ValueError`` before any env is
built; a non-finite loss or gradient raises :class:`TrainingFailed` naming the step, after writing
``summary.json`` and leaving the last good checkpoint alone; ``KeyboardInterrupt`` writes a
checkpoint and :class:`TrainingInterrupted` tells the caller where it is.
"""

from __future__ import annotations

import collections
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from rlmeta.agents.build import build_agent, build_meta_params
from rlmeta.agents.config import TrainConfig, load_config, save_config, to_dict
from rlmeta.agents.lifetime import AgentState, Learning, build_loop, evaluate, make_env
from rlmeta.agents.runs import (
    atomic_json, check_device, check_new_run_dir, default_run_dir, exit_code, prepare_run_dir, save_checkpoint,
    set_threads, sigterm_as_interrupt, to_device,
)
from rlmeta.catalog import CONDITIONING
from rlmeta.hparams import MetaParams
from rlmeta.metagrad import Estimator

CHECKPOINT_VERSION = 1
# Fields a resumed run must share with the run it continues (the rest, e.g. total_steps, may change).
RESUME_FIXED = ("env", "env_options", "algo", "objective", "network", "optimizer.name", "meta.learn", "meta.condition",
                "meta.outer_critic")


class TrainingFailed(RuntimeError):
    """The run stopped on a non-finite loss or gradient; the last good checkpoint is kept."""


class TrainingInterrupted(RuntimeError):
    """The run was interrupted (Ctrl-C or SIGTERM); a checkpoint was written and it can be resumed
    (``exit_code``: 130 or 143, what the shell expects)."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


def check_run_dir(config: TrainConfig) -> Path:
    """Where the run goes; refuses an existing non-empty directory unless resuming or overwriting."""
    run_dir = Path(config.run_dir) if config.run_dir else default_run_dir(config.env, config.algo, f"s{config.seed}")
    if config.resume:
        if not (run_dir / "checkpoints" / "latest.pt").is_file():
            raise ValueError(f"cannot resume {str(run_dir)!r}: it has no checkpoints/latest.pt")
        saved = load_config(run_dir / "config.json")
        for name in RESUME_FIXED:
            section, _, key = name.partition(".")
            old, new = getattr(saved, section), getattr(config, section)
            if key:
                old, new = getattr(old, key), getattr(new, key)
            if old != new:
                raise ValueError(f"cannot resume with a different {name}: the run has {old!r}, got {new!r}")
    else:
        check_new_run_dir(run_dir, config.overwrite)
    return run_dir


class Trainer:
    """One run: a :class:`~rlmeta.agents.lifetime.Learning` driven iteration by iteration, plus the run
    directory, checkpoints, TensorBoard, evaluation, the summary and Ctrl-C."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.reached = False
        self.device = check_device(config.device)
        self.run_dir = check_run_dir(config)
        set_threads(config.torch_threads)
        checkpoint: dict | None = None
        if config.resume:
            checkpoint = torch.load(self.run_dir / "checkpoints" / "latest.pt", map_location=self.device,
                                    weights_only=True)
            if checkpoint.get("version") != CHECKPOINT_VERSION:
                raise ValueError(f"checkpoint format {checkpoint.get('version')!r} is not {CHECKPOINT_VERSION}")
        start = checkpoint["step"] if checkpoint else 0
        torch.manual_seed(config.seed)
        # Envs restart on resume (their states are not checkpointed), seeded apart from the first start.
        env_seed = config.seed + start
        first_env = make_env(config, env_seed)  # validates the id and options before anything is written
        self.agent = build_agent(config, first_env.single_observation_space, first_env.single_action_space,
                                 self.device)
        self.net = self.agent.net
        self.learning = Learning(config, self.agent, self.device, torch.Generator().manual_seed(config.seed))
        self.loop = build_loop(config, self.agent, first_env, self.device, env_seed)
        self._prepare_run_dir()
        self._restore(checkpoint)

    # The parts tests and users reach for.
    @property
    def params(self) -> dict[str, torch.Tensor]:
        """The agent's current parameters."""
        return self.state.params

    @property
    def step(self) -> int:
        """Env steps learned from so far."""
        return self.state.step

    @property
    def meta(self) -> MetaParams | None:
        """The meta-parameters at their current values (None without meta-learning)."""
        if self.learning.meta is not None:
            self.learning.hparams(self.state)  # points them at the state's values
        return self.learning.meta

    @property
    def estimator(self) -> Estimator:
        """The meta-gradient estimator (meta-learning runs only)."""
        return self.learning.estimator

    def hparams(self) -> dict[str, Any]:
        """The hyperparameters of the next update (the learning rate annealed if asked)."""
        return self.learning.hparams(self.state)

    def _prepare_run_dir(self) -> None:
        prepare_run_dir(self.run_dir, self.config.overwrite, self.config.resume)
        save_config(replace(self.config, run_dir=str(self.run_dir), resume=False, overwrite=False),
                    self.run_dir / "config.json")

    def _restore(self, ckpt: dict | None) -> None:
        self.recent: collections.deque[dict[str, float]] = collections.deque(maxlen=100)
        self.evaluations: list[dict[str, float]] = []
        self.wall_seconds, self.episodes_seen = 0.0, 0
        if ckpt is None:
            self.state = self.learning.initial_state()
        else:
            params = {k: v.to(self.device).requires_grad_(True) for k, v in ckpt["params"].items()}
            expected = {k: tuple(v.shape) for k, v in self.net.named_parameters()}
            got = {k: tuple(v.shape) for k, v in params.items()}
            if expected != got:
                raise ValueError("the checkpoint's parameters do not fit this network (was the config changed?)")
            self.state = AgentState(params, to_device(ckpt["opt_state"], self.device), ckpt["step"], ckpt["updates"])
            self.wall_seconds, self.episodes_seen = ckpt["wall_seconds"], ckpt["episodes_seen"]
            self.recent.extend(ckpt["recent"])
            if self.learning.meta is not None:
                if not ckpt.get("meta"):
                    raise ValueError("the checkpoint has no meta-parameters; resume without --meta.learn")
                raw = ckpt["meta"]["params"]
                names = self.learning.meta.names
                if set(raw) != set(names):
                    raise ValueError(f"saved meta-parameters {sorted(raw)} differ from {sorted(names)}")
                self.state.meta_raw = {k: v.to(self.device).requires_grad_(True) for k, v in raw.items()}
                self.state.meta_state = to_device(ckpt["meta"]["opt_state"], self.device)
            self.evaluations = list(ckpt["evaluations"])
            torch.set_rng_state(ckpt["rng"]["torch"])
            self.learning.generator.set_state(ckpt["rng"]["minibatch"])
            if torch.cuda.is_available() and ckpt["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        # purge_step drops the events the resumed run logged after its checkpoint (steps > step).
        self.writer = SummaryWriter(str(self.run_dir), purge_step=self.step + 1 if ckpt else None)

    # ----------------------------------------------------------------------------------------
    # Pieces of the loop.

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/ckpt-<step>.pt`` and ``checkpoints/latest.pt`` (atomically)."""
        state = {
            "version": CHECKPOINT_VERSION,
            "step": self.step,
            "updates": self.state.updates,
            "wall_seconds": self.wall_seconds,
            "episodes_seen": self.episodes_seen,
            "params": {k: v.detach().cpu() for k, v in self.params.items()},
            "opt_state": to_device(self.state.opt_state, torch.device("cpu")),
            "recent": list(self.recent),
            "evaluations": self.evaluations,
            "meta": None if self.state.meta_raw is None else {
                "params": to_device(self.state.meta_raw, torch.device("cpu")),
                "opt_state": to_device(self.state.meta_state, torch.device("cpu")),
            },
            "rng": {
                "torch": torch.get_rng_state(),
                "minibatch": self.learning.generator.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
        }
        return save_checkpoint(state, self.run_dir / "checkpoints", self.step)

    def evaluate(self) -> dict[str, float]:
        """Evaluation episodes in a fresh env (seeded apart from training); logs and returns the stats."""
        stats = {"step": self.step, **evaluate(self.config, self.agent, self.params, self.hparams(), self.device)}
        self.evaluations.append(stats)
        for key, value in stats.items():
            if key != "step":
                self.writer.add_scalar(f"eval/{key}", value, self.step)
        return stats

    def _log(self, metrics: dict[str, float], episodes: list[dict[str, float]], hparams: dict, sps: float,
             lag: int, progress: float, steps: int) -> None:
        """One iteration's scalars at the env step it reached; the hyperparameters it used at the step it
        started from (``steps`` earlier), so every ``hparams/*`` point is the value in use from there on."""
        w, step = self.writer, self.step
        if episodes:
            for key in ("return", "length", "success"):
                values = [e[key] for e in episodes if key in e]
                if values:
                    w.add_scalar(f"episode/{key}", statistics.fmean(values), step)
        for key, value in metrics.items():
            if key.startswith("meta_"):
                w.add_scalar(f"meta/{key[5:]}", value, step)
            else:
                w.add_scalar(f"train/{key}" if key == "grad_norm" else f"loss/{key}", value, step)
        self._log_hparams(hparams, step - steps)
        if self.config.algo == "ppo":
            clip = self.config.ppo.clip * (1 - progress if self.config.ppo.anneal_clip else 1)  # what PPO used
            w.add_scalar("hparams/ppo_clip", clip, step)
        w.add_scalar("train/progress", progress, step)
        w.add_scalar("train/steps_per_second", sps, step)
        if self.config.mode == "async":
            w.add_scalar("async/policy_lag", lag, step)

    def _log_hparams(self, hparams: dict, step: int) -> None:
        for key, value in hparams.items():
            if key != CONDITIONING:  # the same values again, as one vector
                self.writer.add_scalar(f"hparams/{key}", float(value), step)

    def summary(self, status: str, message: str = "") -> dict[str, Any]:
        """The machine-readable ``summary.json`` of the run as it stands."""
        c = self.config
        last = self.evaluations[-1] if self.evaluations else None
        out: dict[str, Any] = {
            "status": status,
            "env": c.env,
            "env_options": c.env_options,
            "agent": {"algo": c.algo, "mode": c.mode, "network": to_dict(c.network)},
            "seed": c.seed,
            "total_steps": self.step,
            "updates": self.state.updates,
            "wall_clock_seconds": round(self.wall_seconds, 3),
            "steps_per_second": round(self.step / self.wall_seconds, 1) if self.wall_seconds else None,
            "episodes": self.episodes_seen,
            "train_return_mean_last_100": statistics.fmean(e["return"] for e in self.recent) if self.recent else None,
            "eval": None,
            "evaluations": self.evaluations,
            "run_dir": str(self.run_dir),
        }
        if c.target_return is not None:
            out["target_return"] = c.target_return
            out["target_reached"] = self.reached
        meta = self.meta
        if meta is not None:  # where the meta-learned hyperparameters started and stand now
            initial = build_meta_params(c).values()
            out["meta"] = {name: {"initial": float(initial[name].detach()), "final": float(value.detach())}
                           for name, value in meta.values().items()}
        if last is not None:
            out["eval"] = {"episodes": c.eval_episodes, "greedy": c.eval_greedy, **last}
        if message:
            out["message"] = message
        atomic_json(out, self.run_dir / "summary.json")
        return out

    # ----------------------------------------------------------------------------------------
    # The run.

    def run(self) -> dict[str, Any]:
        """Train to ``total_steps`` (or ``target_return``), evaluate, write ``summary.json`` and return it.

        Ctrl-C and SIGTERM stop it after writing a checkpoint (:class:`TrainingInterrupted`).
        """
        with sigterm_as_interrupt():
            return self._run()

    def _run(self) -> dict[str, Any]:
        c = self.config
        bar = tqdm(total=c.total_steps, initial=min(self.step, c.total_steps), unit="step", unit_scale=True,
                   dynamic_ncols=True, disable=not c.progress, desc=Path(self.run_dir).name[:40])
        next_checkpoint = _next_multiple(self.step, c.checkpoint_interval)
        next_eval = _next_multiple(self.step, c.eval_interval)
        self.learning.start(self.state, self.loop)
        self.reached = False
        started = time.perf_counter()
        base_seconds = self.wall_seconds
        try:
            while self.step < c.total_steps and not self.reached:
                tick = time.perf_counter()
                try:
                    self.state, iteration = self.learning.iterate(self.state, self.loop)
                except FloatingPointError as error:
                    raise TrainingFailed(
                        f"stopped at env step {self.step} (update {self.state.updates + 1}): {error}. "
                        f"The last good checkpoint is kept in {self.run_dir / 'checkpoints'}"
                    ) from error
                metrics = iteration.metrics
                self.wall_seconds = base_seconds + time.perf_counter() - started
                self.episodes_seen += len(iteration.episodes)
                self.recent.extend(iteration.episodes)
                sps = iteration.steps / max(time.perf_counter() - tick, 1e-9)
                self._log(metrics, iteration.episodes, iteration.hparams, sps, iteration.lag, iteration.progress,
                          iteration.steps)
                if c.checkpoint_interval and self.step >= next_checkpoint:
                    self.save_checkpoint()
                    next_checkpoint = _next_multiple(self.step, c.checkpoint_interval)
                if c.eval_interval and self.step >= next_eval:
                    stats = self.evaluate()
                    tqdm.write(f"env step {self.step:,}: evaluation return {stats['return_mean']:.3f} "
                               f"+- {stats['return_std']:.3f}", file=sys.stderr)
                    next_eval = _next_multiple(self.step, c.eval_interval)
                    self.reached = c.target_return is not None and stats["return_mean"] >= c.target_return
                bar.update(min(self.step, c.total_steps) - bar.n)
                if self.recent:
                    bar.set_postfix(ret=f"{statistics.fmean(e['return'] for e in self.recent):.3g}",
                                    loss=f"{metrics.get('loss', metrics.get('meta_loss', math.nan)):.3g}",
                                    refresh=False)
        except TrainingFailed as error:
            self.summary("failed", str(error))
            raise
        except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (runs.Terminated)
            path = self.save_checkpoint()
            self.summary("interrupted", f"interrupted at env step {self.step}; checkpoint {path}")
            raise TrainingInterrupted(
                f"interrupted at env step {self.step}; checkpoint written to {path}. "
                f"Continue with: rlmeta train --run-dir {self.run_dir} --resume", exit_code(stop)
            ) from None
        finally:
            bar.close()
            self.loop.close()
        self.save_checkpoint()
        if not (self.evaluations and self.evaluations[-1]["step"] == self.step):
            self.evaluate()
        self.wall_seconds = base_seconds + time.perf_counter() - started
        self._log_hparams(self.hparams(), self.step)  # the values the run ends with (summary.json's final ones)
        self.writer.close()
        return self.summary("completed")


def _next_multiple(step: int, interval: int) -> int:
    return (step // interval + 1) * interval if interval else math.inf  # type: ignore[return-value]


def train(config: TrainConfig) -> dict[str, Any]:
    """Run ``config`` to the end and return its summary (see the module docstring for failures)."""
    return Trainer(config).run()
