"""Learning tests with small budgets: the agents must actually solve their tasks."""

import numpy as np
import torch

import envs
from agents.actor import Actor
from agents.learner import update
from agents.networks import ActorCritic, distribution
from rlmeta.objectives import PPO
from rlmeta.optim import adam


def greedy_returns(env_id: str, net: ActorCritic, params: dict, episodes: int, seed: int = 123) -> list[float]:
    """Undiscounted returns of ``episodes`` episodes of the greedy policy."""
    env = envs.make(env_id, num_envs=episodes, seed=seed)
    obs, _ = env.reset()
    returns: list[float] = [np.nan] * episodes
    done = np.zeros(episodes, bool)
    with torch.no_grad():
        while not done.all():
            out = torch.func.functional_call(net, params, (torch.as_tensor(obs, dtype=torch.float32),))
            actions = distribution(out).probs.argmax(-1).numpy()
            obs, _, _, _, info = env.step(actions)
            if "episode" in info:
                for i in np.flatnonzero(info["_episode"] & ~done):
                    returns[i] = info["episode"]["return"][i]
                    done[i] = True
    env.close()
    return returns


def test_ppo_solves_cartpole_through_envpool():
    torch.manual_seed(0)
    env = envs.make("envpool:CartPole-v1", num_envs=8, seed=0)
    net = ActorCritic(env.single_observation_space, env.single_action_space, hidden=(64, 64))
    params = {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()}
    actor = Actor(env, net, num_steps=128)
    objective = PPO(actor.policy_value, epochs=10, minibatches=4)
    optimizer = adam(2.5e-3, max_grad_norm=0.5)
    state = optimizer.init(params)
    hparams = {"gamma": 0.98, "lambda": 0.8, "entropy_cost": 0.0}
    recent: list[float] = []
    while actor.steps < 150_000:
        rollout = actor.collect(params)
        params, state, _ = update(objective, optimizer, params, state, rollout, hparams, generator=torch.Generator().manual_seed(actor.steps))
        recent = (recent + [e["return"] for e in actor.pop_episodes()])[-20:]
        if len(recent) == 20 and np.mean(recent) > 475:
            break
    scores = greedy_returns("envpool:CartPole-v1", net, params, episodes=10)
    assert np.mean(scores) >= 475, (actor.steps, scores)
