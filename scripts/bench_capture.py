"""The captured plain update (``rlmeta.capture``, ``rlmeta train --capture``) against the learner's eager one.

    python scripts/bench_capture.py [--device cuda] [--config configs/snake6_reference_a2c.toml]

Fixed data: ``--rollouts`` rollouts of the config's env and network (the Snake 6x6 reference A2C by
default: 512 envs x 5 steps, RMSProp, its own convolutions for the value), collected once with the
initial policy. Then, in one process, the eager update (``rlmeta.learner.update``) and the
``CapturedUpdate`` each run ``--warmup`` untimed and ``--iterations`` timed updates over those
rollouts in turn, alternating by rounds; reported: the median milliseconds per update, learning
throughput (env steps per second of updates alone, collection excluded) and eager / captured.

On a GPU the captured update replays one CUDA graph, which is where it pays (launch overhead is most of
a small network's update there); on a CPU there are no graphs and it runs the same step eagerly on
static inputs, so the ratio shows only what its copies cost (expected about 1.0x: not a speed-up).
The floor of either is the update's arithmetic: its kernels back to back, which a profiler's
device time shows.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlmeta.agents.actor import Actor  # noqa: E402
from rlmeta.agents.build import build_agent  # noqa: E402
from rlmeta.agents.config import TrainConfig, load_config  # noqa: E402
from rlmeta.agents.lifetime import make_env  # noqa: E402
from rlmeta.agents.runs import check_device, set_threads  # noqa: E402
from rlmeta.capture import CapturedUpdate  # noqa: E402
from rlmeta.learner import update  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "snake6_reference_a2c.toml"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rollouts", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    device = check_device(args.device)
    set_threads(args.threads)
    config = load_config(args.config, TrainConfig)
    if config.algo not in ("a2c", "vtrace") or config.meta.enabled:
        raise SystemExit(f"{args.config}: capture takes plain a2c or vtrace configs")
    torch.manual_seed(config.seed)
    env = make_env(config, config.seed)
    agent = build_agent(config, env.single_observation_space, env.single_action_space, device)
    try:
        actor = Actor(env, agent.net, config.num_steps, str(device), config.reward_scale)
        params = {k: v.detach().clone().requires_grad_(True) for k, v in agent.net.named_parameters()}
        rollouts = [actor.collect(params) for _ in range(args.rollouts)]
    finally:
        env.close()
    hparams = config.hparams.as_dict()
    opt_state = agent.optimizer.init(params)
    captured = CapturedUpdate(agent.objective, agent.optimizer)

    def eager(rollout):
        return update(agent.objective, agent.optimizer, params, opt_state, rollout, hparams)

    def graph(rollout):
        return captured(params, opt_state, rollout, hparams)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times: dict[str, list[float]] = {"eager": [], "captured": []}
    for r in range(args.rounds):
        for name, fn in (("eager", eager), ("captured", graph)) if r % 2 == 0 else (("captured", graph), ("eager", eager)):
            for i in range(args.warmup):
                fn(rollouts[i % len(rollouts)])
            for i in range(args.iterations):
                sync()
                start = time.perf_counter()
                fn(rollouts[i % len(rollouts)])  # returns floats: the update has finished
                times[name].append(time.perf_counter() - start)
    steps = config.num_envs * config.num_steps
    print(f"{args.config} on {device}, {args.threads} thread(s): {config.num_envs} envs x {config.num_steps} steps "
          f"per update, {args.rounds} rounds x {args.iterations} updates")
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, median in medians.items():
        print(f"  {name:<9} {1e3 * median:8.2f} ms/update   {steps / median:10,.0f} env steps/s of learning")
    print(f"  eager / captured: {medians['eager'] / medians['captured']:.2f}x  (graph replayed: {captured.captured})")


if __name__ == "__main__":
    main()
