"""The variance study: how noisy is each meta-gradient estimator, and how biased, along a run?

From checkpoints of a training run (early, midway and late by default), for every estimator and
every K, draw ``samples`` independent meta-gradients, each from the checkpoint's parameters and
optimizer state with fresh rollouts (the env keeps stepping, so no two samples share data).
A reference meta-gradient per checkpoint is the mean of ``reference_samples`` multi-step
estimates with the longest horizon (``reference_k``). Reported per (checkpoint, estimator, K):

* ``variance``: the trace of the samples' covariance, and per hyperparameter;
* ``cosine_samples``: mean cosine similarity of single samples to the reference, and its
  standard error ``cosine_samples_se`` over the samples;
* ``cosine_mean``: cosine similarity of the samples' mean to the reference;
* ``snr``: squared norm of the mean over the trace of the covariance of a single sample, with its
  95% bootstrap interval ``snr_low``..``snr_high`` (the figure of merit for an Adam meta-optimizer,
  which normalises the step: raw variance alone mostly measures scale);
* ``reference_snr``: the same for the reference itself (squared norm of its mean over the trace
  of the covariance of that mean, less the 1 that noise alone gives): below 4 its direction is
  uncertain by more than about 30 degrees, and cosines to it cannot rank the estimators.

Meta-gradients are on the raw, unbounded scale of the meta-parameters (the logit of gamma and
lambda). Where a cell has both, the mixed row also carries mixed/multi-step ratios of SNR and of variance
with 95% bootstrap intervals, and the summary calls each comparison only when its interval lies on
one side (otherwise "unresolved"). Outputs in ``out_dir``: ``variance.csv`` (one row per checkpoint, estimator and K),
``samples.npz`` (every sample, keyed ``<checkpoint>/<estimator>/K<k>`` and ``<checkpoint>/reference``), PNG plots,
TensorBoard scalars and ``summary.md``, which checks the claims of Bonnet et al. (2021):
multi-step variance grows with K, and at K = 4 or 8 the mixed estimator's variance is at most a
third of multi-step's with a cosine to the reference at least as high.

    rlmeta variance --run-dir runs/snake6 --out-dir runs/snake6/variance
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from rlmeta import envs
from rlmeta.agents.actor import Actor
from rlmeta.agents.build import build_agent, build_estimator, build_meta_params, build_optimizer, outer_correction
from rlmeta.agents.config import TrainConfig, VarianceConfig, load_config
from rlmeta.agents.runs import set_threads, to_device
from rlmeta.hparams import MetaParams
from rlmeta.learner import UpdateMode, update

def pick_checkpoints(run_dir: Path) -> list[Path]:
    """The first, middle and last periodic checkpoints of a run (fewer if it has fewer)."""
    found = sorted((run_dir / "checkpoints").glob("ckpt-*.pt"))
    if not found:
        raise ValueError(f"{str(run_dir)!r} has no checkpoints/ckpt-*.pt; train with --checkpoint-interval")
    picks = [found[0], found[len(found) // 2], found[-1]]
    return list(dict.fromkeys(picks))


REFERENCE_SNR_FLOOR = 4.0  # below it, cosines to the reference cannot rank the estimators


def reference_snr(samples: torch.Tensor) -> float:
    """SNR of the mean of ``samples`` [R, H]: ``|mu|^2 / (trace(cov) / R)``, estimated without bias.

    The squared norm of a mean of R noisy samples overestimates ``|mu|^2`` by ``trace(cov) / R``
    on average, so ``R |mean|^2 / trace(cov)`` is about 1 for pure noise; that 1 is subtracted.
    """
    total = float(samples.var(0, unbiased=True).sum())
    mean = samples.mean(0)
    return float(mean @ mean) * len(samples) / total - 1.0 if total > 0 else math.inf


def snr_interval(samples: torch.Tensor, draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval (percentiles, resampling the samples) of the SNR ``|mean|^2 / tr(cov)``."""
    generator = torch.Generator().manual_seed(seed)
    n = samples.shape[0]
    index = torch.randint(0, n, (draws, n), generator=generator)
    resampled = samples[index]  # [draws, N, H]
    mean = resampled.mean(1)
    total = resampled.var(1, unbiased=True).sum(-1)
    snr = (mean * mean).sum(-1) / total.clamp_min(1e-300)
    low, high = torch.quantile(snr, torch.tensor([0.025, 0.975], dtype=snr.dtype))
    return float(low), float(high)


def _snr_and_trace(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SNR and covariance trace of ``[..., N, H]`` sample sets."""
    mean = samples.mean(-2)
    total = samples.var(-2, unbiased=True).sum(-1)
    return (mean * mean).sum(-1) / total.clamp_min(1e-300), total


def ratio_intervals(a: torch.Tensor, b: torch.Tensor, draws: int = 2000, seed: int = 0) -> dict[str, float]:
    """``a`` against ``b`` (sample sets ``[N, H]``, e.g. mixed and multi-step): the SNR ratio and the variance
    (trace) ratio, each with a 95% bootstrap interval (both sets resampled independently)."""
    generator = torch.Generator().manual_seed(seed)
    ia = torch.randint(0, a.shape[0], (draws, a.shape[0]), generator=generator)
    ib = torch.randint(0, b.shape[0], (draws, b.shape[0]), generator=generator)
    snr_a, var_a = _snr_and_trace(a[ia])
    snr_b, var_b = _snr_and_trace(b[ib])
    out: dict[str, float] = {}
    for name, ratios, point in (("snr_ratio", snr_a / snr_b, _snr_and_trace(a)[0] / _snr_and_trace(b)[0]),
                                ("variance_ratio", var_a / var_b, _snr_and_trace(a)[1] / _snr_and_trace(b)[1])):
        low, high = torch.quantile(ratios, torch.tensor([0.025, 0.975], dtype=ratios.dtype))
        out.update({name: float(point), f"{name}_low": float(low), f"{name}_high": float(high)})
    return out


def interval_verdict(low: float, high: float, threshold: float, above: str, below: str) -> str:
    """``above``/``below`` when the whole 95% interval is on one side of ``threshold``, else unresolved."""
    if low > threshold:
        return above
    if high < threshold:
        return below
    return "unresolved"


def statistics_of(samples: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Variance, cosines and SNR (with its 95% bootstrap interval) of ``samples`` [N, H] against ``reference`` [H]."""
    mean = samples.mean(0)
    var = samples.var(0, unbiased=True)
    total = float(var.sum())

    def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
        denominator = float(a.norm() * b.norm())
        return float(a @ b) / denominator if denominator > 0 else math.nan

    cosines = torch.tensor([cosine(s, reference) for s in samples], dtype=torch.float64)
    return {
        "variance": total,
        "cosine_samples": float(cosines.mean()),
        "cosine_samples_se": float(cosines.std(unbiased=True) / math.sqrt(len(cosines))),
        "cosine_mean": cosine(mean, reference),
        "snr": float(mean @ mean) / total if total > 0 else math.inf,
        **dict(zip(("snr_low", "snr_high"), snr_interval(samples))),
        "mean_norm": float(mean.norm()),
        **{f"variance_{i}": float(v) for i, v in enumerate(var)},
    }


class Sampler:
    """Draws meta-gradients at one checkpoint: fixed agent state, fresh rollouts per sample."""

    def __init__(self, config: TrainConfig, checkpoint: Path, learn: tuple[str, ...], seed: int, device: str):
        self.config = config
        env = envs.make(config.env, num_envs=config.num_envs, seed=seed, **config.env_options)
        # The run's own agent, from the training builder; its optimizer differentiable as meta-gradients need.
        agent = build_agent(config, env.single_observation_space, env.single_action_space, device)
        self.net, self.policy_value = agent.net, agent.outer_policy_value  # the outer loss's adapter
        self.actor = Actor(env, self.net, config.num_steps, device, config.reward_scale)
        objective, optimizer = agent.objective, build_optimizer(config.optimizer, differentiable=True)
        ckpt = torch.load(checkpoint, map_location=device, weights_only=True)
        self.step = int(ckpt["step"])
        self.params = {k: v.to(device) for k, v in ckpt["params"].items()}
        self.opt_state = to_device(ckpt["opt_state"], torch.device(device))
        base = {**config.hparams.as_dict(), "lr": config.optimizer.lr}
        if ckpt.get("meta"):  # the run meta-learned: study it at its current values
            raw_values = build_meta_params(config)
            raw_values.load_state_dict({"raw": ckpt["meta"]["params"]})
            base.update({k: float(v.detach()) for k, v in raw_values.values().items()})
        self.learn = {name: base[name] for name in learn}
        # The rest at the run's values: its meta-learned ones where it learned them.
        self.fixed = {k: base[k] for k in config.hparams.as_dict() if k not in self.learn}
        condition = config.meta.condition
        self.make_meta = lambda: MetaParams(self.learn, fixed=self.fixed, device=device, condition=condition)
        at_checkpoint = self.make_meta()
        # A conditioned agent: the outer loss's reference input (fixed: the values stay at the checkpoint's).
        self.conditioning = (lambda: at_checkpoint.reference_vector(config.meta.reference())) if condition else None
        generator = torch.Generator().manual_seed(seed)

        def inner_update(params, opt_state, rollout, hparams, mode: UpdateMode):
            new, state, _ = update(objective, optimizer, params, opt_state, rollout, hparams,
                                   progress=0.0, mode=mode, generator=generator)
            return new, state

        self.inner_update = inner_update
        self.generator = generator
        self.acting = {k: v.detach() if torch.is_tensor(v) else v for k, v in at_checkpoint.hparams().items()}

    def sample(self, estimator: Any) -> torch.Tensor:
        """One meta-gradient [H] (in the order of ``learn``) from fresh rollouts."""
        params = {k: v.detach().clone().requires_grad_(True) for k, v in self.params.items()}
        result = estimator.estimate(self.make_meta(), params, self.opt_state,
                                    lambda p: self.actor.collect(p, self.acting))
        return result.vector().double()

    def close(self) -> None:
        """Close the env."""
        self.actor.env.close()


def resolve_checkpoint(run_dir: Path, name: str) -> Path:
    """A checkpoint given as a path, or by its bare name in the run's ``checkpoints/`` (as the CSV lists them)."""
    path = Path(name)
    if not path.is_file() and (run_dir / "checkpoints" / name).is_file():
        return run_dir / "checkpoints" / name
    if not path.is_file():
        raise ValueError(f"checkpoint {name!r} is neither a file nor in {str(run_dir / 'checkpoints')!r}")
    return path


def study_names(config: TrainConfig, asked: tuple[str, ...]) -> tuple[str, ...]:
    """The meta-parameters to study: ``asked``, else the run's own ``meta.learn``, else gamma and lambda.

    A run whose network is conditioned on its meta-learned values can only be studied in those
    (the network's input is them); asking for others is refused with the reason.
    """
    if not asked:
        return tuple(config.meta.learn) or ("gamma", "lambda")
    if config.meta.condition and set(asked) != set(config.meta.learn):
        raise ValueError(f"the run's network is conditioned on {list(config.meta.learn)} (its input is their "
                         f"values), so its meta-gradients can only be studied in those, not {list(asked)}")
    return tuple(asked)


def run(cfg: VarianceConfig) -> dict[str, Any]:
    """Sample, write variance.csv, plots, TensorBoard scalars and summary.md; return the rows."""
    set_threads(cfg.torch_threads)
    run_dir = Path(cfg.run_dir)
    config = load_config(run_dir / "config.json")
    out = Path(cfg.out_dir) if cfg.out_dir else run_dir / "variance"
    progress_path = out / "progress.pt"
    if cfg.resume and cfg.overwrite:
        raise ValueError("resume and overwrite exclude each other: resume keeps the finished cells")
    if cfg.resume and not progress_path.is_file():
        raise ValueError(f"nothing to resume: {str(progress_path)!r} does not exist")
    if out.exists() and any(out.iterdir()) and not (cfg.overwrite or cfg.resume):
        raise ValueError(f"{str(out)!r} already has results; pass --overwrite, --resume or another --out-dir")
    checkpoints = [resolve_checkpoint(run_dir, p) for p in cfg.checkpoints] or pick_checkpoints(run_dir)
    for path in checkpoints:
        if not path.is_file():
            raise ValueError(f"checkpoint {str(path)!r} does not exist")
    learn = study_names(config, cfg.learn)
    reference_k = cfg.reference_k or 2 * max(cfg.ks)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    rows: list[dict[str, Any]] = []
    raw: dict[str, torch.Tensor] = {}  # every sample, for re-analysis (samples.npz)
    settings = {**asdict(cfg), "learn": list(learn), "reference_k": reference_k,
                "checkpoints": [str(p) for p in checkpoints]}
    for key in ("overwrite", "resume", "out_dir", "device", "torch_threads"):
        settings.pop(key, None)
    if cfg.resume:
        saved = torch.load(progress_path, weights_only=False)
        if saved["settings"] != settings:
            changed = sorted(k for k in settings if saved["settings"].get(k) != settings[k])
            raise ValueError(f"--resume with other settings than the interrupted study: {changed}")
        rows, raw = saved["rows"], saved["raw"]
        print(f"resuming: {len(rows)} finished cells kept", flush=True)

    def save_progress() -> None:  # after every cell: an interruption loses at most the cell in progress
        tmp = progress_path.with_suffix(".tmp")
        torch.save({"settings": settings, "rows": rows, "raw": raw}, tmp)
        os.replace(tmp, progress_path)

    cells = len(checkpoints) * len(cfg.targets) * sum(1 for name in cfg.estimators for k in cfg.ks
                                                      if not (name == "one-step" and k != 1))
    done = 0
    skipped = len(rows)  # cells finished before an interruption (not timed here)
    started = time.perf_counter()
    for index, path in enumerate(checkpoints):
        sampler = Sampler(config, path, learn, cfg.seed + 1000 * index, cfg.device)
        try:
            reference_estimator = build_estimator(config.meta, sampler.inner_update, sampler.policy_value,
                                                  "multi-step", reference_k, vtrace=outer_correction(config),
                                                  conditioning=sampler.conditioning, generator=sampler.generator)
            if f"{path.stem}/reference" not in raw:
                raw[f"{path.stem}/reference"] = torch.stack([sampler.sample(reference_estimator)
                                                             for _ in range(cfg.reference_samples)])
                save_progress()
            reference_draws = raw[f"{path.stem}/reference"]
            reference, ref_snr = reference_draws.mean(0), reference_snr(reference_draws)
            print(f"{path.name} step {sampler.step:>9,} reference (K={reference_k} x {cfg.reference_samples}): "
                  f"SNR of its mean {ref_snr:.2f}", flush=True)
            for targets in cfg.targets:
                for name in cfg.estimators:
                    for k in cfg.ks:
                        if name == "one-step" and k != 1:
                            continue
                        if f"{path.stem}/{name}/K{k}/{targets}" in raw:  # finished before an interruption
                            done += 1
                            continue
                        estimator = build_estimator(config.meta, sampler.inner_update, sampler.policy_value, name, k,
                                                    vtrace=outer_correction(config), conditioning=sampler.conditioning,
                                                    generator=sampler.generator, exact=targets == "exact")
                        samples = torch.stack([sampler.sample(estimator) for _ in range(cfg.samples)])
                        raw[f"{path.stem}/{name}/K{k}/{targets}"] = samples
                        stats = statistics_of(samples, reference)
                        row = {"checkpoint": path.name, "step": sampler.step, "estimator": name, "k": k,
                               "targets": targets, **stats, "reference_snr": ref_snr}
                        for i, hp in enumerate(learn):
                            row[f"variance_{hp}"] = row.pop(f"variance_{i}")
                        rows.append(row)
                        save_progress()
                        done += 1
                        elapsed = time.perf_counter() - started
                        print(f"{path.name} step {sampler.step:>9,} {name:<12} K={k:<2} {targets:<5} variance "
                              f"{stats['variance']:.3e} cos(samples, ref) {stats['cosine_samples']:+.3f} cos(mean, ref) "
                              f"{stats['cosine_mean']:+.3f} snr {stats['snr']:.3f} [{stats['snr_low']:.3f}, "
                              f"{stats['snr_high']:.3f}]  ({done}/{cells}, ETA {elapsed / (done - skipped) * (cells - done):.0f} s)",
                              flush=True)
        finally:
            sampler.close()
    for row in rows:  # mixed against multi-step in the same cell: ratios with intervals
        if row["estimator"] == "mixed":
            key = f"{Path(row['checkpoint']).stem}/%s/K{row['k']}/{row['targets']}"
            if key % "multi-step" in raw:
                row.update(ratio_intervals(raw[key % "mixed"], raw[key % "multi-step"]))
    _write_csv(rows, out / "variance.csv")
    np.savez_compressed(out / "samples.npz", **{key: value.numpy() for key, value in raw.items()})
    _write_tensorboard(rows, out)
    _plot(rows, out)
    summary = summarize(rows, cfg, learn, reference_k, time.perf_counter() - started)
    (out / "summary.md").write_text(summary)
    (out / "config.json").write_text(json.dumps({**asdict(cfg), "learn": list(learn), "reference_k": reference_k},
                                                indent=2) + "\n")
    print(summary)
    return {"rows": rows, "summary": summary, "out_dir": str(out)}


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    fields = list(dict.fromkeys(key for row in rows for key in row))  # mixed rows carry the ratio columns too
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)


def _write_tensorboard(rows: list[dict[str, Any]], out: Path) -> None:
    with SummaryWriter(str(out / "tb")) as writer:
        for row in rows:
            for key in ("variance", "cosine_samples", "cosine_mean", "snr"):
                writer.add_scalar(f"{row['estimator']}-{row['targets']}/{key}/step{row['step']}", row[key], row["k"])


def _plot(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib  # deferred: slow to import, and only the plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred with matplotlib

    steps = sorted({r["step"] for r in rows})
    for key, label, log in (("variance", "trace of covariance", True), ("cosine_mean", "cosine(mean, reference)", False)):
        fig, axes = plt.subplots(1, len(steps), figsize=(4.5 * len(steps), 3.5), squeeze=False)
        for ax, step in zip(axes[0], steps):
            for name, targets in sorted({(r["estimator"], r["targets"]) for r in rows}):
                pts = sorted((r["k"], r[key]) for r in rows
                             if r["step"] == step and r["estimator"] == name and r["targets"] == targets)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{name} ({targets})")
            ax.set_xscale("log", base=2)
            if log:
                ax.set_yscale("log")
            ax.set_title(f"checkpoint at {step:,} steps")
            ax.set_xlabel("K (inner updates)")
            ax.set_ylabel(label)
            ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"{key}.png", dpi=100)
        plt.close(fig)


def _verdict(mixed: dict[str, Any], multi: dict[str, Any]) -> str:
    """The second claim in one cell: variance ratio <= 1/3, and a cosine to the reference not lower.

    "Not lower" allows for noise: the mixed estimator's mean per-sample cosine may fall short of
    multi-step's by at most two standard errors of the difference. When the reference itself is
    too noisy (SNR of its mean below ``REFERENCE_SNR_FLOOR``), the cosine part is left unresolved.
    """
    ratio = mixed["variance"] / multi["variance"] if multi["variance"] else math.nan
    gap = mixed["cosine_samples"] - multi["cosine_samples"]
    se = math.hypot(mixed["cosine_samples_se"], multi["cosine_samples_se"])
    text = (f"mixed/multi-step variance = {ratio:.2f} (claim: <= 0.33): **{'yes' if ratio <= 1 / 3 else 'no'}**; "
            f"cos(sample, ref) mixed {mixed['cosine_samples']:+.3f} vs multi-step {multi['cosine_samples']:+.3f} "
            f"(difference {gap:+.3f} +- {se:.3f}; reference SNR {mixed['reference_snr']:.1f}): ")
    if mixed["reference_snr"] < REFERENCE_SNR_FLOOR:
        return text + f"cosine **not resolved** (reference SNR below {REFERENCE_SNR_FLOOR:g})."
    not_lower = gap >= -2 * se
    verdict = "holds" if ratio <= 1 / 3 and not_lower else "does not hold"
    return text + f"cosine {'not lower' if not_lower else 'lower'}; claim **{verdict}**."


def summarize(rows: list[dict[str, Any]], cfg: VarianceConfig, learn: tuple[str, ...], reference_k: int,
              seconds: float) -> str:
    """Markdown: the table and the paper's two claims checked against these numbers."""
    lines = [f"# Meta-gradient variance study: {cfg.run_dir}", "",
             f"Meta-parameters: {', '.join(learn)}, as raw (unbounded, pre-transform: logit of gamma and lambda, "
             f"log of weights) values. {cfg.samples} samples per cell; reference = mean of "
             f"{cfg.reference_samples} multi-step estimates with K={reference_k}. {seconds:.0f} s. "
             "Every sample is in samples.npz. With an Adam meta-optimizer the SNR (|mean|^2 / trace of a "
             "sample's covariance) is the figure of merit, not the raw variance.", "",
             "| step | estimator | K | targets | variance | cos(sample, ref) +- s.e. | cos(mean, ref) | SNR [95% CI] | "
             "reference SNR |",
             "|---:|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['step']:,} | {r['estimator']} | {r['k']} | {r['targets']} | {r['variance']:.3e} | "
                     f"{r['cosine_samples']:+.3f} +- {r['cosine_samples_se']:.3f} | {r['cosine_mean']:+.3f} | "
                     f"{r['snr']:.3f} [{r['snr_low']:.3f}, {r['snr_high']:.3f}] | {r['reference_snr']:.2f} |")
    lines += ["", "## The paper's claims (Bonnet et al. 2021) against these measurements", ""]
    by = {(r["step"], r["estimator"], r["k"], r["targets"]): r for r in rows}
    steps = sorted({r["step"] for r in rows})
    ks = sorted(set(cfg.ks))
    for targets in cfg.targets:
        if "multi-step" in cfg.estimators and len(ks) > 1:
            for step in steps:
                var = [by[(step, "multi-step", k, targets)]["variance"] for k in ks
                       if (step, "multi-step", k, targets) in by]
                grows = all(b >= a for a, b in zip(var, var[1:]))
                lines.append(f"- Multi-step ({targets}) variance grows with K at step {step:,}: "
                             f"**{'yes' if grows else 'no'}** ({', '.join(f'K={k}: {v:.2e}' for k, v in zip(ks, var))}).")
        if {"multi-step", "mixed"} <= set(cfg.estimators):
            for step in steps:
                for k in (4, 8):
                    if (step, "mixed", k, targets) in by and (step, "multi-step", k, targets) in by:
                        mixed, multi = by[(step, "mixed", k, targets)], by[(step, "multi-step", k, targets)]
                        lines.append(f"- Step {step:,}, K={k} ({targets}): " + _verdict(mixed, multi))
                        if "snr_ratio" in mixed:
                            snr = interval_verdict(mixed["snr_ratio_low"], mixed["snr_ratio_high"], 1.0,
                                                   "**higher**", "**lower**")
                            var = interval_verdict(mixed["variance_ratio_low"], mixed["variance_ratio_high"], 1 / 3,
                                                   "**above 1/3**", "**below 1/3**")
                            lines.append(f"  - SNR mixed / multi-step = {mixed['snr_ratio']:.2f} "
                                         f"[{mixed['snr_ratio_low']:.2f}, {mixed['snr_ratio_high']:.2f}]: mixed's SNR is "
                                         f"{snr}; variance ratio {mixed['variance_ratio']:.2f} "
                                         f"[{mixed['variance_ratio_low']:.2f}, {mixed['variance_ratio_high']:.2f}]: {var}.")
    return "\n".join(lines) + "\n"
