"""Benchmark training: wall-clock to CartPole return 475, our PPO vs SB3 PPO (RL Zoo), 3 seeds each;
and A2C's steps/second on Snake 12x12 with 512 envs. See ``agents/bench_train.py`` for the protocol.

Usage: python scripts/bench_train.py [--seeds 3] [--budget 100000] [--threads 1]
       [--contenders sb3 ours ours-zoo] [--no-snake] [--json-out results.json]
"""

import tyro

from agents.bench_train import BenchTrainConfig, run

if __name__ == "__main__":
    run(tyro.cli(BenchTrainConfig))
