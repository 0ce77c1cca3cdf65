"""One agent lifetime as a function: the same learning as a run, no files, the state never mutated."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import torch

from rlmeta.agents.build import build_agent
from rlmeta.agents.config import MetaConfig, TrainConfig
from rlmeta.agents.lifetime import AgentState, Learning, build_loop, lifetime, make_env
from rlmeta.agents.train import Trainer

CONFIGS = {
    "a2c": dict(env="snake-6x6", num_envs=4, num_steps=8, total_steps=32 * 6, algo="a2c"),
    "ppo": dict(env="envpool:CartPole-v1", num_envs=4, num_steps=8, total_steps=32 * 4, algo="ppo"),
    "meta-mixed": dict(env="snake-6x6", num_envs=4, num_steps=8, total_steps=32 * 9, algo="a2c",
                       meta=MetaConfig(learn=("gamma", "lambda"), estimator="mixed", num_updates=3, lr=0.03,
                                       variance_window=3)),
    "meta-conditioned": dict(env="envpool:CartPole-v1", num_envs=4, num_steps=8, total_steps=32 * 5, algo="a2c",
                             meta=MetaConfig(learn=("gamma", "entropy_cost"), condition=True, outer_critic=True,
                                             lr=0.03)),
}


def config(name: str, **overrides) -> TrainConfig:
    return TrainConfig(**{**CONFIGS[name], "progress": False, "eval_interval": 0, "eval_episodes": 2,
                          "checkpoint_interval": 0, "seed": 5, **overrides})


def snapshot(tree):
    if isinstance(tree, torch.Tensor):
        return tree.detach().clone()
    if isinstance(tree, dict):
        return {k: snapshot(v) for k, v in tree.items()}
    return tree


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a.detach(), b.detach())
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    else:
        assert a == b


@pytest.mark.parametrize("name", list(CONFIGS))
def test_lifetime_learns_exactly_what_a_run_learns_and_writes_nothing(name, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    seen = []
    result = lifetime(config(name), on_iteration=lambda state, it: seen.append((state.step, it.steps)))
    assert os.listdir(work) == []  # no run dir, no checkpoints, no TensorBoard files
    run = Trainer(config(name, run_dir=str(tmp_path / "run")))
    summary = run.run()
    assert_same(result.state.params, run.params)
    assert result.state.step == summary["total_steps"] and result.state.updates == summary["updates"]
    if run.state.meta_raw is not None:
        assert_same(result.state.meta_raw, run.state.meta_raw)
        assert_same(result.state.meta_state, run.state.meta_state)
    # The callback saw every iteration, with the counters of the state it produced.
    assert [s for s, _ in seen] == list(torch.tensor([n for _, n in seen]).cumsum(0).tolist())
    assert len(result.iterations) == len(seen)


def test_iterate_is_a_function_of_the_state():
    """iterate leaves its input state untouched, and the same state and data give the same next state."""
    cfg = config("meta-mixed")
    torch.manual_seed(0)
    env = make_env(cfg, 0)
    agent = build_agent(cfg, env.single_observation_space, env.single_action_space)
    learning = Learning(cfg, agent)
    state = learning.initial_state()
    loop = build_loop(cfg, agent, env, "cpu", 0)
    learning.start(state, loop)
    state, _ = learning.iterate(state, loop)  # a state that carries a rollout into the next meta-update
    before = snapshot(vars(state))
    outcomes = []
    for _ in range(2):
        torch.manual_seed(1)  # the same actions
        env_again = make_env(cfg, 1)  # the same env stream
        loop_again = build_loop(cfg, agent, env_again, "cpu", 1)
        learning.generator.manual_seed(2)
        learning.start(state, loop_again)
        outcomes.append(learning.iterate(state, loop_again)[0])
        loop_again.close()
        for key in ("params", "opt_state", "meta_raw", "meta_state"):
            assert_same(getattr(state, key), before[key])
        assert state.step == before["step"] and state.updates == before["updates"]
    first, second = outcomes
    assert second.step == first.step > state.step and second.updates == first.updates == state.updates + 3
    for key in ("params", "opt_state", "meta_raw", "meta_state"):
        assert_same(getattr(first, key), getattr(second, key))
    loop.close()


def test_lifetime_continues_from_a_given_state_and_parameters():
    cfg = config("a2c")
    first = lifetime(cfg, until=64)
    assert first.state.step == 64 and first.state.updates == 2
    more = lifetime(cfg, first.state, until=128)
    assert more.state.step == 128 and more.state.updates == 4
    assert not torch.equal(more.state.params["policy_head.weight"], first.state.params["policy_head.weight"])
    # A fresh agent from given parameters (e.g. a population member or an ES candidate's start).
    env = make_env(cfg, 0)
    agent = build_agent(cfg, env.single_observation_space, env.single_action_space)
    state = Learning(cfg, agent).initial_state(first.state.params)
    assert isinstance(state, AgentState) and state.step == 0
    assert_same(state.params, first.state.params)
    evaluated = lifetime(cfg, state, agent=agent, until=32, evaluate_at_end=True)
    assert set(evaluated.evaluation) >= {"return_mean", "return_std", "length_mean"}
    assert evaluated.episode_returns() == [e["return"] for it in evaluated.iterations for e in it.episodes]


def test_a_meta_state_is_required_when_meta_learning():
    cfg = config("meta-mixed")
    env = make_env(cfg, 0)
    agent = build_agent(cfg, env.single_observation_space, env.single_action_space)
    learning = Learning(cfg, agent)
    state = learning.initial_state()
    state.meta_raw = None
    with pytest.raises(ValueError, match="no meta-parameters"):
        learning.hparams(state)
    env.close()


def test_lifetime_module_has_no_file_or_logging_code():
    """The lifetime floor imports nothing that writes files, logs or handles signals: that is the run's job."""
    tree = ast.parse((Path(__file__).parents[2] / "agents" / "lifetime.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported.isdisjoint({"os", "json", "shutil", "pathlib", "signal", "tqdm", "tensorboard", "logging"})
    from_torch = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not any(module.startswith("torch.utils.tensorboard") for module in from_torch)
    calls = {node.func.attr for node in ast.walk(tree) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Attribute)}
    assert calls.isdisjoint({"save", "write_text", "write_bytes", "mkdir"})
