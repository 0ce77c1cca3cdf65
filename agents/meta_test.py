"""Meta-testing a learned objective: ``rlmeta meta-test PATH --levels small --num-levels 128 --lifetime 250``.

Fresh tabular agents learn with the objective on held-out levels for one lifetime; the score of a
level set is GROOVE's normalised return

    s = (J - J_random) / (J_A2C - J_random)

with ``J`` the mean return of the agents after their lifetime (first episodes, actions sampled
from the policy), ``J_A2C`` the same for A2C agents with groove's tabular hyperparameters and the
same lifetime, and ``J_random`` the uniform random policy's, each averaged over the level set
(a ratio of means: a level where A2C barely beats random cannot blow it up). Its standard error
comes from a bootstrap over levels. Beside it: the per-level normalised return against each
level's optimum by dynamic programming, ``(J - J_random) / (J* - J_random)``, for the
objective and for A2C. Held-out levels are ``sample_levels(levels, num_levels, seed)``; training
draws its levels one at a time from other seeds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlmeta.agents.learned import LearnedLPG, load_lpg, shipped_objectives
from rlmeta.agents.networks import TabularAgent
from rlmeta.agents.population import (
    TabularHypers, a2c_objective, adapter, evaluate_population, num_states, random_returns, train_population,
)
from rlmeta.agents.runs import atomic_json
from rlmeta.envs.levels import GENERATORS, optimal_return, sample_levels

def bootstrap_ratio_se(numerator: np.ndarray, denominator: np.ndarray, samples: int = 2000, seed: int = 0) -> float:
    """Standard error of ``mean(numerator) / mean(denominator)`` by resampling levels."""
    rng = np.random.default_rng(seed)
    n = len(numerator)
    idx = rng.integers(0, n, size=(samples, n))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = numerator[idx].mean(1) / denominator[idx].mean(1)
    ratios = ratios[np.isfinite(ratios)]
    return float(ratios.std(ddof=1)) if len(ratios) > 1 else math.nan


def meta_test(objective: str, levels: str = "small", num_levels: int = 128, lifetime: int = 250, seed: int = 1000,
              episodes: int = 16, device: str = "cpu", include_a2c: bool = True,
              a2c_cache: Path | None = None) -> dict[str, Any]:
    """Score a learned LPG on held-out levels (see the module docstring); returns the results dict.

    ``a2c_cache``: a JSON file keeping the A2C reference returns by test setup (levels, count, lifetime,
    seed, episodes, hyperparameters), so scoring several objectives on one setup trains A2C once.
    """
    if levels not in GENERATORS:
        raise ValueError(f"unknown levels {levels!r}; known: {sorted(GENERATORS)}")
    for name, value in (("num_levels", num_levels), ("lifetime", lifetime), ("episodes", episodes)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    lpg = load_lpg(objective, seed)
    test_levels = sample_levels(levels, num_levels, seed)
    grid, objects, _ = GENERATORS[levels].bounds()
    hypers = lpg.hypers
    hparams = {"gamma": hypers.gamma}
    m = lpg.network.target_width
    schedule: dict[str, list[float]] = {"progress": [], "pi_hat_rms": [], "entropy": []}

    def record(step: int, metrics: dict[str, float]) -> None:  # what LPG does over the lifetime
        schedule["progress"].append(step / lifetime)
        schedule["pi_hat_rms"].append(math.sqrt(metrics["pi_hat_l2"]))
        schedule["entropy"].append(metrics["entropy"])

    lpg_params = train_population(lambda pv: lpg.objective(pv, lifetime), test_levels, lifetime, hypers, hparams, m,
                                  seed, grid, objects, device, progress_inputs=lpg.network.lifetime_conditioning,
                                  on_update=record)
    states = num_states(grid, objects)
    j_lpg = evaluate_population(adapter(TabularAgent(states, 5, m), num_levels, 1), lpg_params, test_levels, episodes,
                                seed + 1, grid, objects)
    j_rand = random_returns(test_levels, episodes, seed + 2, grid, objects)
    j_opt = np.array([optimal_return(level) for level in test_levels])
    out: dict[str, Any] = {"objective": lpg.source, "levels": levels, "num_levels": num_levels, "lifetime": lifetime,
                           "seed": seed, "episodes": episodes}
    if include_a2c:
        key = json.dumps({"levels": levels, "num_levels": num_levels, "lifetime": lifetime, "seed": seed,
                          "episodes": episodes, "hypers": dataclasses.asdict(hypers)}, sort_keys=True)
        cache = json.loads(a2c_cache.read_text()) if a2c_cache is not None and a2c_cache.is_file() else {}
        if key in cache:
            j_a2c = np.array(cache[key])
        else:
            a2c_params = train_population(a2c_objective, test_levels, lifetime, hypers, hypers.a2c_hparams(), 0, seed,
                                          grid, objects, device)
            j_a2c = evaluate_population(adapter(TabularAgent(states, 5, 0), num_levels, 1), a2c_params, test_levels,
                                        episodes, seed + 3, grid, objects)
            if a2c_cache is not None:  # re-read: another process may have added a setup meanwhile
                cache = json.loads(a2c_cache.read_text()) if a2c_cache.is_file() else {}
                cache[key] = [float(j) for j in j_a2c]
                atomic_json(cache, a2c_cache)
        score = float((j_lpg - j_rand).mean() / (j_a2c - j_rand).mean())
        out.update(normalized_score=score, normalized_score_se=bootstrap_ratio_se(j_lpg - j_rand, j_a2c - j_rand),
                   a2c_return=float(j_a2c.mean()))
    span = j_opt - j_rand
    ok = np.abs(span) > 1e-6
    of_optimum = (j_lpg - j_rand)[ok] / span[ok]
    out.update(
        return_mean=float(j_lpg.mean()), random_return=float(j_rand.mean()), optimal_return=float(j_opt.mean()),
        of_optimum=_mean_se(of_optimum),
        per_level=[{"level": lvl.name, "return": float(j), "random": float(r), "optimal": float(o),
                    **({"a2c": float(a)} if include_a2c else {})}
                   for lvl, j, r, o, a in zip(test_levels, j_lpg, j_rand, j_opt,
                                              j_a2c if include_a2c else j_lpg)],
    )
    if include_a2c:
        out["a2c_of_optimum"] = _mean_se((j_a2c - j_rand)[ok] / span[ok])
    out["schedule"] = schedule
    if lifetime >= 3:
        out["spearman_progress"] = {name: spearman(schedule["progress"], schedule[name])
                                    for name in ("pi_hat_rms", "entropy")}
    return out


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation of ``x`` and ``y`` (average ranks for ties); 0 where one is constant."""
    rx, ry = _ranks(np.asarray(x, dtype=np.float64)), _ranks(np.asarray(y, dtype=np.float64))
    if rx.std() == 0 or ry.std() == 0:
        return 0.0
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=np.float64)
    for value in np.unique(values):  # ties share their mean rank
        tied = values == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def _mean_se(values: np.ndarray) -> dict[str, float]:
    values = [float(v) for v in values]
    mean = statistics.fmean(values) if values else math.nan
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return {"mean": mean, "se": se, "n": len(values)}


def format_results(results: dict[str, Any]) -> str:
    """The readable report; its last line is ``normalized score: X +- Y``."""
    lines = [f"objective: {results['objective']}",
             f"levels: {results['num_levels']} held-out '{results['levels']}' levels (seed {results['seed']}), "
             f"lifetime {results['lifetime']} updates, {results['episodes']} evaluation episodes each",
             f"mean return: learned objective {results['return_mean']:.3f}, "
             + (f"A2C {results['a2c_return']:.3f}, " if "a2c_return" in results else "")
             + f"random {results['random_return']:.3f}, optimal (DP) {results['optimal_return']:.3f}",
             f"of the optimum ((J - J_random) / (J* - J_random)): learned objective {results['of_optimum']['mean']:.3f} "
             f"+- {results['of_optimum']['se']:.3f}"
             + (f", A2C {results['a2c_of_optimum']['mean']:.3f} +- {results['a2c_of_optimum']['se']:.3f}"
                if "a2c_of_optimum" in results else "")]
    if "spearman_progress" in results:
        rho = results["spearman_progress"]
        lines.append(f"over the lifetime, Spearman's rho of n/N with LPG's RMS pi_hat {rho['pi_hat_rms']:+.2f}, "
                     f"with the policy's entropy {rho['entropy']:+.2f}")
    if "normalized_score" in results:
        lines.append(f"normalized score: {results['normalized_score']:.3f} +- {results['normalized_score_se']:.3f}")
    return "\n".join(lines)


def write_results(results: dict[str, Any], path: Path, overwrite: bool) -> None:
    """``meta_test.json`` (refuses to replace an existing file unless ``overwrite``)."""
    if path.exists() and not overwrite:
        raise ValueError(f"{str(path)!r} already exists; pass --overwrite or another --out")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_json(results, path)


__all__ = ["LearnedLPG", "format_results", "load_lpg", "meta_test", "shipped_objectives", "spearman", "write_results"]
