#!/bin/bash
# The speed issue's acceptance benchmarks in one sitting, one after another, nothing else on the machine
# (needs RLMETA_EXTRAS=dev,bench). Logs go to $OUT (default /tmp/sweep); the ones beside this file are
# the run of 2026-12-04 (docs/benchmarks.md, "The acceptance sweep").
set -u
cd "$(dirname "$0")/../../.."
P=.venv/bin/python
O=${OUT:-/tmp/sweep}
mkdir -p "$O"
$P scripts/bench_envs.py --no-metaworld --json-out "$O/envs.json" > "$O/envs.log" 2>&1
$P scripts/bench_meta.py --parts a --rounds 4 --json-out "$O/meta_a.json" > "$O/meta_a.log" 2>&1
$P scripts/bench_meta.py --parts b --speed-ks 1 4 --contenders ours torchopt higher --iterations 20 \
  > "$O/meta_b.log" 2>&1
for cfg in snake6_reference snake6_reference_a2c; do  # throughput at the reference batch, 2 threads
  .venv/bin/rlmeta train --config "configs/$cfg.toml" --total-steps 1024000 --eval-interval 100000000 \
    --checkpoint-interval 100000000 --torch-threads 2 --run-dir "$O/run_$cfg" --overwrite > "$O/train_$cfg.log" 2>&1
done
$P scripts/bench_train.py --no-snake --contenders sb3 ours --seeds 8 > "$O/bench_train.log" 2>&1
$P scripts/profile_ppo_step.py --repeats 30 --no-torch-profile --no-cprofile --no-floor --compiled \
  > "$O/ppo_step.log" 2>&1
