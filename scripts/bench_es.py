"""ES generation time: in process, on 1 and 2 Ray workers, and projected to N machines (issue: ES/Ray).

    python scripts/bench_es.py [--popsize 32] [--lifetime 50] [--rounds 2]

The fitness is ``rlmeta es-train``'s (one lifetime of tabular agents per candidate, LPG's GRU 16,
8 agents x 8 sub-envs per candidate, ``small`` levels) with a fixed lifetime, so every generation
costs the same. Measured, in this process:

* in process, the whole population in one batched call (the fast path), and in chunks of 2, 8
  and 16 candidates (what batching saves per candidate);
* Ray with 1 and 2 workers (a local Ray; chunks of popsize / workers), after a warm-up generation
  that starts the workers.

The projection to N machines of C cores is arithmetic on the measured per-chunk times, not a
measurement: a generation takes one chunk of popsize / (N C) candidates (the slowest worker) plus
the measured Ray overhead per generation. Physical floor: the per-candidate cost of a chunk, with
perfect scaling. Run it with nothing else on the machine (one torch thread per worker).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rlmeta.agents.config import ESTrainConfig, LPGConfig
from rlmeta.agents.es_train import PAIR_SPACE, LifetimeFitness, es_network
from rlmeta.es import InProcessEvaluator, OpenES, RayEvaluator


def generation_seconds(evaluator, es: OpenES, rounds: int) -> float:
    """Median wall seconds of evaluating one generation (ask + evaluate + tell)."""
    times = []
    for _ in range(rounds):
        population = es.ask()
        seeds = [PAIR_SPACE + i // 2 for i in range(len(population.candidates))]
        start = time.perf_counter()
        fitness = evaluator(population.candidates, seeds)
        times.append(time.perf_counter() - start)
        es.tell(fitness)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--popsize", type=int, default=32)
    parser.add_argument("--lifetime", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = ESTrainConfig(lifetime_min=args.lifetime, lifetime_max=args.lifetime, popsize=args.popsize,
                           lpg=LPGConfig(gru_width=16))
    fitness = LifetimeFitness(config)

    def search() -> OpenES:
        return OpenES(es_network(config).init(0), popsize=args.popsize, seed=0)

    rows = []
    for chunk in (None, 16, 8, 4, 2):
        seconds = generation_seconds(InProcessEvaluator(fitness, chunk_size=chunk), search(), args.rounds)
        size = chunk or args.popsize
        rows.append((f"in process, chunks of {size}", seconds, seconds / args.popsize))
        print(f"{rows[-1][0]:<34} {seconds:7.2f} s/generation  {seconds / args.popsize * 1e3:7.1f} ms/candidate",
              flush=True)
    in_process = {int(name.rsplit(" ", 1)[1]): seconds for name, seconds, _ in rows}
    ray_times = {}
    for workers in (1, 2):
        chunk = args.popsize // 2  # the same chunks for 1 and 2 workers: only the parallelism differs
        with RayEvaluator(fitness, num_workers=workers, chunk_size=chunk) as evaluator:
            generation_seconds(evaluator, search(), 1)  # warm-up: starts the workers
            seconds = generation_seconds(evaluator, search(), args.rounds)
        ray_times[workers] = seconds
        print(f"{f'Ray, {workers} worker(s), chunks of {chunk}':<34} {seconds:7.2f} s/generation", flush=True)
    overhead = ray_times[1] - in_process[args.popsize // 2]
    print(f"\nRay overhead per generation (1 worker minus the same chunks in process): {overhead:+.2f} s")
    print(f"2 workers vs 1: {ray_times[1] / ray_times[2]:.2f}x (perfect: 2x)")
    per_candidate = {size: seconds / args.popsize for size, seconds in in_process.items()}
    print("\nProjected seconds per generation on N machines x 2 cores: one chunk of popsize / (2N) candidates")
    print("per core at the per-candidate cost measured in process for that chunk size, plus the Ray overhead")
    print("(arithmetic on the measurements above, not a measurement):")
    for popsize in (args.popsize, 8 * args.popsize):
        for machines in (1, 2, 4, 8):
            size = max(2, popsize // (2 * machines))
            measured = max(s for s in per_candidate if s <= size) if any(s <= size for s in per_candidate) else 2
            projected = size * per_candidate[measured] + max(overhead, 0.0)
            print(f"  popsize {popsize:>4}, N={machines}: chunks of {size:>3} -> {projected:6.2f} s "
                  f"(cost per candidate of chunks of {measured}: {per_candidate[measured] * 1e3:.0f} ms)")


if __name__ == "__main__":
    main()
