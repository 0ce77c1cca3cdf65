"""``rlmeta train --algo lpo`` and ``--algo dpo``: runs on CartPole, learned drift files
(rlmeta.agents.learned.save_lpo / load_lpo), PPO-init learning exactly as PPO, TA-LPO's progress,
and clear errors for bad input."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from rlmeta.agents.config import PPOConfig, TrainConfig, load_config
from rlmeta.agents.learned import LPO_FORMAT, PPO_INIT, load_lpo, save_lpo
from rlmeta.agents.lifetime import lifetime
from rlmeta.agents.train import train
from rlmeta.cli import main
from rlmeta.objectives import LPO, LPONetwork

ROOT = Path(__file__).resolve().parents[2]


def tiny(tmp_path: Path, algo: str, **overrides) -> TrainConfig:
    """A few PPO-style updates on CartPole (4 envs x 64 steps = 256 env steps per update)."""
    base = dict(env="envpool:CartPole-v1", algo=algo, num_envs=4, num_steps=64, total_steps=2048,
                ppo=PPOConfig(epochs=2, minibatches=4), run_dir=str(tmp_path / f"run-{algo}"), progress=False,
                eval_episodes=2, checkpoint_interval=0, torch_threads=1)
    return TrainConfig(**{**base, **overrides})


def random_drift_file(path: Path, network: LPONetwork, seed: int = 0, scale: float = 0.3) -> Path:
    g = torch.Generator().manual_seed(seed)
    params = {k: torch.randn(s, generator=g) * scale for k, s in network.shapes().items()}
    return save_lpo(path, network, params, note="random weights, for tests")


def test_train_dpo_and_lpo_on_cartpole(tmp_path, capsys):
    torch.set_num_threads(1)
    for algo in ("dpo", "lpo"):
        summary = train(tiny(tmp_path, algo))
        assert summary["status"] == "completed" and summary["total_steps"] >= 2048
        saved = load_config(Path(summary["run_dir"]) / "config.json")
        assert saved.algo == algo and saved.objective is None
    # through the command line, with a learned (TA-LPO) drift file
    drift = random_drift_file(tmp_path / "ta.pt", LPONetwork(lifetime_conditioning=True))
    run = tmp_path / "cli"
    main(["train", "--algo", "lpo", "--objective", str(drift), "--env", "envpool:CartPole-v1", "--num-envs", "4",
          "--num-steps", "32", "--total-steps", "512", "--ppo.epochs", "1", "--run-dir", str(run), "--no-progress",
          "--eval-episodes", "2", "--torch-threads", "1"])
    assert "env steps: 512" in capsys.readouterr().out
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def test_lpo_at_ppo_init_learns_exactly_as_ppo():
    """The LPO study's settings (configs/lpo_cartpole_inner.toml), three updates of 10 epochs x 4 minibatches:
    the same parameters."""
    torch.set_num_threads(1)
    ppo_config = replace(load_config(ROOT / "configs" / "lpo_cartpole_inner.toml"), total_steps=3 * 8 * 128, progress=False,
                         eval_interval=0, target_return=None)
    lpo_config = replace(ppo_config, algo="lpo", objective=PPO_INIT)
    ppo = lifetime(ppo_config)
    lpo = lifetime(lpo_config)
    assert len(ppo.iterations) == len(lpo.iterations) == 3
    assert ppo.iterations[-1].metrics["clip_fraction"] > 0  # the clip was active
    assert lpo.iterations[-1].metrics["drift"] > 0
    for k, v in ppo.state.params.items():
        assert torch.allclose(lpo.state.params[k], v, atol=1e-6, rtol=0), k
    initial = lifetime(ppo_config, until=0).state.params
    moved = max(float((v.detach() - initial[k].detach()).abs().max()) for k, v in ppo.state.params.items())
    assert moved > 1e-3  # the agents learned something in those updates


def test_ta_lpo_reads_the_training_fraction(tmp_path, monkeypatch):
    """The drift network's inputs get n/N: env steps learned from before the update over total_steps."""
    torch.set_num_threads(1)
    seen: list[float] = []
    inputs = LPONetwork.inputs

    def recording(self, ratio, log_ratio, advantages, progress=0.0, lifetime=1.0):
        seen.append(progress)
        return inputs(self, ratio, log_ratio, advantages, progress, lifetime)

    monkeypatch.setattr(LPONetwork, "inputs", recording)
    drift = random_drift_file(tmp_path / "ta.pt", LPONetwork(lifetime_conditioning=True))
    config = tiny(tmp_path, "lpo", objective=str(drift), num_steps=32, total_steps=4 * 128)
    result = lifetime(config)
    assert [it.progress for it in result.iterations] == [0.0, 0.25, 0.5, 0.75]
    per_update = config.ppo.epochs * config.ppo.minibatches
    assert seen == [p for p in (0.0, 0.25, 0.5, 0.75) for _ in range(per_update)]


def test_drift_files_round_trip(tmp_path):
    network = LPONetwork(hidden=16, ppo_clip=None, lifetime_conditioning=True)
    path = random_drift_file(tmp_path / "drift.pt", network, seed=4)
    loaded = load_lpo(str(path))
    assert loaded.network == network and loaded.source == str(path)
    assert loaded.info == {"note": "random weights, for tests"}
    data = torch.load(path, weights_only=True)
    assert data["format"] == LPO_FORMAT and set(data) == {"format", "network", "params", "info"}
    for k, v in data["params"].items():
        assert torch.equal(loaded.params[k], v)
    objective = loaded.objective(None, lifetime=100, epochs=3)  # an adapter is not needed to build it
    assert isinstance(objective, LPO) and objective.epochs == 3 and objective.lifetime == 100
    fresh = load_lpo(PPO_INIT, clip=0.3)
    assert fresh.network == LPONetwork(ppo_clip=0.3) and torch.all(fresh.params["out.weight"] == 0)
    assert load_lpo(None).network == LPONetwork()


def test_bad_drift_files_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"is neither a file, a shipped LPO drift \(.*\) nor 'ppo-init'"):
        load_lpo(str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="'lpg-grid-small' is a shipped LPG, not an LPO drift: use it with --algo lpg"):
        load_lpo("lpg-grid-small")
    text = tmp_path / "notes.txt"
    text.write_text("not a drift")
    with pytest.raises(ValueError, match="is not a learned LPO file"):
        load_lpo(str(text))
    lpg_like = tmp_path / "lpg.pt"
    torch.save({"format": "rlmeta-lpg-1", "network": {}, "params": {}}, lpg_like)
    with pytest.raises(ValueError, match=r"format 'rlmeta-lpg-1', expected 'rlmeta-lpo-1' \(a learned LPG: use --algo lpg\)"):
        load_lpo(str(lpg_like))
    plain = tmp_path / "plain.pt"
    torch.save({"hidden.weight": torch.zeros(128, 8)}, plain)
    with pytest.raises(ValueError, match="format None, expected 'rlmeta-lpo-1'"):
        load_lpo(str(plain))
    torch.save({"format": LPO_FORMAT, "network": {"hidden": 8, "width": 3}, "params": {}}, plain)
    with pytest.raises(ValueError, match="is not an LPONetwork"):
        load_lpo(str(plain))
    torch.save({"format": LPO_FORMAT, "network": {"hidden": 8}, "params": LPONetwork(hidden=16).init()}, plain)
    with pytest.raises(ValueError, match="LPO parameters do not fit"):
        load_lpo(str(plain))
    with pytest.raises(ValueError, match="LPO parameters do not fit"):
        save_lpo(tmp_path / "x.pt", LPONetwork(), LPONetwork(hidden=4).init())


@pytest.mark.parametrize("overrides, message", [
    (dict(algo="dpo", objective="ppo-init"), "algo 'dpo' has a fixed, closed-form drift: no --objective"),
    (dict(algo="ppo", objective="drift.pt"), "--objective needs --algo lpg or --algo lpo"),
    (dict(algo="lpo", ppo=PPOConfig(anneal_clip=True)), "ppo.anneal_clip anneals PPO's clip range; algo 'lpo'"),
    (dict(algo="dpo", ppo=PPOConfig(anneal_clip=True)), "ppo.anneal_clip anneals PPO's clip range; algo 'dpo'"),
    (dict(algo="lpo", mode="async"), "mode='async' needs an off-policy correction"),
    (dict(algo="dpo", num_envs=1, num_steps=2), "ppo.minibatches=4 exceeds the 2 samples"),
])
def test_bad_configs_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(**overrides)


def test_cli_input_errors_exit_2_before_anything_is_written(tmp_path, capsys):
    run = tmp_path / "run"
    lpg_like = tmp_path / "lpg.pt"
    torch.save({"format": "rlmeta-lpg-1"}, lpg_like)
    for flags, message in [
        (["--algo", "dpo", "--objective", "ppo-init"], "algo 'dpo' has a fixed, closed-form drift"),
        (["--algo", "lpo", "--objective", str(tmp_path / "missing.pt")], "is neither a file, a shipped LPO drift"),
        (["--algo", "lpo", "--objective", str(lpg_like)], "use --algo lpg"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(["train", "--env", "envpool:CartPole-v1", "--run-dir", str(run), "--no-progress", *flags])
        assert exit_info.value.code == 2
        err = " ".join(capsys.readouterr().err.replace("│", " ").split())
        assert message in err, err
        assert not run.exists()


@pytest.mark.parametrize("name", ["lpo-cartpole", "ta-lpo-cartpole"])
def test_the_lpo_study_inner_config_is_the_one_the_shipped_drifts_were_trained_in(name):
    """``configs/lpo_cartpole_inner.toml`` (the LPO study's and ``es-train --objective lpo``'s inner loop)
    stays what the shipped drifts keep, so that the study's later tests compare with the same PPO."""
    from rlmeta.agents.config import from_dict, to_dict
    from rlmeta.agents.meta_test import lpo_inner_config

    kept = torch.load(ROOT / "rlmeta" / "objectives" / "trained" / f"{name}.pt", weights_only=False)["info"]["inner"]
    kept = to_dict(from_dict(TrainConfig, {k: v for k, v in kept.items() if v is not None}))  # fields added since: defaults
    frozen = to_dict(lpo_inner_config(load_config(ROOT / "configs" / "lpo_cartpole_inner.toml", TrainConfig), "frozen",
                                      kept["total_steps"]))
    assert {k: v for k, v in frozen.items() if k != "meta"} == {k: v for k, v in kept.items() if k != "meta"}
