"""Population benchmark: P agents updated as one batched population vs the same P agents one by one.

    python scripts/bench_population.py [--agents 32] [--objective a2c|lpg] [--threads 1]

Both contenders run in this process on the same rollouts (Snake 6x6 observations, the README's
network: two 3x3 convolutions of 16 channels and a 64-unit layer; LPG: groove's LPG network with
a prediction head of 8), alternating, and the median over repeats is printed with their ratio.
The floor next to it: the batched update cannot beat the arithmetic of P single-agent updates,
so the best it can do is remove their per-call overhead; the printed "one agent" time times P
is the sequential cost, and a ratio near 1 means the work, not the overhead, dominates.
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium as gym
import numpy as np
import torch

from rlmeta.agents.actor import make_policy_value
from rlmeta.agents.networks import ActorCritic, TabularAgent, named_distribution
from rlmeta.learner import update
from rlmeta.objectives import A2C
from rlmeta.objectives.lpg import LPG, LPGNetwork
from rlmeta.optim import adam
from rlmeta.rollout import PolicyValue, Rollout


def rollout(num_steps: int, num_envs: int, seed: int, shape: tuple[int, ...] = (6, 6, 5)) -> Rollout:
    """A random Snake-shaped rollout ``[T, B]`` (6x6x5 observations, flat or not; 4 actions)."""
    g = torch.Generator().manual_seed(seed)
    obs = (torch.rand(num_steps, num_envs, *shape, generator=g) < 0.2).float()
    return Rollout(obs, torch.randint(0, 4, (num_steps, num_envs), generator=g),
                   torch.randn(num_steps, num_envs, generator=g), (torch.rand(num_steps, num_envs, generator=g) < 0.05).float(),
                   torch.zeros(num_steps, num_envs), torch.full((num_steps, num_envs), -1.386),
                   (torch.rand(num_envs, *shape, generator=g) < 0.2).float(), torch.zeros(0, *shape),
                   torch.zeros(0, dtype=torch.long))


def index_rollout(num_steps: int, num_envs: int, seed: int, states: int) -> Rollout:
    """A random rollout of state indices (a tabular agent's observations), 4 actions."""
    g = torch.Generator().manual_seed(seed)
    base = rollout(num_steps, num_envs, seed, (1,))
    obs = torch.randint(0, states, (num_steps, num_envs), generator=g).float()
    return base._replace(obs=obs, last_obs=torch.randint(0, states, (num_envs,), generator=g).float(),
                         final_obs=torch.zeros(0))


def join(parts: list[Rollout]) -> Rollout:
    """Agents' rollouts side by side (no truncations here)."""
    return Rollout(*(torch.cat([getattr(r, n) for r in parts], dim=1) for n in
                     ("obs", "actions", "rewards", "terminated", "truncated", "behaviour_logp")),
                   torch.cat([r.last_obs for r in parts]), parts[0].final_obs, parts[0].final_index)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=32)
    parser.add_argument("--num-steps", type=int, default=20)
    parser.add_argument("--envs-per-agent", type=int, default=8)
    parser.add_argument("--objective", choices=("a2c", "lpg"), default="a2c")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--network", choices=("conv", "mlp", "tabular"), default="conv",
                        help="conv: the README's Snake network; mlp: two 64-unit layers on the flat observation; "
                             "tabular: groove's tabular agents on 288 states (LPG's meta-training setting)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    space = gym.spaces.Box(0, 1, (6, 6, 5) if args.network == "conv" else (180,), np.float32)
    layers = dict(hidden=(64,), conv_channels=(16, 16)) if args.network == "conv" else dict(hidden=(64, 64))
    extras = {"prediction": 8} if args.objective == "lpg" else {}
    nets = []
    for seed in range(args.agents):
        torch.manual_seed(seed)
        if args.network == "tabular":
            nets.append(TabularAgent(288, 4, 8 if extras else 0))
        else:
            nets.append(ActorCritic(space, gym.spaces.Discrete(4), **layers, extra_outputs=extras, activation="relu"))
    if args.network == "tabular":
        adapter = PolicyValue(nets[0].named_outputs, named_distribution, extras=tuple(extras))
    else:
        adapter = make_policy_value(nets[0])
        if extras:
            adapter = adapter.reading(extras=("prediction",))
    lpg_params = LPGNetwork().init(0)
    hparams = {"gamma": 0.99, "lambda": 0.95, "entropy_cost": 0.01, "lpg": lpg_params}

    def objective(pv):
        return LPG(pv, network=LPGNetwork()) if args.objective == "lpg" else A2C(pv)

    optimizer = adam(1e-3, max_grad_norm=0.5)
    if args.network == "tabular":  # state indices of 288 states
        parts = [index_rollout(args.num_steps, args.envs_per_agent, 100 + p, 288) for p in range(args.agents)]
    else:
        parts = [rollout(args.num_steps, args.envs_per_agent, 100 + p, space.shape) for p in range(args.agents)]
    joined = join(parts)
    separate = [{k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()} for net in nets]
    states = [optimizer.init(p) for p in separate]
    batched = {k: torch.stack([p[k].detach() for p in separate]).requires_grad_(True) for k in separate[0]}
    population = optimizer.for_population()
    batched_state = population.init(batched)
    single = objective(adapter)
    batched_objective = objective(adapter.for_population(args.agents, args.envs_per_agent))

    def one_by_one() -> None:
        for p in range(args.agents):
            update(single, optimizer, separate[p], states[p], parts[p], hparams)

    def together() -> None:
        update(batched_objective, population, batched, batched_state, joined, hparams)

    one_by_one(), together()  # warm up
    loop, batch = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        one_by_one()
        loop.append(time.perf_counter() - start)
        start = time.perf_counter()
        together()
        batch.append(time.perf_counter() - start)
    loop_s, batch_s = statistics.median(loop), statistics.median(batch)
    steps = args.agents * args.num_steps * args.envs_per_agent
    print(f"{args.objective} ({args.network}): {args.agents} agents x {args.envs_per_agent} envs x {args.num_steps} steps "
          f"({steps} samples per update), torch threads {args.threads}")
    print(f"  one by one : {loop_s * 1e3:8.1f} ms per population update ({args.agents / loop_s:7.1f} agent updates/s; "
          f"one agent {loop_s / args.agents * 1e3:.2f} ms)")
    print(f"  batched    : {batch_s * 1e3:8.1f} ms per population update ({args.agents / batch_s:7.1f} agent updates/s)")
    print(f"  speed-up   : {loop_s / batch_s:.2f}x (floor: the same arithmetic; only per-call overhead can go)")


if __name__ == "__main__":
    main()
