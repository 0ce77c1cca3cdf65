"""Benchmark meta-gradients: (a) A2C with one-step meta-gradients vs plain A2C per iteration on Snake;
(b) one and K=4 meta-updates, ours vs TorchOpt (MetaRMSProp) vs higher, same network and data;
(c) peak memory of our K-step meta-updates for K in 1, 2, 4, 8, 16. See ``agents/bench_meta.py``.

Usage: python scripts/bench_meta.py [--parts a b c] [--env snake-6x6] [--iterations 30] [--threads 1]
       [--speed-ks 1 4] [--memory-ks 1 2 4 8 16] [--device cpu] [--json-out results.json]
"""

import tyro

from agents.bench_meta import BenchMetaConfig, run

if __name__ == "__main__":
    run(tyro.cli(BenchMetaConfig))
