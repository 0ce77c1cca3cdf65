"""Meta-training LPG (``rlmeta meta-train``), meta-testing it (``rlmeta meta-test``) and training with it
(``rlmeta train --algo lpg``): files, resume, signals, curricula, bad input, and the pieces underneath."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlmeta.agents.meta_test as meta_test_module
from rlmeta.agents.build import build_agent, updates
from rlmeta.agents.config import LPGConfig, MetaTrainConfig, TrainConfig
from rlmeta.agents.learned import load_lpg
from rlmeta.agents.meta_test import bootstrap_ratio_se, format_results, meta_test, spearman
from rlmeta.agents.meta_train import MetaTrainer, MetaTrainingInterrupted
from rlmeta.agents.networks import TabularAgent
from rlmeta.agents.population import GridPopulation, adapter, initial_params
from rlmeta.agents.train import train
from rlmeta.cli import main
from rlmeta.envs.levels import sample_levels

from helpers.processes import terminate_after_checkpoint

TINY = dict(num_agents=4, envs_per_agent=4, num_steps=10, num_updates=2, lifetime=4, meta_steps=6,
            lpg=LPGConfig(gru_width=8, embedding_width=4, target_width=4), meta_lr=1e-2, progress=False,
            checkpoint_interval=2, torch_threads=1)


def tiny(tmp_path: Path, **overrides) -> MetaTrainConfig:
    return MetaTrainConfig(**{**TINY, "run_dir": str(tmp_path / "run"), **overrides})


def test_meta_training_writes_its_run_and_moves_lpg(tmp_path):
    trainer = MetaTrainer(tiny(tmp_path))
    before = {k: v.detach().clone() for k, v in trainer.meta.tree("lpg").items()}
    summary = trainer.run()
    run = tmp_path / "run"
    assert summary["status"] == "completed" and summary["meta_steps"] == 6
    for name in ("config.json", "summary.json", "curve.csv", "lpg.pt", "checkpoints/latest.pt"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader(open(run / "curve.csv")))
    # lifetime 4 updates = 2 meta-updates: 3 rounds of 4 agents finished
    assert len(rows) == 12 == summary["lifetimes_finished"]
    assert {int(r["meta_step"]) for r in rows} == {2, 4, 6}
    assert all(float(r["optimal_return"]) >= float(r["random_return"]) - 1e-9 for r in rows)
    after = trainer.meta.tree("lpg")
    assert any(not torch.equal(before[k], after[k].detach()) for k in before)
    lpg = load_lpg(str(run / "lpg.pt"))
    for k, v in lpg.params.items():
        assert torch.equal(v, after[k].detach())
    assert lpg.network.gru_width == 8 and lpg.hypers.envs_per_agent == 4
    assert list(run.glob("events.out.tfevents.*"))


def test_ended_lifetimes_restart_on_new_levels_with_fresh_tables(tmp_path):
    trainer = MetaTrainer(tiny(tmp_path, meta_steps=2))
    levels = [a.level for a in trainer.agents]
    trainer.meta_update()
    assert [a.age for a in trainer.agents] == [2] * 4 and [a.level for a in trainer.agents] == levels
    learned = {k: v.detach().clone() for k, v in trainer.params.items()}
    trainer.meta_update()  # ages reach the lifetime: every agent restarts
    assert all(a.age == 0 for a in trainer.agents)
    assert all(new.level != old for new, old in zip(trainer.agents, levels))
    assert trainer.population.levels == [a.level for a in trainer.agents]
    assert trainer.population.env.levels[0] == trainer.agents[0].level
    assert not torch.equal(trainer.params["policy"], learned["policy"])
    assert torch.equal(trainer.params["value"], torch.zeros_like(trainer.params["value"]))  # fresh critic tables
    trainer.population.close()


def test_resume_continues_and_refuses_a_changed_setup(tmp_path):
    first = MetaTrainer(tiny(tmp_path, meta_steps=4))
    first.run()
    resumed = MetaTrainer(tiny(tmp_path, meta_steps=6, resume=True))
    assert resumed.meta_step == 4 and [a.age for a in resumed.agents] == [a.age for a in first.agents]
    for k, v in first.meta.tree("lpg").items():
        assert torch.equal(resumed.meta.tree("lpg")[k].detach(), v.detach())
    assert resumed.run()["meta_steps"] == 6
    with pytest.raises(ValueError, match="different num_agents"):
        MetaTrainer(tiny(tmp_path, num_agents=5, resume=True))
    with pytest.raises(ValueError, match="already exists"):
        MetaTrainer(tiny(tmp_path))


def test_groove_curriculum_scores_levels_by_regret_with_cached_a2c(tmp_path):
    trainer = MetaTrainer(tiny(tmp_path, curriculum="groove", buffer_size=6, meta_steps=6))
    trainer.run()
    assert len(trainer.buffer) == 6  # 12 lifetimes ended; the buffer holds its capacity
    assert len(trainer.a2c_cache) >= 6  # one A2C reference per distinct scored level, computed once
    cached = dict(trainer.a2c_cache)
    trainer._score_levels([0])  # scoring an agent's level again reuses the cache where it can
    assert all(trainer.a2c_cache[k] == v for k, v in cached.items())


def test_sigterm_writes_a_checkpoint_and_exits_143(tmp_path):
    run = tmp_path / "run"
    status, err, summary = terminate_after_checkpoint(
        ["meta-train", "--run-dir", str(run), "--num-agents", "4", "--envs-per-agent", "4", "--num-steps", "10",
         "--num-updates", "2", "--lifetime", "4", "--meta-steps", "100000", "--lpg.gru-width", "8",
         "--checkpoint-interval", "1", "--no-progress", "--torch-threads", "1"], run)
    assert status == 143, err
    assert summary["status"] == "interrupted" and "--resume" in err
    saved = torch.load(run / "checkpoints" / "latest.pt", weights_only=False)
    assert saved["meta_step"] == summary["meta_steps"] >= 1


@pytest.mark.parametrize("overrides, message", [
    (dict(levels="nope"), "unknown level generator 'nope'"),
    (dict(num_agents=0), "num_agents must be an integer >= 1"),
    (dict(estimator="one-step"), "set num_updates=1"),
    (dict(lifetime=1), "shorter than one meta-update"),
    (dict(levels="dense", lifetime=0), "no default lifetime"),
    (dict(curriculum="plr"), "curriculum must be 'uniform' or 'groove'"),
])
def test_bad_meta_train_configs_are_refused_before_work(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        MetaTrainer(tiny(tmp_path, **overrides))
    assert not (tmp_path / "run").exists()


def test_grid_population_restarts_only_its_agents():
    levels = sample_levels("small", 3, seed=5)
    net = TabularAgent(6 * 6 * 8, 5, 4)
    population = GridPopulation(levels, 2, 5, adapter(net, 3, 2), seed=0, max_grid_size=6, max_objects=3)
    params = initial_params(3, 6 * 6 * 8, 5, 4, torch.Generator().manual_seed(0))
    rollout = population.collect(params)
    assert rollout.obs.shape == (5, 6) and rollout.actions.shape == (5, 6)
    new = sample_levels("small", 1, seed=99)
    population.restart([1], new)
    assert population.levels[1] == new[0] and population.env.levels[2] == new[0] == population.env.levels[3]
    assert population.env.levels[0] == levels[0] and population.env.levels[4] == levels[2]
    population.close()


def test_meta_test_scores_an_objective_and_the_cli_writes_json(tmp_path, capsys):
    trainer = MetaTrainer(tiny(tmp_path, meta_steps=2))
    trainer.run()
    results = meta_test(str(tmp_path / "run" / "lpg.pt"), num_levels=6, lifetime=6, episodes=4)
    assert {"normalized_score", "normalized_score_se", "of_optimum", "a2c_of_optimum", "per_level"} <= set(results)
    assert len(results["per_level"]) == 6 and math_finite(results["normalized_score"])
    assert format_results(results).splitlines()[-1].startswith("normalized score: ")
    out = tmp_path / "meta_test.json"
    main(["meta-test", "untrained", "--num-levels", "4", "--lifetime", "4", "--episodes", "2", "--out", str(out)])
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    saved = json.loads(out.read_text())
    assert printed == f"normalized score: {saved['normalized_score']:.3f} +- {saved['normalized_score_se']:.3f}"
    with pytest.raises(SystemExit, match="already exists"):
        main(["meta-test", "untrained", "--num-levels", "4", "--lifetime", "4", "--out", str(out)])
    with pytest.raises(SystemExit, match="neither a file nor a shipped objective"):
        main(["meta-test", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "other.json")])


def math_finite(x: float) -> bool:
    return bool(np.isfinite(x))


def test_bootstrap_standard_error_of_a_ratio_of_means():
    rng = np.random.default_rng(0)
    num, den = rng.normal(1.0, 0.5, 200), rng.normal(2.0, 0.5, 200)
    se = bootstrap_ratio_se(num, den, samples=4000)
    # delta method: Var(a/b) ~ (1/b^2) Var(a) + (a^2/b^4) Var(b) (independent here), over n
    delta = np.sqrt((0.25 / 4 + 0.25 * 0.25 / 16) / 200)
    assert se == pytest.approx(delta, rel=0.15)


def test_train_with_a_learned_lpg_on_a_non_grid_env(tmp_path):
    MetaTrainer(tiny(tmp_path, meta_steps=2)).run()
    config = TrainConfig(env="envpool:CartPole-v1", algo="lpg", objective=str(tmp_path / "run" / "lpg.pt"),
                         num_envs=4, num_steps=10, total_steps=400, run_dir=str(tmp_path / "cartpole"),
                         progress=False, eval_episodes=2)
    summary = train(config)
    assert summary["status"] == "completed" and summary["total_steps"] >= 400
    with pytest.raises(ValueError, match="algo 'lpg' needs --objective"):
        TrainConfig(algo="lpg")
    with pytest.raises(ValueError, match="needs --algo lpg"):
        TrainConfig(algo="a2c", objective="lpg-grid-small")
    with pytest.raises(ValueError, match="discrete actions"):
        train(replace(config, env="gym:Pendulum-v1", run_dir=str(tmp_path / "pendulum")))


def test_a2c_references_are_cached_by_test_setup(tmp_path):
    cache = tmp_path / "a2c.json"
    first = meta_test("untrained", num_levels=3, lifetime=3, episodes=2, a2c_cache=cache)
    saved = json.loads(cache.read_text())
    assert len(saved) == 1 and len(next(iter(saved.values()))) == 3
    cache.write_text(json.dumps({k: [100.0, 100.0, 100.0] for k in saved}))  # a planted value is read back
    second = meta_test("untrained", num_levels=3, lifetime=3, episodes=2, a2c_cache=cache)
    assert second["a2c_return"] == 100.0 != first["a2c_return"]
    meta_test("untrained", num_levels=3, lifetime=4, episodes=2, a2c_cache=cache)
    assert len(json.loads(cache.read_text())) == 2  # another setup, another entry


def test_untrained_with_an_init_seed_keeps_the_levels(tmp_path):
    default = load_lpg("untrained", seed=3)
    same = load_lpg("untrained:3", seed=1000)
    other = load_lpg("untrained:4", seed=3)
    assert all(torch.equal(default.params[k], same.params[k]) for k in default.params)
    assert not all(torch.equal(default.params[k], other.params[k]) for k in default.params)
    first = meta_test("untrained:1", num_levels=3, lifetime=3, episodes=2)
    second = meta_test("untrained:2", num_levels=3, lifetime=3, episodes=2)
    assert first["objective"] == "untrained:1"
    assert first["random_return"] == second["random_return"]  # same levels, same seed: only the init differs
    with pytest.raises(ValueError, match="must be an integer"):
        load_lpg("untrained:x")


def test_a_ta_lpg_reads_the_lifetime_it_learns_for(tmp_path, monkeypatch):
    """TA-LPG's log N is the lifetime of the agents it trains: the meta-test's, and a train run's updates."""
    trainer = MetaTrainer(tiny(tmp_path, meta_steps=1, lpg=LPGConfig(gru_width=8, lifetime_conditioning=True)))
    trainer.run()
    path = str(tmp_path / "run" / "lpg.pt")
    seen = []
    original = meta_test_module.train_population

    def recording(objective_for, *args, **kwargs):
        seen.append(objective_for)
        return original(objective_for, *args, **kwargs)

    monkeypatch.setattr(meta_test_module, "train_population", recording)
    meta_test(path, num_levels=2, lifetime=7, episodes=2, include_a2c=False)
    lpg = load_lpg(path)
    assert seen[0](adapter(TabularAgent(6 * 6 * 8, 5, lpg.network.target_width), 2, 16)).lifetime == 7
    config = TrainConfig(env="envpool:CartPole-v1", algo="lpg", objective=path, num_envs=4, num_steps=8,
                         total_steps=3200)
    agent = build_agent(config, gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(2))
    assert agent.objective.lifetime == updates(config) == 100


def test_frozen_progress_feeds_a_fixed_n_over_N_to_a_ta_lpg(tmp_path, monkeypatch):
    """The counterfactual meta-test: TA-LPG reads the fixed n/N at every update (log N stays true)."""
    import rlmeta.agents.population as population_module

    trainer = MetaTrainer(tiny(tmp_path, meta_steps=1, lpg=LPGConfig(gru_width=8, lifetime_conditioning=True)))
    trainer.run()
    path = str(tmp_path / "run" / "lpg.pt")
    seen: list[float] = []
    original = population_module.update

    def recording(*args, progress=0.0, **kwargs):
        seen.append(progress)
        return original(*args, progress=progress, **kwargs)

    monkeypatch.setattr(population_module, "update", recording)
    true = meta_test(path, num_levels=2, lifetime=4, episodes=2, include_a2c=False)
    assert seen == [0.0, 0.25, 0.5, 0.75] and true["frozen_progress"] is None
    seen.clear()
    frozen = meta_test(path, num_levels=2, lifetime=4, episodes=2, include_a2c=False, frozen_progress=0.9)
    assert seen == [0.9] * 4 and frozen["frozen_progress"] == 0.9
    assert "n/N frozen at 0.9" in format_results(frozen)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        meta_test(path, num_levels=2, lifetime=4, frozen_progress=1.5)
    with pytest.raises(ValueError, match="needs a time-aware LPG"):
        meta_test("untrained", num_levels=2, lifetime=4, frozen_progress=0.5)


def test_spearman_against_hand_values_and_scipy():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [8, 1, 0.5, 0.1]) == pytest.approx(-1.0)  # monotone, not linear
    assert spearman([1, 2, 3], [5, 5, 5]) == 0.0
    # ties: ranks of y = [1, 2.5, 2.5, 4] -> Pearson with [1, 2, 3, 4] = 4.5 / sqrt(5 * 4.5)
    assert spearman([1, 2, 3, 4], [0, 1, 1, 2]) == pytest.approx(4.5 / (5 * 4.5) ** 0.5)
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50), rng.integers(0, 5, size=50).astype(float)
    assert spearman(list(x), list(y)) == pytest.approx(stats.spearmanr(x, y).statistic)


def test_meta_test_records_what_lpg_does_over_the_lifetime():
    results = meta_test("untrained", num_levels=2, lifetime=5, episodes=2, include_a2c=False)
    schedule = results["schedule"]
    assert schedule["progress"] == [0.0, 0.2, 0.4, 0.6, 0.8]
    assert len(schedule["pi_hat_rms"]) == len(schedule["entropy"]) == 5
    assert all(v >= 0 for v in schedule["pi_hat_rms"])
    assert set(results["spearman_progress"]) == {"pi_hat_rms", "entropy"}
    assert "Spearman" in format_results(results)


def test_meta_test_scores_do_not_depend_on_what_ran_before():
    """meta-test seeds torch's generator itself (and restores it): the same arguments, the same scores."""
    first = meta_test("untrained:1", num_levels=2, lifetime=3, episodes=2)
    torch.rand(7)  # another user of the global generator in between
    state = torch.get_rng_state()
    second = meta_test("untrained:1", num_levels=2, lifetime=3, episodes=2)
    assert first["normalized_score"] == second["normalized_score"] and first["return_mean"] == second["return_mean"]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is left as it was
