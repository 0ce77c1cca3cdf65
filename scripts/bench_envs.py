"""Benchmark env throughput: our Snake vs envpool's Snake-v1 (8/64/512 envs), Meta-World paths.

Usage: python scripts/bench_envs.py [--num-envs 8 64 512] [--seconds 1.0] [--no-metaworld]
"""

import tyro

from envs.bench import BenchEnvsConfig, run

if __name__ == "__main__":
    run(tyro.cli(BenchEnvsConfig))
