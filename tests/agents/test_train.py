"""The training run: config validation, run directories, checkpoints, resume, failures, CLI, logs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlmeta import envs
from rlmeta.agents.config import (
    HParamsConfig, MetaConfig, NetworkConfig, OptimizerConfig, PPOConfig, TrainConfig, VTraceConfig, from_dict, load_config,
    to_dict,
)
from rlmeta.agents.build import outer_critic
from rlmeta.agents.train import Trainer, TrainingFailed, TrainingInterrupted, train
from rlmeta.cli import main
from rlmeta.objectives import PLAIN, Loss, MinibatchObjective, Objective

from helpers.processes import terminate_after_checkpoint


def tiny(tmp_path: Path, **overrides) -> TrainConfig:
    """A run of a few updates on CartPole (4 envs x 8 steps = 32 env steps per update)."""
    base = dict(
        env="envpool:CartPole-v1", num_envs=4, num_steps=8, total_steps=32 * 6, algo="a2c",
        run_dir=str(tmp_path / "run"), progress=False, eval_episodes=2, checkpoint_interval=64,
    )
    return TrainConfig(**{**base, **overrides})


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) pairs TensorBoard would show for ``tag``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


# ------------------------------------------------------------------------------------------------
# Config validation: clear errors before anything is built.


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(num_envs=0), "num_envs must be an integer >= 1, got 0"),
        (dict(num_steps=-3), "num_steps must be an integer >= 1"),
        (dict(total_steps=0), "total_steps"),
        (dict(algo="dqn"), "algo must be one of"),
        (dict(mode="ray"), "mode must be 'sync' or 'async'"),
        (dict(mode="async", algo="ppo"), "use algo='vtrace'"),
        (dict(device="tpu"), "device must be 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
        (dict(resume=True, overwrite=True), "exclude each other"),
        (dict(resume=True, run_dir=None), "resume needs run_dir"),
        (dict(checkpoint_interval=-1), "checkpoint_interval must be an integer >= 0"),
        (dict(env=""), "env must be a non-empty env id"),
        (dict(target_return=float("nan")), "target_return must be a finite number"),
        (dict(network=lambda: NetworkConfig(conv_channels=(4, 4), conv_strides=(2,))), "one stride per conv layer"),
        (dict(network=lambda: NetworkConfig(conv_kernel=0)), "conv_kernel must be >= 1"),
        (dict(meta=lambda: MetaConfig(learn=("gamma",), targets="exakt")), "meta.targets must be 'exact' or 'semi'"),
        (dict(meta=lambda: MetaConfig(learn=("gamma",), outer_critic_network="separate")),
         "meta.outer_critic_network applies to an outer critic"),
        (dict(algo="lpg"), "algo 'lpg' needs --objective"),
        (dict(algo="a2c", compile=True), "compile takes the minibatch steps of algo ppo, lpo or dpo"),
        (dict(compile=True, meta=lambda: MetaConfig(learn=("gamma",))), "compile applies to plain training"),
        (dict(algo="ppo", capture=True), "capture takes the whole-rollout updates of algo a2c or vtrace"),
        (dict(algo="a2c", capture=True, meta=lambda: MetaConfig(learn=("gamma",))), "capture applies to plain training"),
    ],
)
def test_invalid_train_config_is_rejected(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**{k: v() if callable(v) else v for k, v in overrides.items()})  # sections built in here


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: OptimizerConfig(lr=0.0), "optimizer.lr must be > 0, got 0.0"),
        (lambda: OptimizerConfig(lr=float("inf")), "optimizer.lr must be > 0"),
        (lambda: OptimizerConfig(max_grad_norm=-1.0), "optimizer.max_grad_norm must be > 0"),
        (lambda: HParamsConfig(gamma=1.5), r"hparams.gamma must be in \[0, 1\], got 1.5"),
        (lambda: HParamsConfig(td_lambda=-0.1), r"hparams.td_lambda must be in \[0, 1\]"),
        (lambda: HParamsConfig(entropy_cost=-0.01), "hparams.entropy_cost must be >= 0"),
        (lambda: PPOConfig(clip=0.0), "ppo.clip must be > 0"),
        (lambda: PPOConfig(epochs=0), "ppo.epochs and ppo.minibatches must be >= 1"),
        (lambda: NetworkConfig(hidden=()), "network.hidden must be a non-empty list"),
    ],
)
def test_invalid_sections_are_rejected(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_config_round_trips_through_dict_and_files(tmp_path):
    config = TrainConfig(env="snake-6x6", env_options={"observation": "grid"}, network=NetworkConfig(hidden=(32,)),
                         hparams=HParamsConfig(gamma=0.9), target_return=3.0)
    assert from_dict(TrainConfig, to_dict(config)) == config
    toml = tmp_path / "c.toml"
    toml.write_text('env = "snake-6x6"\nalgo = "a2c"\n[network]\nhidden = [32, 32]\n[hparams]\ngamma = 0.9\n')
    loaded = load_config(toml)
    assert (loaded.env, loaded.algo, loaded.network.hidden, loaded.hparams.gamma) == ("snake-6x6", "a2c", (32, 32), 0.9)
    bad = tmp_path / "bad.toml"
    bad.write_text("[hparams]\ngama = 0.9\n")
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['hparams.gama'\]"):
        load_config(bad)
    with pytest.raises(ValueError, match="must end in .toml or .json"):
        (tmp_path / "c.yaml").write_text("env: x\n")
        load_config(tmp_path / "c.yaml")
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_bad_env_or_options_build_nothing(tmp_path):
    with pytest.raises(ValueError, match="unknown env id 'envpool:CartPol-v1'.*envpool:CartPole-v1"):
        Trainer(tiny(tmp_path, env="envpool:CartPol-v1"))
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['rows'\]"):
        Trainer(tiny(tmp_path, env_options={"rows": 6}))
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------
# A whole run: directory layout, summary, logs.


def test_run_writes_config_logs_checkpoints_and_summary(tmp_path):
    config = tiny(tmp_path, algo="ppo", ppo=PPOConfig(epochs=2, minibatches=2))
    summary = train(config)
    run = tmp_path / "run"
    assert json.loads((run / "summary.json").read_text()) == summary
    assert summary["status"] == "completed"
    assert summary["env"] == "envpool:CartPole-v1" and summary["agent"]["algo"] == "ppo"
    assert summary["total_steps"] == 192 and summary["updates"] == 6
    assert summary["wall_clock_seconds"] > 0
    ev = summary["eval"]
    assert ev["episodes"] == 2 and ev["return_mean"] >= 8 and ev["return_std"] >= 0
    assert "success_rate" not in ev  # CartPole has no notion of success
    assert load_config(run / "config.json") == TrainConfig(**{**config.__dict__, "run_dir": str(run)})
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == ["ckpt-000000000064.pt", "ckpt-000000000128.pt", "ckpt-000000000192.pt", "latest.pt"]
    ckpt = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert ckpt["step"] == 192 and ckpt["updates"] == 6
    assert ckpt["opt_state"]["count"] == 6 * 2 * 2  # adam steps: updates x epochs x minibatches
    # TensorBoard: losses, gradient norms and speed at each update's step; every hyperparameter at the step
    # it is used from (and the final values at the end).
    for tag in ("loss/policy_loss", "loss/value_loss", "loss/entropy", "train/grad_norm", "train/steps_per_second",
                "hparams/ppo_clip"):
        assert [s for s, _ in scalars(run, tag)] == [32 * i for i in range(1, 7)], tag
    for tag in ("hparams/gamma", "hparams/lambda", "hparams/entropy_cost", "hparams/value_cost"):
        assert [s for s, _ in scalars(run, tag)] == [32 * i for i in range(0, 7)], tag
    assert scalars(run, "hparams/gamma")[0][1] == pytest.approx(0.99)
    assert scalars(run, "eval/return_mean")[-1] == (192, pytest.approx(ev["return_mean"]))
    assert len(scalars(run, "episode/return")) >= 1


@pytest.mark.skipif(not any(__import__("shutil").which(c) for c in ("g++", "c++", "clang++")),
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_run_trains_as_the_eager_one(tmp_path):
    """--compile: the same run (its minibatch losses through torch.compile), parameters equal to rounding."""
    runs = {}
    for compiled in (False, True):
        config = tiny(tmp_path / str(compiled), algo="ppo", total_steps=32 * 3, checkpoint_interval=0,
                      ppo=PPOConfig(epochs=2, minibatches=2, anneal_clip=True), compile=compiled)
        assert train(config)["status"] == "completed"
        runs[compiled] = torch.load(tmp_path / str(compiled) / "run" / "checkpoints" / "latest.pt", weights_only=True)
    assert load_config(tmp_path / "True" / "run" / "config.json").compile
    torch.testing.assert_close(runs[True]["params"], runs[False]["params"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
def test_captured_run_trains_as_the_eager_one_and_resumes(tmp_path, optimizer):
    """--capture (on the CPU: the static-shape step run eagerly): the same parameters as the eager run,
    also across a resume from its checkpoint (Adam's step count is kept as a tensor there)."""
    runs = {}
    for captured in (False, True):
        options = dict(algo="a2c", total_steps=32 * 6, checkpoint_interval=32 * 3, capture=captured,
                       optimizer=OptimizerConfig(name=optimizer, lr=3e-3, anneal_lr=True, max_grad_norm=0.5))
        config = tiny(tmp_path / str(captured), **options)
        assert train(replace(config, total_steps=32 * 3))["status"] == "completed"
        assert train(replace(config, resume=True))["status"] == "completed"
        runs[captured] = torch.load(tmp_path / str(captured) / "run" / "checkpoints" / "latest.pt", weights_only=True)
        assert runs[captured]["step"] == 32 * 6
    assert load_config(tmp_path / "True" / "run" / "config.json").capture
    torch.testing.assert_close(runs[True]["params"], runs[False]["params"], rtol=1e-5, atol=1e-6)


def test_no_cxx_compiler_is_a_clear_error_before_anything_runs(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ValueError, match="needs a C[+][+] compiler"):
        tiny(tmp_path, algo="ppo", compile=True)


def test_existing_run_dir_is_never_overwritten_silently(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already exists; pass --resume to continue it, --overwrite"):
        Trainer(tiny(tmp_path))
    assert (run / "notes.txt").read_text() == "mine"
    # --overwrite replaces runs only: a folder that is not a run directory is refused and kept.
    with pytest.raises(ValueError, match="is not an rlmeta run directory"):
        Trainer(tiny(tmp_path, overwrite=True))
    assert (run / "notes.txt").read_text() == "mine"
    (run / "notes.txt").unlink()
    train(tiny(tmp_path, total_steps=32))  # a run now lives there
    (run / "extra.txt").write_text("in the run")
    train(tiny(tmp_path, overwrite=True, total_steps=32))
    assert not (run / "extra.txt").exists() and (run / "summary.json").is_file()


def test_lr_annealing_reaches_zero_linearly(tmp_path):
    train(tiny(tmp_path, optimizer=OptimizerConfig(lr=1e-3, anneal_lr=True), total_steps=128))
    lrs = scalars(tmp_path / "run", "hparams/lr")  # each value at the step it is used from; the final one last
    assert [s for s, _ in lrs] == [0, 32, 64, 96, 128]
    assert [v for _, v in lrs] == pytest.approx([1e-3, 0.75e-3, 0.5e-3, 0.25e-3, 0.0])


# ------------------------------------------------------------------------------------------------
# Resume, interruption and failure.


class InterruptAfter:
    """Wraps a loop's ``next`` to raise KeyboardInterrupt on its ``n``-th call."""

    def __init__(self, loop, n: int):
        self.loop, self.n, self.calls = loop, n, 0
        self.original = loop.next

    def __call__(self):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.original()


def test_interrupt_writes_checkpoint_and_resume_continues(tmp_path):
    config = tiny(tmp_path, total_steps=32 * 8, checkpoint_interval=0,
                  optimizer=OptimizerConfig(name="adam", lr=1e-3))
    trainer = Trainer(config)
    trainer.loop.next = InterruptAfter(trainer.loop, 4)
    with pytest.raises(TrainingInterrupted, match=r"interrupted at env step 96.*--resume"):
        trainer.run()
    run = tmp_path / "run"
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    saved = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert saved["step"] == 96 and saved["updates"] == 3 and saved["opt_state"]["count"] == 3

    resumed = Trainer(TrainConfig(**{**config.__dict__, "resume": True}))
    # It starts from the checkpoint: same parameters, optimizer moments and counters.
    assert resumed.step == 96 and resumed.state.updates == 3
    for k, v in saved["params"].items():
        assert torch.equal(resumed.params[k].detach(), v)
    for k, v in saved["opt_state"]["nu"].items():
        assert torch.equal(resumed.state.opt_state["nu"][k], v)
    summary = resumed.run()
    assert summary["total_steps"] == 256 and summary["updates"] == 8 and summary["status"] == "completed"
    final = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert final["opt_state"]["count"] == 8  # the optimizer kept counting from 3
    # Curves continue: one point per update, steps 32..256, no duplicates across the resume.
    assert [s for s, _ in scalars(run, "loss/policy_loss")] == [32 * i for i in range(1, 9)]


def test_resume_refuses_a_changed_model_or_a_run_without_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="has no checkpoints/latest.pt"):
        Trainer(tiny(tmp_path, resume=True))
    train(tiny(tmp_path, total_steps=64))
    with pytest.raises(ValueError, match=r"cannot resume with a different network"):
        Trainer(tiny(tmp_path, resume=True, network=NetworkConfig(hidden=(8,))))
    with pytest.raises(ValueError, match=r"cannot resume with a different env"):
        Trainer(tiny(tmp_path, resume=True, env="snake-6x6"))


def test_non_finite_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    trainer = Trainer(tiny(tmp_path, total_steps=32 * 10, checkpoint_interval=64))
    objective = trainer.learning.objective
    calls = {"n": 0}

    class Poisoned(Objective):
        policy_value = objective.policy_value

        def __call__(self, params, rollout, hparams, progress=0.0, context=PLAIN):
            calls["n"] += 1
            out = objective(params, rollout, hparams, progress, context)
            return Loss(out.total * float("nan") if calls["n"] == 5 else out.total, out.metrics)

    trainer.learning.objective = Poisoned()
    with pytest.raises(TrainingFailed, match=r"stopped at env step 128 \(update 5\): non-finite loss"):
        trainer.run()
    run = tmp_path / "run"
    ckpt = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert ckpt["step"] == 128  # written after update 4; the failed update wrote nothing
    assert all(torch.isfinite(v).all() for v in ckpt["params"].values())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "env step 128" in summary["message"]


# ------------------------------------------------------------------------------------------------
# Asynchronous loop: same learner, lag measured.


def test_async_vtrace_run_logs_policy_lag(tmp_path):
    config = tiny(tmp_path, algo="vtrace", mode="async", num_actors=2, queue_size=2, total_steps=32 * 12)
    summary = train(config)
    assert summary["total_steps"] == 384 and summary["status"] == "completed"
    lags = [v for _, v in scalars(tmp_path / "run", "async/policy_lag")]
    assert len(lags) == 12 and min(lags) >= 0
    # Two actors and a queue of two: rollouts wait while the learner updates, so some are stale.
    assert max(lags) >= 1


# ------------------------------------------------------------------------------------------------
# The command line.


def test_cli_rejects_bad_values_before_creating_anything(tmp_path, capsys):
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--num-envs", "0", "--run-dir", str(run)])
    assert exit_info.value.code == 2
    assert "num_envs must be an integer >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--env", "snak", "--run-dir", str(run)])
    assert exit_info.value.code == 2 and "unknown env id 'snak'" in capsys.readouterr().err  # every input error: 2
    assert not run.exists()


def test_cli_config_file_and_resume(tmp_path, capsys):
    run = tmp_path / "run"
    config = tmp_path / "c.toml"
    config.write_text('env = "snake-6x6"\nalgo = "a2c"\nnum_envs = 4\nnum_steps = 8\ntotal_steps = 64\n'
                      'eval_episodes = 2\nprogress = false\n[network]\nhidden = [16]\nconv_channels = [4]\n')
    main(["train", "--config", str(config), "--run-dir", str(run), "--seed", "3"])
    out = capsys.readouterr().out
    assert "env steps: 64" in out and "evaluation over 2 episodes" in out
    saved = load_config(run / "config.json")
    assert (saved.env, saved.seed, saved.network.hidden, saved.total_steps) == ("snake-6x6", 3, (16,), 64)
    # Resume reads the run's own config; only the given flags change.
    main(["train", "--run-dir", str(run), "--resume", "--total-steps", "96"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["total_steps"] == 96 and summary["env"] == "snake-6x6"
    assert load_config(run / "config.json").total_steps == 96
    # A run's own config.json reproduces it into a new directory; the original is left alone.
    before = sorted(p.name for p in run.rglob("*"))
    copy = tmp_path / "copy"
    main(["train", "--config", str(run / "config.json"), "--run-dir", str(copy)])
    assert json.loads((copy / "summary.json").read_text())["total_steps"] == 96
    assert sorted(p.name for p in run.rglob("*")) == before
    # A file where the run directory should be is refused, even with --overwrite, and kept.
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    with pytest.raises(SystemExit, match="is an existing file"):
        main(["train", "--config", str(config), "--run-dir", str(blocker), "--overwrite"])
    assert blocker.read_text() == "mine"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="device 'cuda' asked for, but torch sees no CUDA device"):
        Trainer(tiny(tmp_path, device="cuda"))
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------
# Meta-gradient runs.


@pytest.mark.parametrize("estimator, k", [("one-step", 1), ("multi-step", 2), ("mixed", 3), ("bootstrapped", 2)])
def test_meta_gradient_run_tunes_and_logs_hyperparameters(tmp_path, estimator, k):
    from rlmeta.agents.config import MetaConfig

    meta = MetaConfig(learn=("gamma", "lambda", "entropy_cost"), init={"gamma": 0.9}, estimator=estimator,
                      num_updates=k, lr=0.05, variance_window=3)
    config = tiny(tmp_path, meta=meta, total_steps=32 * (k + 1) * 6, checkpoint_interval=0)  # K + 1 rollouts each
    summary = train(config)
    run = tmp_path / "run"
    gammas = [v for _, v in scalars(run, "hparams/gamma")]
    assert gammas[0] == pytest.approx(0.9, abs=1e-6)
    assert len(set(round(g, 7) for g in gammas)) > 1  # the meta-optimizer moved it
    assert all(0 < g < 1 for g in gammas)
    # K + 1 rollouts for the first meta-update; then the outer loss's fresh rollout is reused as
    # the next first inner rollout (K per meta-update), except for BMG: K inner rollouts, L = 1 for
    # the target's update and one fresh rollout of the target to match on, nothing reused.
    per = k + 2 if estimator == "bootstrapped" else k
    first = k + 2 if estimator == "bootstrapped" else k + 1
    meta_updates = 1 + -(-(6 * (k + 1) - first) // per)  # the loop runs until total_steps is reached
    for tag in ("meta/grad_norm", "meta/loss", "meta/grad_gamma", "meta/grad_lambda"):
        assert len(scalars(run, tag)) == meta_updates, tag
    assert len(scalars(run, "hparams/entropy_cost")) == meta_updates + 1  # and the value the run ends with
    assert scalars(run, "hparams/gamma")[-1][1] == pytest.approx(summary["meta"]["gamma"]["final"], abs=1e-6)
    assert len(scalars(run, "meta/grad_variance")) == meta_updates - 1  # from the second meta-update on
    ckpt = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert set(ckpt["meta"]["params"]) == {"gamma", "lambda", "entropy_cost"}
    assert summary["updates"] == meta_updates * k  # inner updates
    assert summary["total_steps"] >= 32 * (k + 1) * 6
    assert summary["meta"]["gamma"]["initial"] == pytest.approx(0.9)
    assert summary["meta"]["gamma"]["final"] == pytest.approx(gammas[-1], abs=0.01)  # moved once more after the log
    assert set(summary["meta"]) == {"gamma", "lambda", "entropy_cost"}


def test_approximate_meta_run_subsamples_both_second_order_passes(tmp_path):
    """``--meta.tangent-fraction`` and ``--meta.outer-fraction``: the run trains, its meta-gradients differ
    from the exact run's on the same first rollouts, and the same seed gives the same run."""
    from rlmeta.agents.config import MetaConfig

    grads = {}
    for name, fraction in (("exact", 1.0), ("approximate", 0.5), ("again", 0.5)):
        meta = MetaConfig(learn=("gamma", "lambda"), lr=0.05, tangent_fraction=fraction, outer_fraction=fraction)
        trainer = Trainer(tiny(tmp_path / name, meta=meta, total_steps=32 * 5, checkpoint_interval=0))
        assert trainer.estimator.outer_fraction == fraction and trainer.estimator.tangent_fraction == fraction
        assert trainer.run()["status"] == "completed"
        grads[name] = [v for _, v in scalars(tmp_path / name / "run", "meta/grad_gamma")]
    assert len(grads["exact"]) == len(grads["approximate"]) == 4
    assert grads["approximate"][0] != pytest.approx(grads["exact"][0], rel=1e-4)
    assert grads["approximate"] == grads["again"]


def test_async_meta_run_learns_on_the_learner_from_queued_rollouts(tmp_path):
    """Actor threads keep acting while the learner meta-updates; V-trace corrects inner and outer losses."""
    from rlmeta.agents.config import MetaConfig
    from rlmeta.metagrad import OuterObjective

    meta = MetaConfig(learn=("gamma", "lambda"), estimator="multi-step", num_updates=2, lr=0.05)
    config = tiny(tmp_path, algo="vtrace", mode="async", num_actors=2, queue_size=2, meta=meta, total_steps=32 * 13,
                  checkpoint_interval=0)
    trainer = Trainer(config)
    outer = trainer.estimator.outer_loss
    assert isinstance(outer, OuterObjective) and outer.vtrace  # importance-corrected outer loss
    summary = trainer.run()
    assert summary["status"] == "completed" and summary["total_steps"] >= 32 * 13
    run = tmp_path / "run"
    gammas = [v for _, v in scalars(run, "hparams/gamma")]
    assert len(gammas) == 6 + 1 and len(set(round(g, 7) for g in gammas)) > 1  # 3 rollouts, then 2 per update; final
    lags = [v for _, v in scalars(run, "async/policy_lag")]
    assert len(lags) == 6 and min(lags) >= 0 and max(lags) >= 1  # queued rollouts from older parameters
    assert summary["updates"] == 12


def test_memory_saving_meta_run_equals_the_full_unroll(tmp_path):
    """``--meta.recompute`` trains exactly like the full unroll (PPO: minibatch orders replayed)."""
    from rlmeta.agents.config import MetaConfig, PPOConfig

    finals = []
    for recompute in (False, True):
        meta = MetaConfig(learn=("gamma", "entropy_cost"), estimator="mixed", num_updates=2, lr=0.05,
                          recompute=recompute)
        config = tiny(tmp_path / str(recompute), algo="ppo", ppo=PPOConfig(epochs=2, minibatches=2), meta=meta,
                      total_steps=32 * 7, checkpoint_interval=0, torch_threads=1)
        trainer = Trainer(config)
        trainer.run()
        finals.append((trainer.meta.raw["gamma"].detach().clone(), trainer.params))
    (gamma_a, params_a), (gamma_b, params_b) = finals
    assert torch.allclose(gamma_a, gamma_b, rtol=1e-4, atol=1e-6)
    for key in params_a:
        assert torch.allclose(params_a[key], params_b[key], rtol=1e-4, atol=1e-5), key


def test_conditioned_meta_run_feeds_the_network_its_hyperparameters(tmp_path):
    """``--meta.condition``: the agent acts and learns with the current values as input, the outer
    loss evaluates it with the reference ones; checkpointed with the embedding, resumed as such."""
    from rlmeta.agents.config import MetaConfig
    from rlmeta.hparams import CONDITIONING

    meta = MetaConfig(learn=("gamma", "entropy_cost"), estimator="multi-step", num_updates=2, lr=0.05,
                      condition=True, outer_gamma=0.995)
    config = tiny(tmp_path, meta=meta, total_steps=32 * 9, checkpoint_interval=0)
    trainer = Trainer(config)
    assert trainer.net.num_hparams == 2 and "hparam_embed.0.weight" in trainer.params
    acting = trainer.hparams()
    assert torch.allclose(acting[CONDITIONING], torch.tensor([acting["gamma"], acting["entropy_cost"]]))
    reference = trainer.estimator.outer_loss.conditioning()
    assert torch.allclose(reference, torch.tensor([0.995, acting["entropy_cost"]]))
    embedding_before = trainer.params["hparam_embed.0.weight"].detach().clone()
    summary = trainer.run()
    assert summary["status"] == "completed"
    assert not torch.equal(trainer.params["hparam_embed.0.weight"], embedding_before)  # it learns through its input
    run = tmp_path / "run"
    assert len(set(round(v, 7) for _, v in scalars(run, "hparams/gamma"))) > 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run))
    acc.Reload()
    assert f"hparams/{CONDITIONING}" not in acc.Tags()["scalars"]  # logged one by one, not as a vector
    resumed = Trainer(TrainConfig(**{**config.__dict__, "resume": True, "total_steps": 32 * 13}))
    assert resumed.net.num_hparams == 2 and resumed.run()["status"] == "completed"
    with pytest.raises(ValueError, match="cannot resume with a different meta.condition"):
        changed = MetaConfig(**{**meta.__dict__, "condition": False})
        Trainer(TrainConfig(**{**config.__dict__, "resume": True, "meta": changed}))


@pytest.mark.parametrize("algo", ["a2c", "vtrace", "ppo"])
def test_outer_critic_run_trains_a_second_value_head_for_the_outer_loss(tmp_path, algo):
    """``--meta.outer-critic`` (Bonnet et al. 2022): the network gets a second value head, the inner
    updates train it (its loss is logged), the outer loss reads it; checkpointed and resumed as such."""
    from rlmeta.agents.config import MetaConfig
    from rlmeta.objectives import OuterCritic

    meta = MetaConfig(learn=("gamma",), estimator="mixed", num_updates=2, lr=0.05, outer_critic=True,
                      outer_gamma=0.995, outer_lambda=0.9, outer_critic_cost=0.25)
    config = tiny(tmp_path, algo=algo, meta=meta, total_steps=32 * 9, checkpoint_interval=0,
                  ppo=PPOConfig(epochs=2, minibatches=2))
    trainer = Trainer(config)
    assert trainer.learning.objective.outer_critic == OuterCritic(0.995, 0.9, 0.25, head="outer_value_head.")
    shared = MetaConfig(**{**meta.__dict__, "outer_critic_trains_torso": True})
    assert outer_critic(shared) == OuterCritic(0.995, 0.9, 0.25, head=None)  # its loss trains the torso too
    head = trainer.params["outer_value_head.weight"].detach().clone()
    obs = torch.randn(5, 4)
    out = trainer.net.apply_params(trainer.params, obs)
    _, outer_values = trainer.estimator.outer_loss.policy_value(trainer.params, obs, {})
    assert torch.equal(outer_values, out.outer_value) and not torch.equal(out.outer_value, out.value)
    learner = trainer.agent.policy_value  # reads the critic, and names the outer critic its objective trains
    outputs = learner.outputs(trainer.params, obs, {})
    assert torch.equal(outputs[learner.value], out.value) and torch.equal(outputs[learner.outer_value], out.outer_value)
    assert trainer.estimator.outer_loss.policy_value.forward is learner.forward  # one network evaluation for both
    summary = trainer.run()
    assert summary["status"] == "completed"
    assert not torch.equal(trainer.params["outer_value_head.weight"], head)  # trained
    run = tmp_path / "run"
    losses = [v for _, v in scalars(run, "loss/outer_value_loss")]
    assert losses and all(v >= 0 for v in losses)
    assert len(set(round(v, 7) for _, v in scalars(run, "hparams/gamma"))) > 1
    resumed = Trainer(TrainConfig(**{**config.__dict__, "resume": True, "total_steps": 32 * 13}))
    assert torch.equal(resumed.params["outer_value_head.weight"], trainer.params["outer_value_head.weight"])
    assert resumed.run()["status"] == "completed"
    with pytest.raises(ValueError, match="cannot resume with a different meta.outer_critic"):
        changed = MetaConfig(**{**meta.__dict__, "outer_critic": False})
        Trainer(TrainConfig(**{**config.__dict__, "resume": True, "meta": changed}))


@pytest.mark.parametrize("tangent", [False, True])
@pytest.mark.parametrize("estimator, k, outer_critic", [("one-step", 1, False), ("mixed", 3, False),
                                                        ("mixed", 2, True)])
def test_meta_training_evaluates_the_network_once_per_parameters_and_rollout(tmp_path, estimator, k, outer_critic,
                                                                              tangent):
    """The outer loss and the next inner update share one forward pass (rlmeta.rollout.ForwardMemo):
    per meta-update, K inner updates on K rollouts plus one outer loss on a fresh one, of which only
    the first meta-update's first update needs its own forward. With an outer critic the learner
    and the outer loss read different value heads of the same evaluation. The tangent path
    (meta.tangent) runs no forward of its own: its tangent pass reuses the inner forward's
    activations (ActorCritic.linearize)."""
    from rlmeta.agents.config import MetaConfig

    meta = MetaConfig(learn=("gamma",), estimator=estimator, num_updates=k, lr=0.05, outer_critic=outer_critic,
                      tangent=tangent)
    config = tiny(tmp_path, meta=meta, total_steps=32 * (k + 1) * 4, checkpoint_interval=0)
    trainer = Trainer(config)
    apply_params, learner_forwards = trainer.net.apply_params, [0]

    def counting(params, obs, hparams=None, value=True, tape=None):
        learner_forwards[0] += value  # acting asks for the policy only
        return apply_params(params, obs, hparams, value, tape)

    trainer.net.apply_params = counting
    summary = trainer.run()
    meta_updates = summary["updates"] // k
    assert meta_updates >= 3
    # without sharing: meta_updates * 2k
    assert learner_forwards[0] == 1 + meta_updates * k


def test_meta_run_resumes_its_meta_parameters(tmp_path):
    from rlmeta.agents.config import MetaConfig

    config = tiny(tmp_path, meta=MetaConfig(learn=("gamma",), lr=0.1), total_steps=64 * 4, checkpoint_interval=0)
    summary = train(config)
    saved = torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", weights_only=True)["meta"]["params"]["gamma"]
    resumed = Trainer(TrainConfig(**{**config.__dict__, "resume": True, "total_steps": 64 * 6}))
    assert torch.equal(resumed.meta.raw["gamma"].detach(), saved)
    assert resumed.state.meta_state["count"] == summary["updates"] == 7  # K=1: 64 steps, then 32 per meta-update


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--meta.learn", "gama"], "unknown hyperparameter 'gama'"),
        (["--meta.learn", "gamma", "--meta.tangent-fraction", "1.5"], r"tangent_fraction must be in \(0, 1\]"),
        (["--meta.learn", "gamma", "--meta.tangent-fraction", "0.5", "--meta.tangent", "False"],
         "needs meta.tangent True"),
        (["--meta.learn", "gamma", "--meta.tangent", "True", "--meta.tangent-fraction", "0.5", "--algo", "ppo"],
         "mean of per-sub-env losses"),
        (["--meta.learn", "gamma", "--meta.tangent", "True", "--meta.tangent-fraction", "0.5",
          "--normalize-advantages", "True"],
         "mean of per-sub-env losses"),
        (["--meta.learn", "gamma", "--meta.outer-fraction", "0"], r"outer_fraction must be in \(0, 1\]"),
        (["--meta.learn", "gamma", "--meta.estimator", "bootstrapped", "--meta.outer-fraction", "0.5"],
         "final loss is a matching loss"),
        (["--meta.learn", "gamma", "--meta.estimator", "multi-step", "--meta.num-updates", "0"],
         "K must be an integer >= 1, got 0"),
        (["--meta.learn", "gamma", "--meta.estimator", "mixed", "--meta.num-updates", "3", "--meta.weights", "1,2"],
         "must have K=3 entries"),
        (["--meta.learn", "gamma", "--meta.estimator", "mixed", "--meta.num-updates", "2", "--meta.weights", "0,0"],
         "positive sum"),
        (["--meta.learn", "gamma", "--meta.init", "gamma", "1.2"], r"gamma=1.2 is outside its bounds \(0, 1\)"),
        (["--meta.learn", "lr", "--meta.init", "lr", "-1"], r"lr=-1.0 is outside its bounds"),
        (["--meta.learn", "gamma", "--meta.init", "lambda", "0.5"], "meta.learn does not learn"),
        (["--meta.learn", "gamma", "--meta.estimator", "mixed", "--meta.truncation", "1"], "multi-step estimator only"),
        (["--meta.condition"], "meta.condition needs meta.learn"),
        (["--meta.outer-critic"], "meta.outer_critic needs meta.learn"),
        (["--meta.learn", "gamma", "--meta.estimator", "bootstrapped", "--meta.outer-critic"],
         "bootstrapped estimator has none"),
        (["--meta.learn", "gamma", "--meta.outer-critic", "--meta.outer-critic-cost", "0"],
         "meta.outer_critic_cost must be > 0, got 0"),
        (["--meta.learn", "gamma", "--meta.outer-critic-trains-torso"], "applies to an outer critic"),
    ],
)
def test_bad_meta_options_stop_before_anything_is_built(tmp_path, capsys, flags, message):
    import re

    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--run-dir", str(run), *flags])
    assert exit_info.value.code == 2
    err = " ".join(capsys.readouterr().err.replace("│", " ").split())  # tyro wraps its messages in a box
    assert re.search(message, err), err
    assert not run.exists()


def test_sigterm_checkpoints_exits_143_and_resume_continues(tmp_path):
    """What job schedulers and `timeout` send: the run writes a checkpoint and its summary, exits 143,
    and --resume continues from that checkpoint."""
    run = tmp_path / "run"
    status, err, summary = terminate_after_checkpoint(
        ["train", "--env", "envpool:CartPole-v1", "--algo", "a2c", "--num-envs", "4", "--num-steps", "8",
         "--total-steps", "100000000", "--checkpoint-interval", "320", "--run-dir", str(run), "--no-progress",
         "--torch-threads", "1"], run)
    assert status == 143, err
    assert summary["status"] == "interrupted" and "--resume" in err
    saved = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert saved["step"] == summary["total_steps"] > 0
    resumed = Trainer(TrainConfig(**{**load_config(run / "config.json").__dict__, "resume": True,
                                     "run_dir": str(run), "total_steps": saved["step"] + 64, "progress": False}))
    assert resumed.step == saved["step"]
    assert resumed.run()["total_steps"] >= saved["step"] + 64


class _Succeeds(gym.Env):
    """Three steps per episode; ``is_success`` (reported at the last step only) when the last action is 1."""

    observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        done = self.t == 3
        info = {"is_success": bool(action == 1)} if done else {}
        return np.full(1, self.t / 3, np.float32), float(action), done, False, info


def test_success_is_found_once_episodes_report_it(tmp_path):
    """A gymnasium env that reports is_success only when an episode ends still gets a success rate."""
    envs.register("success-env", _Succeeds, overwrite=True)
    try:
        summary = train(tiny(tmp_path, env="success-env", total_steps=64))
        assert 0.0 <= summary["eval"]["success_rate"] <= 1.0
        assert [tag for tag in ("eval/success_rate",) if scalars(tmp_path / "run", tag)]
    finally:
        envs.unregister("success-env")


def test_vtrace_alpha_is_learnable_in_async_vtrace_and_refused_where_it_cannot_move(tmp_path):
    from rlmeta.agents.config import MetaConfig

    with pytest.raises(ValueError, match="only algo 'vtrace' reads it"):
        tiny(tmp_path, meta=MetaConfig(learn=("vtrace_alpha",)))
    with pytest.raises(ValueError, match="on-policy, every importance ratio is 1"):
        tiny(tmp_path, algo="vtrace", meta=MetaConfig(learn=("vtrace_alpha",)))
    config = tiny(tmp_path, algo="vtrace", mode="async", num_actors=2, total_steps=32 * 12,
                  vtrace=VTraceConfig(rho_bar=0.5, c_bar=0.5), meta=MetaConfig(learn=("vtrace_alpha",), lr=0.05))
    summary = train(config)
    alpha = summary["meta"]["vtrace_alpha"]
    assert alpha["initial"] == pytest.approx(0.9)  # the default 1 is the sigmoid's bound: learning starts inside
    assert abs(alpha["final"] - alpha["initial"]) > 1e-4  # lagged rollouts: alpha has a meta-gradient and moves


class _RecordsProgress(Objective):
    """Wraps an objective and records the progress each call receives."""

    def __init__(self, objective, seen):
        self.objective, self.seen, self.policy_value = objective, seen, objective.policy_value

    def __call__(self, params, data, hparams, progress=0.0, context=PLAIN):
        self.seen.append(progress)
        return self.objective(params, data, hparams, progress, context)


class _RecordsMinibatchProgress(MinibatchObjective, _RecordsProgress):
    """The same for a minibatch objective (PPO): its prepare step and batch shape are passed through."""

    def __init__(self, objective, seen):
        _RecordsProgress.__init__(self, objective, seen)
        self.epochs, self.minibatches = objective.epochs, objective.minibatches

    def __call__(self, params, data, hparams, progress=0.0, context=PLAIN):
        return _RecordsProgress.__call__(self, params, data, hparams, progress, context)

    def prepare(self, params, rollout, hparams, context=PLAIN):
        return self.objective.prepare(params, rollout, hparams, context)


def test_updates_receive_the_true_progress_and_the_log_shows_what_ppo_used(tmp_path):
    config = tiny(tmp_path, algo="ppo", ppo=PPOConfig(epochs=1, minibatches=1, anneal_clip=True), total_steps=32 * 5)
    trainer = Trainer(config)
    seen: list[float] = []
    trainer.learning.objective = _RecordsMinibatchProgress(trainer.learning.objective, seen)
    trainer.run()
    assert seen == pytest.approx([k * 32 / (32 * 5) for k in range(5)])  # steps learned from before each update
    clips = [v for _, v in scalars(tmp_path / "run", "hparams/ppo_clip")]
    assert clips == pytest.approx([config.ppo.clip * (1 - p) for p in seen])


@pytest.mark.parametrize("recompute", [False, True])
def test_meta_inner_updates_receive_their_own_progress(tmp_path, recompute):
    from rlmeta.agents.config import MetaConfig

    meta = MetaConfig(learn=("gamma",), estimator="multi-step", num_updates=2, recompute=recompute)
    trainer = Trainer(tiny(tmp_path, meta=meta, total_steps=32 * 9, checkpoint_interval=0))
    seen: list[float] = []
    trainer.learning.objective = _RecordsProgress(trainer.learning.objective, seen)
    trainer.run()
    distinct = sorted(set(round(p, 9) for p in seen))
    # 3 rollouts per first meta-update (2 inner + outer, reused next time), then 2 new each: rollouts learned from
    # in order, each update's progress the steps learned before it
    assert distinct == pytest.approx([k * 32 / (32 * 9) for k in range(len(distinct))])
    assert len(distinct) == trainer.state.updates


def test_resume_restores_every_random_stream(tmp_path):
    config = tiny(tmp_path, algo="ppo", ppo=PPOConfig(epochs=2, minibatches=2), total_steps=32 * 4, checkpoint_interval=64)
    Trainer(config).run()
    saved = torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", weights_only=True)
    resumed = Trainer(TrainConfig(**{**config.__dict__, "resume": True, "total_steps": 32 * 6}))
    assert torch.equal(torch.get_rng_state(), saved["rng"]["torch"])
    assert torch.equal(resumed.learning.generator.get_state(), saved["rng"]["minibatch"])


@pytest.mark.slow
def test_sigkill_at_random_moments_always_leaves_a_resumable_run(tmp_path):
    """20 hard kills of one run at random moments (checkpoints every update, so many land mid-write): every
    time, latest.pt loads, it is no older than the newest complete ckpt-*.pt, and --resume continues."""
    run = tmp_path / "run"
    base = [sys.executable, "-m", "rlmeta.cli", "train", "--run-dir", str(run), "--no-progress", "--torch-threads", "1"]
    fresh = ["--env", "envpool:CartPole-v1", "--algo", "a2c", "--num-envs", "4", "--num-steps", "8",
             "--total-steps", "100000000", "--checkpoint-interval", "32", "--network.hidden", "16"]
    rng = np.random.default_rng(0)
    last_step = 0
    for trial in range(20):
        args = base + (["--resume"] if trial else fresh)
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while time.time() < deadline:  # wait for this process's first new checkpoint, then a random moment
            latest = run / "checkpoints" / "latest.pt"
            if latest.exists() and len(list((run / "checkpoints").glob("ckpt-*.pt"))) > trial:
                break
            if process.poll() is not None:
                pytest.fail(f"trial {trial}: the run exited early: {process.stderr.read()}")
            time.sleep(0.02)
        time.sleep(float(rng.uniform(0.0, 0.4)))
        process.kill()
        process.wait(timeout=30)
        saved = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)  # always loadable
        complete = [torch.load(p, weights_only=True)["step"] for p in (run / "checkpoints").glob("ckpt-*.pt")]
        assert saved["step"] >= max(complete) - 32  # at most one interval behind the newest complete checkpoint
        assert saved["step"] >= last_step  # never goes back
        last_step = saved["step"]
    resumed = Trainer(TrainConfig(**{**load_config(run / "config.json").__dict__, "resume": True, "run_dir": str(run),
                                     "total_steps": last_step + 64, "progress": False}))
    assert resumed.step == last_step and resumed.run()["status"] == "completed"


def test_cli_merges_repeated_dict_options_takes_bool_values_and_shows_a_config_files_defaults(tmp_path, capsys):
    run = tmp_path / "run"
    main(["train", "--env", "snake", "--env-options", "rows", "6", "--env-options", "cols", "7", "--algo", "a2c",
          "--num-envs", "2", "--num-steps", "4", "--total-steps", "8", "--eval-episodes", "1", "--progress", "False",
          "--network.hidden", "8", "--network.conv-channels", "2", "--run-dir", str(run)])
    saved = load_config(run / "config.json")
    assert saved.env_options == {"rows": 6, "cols": 7} and saved.progress is False
    capsys.readouterr()
    config = tmp_path / "c.toml"
    config.write_text('total_steps = 123456\n')
    with pytest.raises(SystemExit):
        main(["train", "--config", str(config), "--help"])
    assert "123456" in capsys.readouterr().out


def test_the_default_thread_count_leaves_room_for_a_second_run(monkeypatch):
    from rlmeta.agents import runs

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(runs, "_TORCH_DEFAULT_THREADS", 8)
        assert runs.set_threads(0) == 4 == torch.get_num_threads()  # half of 8
        monkeypatch.setattr(runs, "_TORCH_DEFAULT_THREADS", 2)
        assert runs.set_threads(0) == 1  # the 2-core machine: one thread per run
        assert runs.set_threads(3) == 3  # an explicit count wins
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert runs.set_threads(0) == 2  # the user's own choice is kept
    finally:
        torch.set_num_threads(before)


def test_meta_targets_choose_the_estimators_form(tmp_path):
    from rlmeta.agents.config import MetaConfig

    for targets, exact in (("exact", True), ("semi", False)):
        trainer = Trainer(tiny(tmp_path, meta=MetaConfig(learn=("gamma",), targets=targets), run_dir=str(tmp_path / targets)))
        assert trainer.estimator.exact is exact
        trainer.loop.close()
