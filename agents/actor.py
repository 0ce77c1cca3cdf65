"""The actor: runs a policy in a vector env and returns ``Rollout``s of torch tensors."""

from __future__ import annotations

from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch

from rlmeta.agents.networks import ActorCritic, distribution, named_distribution
from rlmeta.rollout import PolicyValue, Rollout, conditioning


VALUES = ("value", "both", "outer")


def make_policy_value(net: ActorCritic, values: str = "value") -> PolicyValue:
    """The network adapter (``rlmeta.rollout.PolicyValue``) objectives read ``net`` through.

    ``values``: which value heads it reads: ``"value"`` (the critic), ``"outer"`` (the outer
    critic, as the outer loss's values) or ``"both"`` (the critic, and the outer critic that
    objectives then also train, see ``rlmeta.objectives.OuterCritic``). The last two need a
    network built with ``outer_critic=True``. Adapters derived from this one with
    ``.reading(...)`` share its forward passes inside a meta-gradient unroll
    (``rlmeta.rollout.ForwardMemo``); the network reads ``hparams`` through its conditioning input only.
    """
    if values not in VALUES:
        raise ValueError(f"values must be one of {list(VALUES)}, got {values!r}")
    if values != "value" and not net.has_outer_critic:
        raise ValueError(f"values={values!r} needs a network with an outer critic (ActorCritic(outer_critic=True))")
    adapter = PolicyValue(net.named_outputs, named_distribution,
                          linearize=None if net.num_hparams else net.linearize)
    if values == "outer":
        return adapter.reading(value="outer_value")
    if values == "both":
        return adapter.reading(value="value", outer_value="outer_value")
    return adapter


def make_policy(net: ActorCritic):
    """``policy(params, obs, hparams) -> distribution``: the policy alone (no value), for acting."""

    def policy(params: dict, obs: torch.Tensor, hparams: Any):
        return distribution(net.apply_params(params, obs, conditioning(hparams), value=False))

    return policy


class Actor:
    """Steps ``env`` with the policy of the given parameters, ``num_steps`` at a time."""

    def __init__(self, env: Any, net: ActorCritic | None, num_steps: int, device: str = "cpu",
                 reward_scale: float = 1.0, policy: Callable[[dict, torch.Tensor, Any], Any] | None = None):
        """``policy(params, obs [B, ...], hparams) -> distribution`` acts instead of ``net``'s
        (e.g. a population's adapter, or a network other than ``ActorCritic``)."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if policy is None and net is None:
            raise ValueError("an actor needs a network or a policy")
        self.reward_scale = reward_scale  # rollouts hold reward * reward_scale; episode stats stay unscaled
        self.env, self.net, self.num_steps, self.device = env, net, num_steps, torch.device(device)
        self.policy = policy if policy is not None else make_policy(net)
        self.action_bounds = _box_bounds(env.single_action_space)
        self.obs, _ = env.reset()
        self.episodes: list[dict[str, float]] = []  # ended episodes since the last collect
        self.steps = 0

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x, dtype=torch.float32, device=self.device)

    @torch.no_grad()
    def collect(self, params: dict, hparams: dict | None = None) -> Rollout:
        """One rollout of ``num_steps`` steps with the policy ``params`` (no gradients)."""
        hparams = hparams or {}
        n, b = self.num_steps, self.env.num_envs
        obs, actions, rewards, terms, truncs, logps = [], [], [], [], [], []
        final_obs, final_index = [], []
        for t in range(n):
            o = self._tensor(self.obs)
            dist = self.policy(params, o, hparams)
            a = dist.sample()
            action_np = a.cpu().numpy()
            if self.action_bounds is not None:  # Gaussian samples are unbounded; the env gets them clipped
                action_np = np.clip(action_np, *self.action_bounds)
            next_obs, r, term, trunc, info = self.env.step(action_np)
            obs.append(o)
            actions.append(a)
            logps.append(dist.log_prob(a))
            rewards.append(torch.as_tensor(r, dtype=torch.float32, device=self.device) * self.reward_scale)
            terms.append(torch.as_tensor(term, dtype=torch.float32, device=self.device))
            truncs.append(torch.as_tensor(trunc, dtype=torch.float32, device=self.device))
            if trunc.any():
                idx = np.flatnonzero(trunc)
                final_obs.append(self._tensor(info["final_obs"][idx]))
                final_index.append(torch.as_tensor(t * b + idx, device=self.device))
            self.episodes += ended_episodes(info)
            self.obs = next_obs
        self.steps += n * b
        stacked_rewards = torch.stack(rewards)
        if not torch.isfinite(stacked_rewards).all():
            t, i = map(int, torch.nonzero(~torch.isfinite(stacked_rewards))[0])
            raise FloatingPointError(f"the env returned a non-finite reward ({float(stacked_rewards[t, i])}) "
                                     f"in sub-env {i}; check its reward function")
        obs_shape = obs[0].shape[1:]
        return Rollout(
            obs=torch.stack(obs),
            actions=torch.stack(actions),
            rewards=stacked_rewards,
            terminated=torch.stack(terms),
            truncated=torch.stack(truncs),
            behaviour_logp=torch.stack(logps),
            last_obs=self._tensor(self.obs),
            final_obs=torch.cat(final_obs) if final_obs else torch.zeros((0, *obs_shape), device=self.device),
            final_index=torch.cat(final_index) if final_index else torch.zeros(0, dtype=torch.long, device=self.device),
        )

    def pop_episodes(self) -> list[dict[str, float]]:
        """Ended episodes' statistics since the last call."""
        out, self.episodes = self.episodes, []
        return out


def ended_episodes(info: dict, rows: np.ndarray | None = None) -> list[dict[str, float]]:
    """Statistics (return, length, success if any, and the sub-env index ``env``) of the episodes an env
    step reports as ended."""
    if "episode" not in info:
        return []
    ended = info["_episode"] if rows is None else info["_episode"] & rows
    ep = info["episode"]
    records = []
    for i in np.flatnonzero(ended):
        record = {"return": float(ep["return"][i]), "length": float(ep["length"][i]), "env": int(i)}
        if "success" in ep:
            record["success"] = float(ep["success"][i])
        records.append(record)
    return records


def _box_bounds(space: Any) -> tuple[np.ndarray, np.ndarray] | None:
    if isinstance(space, gym.spaces.Box):
        return space.low, space.high
    return None


@torch.no_grad()
def evaluate_policy(
    env: Any, net: ActorCritic, params: dict, hparams: dict | None = None, greedy: bool = True,
    device: str = "cpu", max_steps: int = 100_000,
) -> list[dict[str, float]]:
    """The first episode of every sub-env of ``env`` under ``params`` (greedy: the distribution's mode).

    Returns one record per sub-env (``return``, ``length``, and ``success`` where the env has
    one). Episodes still running after ``max_steps`` steps raise RuntimeError.
    """
    policy = make_policy(net)
    bounds = _box_bounds(env.single_action_space)
    obs, _ = env.reset()
    records: list[dict[str, float] | None] = [None] * env.num_envs
    done = np.zeros(env.num_envs, bool)
    for _ in range(max_steps):
        dist = policy(params, torch.as_tensor(obs, dtype=torch.float32, device=device), hparams or {})
        actions = (dist.mode if greedy else dist.sample()).cpu().numpy()
        if bounds is not None:
            actions = np.clip(actions, *bounds)
        obs, _, _, _, info = env.step(actions)
        if "episode" in info:
            fresh = info["_episode"] & ~done
            for i, record in zip(np.flatnonzero(fresh), ended_episodes(info, fresh)):
                records[i] = record
            done |= fresh
        if done.all():
            return records  # type: ignore[return-value]
    raise RuntimeError(f"evaluation: {int((~done).sum())} of {env.num_envs} episodes still running after {max_steps} steps")
