"""Learning tests with small budgets: each agent must actually solve its task.

They train from the shipped config files in ``configs/`` (the ones the README points to), so a
config that stops learning fails here. Evaluation is the run's own: fresh envs, 10 episodes.
"""

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from rlmeta import envs
from rlmeta.agents.build import build_agent
from rlmeta.agents.config import HParamsConfig, NetworkConfig, OptimizerConfig, TrainConfig, load_config
from rlmeta.agents.lifetime import lifetime, make_env
from rlmeta.agents.train import train
from rlmeta.cli import parse_train

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
pytestmark = pytest.mark.slow


def run(name: str, tmp_path: Path, **overrides) -> dict:
    config = load_config(CONFIGS / name)
    base = dict(run_dir=str(tmp_path / "run"), progress=False, checkpoint_interval=0)
    return train(TrainConfig(**{**config.__dict__, **base, **overrides}))


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.iterdir()))
def test_shipped_configs_are_valid(name):
    config = load_config(CONFIGS / name)
    assert config.total_steps >= 1


@pytest.mark.parametrize("name", ["cartpole_ppo.toml", "cartpole_a2c.toml", "cartpole_vtrace_async.toml"])
def test_agent_solves_cartpole_through_envpool(name, tmp_path):
    summary = run(name, tmp_path)
    if name == "cartpole_vtrace_async.toml" and not summary["target_reached"]:
        # Async runs depend on thread timing, so no seed makes them repeatable. Measured on this
        # config: 2 of 42 runs (seeds 0-5 twice, 10-39) never reached 475 in 300k steps, so one
        # retry with a different seed is allowed (both failing: about 0.25% if the agent is sound).
        summary = run(name, tmp_path / "retry", seed=1)
    ev = summary["eval"]
    assert ev["episodes"] == 10
    assert ev["return_mean"] >= 475, (summary["total_steps"], summary["evaluations"])
    assert summary["target_reached"] and summary["total_steps"] < 300_000


def test_async_vtrace_learns_despite_measured_lag(tmp_path):
    summary = run("cartpole_vtrace_async.toml", tmp_path, target_return=None, eval_interval=0, total_steps=60_000)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "run"), size_guidance={"scalars": 0})
    acc.Reload()
    lags = [e.value for e in acc.Scalars("async/policy_lag")]
    assert np.mean(lags) > 0.5  # the learner really consumed stale rollouts
    assert summary["train_return_mean_last_100"] > 150  # random play averages about 22


def random_snake_score(episodes: int = 400) -> float:
    env = envs.make("snake-6x6", num_envs=64, seed=7)
    env.reset()
    rng = np.random.default_rng(0)
    scores: list[float] = []
    while len(scores) < episodes:
        _, _, _, _, info = env.step(rng.integers(0, 4, 64))
        if "episode" in info:
            scores += list(info["episode"]["return"][info["_episode"]])
    env.close()
    return float(np.mean(scores))


def test_a2c_on_snake_6x6_clearly_beats_random(tmp_path):
    random_score = random_snake_score()
    assert 0.05 < random_score < 0.3  # a random snake rarely reaches a fruit
    summary = run("snake6_a2c.toml", tmp_path)
    ev = summary["eval"]
    assert ev["episodes"] == 20
    assert ev["return_mean"] >= max(1.0, 5 * random_score), summary["evaluations"]


def test_main_job_meta_gradient_a2c_on_snake_6x6_learns_and_moves_gamma(tmp_path):
    """The README's main job (mixed K=4 meta-gradients on gamma and lambda) learns Snake."""
    summary = run("snake6_meta.toml", tmp_path)
    ev = summary["eval"]
    assert ev["return_mean"] >= max(1.0, 5 * random_snake_score()), summary["evaluations"]
    gamma = summary["meta"]["gamma"]
    assert gamma["initial"] == pytest.approx(0.9)
    assert abs(gamma["final"] - gamma["initial"]) > 0.01, gamma  # visibly tuned (about +0.07 in our runs)
    for name in ("gamma", "lambda"):
        moved = summary["meta"][name]
        assert moved["final"] != pytest.approx(moved["initial"], abs=1e-4), (name, moved)
        assert 0 < moved["final"] < 1


def test_async_meta_gradient_vtrace_learns_cartpole(tmp_path):
    """Meta-gradients on the learner of the asynchronous loop, with V-trace inner and outer losses."""
    from rlmeta.agents.config import MetaConfig

    # meta lr 1e-2: gamma moves by 4e-3 to 1.3e-2 (at 1e-3 it moved 2e-4 to 4e-4, once only 8e-6 under load)
    meta = MetaConfig(learn=("gamma", "lambda"), estimator="one-step", lr=1e-2)
    options = dict(meta=meta, target_return=None, eval_interval=0, total_steps=60_000)
    summary = run("cartpole_vtrace_async.toml", tmp_path, **options)
    if summary["train_return_mean_last_100"] <= 150:
        # Thread timing makes async runs unrepeatable: seeds 0-23 gave 169-340 (median 236) with the
        # machine to themselves, but seed 0 gave 142 once inside a full CI run; one retry with
        # another seed (a broken meta-learner fails both).
        summary = run("cartpole_vtrace_async.toml", tmp_path / "retry", seed=1, **options)
    assert summary["train_return_mean_last_100"] > 150, summary  # random play averages about 22
    assert summary["meta"]["gamma"]["final"] != pytest.approx(summary["meta"]["gamma"]["initial"], abs=1e-4)


@pytest.mark.parametrize("env_id", ["chain", "chain-distractor"])
def test_a2c_learns_the_delayed_chain(env_id):
    """The LPG appendix's delayed chain: after its lifetime, A2C picks the correct first action with
    probability >= 0.95, on every one of three lifetimes (each its own correct action and length)."""
    for seed in range(3):
        config = TrainConfig(env=env_id, num_envs=16, num_steps=20, total_steps=30_000, seed=seed, algo="a2c",
                             network=NetworkConfig(hidden=(64,), activation="tanh"),
                             optimizer=OptimizerConfig(name="adam", lr=3e-3, max_grad_norm=0.5),
                             hparams=HParamsConfig(gamma=0.99, td_lambda=0.95, entropy_cost=0.01, value_cost=0.5),
                             progress=False)
        env = make_env(config, config.seed)  # the lifetime's env: same seed, same correct action and length
        agent = build_agent(config, env.single_observation_space, env.single_action_space)
        result = lifetime(config, agent=agent)
        start, _ = env.reset(seed=config.seed)
        with torch.no_grad():
            probs = agent.policy_value(result.state.params, torch.as_tensor(start[:1]), {})[0].probs[0]
        assert float(probs[env.correct_action]) >= 0.95, (seed, env.length, probs.tolist())
        env.close()


def test_the_readmes_meta_gradient_snippet_moves_gamma_visibly(tmp_path):
    """The README's meta-gradient command, cut to 30k env steps: gamma must move by more than 0.005."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    snippet = re.search(r"rlmeta train --config configs/snake6_a2c\.toml --meta\.learn.*?\n(.*?)\n", readme)
    args = shlex.split((snippet.group(0)).replace("\\\n", " "))[2:]
    args = [a.replace("configs/", str(CONFIGS) + "/") for a in args]
    command = parse_train(args + ["--total-steps", "30000", "--run-dir", str(tmp_path / "run"), "--no-progress"])
    summary = train(command)
    gamma = summary["meta"]["gamma"]
    assert gamma["initial"] == pytest.approx(0.9, abs=1e-6) and abs(gamma["final"] - gamma["initial"]) > 0.005, gamma


def test_a_config_files_env_options_stay_with_its_env(tmp_path, capsys):
    """``--config FILE --env OTHER``: the file's env_options were written for its own env, so another env
    starts from none (with a note on stderr) unless --env-options gives its own; the same env keeps them."""
    path = tmp_path / "snake.toml"
    path.write_text('env = "snake"\nenv_options = {rows = 6, cols = 6}\nalgo = "a2c"\n')
    kept = parse_train(["--config", str(path), "--env", "snake"])
    assert kept.env_options == {"rows": 6, "cols": 6} and "note" not in capsys.readouterr().err
    other = parse_train(["--config", str(path), "--env", "envpool:CartPole-v1"])
    assert other.env == "envpool:CartPole-v1" and other.env_options == {}
    assert "env_options {'rows': 6, 'cols': 6} are snake's; not passed to envpool:CartPole-v1" in capsys.readouterr().err
    given = parse_train(["--config", str(path), "--env=gym:CartPole-v1", "--env-options", "max_episode_steps", "50"])
    assert given.env_options == {"max_episode_steps": 50}
    # on top of the file's own (a default dict's keys are not the only ones the flag may set)
    more = parse_train(["--config", str(path), "--env-options", "rows", "8", "--env-options", "walls", "True"])
    assert more.env_options == {"rows": 8, "cols": 6, "walls": True}
