"""What the approximate mode (``meta.tangent_fraction`` and/or ``meta.outer_fraction`` < 1) costs in meta-gradient noise.

    python scripts/tangent_fraction_variance.py [--fraction 0.25] [--outer-fraction 1] [--samples 30]

On Snake 6x6 with the benchmark's network (``scripts/bench_meta.py``: 64 envs x 16 steps, CNN (16, 16) +
MLP 64, RMSProp inner updates of A2C learning gamma and lambda), from the initial network with warmed-up
second moments: the one-step meta-gradient on ``samples`` independent pairs of rollouts, exact and
approximate (each with its own random subsets of sub-envs: ``--fraction`` for the tangent pass,
``--outer-fraction`` for the outer loss's gradient), and the approximate one on one fixed pair
with ``samples`` subsets (the subsampling noise alone). Prints the per-component variances, the
trace ratio approximate / exact and the SNR of each (|mean| / std, and with the exact estimator's mean as
the signal for all), with the time per estimate.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_meta as bm  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fraction", type=float, default=0.25, help="the tangent pass's fraction of the sub-envs")
    parser.add_argument("--outer-fraction", type=float, default=1.0,
                        help="the outer loss gradient's fraction of the sub-envs")
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not (0 < args.fraction <= 1 and 0 < args.outer_fraction <= 1) or args.samples < 3:
        raise SystemExit("need 0 < fraction <= 1, 0 < outer fraction <= 1 and samples >= 3")
    if args.fraction == 1 and args.outer_fraction == 1:
        raise SystemExit("nothing approximate: give --fraction or --outer-fraction below 1")
    torch.set_num_threads(args.threads)
    cfg = bm.BenchMetaConfig(parts=("b",))
    data = bm.make_fixed_data(cfg, 2 * args.samples)
    from rlmeta.metagrad import OneStep  # noqa: PLC0415

    def estimator(fraction: float, outer_fraction: float) -> OneStep:
        est = bm._ours_estimator(data.net, cfg, "multi-step", 1, tangent=True)
        est.tangent_fraction, est.outer_fraction = fraction, outer_fraction
        est.generator = torch.Generator().manual_seed(0)
        return est

    meta = bm._meta_params(torch.device("cpu"))

    def draw(est: OneStep, pair: int) -> tuple[torch.Tensor, float]:
        params = {n: v.clone() for n, v in data.params.items()}
        state = {"nu": {n: v.clone() for n, v in data.nu.items()}}
        rollouts = iter(data.rollouts[2 * pair: 2 * pair + 2])
        start = time.perf_counter()
        grads = est.estimate(meta, params, state, lambda _p: next(rollouts)).grads
        return torch.stack([grads[n].detach().reshape(()) for n in bm.LEARNED]).double(), time.perf_counter() - start

    exact, approx = estimator(1.0, 1.0), estimator(args.fraction, args.outer_fraction)
    label = f"approximate {args.fraction:g} / outer {args.outer_fraction:g}"
    rows = {}
    for name, est, pairs in (("exact, independent rollouts", exact, range(args.samples)),
                             (f"{label}, independent rollouts", approx, range(args.samples)),
                             (f"{label}, one rollout pair (subsets only)", approx, [0] * args.samples)):
        out = [draw(est, p) for p in pairs]
        samples = torch.stack([g for g, _ in out])
        rows[name] = (samples, statistics.median(t for _, t in out))
    base = rows["exact, independent rollouts"][0].var(0).sum()
    # The exact estimator's mean is the best estimate of the true meta-gradient here: a noisy estimator's
    # own sample mean is inflated by its noise, so its own SNR reads too high at few samples.
    truth = rows["exact, independent rollouts"][0].mean(0).norm()
    print(f"one-step meta-gradient of (gamma, lambda), {args.samples} samples each\n")
    print(f"{'':<66} {'var gamma':>11} {'var lambda':>11} {'trace / exact':>14} {'SNR':>6} {'SNR*':>6} {'ms':>6}")
    for name, (samples, seconds) in rows.items():
        var = samples.var(0)
        snr = float(samples.mean(0).norm() / var.sum().sqrt())
        print(f"{name:<66} {float(var[0]):>11.3e} {float(var[1]):>11.3e} {float(var.sum() / base):>14.2f} "
              f"{snr:>6.2f} {float(truth / var.sum().sqrt()):>6.2f} {1e3 * seconds:>6.1f}")
    print("\nSNR: |own mean| / std; SNR*: |the exact estimator's mean| / std (the same signal for every row).")


if __name__ == "__main__":
    main()
