"""Meta-testing a learned LPO drift (``rlmeta meta-test lpo.pt``): fresh PPO agents learn with the drift
and with PPO's clip on the same seeds; the kind of a learned objective decides which test runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlmeta.agents.config import PPOConfig, TrainConfig, to_dict
from rlmeta.agents.learned import PPO_INIT, load_lpo, objective_kind, save_lpo
from rlmeta.agents.meta_test import format_lpo_results, lpo_inner_config, lpo_return, meta_test_lpo
from rlmeta.cli import main

INNER = TrainConfig(env="envpool:CartPole-v1", algo="ppo", num_envs=4, num_steps=64, total_steps=512,
                    ppo=PPOConfig(epochs=2, minibatches=4), eval_episodes=2, checkpoint_interval=0, progress=False)


def drift_file(path: Path, scale: float = 0.0, inner: TrainConfig | None = INNER, seed: int = 0) -> Path:
    """PPO-init's drift (``scale`` 0) or a random perturbation of it, recording ``inner`` as its config."""
    start = load_lpo(PPO_INIT)
    g = torch.Generator().manual_seed(seed)
    params = {k: v + scale * torch.randn(v.shape, generator=g) for k, v in start.params.items()}
    info = {} if inner is None else {"inner": to_dict(lpo_inner_config(inner, "test"))}
    return save_lpo(path, start.network, params, **info)


def test_ppo_init_drift_scores_exactly_ppo_on_every_seed(tmp_path):
    torch.set_num_threads(1)
    results = meta_test_lpo(str(drift_file(tmp_path / "init.pt")), num_seeds=2, seed=5)
    assert results["per_seed"] == results["ppo_per_seed"]  # the same agents, the same arithmetic
    assert results["difference"] == {"mean": 0.0, "se": 0.0, "n": 2}
    assert results["steps"] == 512 and results["env"] == "envpool:CartPole-v1" and results["kind"] == "lpo"


def test_a_perturbed_drift_learns_differently_and_deterministically(tmp_path):
    torch.set_num_threads(1)
    path = drift_file(tmp_path / "perturbed.pt", scale=0.5)
    drift = load_lpo(str(path))
    config = lpo_inner_config(INNER, "test")
    first = [lpo_return(config, drift, s) for s in (3, 4)]
    torch.manual_seed(123)  # the caller's generator does not matter: each lifetime is seeded
    assert [lpo_return(config, drift, s) for s in (3, 4)] == first
    results = meta_test_lpo(str(path), num_seeds=2, seed=3)
    assert results["per_seed"] == first
    assert results["per_seed"] != results["ppo_per_seed"]


def test_meta_test_cli_dispatches_on_the_kind_and_writes_json(tmp_path, capsys):
    path = drift_file(tmp_path / "drift.pt", scale=0.2)
    out = tmp_path / "lpo.json"
    main(["meta-test", str(path), "--num-seeds", "2", "--steps", "256", "--out", str(out), "--torch-threads", "1"])
    saved = json.loads(out.read_text())
    printed = capsys.readouterr().out.strip().splitlines()
    assert saved["kind"] == "lpo" and saved["steps"] == 256 and len(saved["per_seed"]) == 2
    assert printed[-1] == f"learned - PPO (paired over seeds): {saved['difference']['mean']:+.2f} +- {saved['difference']['se']:.2f}"
    assert printed == format_lpo_results(saved).splitlines()


def test_meta_test_lpo_input_errors_stop_before_work(tmp_path, capsys):
    bare = drift_file(tmp_path / "bare.pt", inner=None)
    out = tmp_path / "never.json"
    with pytest.raises(SystemExit, match="does not record the config it was meta-trained in: pass --inner-config"):
        main(["meta-test", str(bare), "--out", str(out)])
    a2c = tmp_path / "a2c.toml"
    a2c.write_text('env = "envpool:CartPole-v1"\nalgo = "a2c"\n')
    with pytest.raises(SystemExit, match="must be a PPO"):
        main(["meta-test", str(bare), "--inner-config", str(a2c), "--out", str(out)])
    with pytest.raises(SystemExit, match="num_seeds must be an integer >= 1"):
        main(["meta-test", str(drift_file(tmp_path / "d.pt")), "--num-seeds", "0", "--out", str(out)])
    assert not out.exists()


def test_objective_kind_reads_the_format(tmp_path):
    assert objective_kind(str(drift_file(tmp_path / "d.pt"))) == "lpo"
    assert objective_kind(PPO_INIT) == "lpo" and objective_kind("untrained:3") == "lpg"
    lpg = tmp_path / "lpg.pt"
    torch.save({"format": "rlmeta-lpg-1"}, lpg)
    assert objective_kind(str(lpg)) == "lpg"
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="is not a learned objective: format None"):
        objective_kind(str(other))
    with pytest.raises(ValueError, match="neither a file nor a shipped objective"):
        objective_kind(str(tmp_path / "missing.pt"))
