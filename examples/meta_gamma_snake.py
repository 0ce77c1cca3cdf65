"""A2C on Snake 6x6 with its discount gamma tuned online by a one-step meta-gradient.

Xu, van Hasselt and Silver (2018), "Meta-Gradient Reinforcement Learning": every iteration the
agent takes one differentiable A2C update on rollout 0 with the current gamma, the updated agent
is judged by an outer A2C loss with fixed references (gamma'=0.99, lambda'=1) on a fresh rollout
1, and the derivative of that outer loss with respect to gamma (through the update) moves gamma.
Rollout 1 is then reused as the next iteration's rollout 0, so every env step is learned from.

Built from rlmeta's pieces rather than its Trainer:

    python examples/meta_gamma_snake.py --total-steps 300000 --threads 1
"""

import argparse
import collections
import statistics
import time

import torch

from rlmeta import envs
from rlmeta.agents.actor import Actor, make_policy_value
from rlmeta.agents.networks import ActorCritic
from rlmeta.hparams import MetaParams
from rlmeta.learner import update
from rlmeta.metagrad import OneStep, OuterObjective
from rlmeta.objectives import A2C
from rlmeta.optim import adam

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--total-steps", type=int, default=300_000, help="env steps in all")
parser.add_argument("--num-envs", type=int, default=64)
parser.add_argument("--num-steps", type=int, default=16, help="steps per rollout")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--lr", type=float, default=1e-3, help="the agent's (inner) Adam learning rate")
parser.add_argument("--meta-lr", type=float, default=0.03, help="the meta-optimizer's rate on raw gamma")
parser.add_argument("--init-gamma", type=float, default=0.9)
parser.add_argument("--outer-gamma", type=float, default=0.99, help="the outer loss's reference discount")
parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
parser.add_argument("--log-every", type=int, default=20, help="print every this many iterations")
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
torch.manual_seed(args.seed)

# The environment, the network (as configs/snake6_meta.toml) and the actor that steps it.
env = envs.make("snake-6x6", args.num_envs, args.seed)
net = ActorCritic(env.single_observation_space, env.single_action_space, hidden=(64,), conv_channels=(16, 16),
                  activation="relu")
actor = Actor(env, net, args.num_steps)

# The inner learner: A2C read through the network's adapter, and a functional Adam. eps_root > 0
# keeps Adam's second derivatives finite where a second moment is zero (we differentiate through it).
policy_value = make_policy_value(net)
objective = A2C(policy_value)
optimizer = adam(args.lr, eps=1e-5, eps_root=1e-12, max_grad_norm=0.5)
params = {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()}
opt_state = optimizer.init(params)

# The meta-parameters: gamma is learned (stored raw, read through a sigmoid); the rest stay fixed.
meta = MetaParams({"gamma": args.init_gamma}, fixed={"lambda": 0.95, "entropy_cost": 0.01})


def inner_update(params, opt_state, rollout, hparams, mode):
    """One A2C step; the estimator says through `mode` whether (and how) it is differentiated."""
    new_params, new_state, _ = update(objective, optimizer, params, opt_state, rollout, hparams, mode=mode)
    return new_params, new_state


# One-step estimator: one inner update, then the outer loss with the reference gamma and lambda.
estimator = OneStep(inner_update, OuterObjective(policy_value, gamma=args.outer_gamma, lambda_=1.0))
meta_optimizer = adam(args.meta_lr, max_grad_norm=1.0)
meta_state = meta_optimizer.init(meta.raw)


def gamma() -> float:
    return float(meta.values()["gamma"].detach())


recent = collections.deque(maxlen=100)  # the last 100 episodes' returns (fruits eaten)
next_rollout, iteration, started = None, 0, time.perf_counter()
print(f"{'steps':>8} {'return':>7} {'gamma':>7} {'meta_loss':>10} {'seconds':>8}")
while actor.steps < args.total_steps:
    acting = meta.current()  # the values the agent acts with, held fixed

    def collect(p):
        """A rollout by the policy `p` (detached by the estimator), acting with the current values."""
        return actor.collect(p, acting)

    # The meta-gradient d L_outer / d raw-gamma, and where the agent stands after its inner update.
    result = estimator.estimate(meta, params, opt_state, collect, first_rollout=next_rollout)
    meta_state = meta.step(meta_optimizer, result.grads, meta_state)  # raw gamma moves (fresh leaves)
    params, opt_state = result.params, result.opt_state
    next_rollout = result.next_rollout  # collected by the updated agent: the next rollout 0
    recent.extend(e["return"] for e in actor.pop_episodes())
    iteration += 1
    if iteration % args.log_every == 0 or actor.steps >= args.total_steps:
        ret = statistics.fmean(recent) if recent else float("nan")
        print(f"{actor.steps:>8} {ret:>7.2f} {gamma():>7.4f} {result.meta_loss:>10.4f} "
              f"{time.perf_counter() - started:>8.1f}", flush=True)

ret = statistics.fmean(recent) if recent else float("nan")
print(f"final gamma {gamma():.4f} (from {args.init_gamma}); mean return of the last {len(recent)} episodes "
      f"{ret:.2f}; {actor.steps} env steps in {time.perf_counter() - started:.0f} s")
