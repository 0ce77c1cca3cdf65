"""Learning curves on Snake 6x6: fixed discounts against meta-gradient tuning of gamma and lambda.

Variants, each trained from ``configs/snake6_a2c.toml`` for ``total_steps`` with ``seeds`` seeds:

* ``gamma=0.8`` and ``gamma=0.99``: A2C with a fixed discount;
* ``one-step``, ``multi-step K=4``, ``mixed K=4``: the same A2C with gamma and lambda meta-learned
  online (outer gamma 0.99, lambda 1; Adam meta-optimizer at ``meta_lr`` on the raw values);
* ``... +cond`` (e.g. ``mixed K=4 +cond``): the same, with the agent conditioned on gamma and
  lambda (``meta.condition``, Xu et al. 2018);
* ``... +oc`` (e.g. ``mixed K=4 +oc``, or ``mixed K=4 +cond +oc``): the same, with an outer critic
  giving the outer loss its values (``meta.outer_critic``, Bonnet et al. 2022);
* ``gamma=X`` with any X in [0, 1]: a fixed discount.

``init_gamma`` starts the meta variants' gamma elsewhere than the config's 0.99 (e.g. 0.9, where
the critic of the meta-learned discount and the outer loss's discount differ most).

Every run reuses the outer loss's rollout for the next inner update, so all variants learn from
the same number of env steps. Reported: the final evaluation (20 sampled episodes) mean and std
over seeds, the mean training return over the last 100 episodes, the final gamma and lambda,
and a PNG of the training curves (mean over seeds).

    python scripts/meta_curves.py --seeds 3 --total-steps 300000
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study_jobs import run_scalars

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "snake6_a2c.toml"
VARIANTS = ("gamma=0.8", "gamma=0.99", "one-step", "multi-step K=4", "mixed K=4")
META_VARIANTS = tuple(v for v in VARIANTS if not v.startswith("gamma="))
CONDITIONED = " +cond"  # suffix of a meta variant whose agent is conditioned on its hyperparameters
OUTER_CRITIC = " +oc"  # suffix of a meta variant with an outer critic (after +cond when both)
SUFFIXES = ("", CONDITIONED, OUTER_CRITIC, CONDITIONED + OUTER_CRITIC)
KNOWN_VARIANTS = ("gamma=X",) + tuple(v + suffix for v in META_VARIANTS for suffix in SUFFIXES)


def _fixed_gamma(name: str) -> float | None:
    """X of a ``gamma=X`` variant (None for other names)."""
    if not name.startswith("gamma="):
        return None
    try:
        value = float(name.removeprefix("gamma="))
    except ValueError:
        return None
    return value if 0 <= value <= 1 else None


@dataclass
class MetaCurvesConfig:
    """What to run; the defaults take about half an hour on 2 cores."""

    seeds: int = 3
    total_steps: int = 300_000
    variants: tuple[str, ...] = VARIANTS
    meta_lr: float = 0.02
    init_gamma: float | None = None
    """Initial gamma of the meta variants (default: the config's, 0.99)."""
    outer_critic_cost: float = 0.5
    """``+oc`` variants: weight of the outer critic's value loss (``meta.outer_critic_cost``)."""
    outer_critic_trains_torso: bool = False
    """``+oc`` variants: the outer critic's loss trains the shared torso too (``meta.outer_critic_trains_torso``)."""
    out_dir: str | None = None
    """Keep run directories, the plot and results.json here (default: a temporary directory; the plot
    and JSON are then written to the current directory as meta_curves.*)."""

    def __post_init__(self) -> None:
        self.variants = tuple(self.variants)
        unknown = [v for v in self.variants if v not in KNOWN_VARIANTS and _fixed_gamma(v) is None]
        if unknown or not self.variants:
            raise ValueError(f"variants must be some of {list(KNOWN_VARIANTS)}, got {list(self.variants)}")
        if self.seeds < 1 or self.total_steps < 1:
            raise ValueError(f"seeds and total_steps must be >= 1, got {self.seeds} and {self.total_steps}")
        if not self.meta_lr > 0:
            raise ValueError(f"meta_lr must be > 0, got {self.meta_lr}")
        if not self.outer_critic_cost > 0:
            raise ValueError(f"outer_critic_cost must be > 0, got {self.outer_critic_cost}")
        if self.init_gamma is not None and not 0 < self.init_gamma < 1:
            raise ValueError(f"init_gamma must be in (0, 1), got {self.init_gamma}")


def variant_config(name: str, seed: int, cfg: MetaCurvesConfig, run_dir: Path):
    """The TrainConfig of one variant and seed."""
    from rlmeta.agents.config import HParamsConfig, MetaConfig, TrainConfig, load_config

    base = load_config(CONFIG)
    fields = {**base.__dict__, "seed": seed, "total_steps": cfg.total_steps, "run_dir": str(run_dir),
              "progress": False, "checkpoint_interval": 0, "eval_interval": 0}
    gamma = _fixed_gamma(name)
    if gamma is not None:
        fields["hparams"] = HParamsConfig(**{**base.hparams.__dict__, "gamma": gamma})
        return TrainConfig(**fields)
    outer_critic = name.endswith(OUTER_CRITIC)
    name = name.removesuffix(OUTER_CRITIC)
    condition = name.endswith(CONDITIONED)
    estimator, _, k = name.removesuffix(CONDITIONED).partition(" K=")
    init = {} if cfg.init_gamma is None else {"gamma": cfg.init_gamma}
    fields["meta"] = MetaConfig(learn=("gamma", "lambda"), init=init, estimator=estimator, num_updates=int(k or 1),
                                lr=cfg.meta_lr, condition=condition, outer_critic=outer_critic,
                                outer_critic_cost=cfg.outer_critic_cost,
                                outer_critic_trains_torso=outer_critic and cfg.outer_critic_trains_torso)
    return TrainConfig(**fields)


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    return run_scalars(run_dir, ("episode/return", "hparams/gamma", "hparams/lambda"))


def run(cfg: MetaCurvesConfig) -> dict[str, Any]:
    """Train every variant and seed; print the table; write the plot and results.json."""
    from rlmeta.agents.train import train

    keep = Path(cfg.out_dir) if cfg.out_dir else None
    root = keep or Path(tempfile.mkdtemp(prefix="rlmeta-meta-curves-"))
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in cfg.variants}
    for seed in range(cfg.seeds):
        for name in cfg.variants:
            run_dir = root / f"{name.replace(' ', '_').replace('=', '').replace('+', '')}-s{seed}"
            started = time.perf_counter()
            summary = train(variant_config(name, seed, cfg, run_dir))
            scalars = _scalars(run_dir)
            record = {"seed": seed, "eval_mean": summary["eval"]["return_mean"],
                      "train_last_100": summary["train_return_mean_last_100"],
                      "seconds": time.perf_counter() - started, "curve": scalars["episode/return"],
                      "final_gamma": scalars["hparams/gamma"][-1][1], "final_lambda": scalars["hparams/lambda"][-1][1]}
            results[name].append(record)
            print(f"{name:<21} seed {seed}: eval {record['eval_mean']:.2f}, train(last 100) "
                  f"{record['train_last_100']:.2f}, gamma {record['final_gamma']:.3f}, lambda "
                  f"{record['final_lambda']:.3f}, {record['seconds']:.0f} s", flush=True)
    table = format_table(results)
    print(table)
    out = keep or Path.cwd()
    _plot(results, out / "meta_curves.png")
    (out / "meta_curves.json").write_text(json.dumps(
        {"config": cfg.__dict__ | {"variants": list(cfg.variants)}, "results": results}, indent=1) + "\n")
    return {"results": results, "table": table}


def format_table(results: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown: final evaluation and training return, mean +- std over seeds, final gamma/lambda."""

    def ms(values: list[float]) -> str:
        return f"{statistics.fmean(values):.2f} +- {statistics.pstdev(values):.2f}"

    lines = ["| variant | eval return (20 ep.) | train return (last 100 ep.) | final gamma | final lambda |",
             "|---|---:|---:|---:|---:|"]
    for name, records in results.items():
        lines.append(f"| {name} | {ms([r['eval_mean'] for r in records])} | "
                     f"{ms([r['train_last_100'] for r in records])} | "
                     f"{statistics.fmean(r['final_gamma'] for r in records):.3f} | "
                     f"{statistics.fmean(r['final_lambda'] for r in records):.3f} |")
    return "\n".join(lines)


def _plot(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4))
    if len(results) > 10:  # more lines than the default color cycle has colors
        ax.set_prop_cycle(color=[plt.cm.tab20(i) for i in range(20)])
    for name, records in results.items():
        end = min(r["curve"][-1][0] for r in records if r["curve"])
        grid = np.linspace(0, end, 60)
        curves = [np.interp(grid, [s for s, _ in r["curve"]], [v for _, v in r["curve"]]) for r in records if r["curve"]]
        ax.plot(grid, np.mean(curves, axis=0), label=name)
    ax.set_xlabel("env steps")
    ax.set_ylabel("episode return (fruits)")
    ax.set_title("Snake 6x6, A2C: fixed gamma vs meta-gradient tuning")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    import tyro

    run(tyro.cli(MetaCurvesConfig))
