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

A learned LPO drift (``rlmeta meta-test lpo-cartpole``, or an ``es-train --objective lpo`` run's
``lpo.pt``) is meta-tested the way LPO is judged (:func:`meta_test_lpo`): fresh PPO agents (seeds
``seed, seed + 1, ...``) learn one lifetime of the config the drift was meta-trained in, with the
drift and with PPO's clip (its initialisation) on the same seeds; the score is each one's mean
greedy evaluation return, and the paired difference with its standard error.
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

from rlmeta.agents.build import build_agent
from rlmeta.agents.config import TrainConfig, from_dict, load_config
from rlmeta.agents.learned import PPO_INIT, LearnedLPG, LearnedLPO, load_lpg, load_lpo, shipped_objectives
from rlmeta.agents.lifetime import lifetime as run_lifetime
from rlmeta.agents.lifetime import make_env
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
              a2c_cache: Path | None = None, frozen_progress: float | None = None) -> dict[str, Any]:
    """Score a learned LPG on held-out levels (see the module docstring); returns the results dict.

    The same arguments give the same scores whatever ran before in the process: torch's CPU random
    generator (the agents' action sampling) is seeded with ``seed`` inside and restored after.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _meta_test(objective, levels, num_levels, lifetime, seed, episodes, device, include_a2c, a2c_cache,
                          frozen_progress)


def _meta_test(objective: str, levels: str, num_levels: int, lifetime: int, seed: int, episodes: int, device: str,
               include_a2c: bool, a2c_cache: Path | None, frozen_progress: float | None) -> dict[str, Any]:
    """:func:`meta_test` under its seeded random generator.

    ``frozen_progress``: a TA-LPG reads this n/N at every update instead of the true fraction (log N
    stays true): a counterfactual that shows how much of its score its use of time carries.

    ``a2c_cache``: a JSON file keeping the A2C reference returns by test setup (levels, count, lifetime,
    seed, episodes, hyperparameters), so scoring several objectives on one setup trains A2C once.
    """
    if levels not in GENERATORS:
        raise ValueError(f"unknown levels {levels!r}; known: {sorted(GENERATORS)}")
    for name, value in (("num_levels", num_levels), ("lifetime", lifetime), ("episodes", episodes)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    lpg = load_lpg(objective, seed)
    if frozen_progress is not None and not lpg.network.lifetime_conditioning:
        raise ValueError(f"frozen_progress needs a time-aware LPG (TA-LPG); {lpg.source!r} does not read n/N")
    if frozen_progress is not None and not 0.0 <= frozen_progress <= 1.0:
        raise ValueError(f"frozen_progress must be in [0, 1], got {frozen_progress!r}")
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
                                  on_update=record, frozen_progress=frozen_progress)
    states = num_states(grid, objects)
    j_lpg = evaluate_population(adapter(TabularAgent(states, 5, m), num_levels, 1), lpg_params, test_levels, episodes,
                                seed + 1, grid, objects)
    j_rand = random_returns(test_levels, episodes, seed + 2, grid, objects)
    j_opt = np.array([optimal_return(level) for level in test_levels])
    out: dict[str, Any] = {"objective": lpg.source, "levels": levels, "num_levels": num_levels, "lifetime": lifetime,
                           "seed": seed, "episodes": episodes, "frozen_progress": frozen_progress}
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


def lpo_inner_config(inner: TrainConfig, where: str, steps: int | None = None) -> TrainConfig:
    """One LPO lifetime's training config from a PPO (or LPO) config: algo lpo, no early stop, no run
    directory, one thread, ``steps`` env steps (default: the config's); refused with a reason where a
    lifetime cannot be scored (meta-gradients, async mode, another algorithm)."""
    if inner.meta.enabled or inner.mode != "sync":
        raise ValueError(f"{where}: an LPO lifetime trains in sync mode without meta-gradients (remove meta.learn, "
                         "mode async)")
    if inner.algo not in ("ppo", "lpo"):
        raise ValueError(f"{where} trains {inner.algo!r}; LPO replaces PPO's clip, so the config must be a PPO "
                         "(or LPO) config")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return dataclasses.replace(inner, algo="lpo", objective=None, target_return=None, run_dir=None, resume=False,
                               overwrite=False, torch_threads=1, progress=False, total_steps=steps or inner.total_steps)


def lpo_return(config: TrainConfig, drift: LearnedLPO | None, seed: int) -> float:
    """The greedy evaluation return of a PPO agent after one lifetime of ``config`` (seed ``seed``)
    learning with ``drift`` in place of PPO's clip (None: the config's own algorithm, e.g. ``dpo``);
    deterministic for a seed on one thread."""
    config = dataclasses.replace(config, seed=seed)
    with torch.random.fork_rng(devices=[]):  # the caller's torch generator is left as it was
        torch.manual_seed(config.seed)  # the initial network: drawn from the seed, as in rlmeta train
        probe = make_env(config, config.seed, num_envs=1)
        try:
            spaces = probe.single_observation_space, probe.single_action_space
        finally:
            probe.close()
        agent = build_agent(config, *spaces, config.device, lpo=drift)
        result = run_lifetime(config, agent=agent, evaluate_at_end=True)
    return float(result.evaluation["return_mean"])


def meta_test_lpo(objective: str, num_seeds: int = 32, seed: int = 1000, steps: int | None = None,
                  inner_config: str | None = None, include_ppo: bool = True) -> dict[str, Any]:
    """Score a learned LPO drift (see the module docstring); returns the results dict.

    ``inner_config``: a PPO config (TOML/JSON) to test in (default: the one the drift was meta-trained
    in, kept in its file); ``steps``: env steps per lifetime (default: that config's, the meta-training
    horizon).
    """
    if not isinstance(num_seeds, int) or num_seeds < 1:
        raise ValueError(f"num_seeds must be an integer >= 1, got {num_seeds!r}")
    drift = load_lpo(objective)
    if inner_config is not None:
        base, where = load_config(inner_config, TrainConfig), f"inner config {inner_config!r}"
    elif "inner" in drift.info:
        base, where = from_dict(TrainConfig, drift.info["inner"]), f"{drift.source}'s inner config"
    else:
        raise ValueError(f"{drift.source!r} does not record the config it was meta-trained in: pass --inner-config")
    config = lpo_inner_config(base, where, steps)
    seeds = list(range(seed, seed + num_seeds))
    learned = np.array([lpo_return(config, drift, s) for s in seeds])
    out: dict[str, Any] = {"objective": drift.source, "kind": "lpo", "env": config.env, "steps": config.total_steps,
                           "seed": seed, "num_seeds": num_seeds, "eval_episodes": config.eval_episodes,
                           "lifetime_conditioning": drift.network.lifetime_conditioning,
                           "return": _mean_se(learned), "per_seed": [float(j) for j in learned]}
    if include_ppo:
        ppo = load_lpo(PPO_INIT, clip=config.ppo.clip)  # PPO itself (LPO at its initialisation is PPO-clip)
        baseline = np.array([lpo_return(config, ppo, s) for s in seeds])
        out.update(ppo_return=_mean_se(baseline), ppo_per_seed=[float(j) for j in baseline],
                   difference=_mean_se(learned - baseline))
    return out


def card_check(objective: str, kind: str, args: dict[str, Any]) -> dict[str, float]:
    """A shipped objective's check (its card's ``check``), on one torch thread: ``score`` and ``se``
    (an LPG's normalised score on held-out levels, :func:`meta_test`; an LPO drift's mean greedy
    return, :func:`meta_test_lpo`). ``scripts/ship_objective.py`` and the tests run it in a pinned
    process (``rlmeta.repro.run_pinned``), so it gives the same number on any AVX2 machine."""
    torch.set_num_threads(1)
    if kind == "lpg":
        results = meta_test(objective, **args)
        return {"score": float(results["normalized_score"]), "se": float(results["normalized_score_se"])}
    if kind == "lpo":
        results = meta_test_lpo(objective, **args)
        return {"score": float(results["return"]["mean"]), "se": float(results["return"]["se"])}
    raise ValueError(f"kind must be 'lpg' or 'lpo', got {kind!r}")


def format_lpo_results(results: dict[str, Any]) -> str:
    """The readable report of :func:`meta_test_lpo`; its last line is the paired difference to PPO."""
    r = results["return"]
    lines = [f"objective: {results['objective']} (LPO drift{', TA-LPO' if results['lifetime_conditioning'] else ''})",
             f"{results['num_seeds']} fresh PPO agents (seeds {results['seed']}..{results['seed'] + results['num_seeds'] - 1}) "
             f"on {results['env']}, {results['steps']} env steps each, {results['eval_episodes']} greedy evaluation episodes",
             f"return with the learned drift: {r['mean']:.2f} +- {r['se']:.2f}"]
    if "ppo_return" in results:
        p, d = results["ppo_return"], results["difference"]
        lines += [f"return with PPO's clip: {p['mean']:.2f} +- {p['se']:.2f}",
                  f"learned - PPO (paired over seeds): {d['mean']:+.2f} +- {d['se']:.2f}"]
    return "\n".join(lines)


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
             f"lifetime {results['lifetime']} updates, {results['episodes']} evaluation episodes each"
             + (f", n/N frozen at {results['frozen_progress']:g}" if results.get("frozen_progress") is not None else ""),
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


__all__ = ["LearnedLPG", "card_check", "format_lpo_results", "format_results", "load_lpg", "lpo_inner_config", "lpo_return",
           "meta_test", "meta_test_lpo", "shipped_objectives", "spearman", "write_results"]
