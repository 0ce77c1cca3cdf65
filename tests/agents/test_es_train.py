"""Meta-training LPG / TA-LPG and LPO / TA-LPO by evolution strategies (``rlmeta es-train``): the lifetime
fitnesses, the run directory, resume, Ray against in process, and bad input."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from rlmeta.agents.build import updates
from rlmeta.agents.config import ESTrainConfig, LPGConfig, LPOConfig
from rlmeta.agents.es_train import PAIR_SPACE, ESTrainer, LifetimeFitness, es_network, generation_lifetime
from rlmeta.agents.learned import load_lpg, load_lpo
from rlmeta.agents.meta_test import meta_test
from rlmeta.agents.config import load_config
from rlmeta.cli import main

from helpers.processes import terminate_after_checkpoint

TINY = dict(lifetime_min=2, lifetime_max=4, agents_per_candidate=2, popsize=4, generations=2, envs_per_agent=2,
            num_steps=5, eval_episodes=2, lpg=LPGConfig(gru_width=4, embedding_width=3), checkpoint_interval=1,
            progress=False, torch_threads=1)


def tiny(tmp_path, name="run", **overrides) -> ESTrainConfig:
    return ESTrainConfig(**{**TINY, "run_dir": str(tmp_path / name), **overrides})


def test_es_training_writes_its_run_and_a_loadable_lpg(tmp_path):
    summary = ESTrainer(tiny(tmp_path, lpg=LPGConfig(gru_width=4, embedding_width=3, lifetime_conditioning=True))).run()
    run = tmp_path / "run"
    assert summary["status"] == "completed" and summary["generations"] == 2
    rows = list(csv.DictReader(open(run / "curve.csv")))
    assert [int(r["generation"]) for r in rows] == [1, 2]
    assert all(2 <= int(r["lifetime"]) <= 4 for r in rows)
    assert all(float(r["fitness_min"]) <= float(r["fitness_mean"]) <= float(r["fitness_max"]) for r in rows)
    lpg = load_lpg(str(run / "lpg.pt"))
    assert lpg.network.lifetime_conditioning and lpg.network.gru_width == 4
    initial = es_network(tiny(tmp_path)).init(0)
    assert any(not torch.equal(lpg.params[k], initial[k].float()) for k in initial)  # the center moved
    results = meta_test(str(run / "lpg.pt"), num_levels=2, lifetime=3, episodes=2, include_a2c=False)
    assert "of_optimum" in results
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def test_normalised_lifetime_input_reaches_the_network_and_its_file(tmp_path):
    config = tiny(tmp_path, lpg=LPGConfig(gru_width=4, embedding_width=3, lifetime_conditioning=True,
                                          lifetime_normalised=True), generations=1)
    assert es_network(config).lifetime_range == (float(config.lifetime_min), float(config.lifetime_max))
    ESTrainer(config).run()
    assert load_lpg(str(tmp_path / "run" / "lpg.pt")).network.lifetime_range == es_network(config).lifetime_range
    with pytest.raises(ValueError, match="needs lpg.lifetime_conditioning"):
        LPGConfig(lifetime_normalised=True)
    with pytest.raises(ValueError, match="would not vary"):
        tiny(tmp_path, lifetime_min=5, lifetime_max=5, lpg=LPGConfig(lifetime_conditioning=True, lifetime_normalised=True))


def test_resume_continues_exactly(tmp_path):
    schedules = {"sigma_decay": 0.9, "lr_decay": 0.95}  # decaying sigma and step size resume exactly too
    straight = ESTrainer(tiny(tmp_path, "straight", generations=3, **schedules))
    straight.run()
    assert float(straight.es._state.stdev[0]) == pytest.approx(straight.config.sigma * 0.9**3)
    first = ESTrainer(tiny(tmp_path, "resumed", generations=2, **schedules))
    first.run()
    with pytest.raises(ValueError, match=r"cannot change \['sigma_decay', 'lr_decay'\]"):  # part of the run
        ESTrainer(tiny(tmp_path, "resumed", generations=3, resume=True))
    resumed = ESTrainer(tiny(tmp_path, "resumed", generations=3, resume=True, **schedules))
    assert resumed.generation == 2
    resumed.run()
    for name, value in straight.es.center.items():
        assert torch.equal(value, resumed.es.center[name]), name
    assert straight.curve[-1]["fitness_mean"] == resumed.curve[-1]["fitness_mean"]
    with pytest.raises(ValueError, match="cannot change"):
        ESTrainer(tiny(tmp_path, "resumed", generations=4, popsize=6, resume=True))


def test_pair_members_meet_the_same_levels_and_agents():
    config = ESTrainConfig(**TINY)
    fitness = LifetimeFitness(config)
    candidates = [es_network(config).init(i) for i in range(4)]
    seeds = [5 * PAIR_SPACE + 0, 5 * PAIR_SPACE + 0, 5 * PAIR_SPACE + 1, 5 * PAIR_SPACE + 1]
    levels, params = fitness.setup(seeds)
    per = config.agents_per_candidate
    assert levels[:per] == levels[per:2 * per] != levels[2 * per:3 * per] == levels[3 * per:]
    for name, table in params.items():
        assert torch.equal(table[:per], table[per:2 * per]), name
    assert not torch.equal(params["policy"][:per], params["policy"][2 * per:3 * per])  # random tables: seeded
    assert fitness(candidates, seeds) == fitness(candidates, seeds)  # seeded: a call is deterministic
    with pytest.raises(ValueError, match="one generation"):
        fitness(candidates[:2], [PAIR_SPACE, 2 * PAIR_SPACE])


def test_generation_lifetimes_are_log_uniform_in_range():
    config = ESTrainConfig(**{**TINY, "lifetime_min": 10, "lifetime_max": 1000})
    draws = [generation_lifetime(config, g) for g in range(400)]
    assert min(draws) >= 10 and max(draws) <= 1000
    below_100 = sum(d < 100 for d in draws) / len(draws)
    assert 0.4 < below_100 < 0.6  # log-uniform: half the mass below the geometric midpoint


def test_ray_gives_the_in_process_result(tmp_path):
    local = ESTrainer(tiny(tmp_path, "local", chunk_size=2))
    local.run()
    remote = ESTrainer(tiny(tmp_path, "ray", chunk_size=2, ray=True, ray_workers=2))
    remote.run()
    for name, value in local.es.center.items():
        assert torch.equal(value, remote.es.center[name]), name


@pytest.mark.parametrize("args, message", [
    (["--popsize", "5"], "popsize must be even"),
    (["--chunk-size", "3"], "chunk_size must be even"),
    (["--lifetime-min", "50", "--lifetime-max", "10"], "exceeds lifetime_max"),
    (["--ray-address", "auto"], "ray_address needs --ray"),
    (["--levels", "nope"], "unknown levels 'nope'"),
    (["--sigma-decay", "1.5"], "sigma_decay must be in (0, 1]"),
    (["--sigma", "0.04", "--sigma-limit", "0.1"], "sigma_limit must be in [0, sigma] = [0, 0.04]"),
])
def test_bad_es_train_input_exits_2_before_work(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as stop:
        main(["es-train", "--run-dir", str(tmp_path / "run"), *args])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def lpo_inner(tmp_path):
    path = tmp_path / "inner.toml"
    path.write_text('env = "envpool:CartPole-v1"\nalgo = "ppo"\nnum_envs = 4\nnum_steps = 32\ntotal_steps = 256\n'
                    'eval_episodes = 2\n[ppo]\nepochs = 2\nminibatches = 2\n')
    return str(path)


def test_lpo_by_es_writes_a_drift_that_trains(tmp_path, capsys):
    config = tiny(tmp_path, objective="lpo", inner_config=lpo_inner(tmp_path), lpo=LPOConfig(hidden=8,
                  lifetime_conditioning=True), generations=2, checkpoint_interval=1)
    summary = ESTrainer(config).run()
    drift = load_lpo(summary["objective_file"])
    assert drift.network.lifetime_conditioning and drift.network.hidden == 8
    assert float(drift.params["out.weight"].abs().sum()) > 0  # the center left the PPO initialisation
    main(["train", "--env", "envpool:CartPole-v1", "--algo", "lpo", "--objective", summary["objective_file"],
          "--total-steps", "512", "--num-envs", "4", "--num-steps", "32", "--run-dir", str(tmp_path / "train"),
          "--no-progress", "--torch-threads", "1"])
    assert json.loads((tmp_path / "train" / "summary.json").read_text())["status"] == "completed"


def test_lpo_fitness_is_deterministic_and_resume_is_exact(tmp_path):
    inner = lpo_inner(tmp_path)
    straight = ESTrainer(tiny(tmp_path, "straight", objective="lpo", inner_config=inner, generations=2,
                              lpo=LPOConfig(hidden=4)))
    straight.run()
    first = ESTrainer(tiny(tmp_path, "resumed", objective="lpo", inner_config=inner, generations=1,
                           lpo=LPOConfig(hidden=4)))
    first.run()
    resumed = ESTrainer(tiny(tmp_path, "resumed", objective="lpo", inner_config=inner, generations=2,
                             lpo=LPOConfig(hidden=4), resume=True))
    resumed.run()
    for name, value in straight.es.center.items():
        assert torch.equal(value, resumed.es.center[name]), name
    with open(straight.run_dir / "curve.csv") as f:  # an LPO lifetime is the inner config's updates
        assert {int(r["lifetime"]) for r in csv.DictReader(f)} == {updates(straight.fitness.inner)}


@pytest.mark.parametrize("text, message", [
    ('env = "envpool:CartPole-v1"\nalgo = "a2c"\n', "must be a PPO"),
    ('env = "envpool:CartPole-v1"\nalgo = "ppo"\n[meta]\nlearn = ["gamma"]\n', "without meta-gradients"),
])
def test_lpo_inner_configs_that_cannot_be_a_fitness_are_refused(tmp_path, text, message):
    path = tmp_path / "inner.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        ESTrainer(tiny(tmp_path, objective="lpo", inner_config=str(path)))
    assert not (tmp_path / "run").exists()


def test_sigterm_writes_a_checkpoint_and_resume_continues(tmp_path):
    run = tmp_path / "run"
    status, err, summary = terminate_after_checkpoint(
        ["es-train", "--run-dir", str(run), "--generations", "100000", "--popsize", "4", "--agents-per-candidate", "2",
         "--envs-per-agent", "2", "--num-steps", "5", "--lifetime-min", "2", "--lifetime-max", "3",
         "--eval-episodes", "2", "--lpg.gru-width", "4", "--checkpoint-interval", "1", "--no-progress",
         "--torch-threads", "1"], run)
    assert status == 143, err
    assert summary["status"] == "interrupted" and "--resume" in err
    saved = torch.load(run / "checkpoints" / "latest.pt", weights_only=False)
    assert saved["generation"] == summary["generations"] >= 1
    saved_config = load_config(run / "config.json", ESTrainConfig)
    resumed = ESTrainer(replace(saved_config, generations=saved["generation"] + 1, resume=True, progress=False))
    assert resumed.generation == saved["generation"]
    resumed.run()
    assert len(list(csv.DictReader(open(run / "curve.csv")))) == saved["generation"] + 1


def test_es_train_joins_a_running_ray_cluster(tmp_path):
    """``ray start --head`` (a cluster of one node), then ``rlmeta es-train --ray --ray-address auto``: the run
    uses that cluster and gives the in-process result."""
    ray_cli = Path(sys.executable).with_name("ray")
    with socket.socket() as probe:
        probe.bind(("", 0))
        port = probe.getsockname()[1]
    args = ["--generations", "2", "--popsize", "4", "--agents-per-candidate", "2", "--envs-per-agent", "2",
            "--num-steps", "5", "--lifetime-min", "2", "--lifetime-max", "3", "--eval-episodes", "2",
            "--lpg.gru-width", "4", "--chunk-size", "2", "--no-progress", "--torch-threads", "1"]
    head = subprocess.Popen([str(ray_cli), "start", "--head", "--block", "--num-cpus", "2", "--port", str(port),
                             "--include-dashboard=false", "--disable-usage-stats"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # only this cluster is stopped below
    current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    try:
        deadline = time.time() + 120
        while not (current.is_file() and current.read_text().strip().endswith(f":{port}")):
            assert time.time() < deadline and head.poll() is None, "ray start --head did not come up"
            time.sleep(0.5)
        cluster = subprocess.run([sys.executable, "-m", "rlmeta.cli", "es-train", "--run-dir", str(tmp_path / "cluster"),
                                  *args, "--ray", "--ray-address", "auto"], capture_output=True, text=True, timeout=300)
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:  # ray's own shutdown on SIGTERM takes 2-35 s here; the run's result is in already
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=60)
        if current.is_file() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()  # the stopped cluster is no longer the one to join
    assert cluster.returncode == 0, cluster.stderr[-2000:]
    main(["es-train", "--run-dir", str(tmp_path / "local"), *args])
    remote, local = load_lpg(str(tmp_path / "cluster" / "lpg.pt")), load_lpg(str(tmp_path / "local" / "lpg.pt"))
    assert all(torch.equal(remote.params[k], local.params[k]) for k in local.params)

