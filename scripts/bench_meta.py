"""Meta-gradient benchmark: the cost of one-step meta-gradients in training, ours vs TorchOpt and
``higher`` on the same meta-update, and the peak memory of K-step unrolls.

Run with ``python scripts/bench_meta.py`` (``.venv/bin/python scripts/bench_meta.py --parts a b c``).
Everything runs in one process (part c in fresh child processes), on one machine, with the same
number of torch threads (``--threads``, default 1: steadier on a shared machine).

**(a) Training: one-step meta-gradient A2C vs plain A2C.** Two :class:`agents.train.Trainer` runs
on ``env`` (default ``snake-6x6``) with the same A2C setup (``num_envs`` x ``num_steps`` per
rollout, CNN ``conv_channels`` + MLP ``hidden``, ``activation``; Adam 1e-3 clipped at 0.5, gamma
0.99, lambda 0.95, entropy 0.01, as ``configs/snake6_a2c.toml``): plain, and with
``--meta.learn gamma lambda --meta.estimator one-step`` (outer gamma 0.99, lambda 1, Adam
meta-optimizer). Each run does ``warmup + iterations`` iterations of ``Trainer.run``; an iteration
is plain: one rollout + one update; meta: the estimator's ``estimate`` (one differentiable inner
update, the outer loss on a fresh rollout; that rollout is the next iteration's inner one, as Xu et
al. 2018 reuse it, so each iteration collects one rollout after the first) + the meta-optimizer's
step. Both include what the loop does around them (logging). The end of each iteration is marked
where the loop publishes the new parameters; the time per iteration is the median over the
``iterations`` after the first ``warmup`` ones. The runs alternate plain/meta for ``rounds`` rounds
(fresh trainers each) and their iterations are pooled. Reported: meta / plain per iteration (= per
inner update = per env step; the headline, goal <= ``max_overhead``), the floor (a plain iteration
plus the backward pass of the outer loss, which a one-step meta-iteration needs on top of the
plain one whatever computes its second-order term; its forward pass is shared with the next inner
update; timed alone on fixed data), the exact floor (plus one tangent pass of the network on the
inner batch, reusing a forward's activations: the Jacobian-vector product any exact method needs),
and the time spent collecting rollouts vs learning. Part (a) runs again at the Snake reference
batch, 512 envs x 5 steps (goal <= ``reference_max_overhead``), unless ``--no-reference-batch``.

**(b) Ours vs TorchOpt vs higher on one meta-update.** Fixed data: ``K + 1`` rollouts collected
once from ``env`` with the initial network, then ``optimizer_warmup`` plain RMSProp steps (with
``torch.optim.RMSprop``) so the second moments are not zero (from zero, RMSProp's first step is
~ sign(g) and the meta-gradient nearly vanishes), plus ``nu_floor`` (1e-8) on every second moment:
sparse grid inputs and dead ReLUs leave exact zeros there, where the derivative of sqrt(nu) is
infinite, and TorchOpt's MetaRMSProp (no eps_root) then returns NaN meta-gradients while higher
masks those entries; ours has ``eps_root``. From those parameters and second moments, each
contender computes d outer / d (raw gamma, raw lambda) through K differentiable RMSProp updates
(``lr``, ``rmsprop_decay``, ``rmsprop_eps``, no clipping) of the A2C loss (learned gamma and
lambda, value cost 0.5, entropy 0.01) on rollouts 0..K-1, with the outer loss (A2C, reference
gamma 0.99, lambda 1, policy term only) on rollout K:

* ``ours``: :class:`rlmeta.metagrad.OneStep` (K = 1) / :class:`rlmeta.metagrad.MultiStep` with
  the learner's update and ``rlmeta.optim.rmsprop(eps_root=1e-12)``; as the library runs it, the
  exact meta-gradient (targets a differentiable function of the parameters, see
  ``rlmeta.objectives.actor_critic._evaluate`` and ``rlmeta.rollout.OutputSplit``), each unroll's
  first update differentiated forward-over-reverse (``rlmeta.tangent``, the default);
* ``ours-reverse``: the same with ``tangent=False``: reverse-over-reverse everywhere (the reference path);
* ``ours-recompute``: the same with the memory-saving path (``recompute=True``: the K updates run
  without a graph, then each update's graph is rebuilt in turn in the backward sweep);
* ``ours-semi``: the same with the usual semi-gradient (targets detached in each inner loss),
  which is what the TorchOpt and higher versions below compute;
* ``torchopt``: ``torchopt.MetaRMSProp(module)``, ``optim.step(inner_loss)`` K times, the outer
  loss, ``torch.autograd.grad``, then ``torchopt.recover_state_dict`` of module and optimizer;
* ``higher``: ``higher.innerloop_ctx(module, torch.optim.RMSprop(...), copy_initial_weights=False)``,
  ``diffopt.step(inner_loss)`` K times, the outer loss with ``fnet``, ``torch.autograd.grad``.

TorchOpt and higher compute the losses from the module's forward (``module(obs)``/``fnet(obs)``,
the same network code) with the same A2C and outer objectives. For K = 1 all four compute the same
meta-gradient (the targets of the first update do not depend on the meta-parameters), checked to
``grad_rtol`` (1e-4; ``eps_root`` 1e-12 in ours is the remaining difference: ``--eps-root 0`` gives
~1e-8); for K > 1 ``ours`` differs from the semi-gradient three, whose agreement is checked. After
``warmup`` untimed calls each, the contenders are timed in turn (order rotated each round) for
``iterations`` rounds; reported: the median time per meta-update and theirs / ours (goal >=
``required_speedup``), both against ``ours`` (the headline) and against ``ours-semi``. Also
reported, the floor: the K inner and the outer plain gradients (forward + backward each) at the
fixed parameters, timed alone, which every method computes before its second-order work; theirs /
floor bounds the speedup any exact method could show.

**(c) Peak memory of a K-step unroll.** For each K in ``memory_ks`` and each of
``memory_estimators`` (our exact multi-step and mixed estimators, as in (b), with the full unroll
and with the memory-saving path ``recompute=True``), one meta-gradient on
the same fixed data in a fresh process (spawned): after a warm-up on a tiny slice of the data, the
peak resident set size is reset (``/proc/self/clear_refs``) and the peak over the meta-update,
minus the resident size before it, is reported (on CUDA: ``torch.cuda.max_memory_allocated``
minus the allocation before).

Run directories go to a temporary directory that is removed at the end.
"""

from __future__ import annotations

import copy
import math
import shutil
import statistics
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal

import torch

from rlmeta.agents.runs import check_device
from rlmeta.heap import keep_freed_memory

Part = Literal["a", "b", "c"]
Contender = Literal["ours", "ours-reverse", "ours-recompute", "ours-semi", "torchopt", "higher"]
CONTENDERS: dict[str, str] = {
    "ours": "ours (rlmeta.metagrad, exact targets)",
    "ours-reverse": "ours, reverse-over-reverse everywhere (tangent=False, the reference)",
    "ours-recompute": "ours, memory-saving path (recompute=True)",
    "ours-semi": "ours (semi-gradient, same math as the peers)",
    "torchopt": "TorchOpt MetaRMSProp",
    "higher": "higher innerloop_ctx + RMSprop",
}
THEIRS = ("torchopt", "higher")
MEMORY_ESTIMATORS = ("multi-step", "mixed", "multi-step-recompute", "mixed-recompute")
# The inner objective's hyperparameters (as configs/snake6_a2c.toml); gamma and lambda are learned.
INNER_HPARAMS = {"gamma": 0.99, "lambda": 0.95, "policy_cost": 1.0, "value_cost": 0.5, "entropy_cost": 0.01}
LEARNED = ("gamma", "lambda")
OUTER_GAMMA, OUTER_LAMBDA = 0.99, 1.0


@dataclass
class BenchMetaConfig:
    """What to run; the defaults are the full benchmark (minutes on 2 cores)."""

    parts: tuple[Part, ...] = ("a", "b", "c")
    """a: meta vs plain A2C training iterations; b: ours vs TorchOpt vs higher; c: peak memory per K."""
    env: str = "snake-6x6"
    """Env id for ``envs.make`` (``snake-6x6`` or ``snake`` for 12x12)."""
    num_envs: int = 64
    num_steps: int = 16
    """Rollout length T per sub-env (every rollout is num_envs x num_steps env steps)."""
    hidden: tuple[int, ...] = (64,)
    conv_channels: tuple[int, ...] = (16, 16)
    activation: Literal["tanh", "relu", "elu"] = "relu"
    iterations: int = 30
    """Timed iterations (a) / rounds of meta-updates (b)."""
    warmup: int = 3
    """Untimed iterations first (a: of each run; b: calls of each contender)."""
    rounds: int = 2
    """(a): alternating plain/meta runs of each (fresh trainers); their iterations are pooled."""
    speed_ks: tuple[int, ...] = (1, 4)
    """(b): numbers of inner updates K to time (K = 1: one-step)."""
    contenders: tuple[Contender, ...] = ("ours", "ours-reverse", "ours-recompute", "ours-semi", "torchopt", "higher")
    """(b): who computes the meta-update ('ours' is needed for the ratios)."""
    lr: float = 1e-3
    """(b, c): the inner RMSProp's learning rate."""
    rmsprop_decay: float = 0.99
    rmsprop_eps: float = 1e-5
    optimizer_warmup: int = 5
    """(b, c): plain RMSProp steps on the fixed data before the meta-updates (non-zero second moments)."""
    nu_floor: float = 1e-8
    """(b, c): added to every second moment after the warm-up. Sparse grid inputs and dead ReLUs leave
    exact zeros there, where d sqrt(nu) is infinite: TorchOpt's MetaRMSProp then returns NaN and
    higher masks the gradient, while ours has eps_root; with the floor all compute the same thing."""
    eps_root: float = 1e-12
    """(b, c): our RMSProp's epsilon inside the square root (as training with meta-gradients uses)."""
    memory_ks: tuple[int, ...] = (1, 2, 4, 8, 16)
    """(c): numbers of inner updates K whose peak memory is measured."""
    memory_estimators: tuple[Literal["multi-step", "mixed", "multi-step-recompute", "mixed-recompute"], ...] = \
        MEMORY_ESTIMATORS
    """(c): '-recompute': the memory-saving path (per-update checkpointing, ``recompute=True``)."""
    seed: int = 0
    device: str = "cpu"
    """``cpu``, ``cuda`` or ``cuda:N``."""
    threads: int = 1
    """torch.set_num_threads for everything (0: torch's default)."""
    tangent: bool = True
    """(a): the meta run's ``meta.tangent`` (the forward-over-reverse first update, the default;
    ``--no-tangent``: the reverse-over-reverse reference)."""
    tangent_fraction: float = 1.0
    """(a): the meta run's ``meta.tangent_fraction`` (below 1: the approximate tangent pass; needs --tangent)."""
    outer_fraction: float = 1.0
    """(a): the meta run's ``meta.outer_fraction`` (below 1: the outer loss's gradient on that fraction of the
    sub-envs; with --tangent-fraction, the approximate mode on both second-order passes)."""
    approximate: tuple[str, ...] = ("0.125/0.125",)
    """(a): approximate modes timed in the same rounds as plain and exact, each ``TANGENT/OUTER`` (the
    tangent pass's and the outer gradient's fractions of the sub-envs); at ``num_envs`` x ``num_steps`` only."""
    approximate_max_overhead: float = 1.5
    """(a) check: an approximate mode's meta / plain time per iteration must be at most this."""
    max_overhead: float = 1.7
    """(a) check: meta / plain time per iteration must be at most this at ``num_envs`` x ``num_steps``
    (the exact floor, a plain iteration plus the outer backward and one tangent pass, is about 1.6 at
    64 x 16; the report prints it)."""
    reference_batch: bool = True
    """(a): also at the Snake reference batch, 512 envs x 5 steps (with ``reference_max_overhead``),
    unless the batch above is that one already."""
    reference_max_overhead: float = 2.0
    """(a) check at 512 x 5 (the exact floor there is about 1.85)."""
    required_speedup: float = 1.2
    """(b) check: theirs / ours time per meta-update must reach this at K = 1."""
    required_speedup_multi: float = 1.0
    """(b) check: the same for K > 1 (their HVP part is reverse-over-reverse, as ours)."""
    grad_rtol: float = 1e-4
    """(b) check: relative difference of the meta-gradients that must agree (K = 1, and semi vs peers)."""
    json_out: str | None = None
    """Write the results as JSON to this path."""

    def __post_init__(self) -> None:
        for name in ("parts", "hidden", "conv_channels", "speed_ks", "contenders", "memory_ks", "memory_estimators",
                     "approximate"):
            setattr(self, name, tuple(getattr(self, name)))
        if not self.parts or any(p not in ("a", "b", "c") for p in self.parts):
            raise ValueError(f"parts must be some of a, b, c; got {list(self.parts)}")
        if not isinstance(self.env, str) or not self.env.strip():
            raise ValueError(f"env must be a non-empty env id, got {self.env!r}")
        for name in ("num_envs", "num_steps", "iterations", "rounds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("warmup", "optimizer_warmup", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        for mode in self.approximate:
            _approximate_fractions(mode)  # a ValueError now for a malformed one
        if "a" in self.parts and self.warmup < 1:
            raise ValueError("part a needs warmup >= 1: the first iteration pays one-time costs (numba, first calls)")
        if not self.hidden or any(h < 1 for h in self.hidden) or any(c < 1 for c in self.conv_channels):
            raise ValueError(f"hidden and conv_channels must be sizes >= 1, got {self.hidden}, {self.conv_channels}")
        for name in ("speed_ks", "memory_ks"):
            ks = getattr(self, name)
            if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
                raise ValueError(f"{name} must be integers >= 1, got {list(ks)}")
            if len(set(ks)) != len(ks):
                raise ValueError(f"{name} must not repeat, got {list(ks)}")
        unknown = [c for c in self.contenders if c not in CONTENDERS]
        if unknown or not self.contenders or len(set(self.contenders)) != len(self.contenders):
            raise ValueError(f"contenders must be distinct names from {list(CONTENDERS)}, got {list(self.contenders)}")
        if "b" in self.parts and "ours" not in self.contenders:
            raise ValueError("part b compares with 'ours': keep it among the contenders")
        if not self.memory_estimators or any(e not in MEMORY_ESTIMATORS for e in self.memory_estimators):
            raise ValueError(f"memory_estimators must be some of {list(MEMORY_ESTIMATORS)}, "
                             f"got {list(self.memory_estimators)}")
        if not self.nu_floor >= 0 or not self.eps_root >= 0:
            raise ValueError(f"nu_floor and eps_root must be >= 0, got {self.nu_floor}, {self.eps_root}")
        if not self.lr > 0 or not 0 < self.rmsprop_decay < 1 or not self.rmsprop_eps >= 0:
            raise ValueError(f"need lr > 0, 0 < rmsprop_decay < 1, rmsprop_eps >= 0; got {self.lr}, "
                             f"{self.rmsprop_decay}, {self.rmsprop_eps}")
        for name in ("max_overhead", "approximate_max_overhead", "reference_max_overhead", "required_speedup", "required_speedup_multi",
                     "grad_rtol"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")


# --------------------------------------------------------------------------------------------
# Shared helpers.


def _approximate_fractions(mode: str) -> tuple[float, float]:
    """``"T/O"`` -> (tangent fraction, outer fraction), each in (0, 1] and not both 1."""
    try:
        tangent, outer = (float(x) for x in mode.split("/"))
    except ValueError:
        raise ValueError(f"an approximate mode is TANGENT/OUTER, two fractions, e.g. 0.125/0.125; got {mode!r}") from None
    if not (0 < tangent <= 1 and 0 < outer <= 1) or tangent == outer == 1:
        raise ValueError(f"an approximate mode's fractions must be in (0, 1], not both 1; got {mode!r}")
    return tangent, outer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _meta_params(device: torch.device):
    from rlmeta.hparams import MetaParams

    learn = {k: INNER_HPARAMS[k] for k in LEARNED}
    fixed = {k: v for k, v in INNER_HPARAMS.items() if k not in learn}
    return MetaParams(learn, fixed=fixed, device=device)


def _module_policy_value(module: Any) -> Any:
    """The adapter for TorchOpt/higher: ignores ``params`` and runs the (patched) module's forward."""
    from rlmeta.agents.networks import named_distribution
    from rlmeta.rollout import PolicyValue

    def forward(_params: Any, obs: torch.Tensor, _conditioning: Any) -> dict[str, torch.Tensor]:
        out = module(obs)
        return {"policy": out.policy, "value": out.value}

    return PolicyValue(forward, named_distribution, shares_forward=False)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|a - b| / |b|`` (0 when both are zero)."""
    num, den = float(torch.linalg.vector_norm(a - b)), float(torch.linalg.vector_norm(b))
    return num / den if den else (0.0 if num == 0 else math.inf)


# --------------------------------------------------------------------------------------------
# (a) One-step meta-gradient A2C vs plain A2C, as the Trainer runs them.


def _train_config(cfg: BenchMetaConfig, run_dir: Path, meta: bool, iterations: int):
    from rlmeta.agents.config import HParamsConfig, MetaConfig, NetworkConfig, OptimizerConfig, TrainConfig

    batch = cfg.num_envs * cfg.num_steps
    # Plain: one rollout per iteration. One-step meta: the first iteration collects two (the inner
    # update's and the outer loss's fresh one); every later one reuses the previous outer rollout
    # as its inner one and collects one.
    total_steps = batch * (iterations + 1 if meta else iterations)
    return TrainConfig(
        env=cfg.env, num_envs=cfg.num_envs, num_steps=cfg.num_steps, algo="a2c", total_steps=total_steps,
        network=NetworkConfig(hidden=cfg.hidden, conv_channels=cfg.conv_channels, activation=cfg.activation),
        optimizer=OptimizerConfig(name="adam", lr=1e-3, max_grad_norm=0.5),
        hparams=HParamsConfig(gamma=INNER_HPARAMS["gamma"], td_lambda=INNER_HPARAMS["lambda"],
                              entropy_cost=INNER_HPARAMS["entropy_cost"], value_cost=INNER_HPARAMS["value_cost"]),
        meta=MetaConfig(learn=LEARNED, estimator="one-step", outer_gamma=OUTER_GAMMA, outer_lambda=OUTER_LAMBDA,
                        tangent=cfg.tangent, tangent_fraction=cfg.tangent_fraction,
                        outer_fraction=cfg.outer_fraction)
        if meta else MetaConfig(),
        seed=cfg.seed, device=cfg.device, torch_threads=cfg.threads, run_dir=str(run_dir), progress=False,
        checkpoint_interval=0, eval_interval=0, eval_episodes=1,
    )


def _timed_run(cfg: BenchMetaConfig, run_dir: Path, meta: bool) -> dict[str, list[float]]:
    """One Trainer run; per iteration after the warm-up: seconds in all and collecting rollouts."""
    from rlmeta.agents.train import Trainer

    trainer = Trainer(_train_config(cfg, run_dir, meta, cfg.warmup + cfg.iterations))
    trainer.evaluate = lambda: {}  # type: ignore[method-assign]  # the loop is timed, not the evaluation
    device = trainer.device
    actor = trainer.loop.actor  # type: ignore[union-attr]
    collecting = [0.0]
    collect = actor.collect

    def timed_collect(*args: Any, **kwargs: Any):
        start = time.perf_counter()
        rollout = collect(*args, **kwargs)
        _sync(device)
        collecting[0] += time.perf_counter() - start
        return rollout

    actor.collect = timed_collect  # type: ignore[method-assign]
    marks: list[tuple[float, float]] = []  # (time, collect seconds so far) where each iteration ends
    publish = trainer.loop.publish

    def timed_publish(*args: Any, **kwargs: Any) -> None:
        _sync(device)
        marks.append((time.perf_counter(), collecting[0]))
        publish(*args, **kwargs)

    trainer.loop.publish = timed_publish  # type: ignore[method-assign]
    trainer.run()
    # marks[0]: before the first iteration; marks[i]: end of iteration i.
    total = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    collected = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
    if len(total) != cfg.warmup + cfg.iterations:
        raise RuntimeError(f"expected {cfg.warmup + cfg.iterations} iterations, timed {len(total)}")
    return {"total": total[cfg.warmup:], "collect": collected[cfg.warmup:]}


def part_a(cfg: BenchMetaConfig, tmp: Path) -> dict[str, Any]:
    """Median seconds per iteration of plain and one-step meta A2C training, and their ratios."""
    # Plain, exact and the approximate modes in every round, in a rotating order (this machine's speed
    # drifts over minutes: each round's ratios are paired).
    configs = {"plain": cfg, "meta": cfg}
    for mode in cfg.approximate:
        tangent, outer = _approximate_fractions(mode)
        configs[f"approximate {mode}"] = replace(cfg, tangent=True, tangent_fraction=tangent, outer_fraction=outer)
    times: dict[str, dict[str, list[float]]] = {m: {"total": [], "collect": []} for m in configs}
    medians: dict[str, list[float]] = {m: [] for m in configs}
    modes = list(configs)
    for r in range(cfg.rounds):
        shift = r % len(modes)
        for mode in modes[shift:] + modes[:shift]:
            run_dir = tmp / f"a-{cfg.num_envs}x{cfg.num_steps}-{mode.replace(' ', '-').replace('/', '-')}-{r}"
            out = _timed_run(configs[mode], run_dir, meta=mode != "plain")
            for key, values in out.items():
                times[mode][key].extend(values)
            medians[mode].append(statistics.median(out["total"]))
            print(f"  (a) round {r}: {mode:<5} median {1e3 * medians[mode][-1]:.1f} ms/iteration", flush=True)
    batch = cfg.num_envs * cfg.num_steps
    result: dict[str, Any] = {"env": cfg.env, "num_envs": cfg.num_envs, "num_steps": cfg.num_steps,
                              "timed_iterations": len(times["plain"]["total"])}
    for mode, rollouts in (("plain", 1), ("meta", 1)):  # meta: one fresh rollout per iteration (reuse)
        total = statistics.median(times[mode]["total"])
        collect = statistics.median(times[mode]["collect"])
        result[mode] = {"rollouts_per_iteration": rollouts, "env_steps_per_iteration": rollouts * batch,
                        "seconds_per_iteration": total, "collect_seconds": collect,
                        "learn_seconds": statistics.median(t - c for t, c in zip(times[mode]["total"],
                                                                                 times[mode]["collect"])),
                        "seconds_per_env_step": total / (rollouts * batch), "all_seconds": times[mode]["total"]}
    plain, meta = result["plain"], result["meta"]
    result["ratio_per_iteration"] = meta["seconds_per_iteration"] / plain["seconds_per_iteration"]
    result["ratio_per_env_step"] = meta["seconds_per_env_step"] / plain["seconds_per_env_step"]
    result["ratio_learn"] = meta["learn_seconds"] / plain["learn_seconds"]
    result["max_overhead"] = cfg.max_overhead
    result["passed"] = result["ratio_per_iteration"] <= cfg.max_overhead
    result["approximate"] = {}
    for mode in cfg.approximate:
        label = f"approximate {mode}"
        seconds = statistics.median(times[label]["total"])
        paired = [a / b for a, b in zip(medians[label], medians["plain"])]
        ratio = seconds / plain["seconds_per_iteration"]
        result["approximate"][mode] = {
            "seconds_per_iteration": seconds, "ratio_per_iteration": ratio, "round_ratios": paired,
            "max_overhead": cfg.approximate_max_overhead, "passed": ratio <= cfg.approximate_max_overhead,
            "all_seconds": times[label]["total"]}
    # The floor: a one-step meta-iteration does what a plain one does plus, at least, the outer
    # loss's gradient at the updated parameters, whatever computes the second-order term: a second
    # backward pass per iteration (its forward pass is the next inner update's, which ours shares).
    data = make_fixed_data(replace(cfg, optimizer_warmup=0), 1)
    outer = _gradient_seconds(data, cfg, "outer", 0, cfg.iterations, backward_only=True)
    result["outer_gradient_seconds"] = outer
    result["floor_ratio"] = (plain["seconds_per_iteration"] + outer) / plain["seconds_per_iteration"]
    # The exact floor: every exact one-step meta-gradient also needs one Jacobian-vector product of the
    # network on the inner batch (or its reverse-mode equivalent), at least what the tangent pass costs
    # when it reuses the forward's activations.
    tangent = _tangent_seconds(data, cfg, cfg.iterations)
    result["tangent_seconds"] = tangent
    result["exact_floor_ratio"] = (plain["seconds_per_iteration"] + outer + tangent) / plain["seconds_per_iteration"]
    result["goal_reachable"] = result["floor_ratio"] <= cfg.max_overhead
    return result


# --------------------------------------------------------------------------------------------
# Fixed data for (b) and (c).


@dataclass
class FixedData:
    """A network at the parameters after the RMSProp warm-up, its second moments, and rollouts."""

    net: Any  # ActorCritic holding the parameters
    torch_optimizer_state: dict  # torch.optim.RMSprop's state_dict for those parameters
    params: dict[str, torch.Tensor]
    nu: dict[str, torch.Tensor]
    rollouts: list[Any]
    observation_space: Any
    action_space: Any


def make_fixed_data(cfg: BenchMetaConfig, num_rollouts: int) -> FixedData:
    """``num_rollouts`` rollouts of the initial policy, then ``optimizer_warmup`` plain RMSProp steps on them."""
    from rlmeta import envs
    from rlmeta.agents.actor import Actor
    from rlmeta.agents.networks import ActorCritic
    from rlmeta.objectives import A2C

    device = check_device(cfg.device)
    torch.manual_seed(cfg.seed)
    env = envs.make(cfg.env, num_envs=cfg.num_envs, seed=cfg.seed)
    net = ActorCritic(env.single_observation_space, env.single_action_space, hidden=cfg.hidden,
                      conv_channels=cfg.conv_channels, activation=cfg.activation).to(device)
    try:
        actor = Actor(env, net, cfg.num_steps, str(device))
        params = {k: v.detach() for k, v in net.named_parameters()}
        rollouts = [actor.collect(params) for _ in range(num_rollouts)]
    finally:
        env.close()
    optimizer = torch.optim.RMSprop(net.parameters(), lr=cfg.lr, alpha=cfg.rmsprop_decay, eps=cfg.rmsprop_eps)
    loss_fn = A2C(_module_policy_value(net))
    for i in range(cfg.optimizer_warmup):
        optimizer.zero_grad()
        loss = loss_fn(None, rollouts[i % num_rollouts], INNER_HPARAMS).total
        loss.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        for p in net.parameters():
            if p not in optimizer.state:
                optimizer.state[p]["step"] = torch.tensor(0.0)
                optimizer.state[p]["square_avg"] = torch.zeros_like(p)
            optimizer.state[p]["square_avg"].add_(cfg.nu_floor)
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    nu = {k: optimizer.state[p]["square_avg"].detach().clone() for k, p in net.named_parameters()}
    return FixedData(net, copy.deepcopy(optimizer.state_dict()), params, nu, rollouts,
                     env.single_observation_space, env.single_action_space)


def _ours_estimator(net: Any, cfg: BenchMetaConfig, estimator: str, k: int, exact: bool = True,
                    tangent: bool = True):
    """Our estimator (one-step, multi-step or mixed; '-recompute': the memory-saving path) with the
    learner's RMSProp update of A2C."""
    from rlmeta.agents.actor import make_policy_value
    from rlmeta.learner import update
    from rlmeta.metagrad import Mixed, MultiStep, OneStep, OuterObjective
    from rlmeta.objectives import A2C
    from rlmeta.optim import rmsprop

    recompute = estimator.endswith("-recompute")
    estimator = estimator.removesuffix("-recompute")
    policy_value = make_policy_value(net)
    objective = A2C(policy_value)
    optimizer = rmsprop(cfg.lr, decay=cfg.rmsprop_decay, eps=cfg.rmsprop_eps, eps_root=cfg.eps_root)

    def inner_update(params, opt_state, rollout, hparams, mode):
        new, state, _ = update(objective, optimizer, params, opt_state, rollout, hparams, mode=mode)
        return new, state

    outer = OuterObjective(policy_value, gamma=OUTER_GAMMA, lambda_=OUTER_LAMBDA)
    common = dict(recompute=recompute, exact=exact, tangent=tangent)
    if estimator == "mixed":
        return Mixed(inner_update, outer, k, **common)
    if estimator == "multi-step" and k > 1:
        return MultiStep(inner_update, outer, k, **common)
    if k != 1:
        raise ValueError(f"unknown estimator {estimator!r} for K={k}")
    return OneStep(inner_update, outer, **common)


def _gradient_seconds(data: FixedData, cfg: BenchMetaConfig, which: Literal["inner", "outer"], index: int,
                      repeats: int, backward_only: bool = False) -> float:
    """Median seconds of one plain gradient (forward + backward, no graph kept) of the inner A2C loss
    or of the outer loss at the fixed parameters on rollout ``index``: what any meta-gradient method
    has to compute at least once per inner update and once for the outer loss (``backward_only``:
    the backward pass alone, for a forward pass shared with another loss)."""
    from rlmeta.agents.actor import make_policy_value
    from rlmeta.metagrad import OuterObjective
    from rlmeta.objectives import A2C

    device = check_device(cfg.device)
    policy_value = make_policy_value(data.net)
    params = {n: v.detach().clone().requires_grad_(True) for n, v in data.params.items()}
    rollout = data.rollouts[index]
    if which == "inner":
        inner = A2C(policy_value)
        loss_fn = lambda: inner(params, rollout, INNER_HPARAMS).total  # noqa: E731
    else:
        outer = OuterObjective(policy_value, gamma=OUTER_GAMMA, lambda_=OUTER_LAMBDA)
        loss_fn = lambda: outer(params, rollout)  # noqa: E731
    times = []
    for i in range(repeats + 2):
        loss = loss_fn() if backward_only else None
        _sync(device)
        start = time.perf_counter()
        torch.autograd.grad(loss_fn() if loss is None else loss, list(params.values()))
        _sync(device)
        if i >= 2:  # two warm-up calls
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _tangent_seconds(data: FixedData, cfg: BenchMetaConfig, repeats: int) -> float:
    """Median seconds of the network's tangent pass (policy and value outputs along a random direction)
    on rollout 0, reusing a forward's activations (``ActorCritic.linearize``): the JVP part of the floor."""
    from rlmeta.rollout import observations

    device = check_device(cfg.device)
    params = {n: v.detach().clone() for n, v in data.params.items()}
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
    directions = {n: torch.randn(v.shape, generator=generator).to(v) for n, v in params.items()}
    _outputs, jvp = data.net.linearize(params, observations(data.rollouts[0]))
    times = []
    for i in range(repeats + 2):
        _sync(device)
        start = time.perf_counter()
        jvp(directions, ["policy", "value"])
        _sync(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


# --------------------------------------------------------------------------------------------
# (b) The contenders: each is a function computing {name: d outer / d raw} from the same start.


def _ours(data: FixedData, cfg: BenchMetaConfig, k: int, exact: bool,
          recompute: bool = False, tangent: bool = True) -> Callable[[], dict[str, torch.Tensor]]:
    estimator = _ours_estimator(data.net, cfg, "multi-step-recompute" if recompute else "multi-step", k, exact=exact,
                                tangent=tangent)
    meta = _meta_params(data.params[next(iter(data.params))].device)
    params = {n: v.clone() for n, v in data.params.items()}
    opt_state = {"nu": {n: v.clone() for n, v in data.nu.items()}}

    def meta_gradient() -> dict[str, torch.Tensor]:
        rollouts = iter(data.rollouts)
        return estimator.estimate(meta, params, opt_state, lambda _params: next(rollouts)).grads

    return meta_gradient


def _with_nu(state: Any, nu: list[torch.Tensor]) -> Any:
    """TorchOpt's optimizer state with the second moments of its ScaleByRmsState replaced."""
    if hasattr(state, "_fields"):
        if "nu" in state._fields:
            return state._replace(nu=type(state.nu)(nu))
        return state
    if isinstance(state, (tuple, list)):
        return type(state)(_with_nu(s, nu) for s in state)
    return state


def _torchopt(data: FixedData, cfg: BenchMetaConfig, k: int) -> Callable[[], dict[str, torch.Tensor]]:
    import torchopt
    from torchopt import pytree

    from rlmeta.metagrad import OuterObjective
    from rlmeta.objectives import A2C

    module = copy.deepcopy(data.net)
    optim = torchopt.MetaRMSProp(module, lr=cfg.lr, alpha=cfg.rmsprop_decay, eps=cfg.rmsprop_eps)
    # Start from the same second moments as the others (TorchOpt orders its flat parameters its own way).
    flat, _ = pytree.tree_flatten_as_tuple(optim.param_containers_groups[0])
    names = {id(p): n for n, p in module.named_parameters()}
    nu = [data.nu[names[id(p)]].clone() for p in flat]
    optim.load_state_dict([_with_nu(optim.impl.init(flat), nu)])
    net_state, optim_state = torchopt.extract_state_dict(module), torchopt.extract_state_dict(optim)
    meta = _meta_params(data.params[next(iter(data.params))].device)
    policy_value = _module_policy_value(module)
    inner, outer = A2C(policy_value), OuterObjective(policy_value, gamma=OUTER_GAMMA, lambda_=OUTER_LAMBDA)

    def meta_gradient() -> dict[str, torch.Tensor]:
        hparams = meta.hparams()
        for i in range(k):
            loss = inner(None, data.rollouts[i], hparams).total
            optim.step(loss)
        outer_loss = outer(None, data.rollouts[k])
        grads = torch.autograd.grad(outer_loss, [meta.raw[n] for n in meta.names])
        torchopt.recover_state_dict(module, net_state)
        torchopt.recover_state_dict(optim, optim_state)
        return dict(zip(meta.names, grads))

    return meta_gradient


def _higher(data: FixedData, cfg: BenchMetaConfig, k: int) -> Callable[[], dict[str, torch.Tensor]]:
    import higher

    from rlmeta.metagrad import OuterObjective
    from rlmeta.objectives import A2C

    module = copy.deepcopy(data.net)
    optimizer = torch.optim.RMSprop(module.parameters(), lr=cfg.lr, alpha=cfg.rmsprop_decay, eps=cfg.rmsprop_eps)
    optimizer.load_state_dict(data.torch_optimizer_state)
    meta = _meta_params(data.params[next(iter(data.params))].device)

    def meta_gradient() -> dict[str, torch.Tensor]:
        hparams = meta.hparams()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Differentiable RMSprop")
            with higher.innerloop_ctx(module, optimizer, copy_initial_weights=False) as (fnet, diffopt):
                policy_value = _module_policy_value(fnet)
                inner, outer = A2C(policy_value), OuterObjective(policy_value, gamma=OUTER_GAMMA, lambda_=OUTER_LAMBDA)
                for i in range(k):
                    loss = inner(None, data.rollouts[i], hparams).total
                    diffopt.step(loss)
                outer_loss = outer(None, data.rollouts[k])
                grads = torch.autograd.grad(outer_loss, [meta.raw[n] for n in meta.names])
        return dict(zip(meta.names, grads))

    return meta_gradient


def _contender(name: str, data: FixedData, cfg: BenchMetaConfig, k: int) -> Callable[[], dict[str, torch.Tensor]]:
    if name == "ours":
        return _ours(data, cfg, k, exact=True)
    if name == "ours-reverse":
        return _ours(data, cfg, k, exact=True, tangent=False)
    if name == "ours-recompute":
        return _ours(data, cfg, k, exact=True, recompute=True)
    if name == "ours-semi":
        return _ours(data, cfg, k, exact=False)
    if name == "torchopt":
        return _torchopt(data, cfg, k)
    return _higher(data, cfg, k)


def part_b(cfg: BenchMetaConfig, data: FixedData) -> dict[str, Any]:
    """Per K: each contender's meta-gradient (agreement) and median seconds per meta-update."""
    device = check_device(cfg.device)
    results: dict[str, Any] = {}
    for k in cfg.speed_ks:
        fns = {c: _contender(c, data, cfg, k) for c in cfg.contenders}
        grads: dict[str, torch.Tensor] = {}
        for name, fn in fns.items():
            g = fn()
            grads[name] = torch.stack([g[n].detach().reshape(()) for n in LEARNED]).double().cpu()
            for _ in range(max(cfg.warmup - 1, 0)):
                fn()
        times: dict[str, list[float]] = {c: [] for c in fns}
        order = list(fns)
        for r in range(cfg.iterations):
            shift = r % len(order)
            for name in order[shift:] + order[:shift]:
                _sync(device)
                start = time.perf_counter()
                fns[name]()
                _sync(device)
                times[name].append(time.perf_counter() - start)
        rows = {}
        for name in fns:
            median = statistics.median(times[name])
            rows[name] = {
                "seconds": median,
                "all_seconds": times[name],
                "grad": {n: float(v) for n, v in zip(LEARNED, grads[name])},
                "rel_diff_ours": _relative(grads[name], grads["ours"]),
                "rel_diff_ours_semi": _relative(grads[name], grads["ours-semi"]) if "ours-semi" in grads else None,
                "ratio_vs_ours": median / statistics.median(times["ours"]),
                "ratio_vs_ours_semi": median / statistics.median(times["ours-semi"]) if "ours-semi" in times else None,
            }
        # The meta-gradients that must agree: all of them at K = 1; at any K the exact ones with
        # 'ours' and the semi-gradient ones (the peers') with 'ours-semi'.
        exact = [c for c in fns if c in ("ours", "ours-reverse", "ours-recompute")]
        groups = [("ours", list(fns))] if k == 1 else [("ours", exact), ("ours-semi", [c for c in fns if c not in exact])]
        reference = "ours" if k == 1 else ("ours-semi" if "ours-semi" in fns else None)
        diffs = [_relative(grads[c], grads[ref]) for ref, members in groups if ref in fns for c in members if c != ref]
        agree = all(d <= cfg.grad_rtol for d in diffs) if diffs else None  # None: nothing to compare
        speedups = {c: rows[c]["ratio_vs_ours"] for c in THEIRS if c in rows}
        # The floor: K plain inner gradients and one outer gradient, which every method computes
        # (and then more: the second-order term through the K updates).
        floor = (sum(_gradient_seconds(data, cfg, "inner", i, cfg.iterations) for i in range(k))
                 + _gradient_seconds(data, cfg, "outer", k, cfg.iterations))
        best = {c: rows[c]["seconds"] / floor for c in THEIRS if c in rows}
        # At K = 1 the exact floor adds the one piece of second-order work an exact meta-gradient
        # needs (a tangent pass of the network over the inner batch): the best any exact method can do.
        tangent = _tangent_seconds(data, cfg, cfg.iterations) if k == 1 else None
        exact_floor = None if tangent is None else floor + tangent
        best_exact = {} if exact_floor is None else {c: rows[c]["seconds"] / exact_floor for c in THEIRS if c in rows}
        required = cfg.required_speedup if k == 1 else cfg.required_speedup_multi
        results[str(k)] = {
            "k": k, "contenders": rows, "reference": reference, "agree": agree,
            "max_rel_diff": max(diffs) if diffs else None,
            "speedups": speedups, "floor_seconds": floor, "best_possible_speedups": best,
            "required_speedup": required,
            "goal_reachable": all(b >= required for b in best.values()) if best else None,
            "tangent_seconds": tangent, "exact_floor_seconds": exact_floor, "best_exact_speedups": best_exact,
            "ours_over_exact_floor": None if exact_floor is None else rows["ours"]["seconds"] / exact_floor,
            "exact_goal_reachable": all(b >= required for b in best_exact.values()) if best_exact else None,
            "passed": (agree is not False and all(s >= required for s in speedups.values()))
            if speedups else None,
        }
        summary = ", ".join(f"{c} {1e3 * rows[c]['seconds']:.1f} ms" for c in fns)
        print(f"  (b) K={k}: {summary}; meta-gradients agree: {'n/a' if agree is None else agree}", flush=True)
    return {"required_speedup": cfg.required_speedup, "grad_rtol": cfg.grad_rtol, "by_k": results,
            "passed": all(r["passed"] is not False for r in results.values())}


# --------------------------------------------------------------------------------------------
# (c) Peak memory per K, each in a fresh process.


def _rss_kib(field: str) -> int | None:
    """``VmRSS``/``VmHWM`` of this process in KiB (None where /proc is not there)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_freed_memory() -> None:
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _tiny(rollout: Any, steps: int = 2) -> Any:
    """The first ``steps`` steps of a rollout (truncations among them kept)."""
    from rlmeta.rollout import Rollout

    n = steps * rollout.num_envs
    keep = rollout.final_index < n
    return Rollout(rollout.obs[:steps], rollout.actions[:steps], rollout.rewards[:steps], rollout.terminated[:steps],
                   rollout.truncated[:steps], rollout.behaviour_logp[:steps], rollout.obs[steps],
                   rollout.final_obs[keep], rollout.final_index[keep])


def _memory_child(path: str, estimator: str, k: int, threads: int) -> dict[str, Any]:
    """In a fresh process: peak memory of one meta-gradient of ``estimator`` with K = ``k``."""
    from rlmeta.agents.networks import ActorCritic

    if threads:
        torch.set_num_threads(threads)
    saved = torch.load(path, weights_only=False)
    cfg: BenchMetaConfig = saved["cfg"]
    device = torch.device(cfg.device)
    net = ActorCritic(saved["observation_space"], saved["action_space"], hidden=cfg.hidden,
                      conv_channels=cfg.conv_channels, activation=cfg.activation).to(device)
    params = {n: v.to(device) for n, v in saved["params"].items()}
    opt_state = {"nu": {n: v.to(device) for n, v in saved["nu"].items()}}
    rollouts = [r.to(device) for r in saved["rollouts"][: k + 1]]
    tiny = [_tiny(r).to(device) for r in saved["rollouts"][:3]]
    del saved
    est = _ours_estimator(net, cfg, estimator, k)
    meta = _meta_params(device)
    # Warm-up on a tiny slice (first calls, kernels, autograd's threads), then forget what it freed.
    warm = _ours_estimator(net, cfg, "multi-step", 2)
    feed = iter(tiny)
    warm.estimate(meta, params, opt_state, lambda _p: next(feed))
    _release_freed_memory()
    feed = iter(rollouts)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        est.estimate(meta, params, opt_state, lambda _p: next(feed))
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(device)
        return {"estimator": estimator, "k": k, "what": "cuda max_memory_allocated", "before_mib": before / 2**20,
                "peak_mib": (peak - before) / 2**20, "seconds": seconds}
    import resource

    measured = "VmHWM (peak RSS, reset before)"
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set size to the current one
    except OSError:
        measured = "ru_maxrss (peak RSS of the process)"
    before = _rss_kib("VmRSS")
    start = time.perf_counter()
    est.estimate(meta, params, opt_state, lambda _p: next(feed))
    seconds = time.perf_counter() - start
    peak = _rss_kib("VmHWM") if measured.startswith("VmHWM") else None
    if peak is None or before is None:  # no /proc: the process's peak since it started
        measured = "ru_maxrss (peak RSS of the process)"
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        before = before or 0
    return {"estimator": estimator, "k": k, "what": measured, "before_mib": before / 1024,
            "peak_mib": (peak - before) / 1024, "seconds": seconds}


def part_c(cfg: BenchMetaConfig, data: FixedData, tmp: Path) -> dict[str, Any]:
    """Peak memory of our multi-step and mixed meta-gradients for each K (fresh process each)."""
    import multiprocessing

    path = tmp / "fixed.pt"
    torch.save({"cfg": cfg, "observation_space": data.observation_space, "action_space": data.action_space,
                "params": {n: v.cpu() for n, v in data.params.items()},
                "nu": {n: v.cpu() for n, v in data.nu.items()},
                "rollouts": [r.to("cpu") for r in data.rollouts]}, path)
    context = multiprocessing.get_context("spawn")
    rows = []
    for estimator in cfg.memory_estimators:
        for k in cfg.memory_ks:
            with context.Pool(1) as pool:
                row = pool.apply(_memory_child, (str(path), estimator, k, cfg.threads))
            rows.append(row)
            print(f"  (c) {estimator} K={k}: peak +{row['peak_mib']:.1f} MiB, {row['seconds']:.2f} s", flush=True)
    return {"rows": rows, "batch": cfg.num_envs * cfg.num_steps}


# --------------------------------------------------------------------------------------------
# The benchmark.


def run(cfg: BenchMetaConfig) -> dict[str, Any]:
    """Run the parts asked for, print their tables and return (and optionally write) the results."""
    import importlib.util

    if "b" in cfg.parts:
        for name in THEIRS:
            if name in cfg.contenders and importlib.util.find_spec(name) is None:
                raise SystemExit(f"the {name!r} contender needs {name}: pip install -e '.[bench]' "
                                 f"(or leave it out with --contenders)")
    check_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    threads = torch.get_num_threads()
    # As a training run sets up its process (rlmeta.agents.runs.set_threads), for every contender alike;
    # RLMETA_KEEP_FREED_MEMORY=0 measures with glibc's defaults.
    heap = keep_freed_memory()
    print(f"heap: freed memory {'kept (rlmeta.heap)' if heap else 'returned (glibc defaults)'}", flush=True)
    print(f"torch {torch.__version__}, {threads} thread{'s' if threads != 1 else ''}, device {cfg.device}; "
          f"{cfg.env}, {cfg.num_envs} envs x {cfg.num_steps} steps per rollout; network conv {list(cfg.conv_channels)} "
          f"+ hidden {list(cfg.hidden)} {cfg.activation}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="rlmeta-bench-meta-"))
    out: dict[str, Any] = {"config": asdict(cfg), "torch": torch.__version__, "torch_threads": threads,
                           "keep_freed_memory": heap, "a": None, "a_reference": None, "b": None, "c": None}
    try:
        if "a" in cfg.parts:
            out["a"] = part_a(cfg, tmp)
            reference = _reference_batch(cfg)
            if cfg.reference_batch and (reference.num_envs, reference.num_steps) != (cfg.num_envs, cfg.num_steps):
                out["a_reference"] = part_a(reference, tmp)
        if "b" in cfg.parts or "c" in cfg.parts:
            ks = (cfg.speed_ks if "b" in cfg.parts else ()) + (cfg.memory_ks if "c" in cfg.parts else ())
            data = make_fixed_data(cfg, max(ks) + 1)  # K inner rollouts and the outer one
            if "b" in cfg.parts:
                out["b"] = part_b(cfg, data)
            if "c" in cfg.parts:
                out["c"] = part_c(cfg, data, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    print()
    print(format_report(cfg, out))
    if cfg.json_out:
        from bench_train import write_json

        write_json(out, cfg.json_out)
    return out


def _verdict(passed: bool | None) -> str:
    return "n/a" if passed is None else ("**PASS**" if passed else "**FAIL**")


def _reference_batch(cfg: BenchMetaConfig) -> BenchMetaConfig:
    """``cfg`` at the Snake reference batch (512 envs x 5 steps) with that batch's target (the approximate
    modes' goal is at the first batch only)."""
    return replace(cfg, num_envs=512, num_steps=5, max_overhead=cfg.reference_max_overhead, approximate=())


def _report_a(cfg: BenchMetaConfig, a: dict[str, Any], where: str) -> list[str]:
    """Part (a)'s table and verdict at ``cfg``'s batch size."""
    batch = cfg.num_envs * cfg.num_steps
    approximate = "" if cfg.tangent_fraction == 1 and cfg.outer_fraction == 1 else \
        f"approximate mode: tangent fraction {cfg.tangent_fraction:g}, outer fraction {cfg.outer_fraction:g}; "
    lines = [f"### (a) A2C on {cfg.env}: one-step meta-gradients (learn gamma, lambda) vs plain "
              f"({cfg.num_envs} envs x {cfg.num_steps} steps = {batch:,} env steps per rollout; {approximate}{where}; "
              f"median of {a['timed_iterations']} iterations after {cfg.warmup} warm-up, {cfg.rounds} rounds)", "",
              "| run | rollouts / iteration | ms / iteration | collect ms | learn ms | us / env step |",
              "|---|---:|---:|---:|---:|---:|"]
    for mode, label in (("plain", "plain A2C"), ("meta", "A2C + one-step meta-gradient")):
        r = a[mode]
        lines.append(f"| {label} | {r['rollouts_per_iteration']} | {1e3 * r['seconds_per_iteration']:.1f} | "
                     f"{1e3 * r['collect_seconds']:.1f} | {1e3 * r['learn_seconds']:.1f} | "
                     f"{1e6 * r['seconds_per_env_step']:.2f} |")
    lines += ["", f"Meta / plain per iteration (= per inner update; headline): {a['ratio_per_iteration']:.2f}x, "
                  f"goal <= {cfg.max_overhead:g}x: {_verdict(a['passed'])}. "
                  f"Per env step: {a['ratio_per_env_step']:.2f}x. Learning only (collection excluded): "
                  f"{a['ratio_learn']:.2f}x.",
              f"Floor: a plain iteration plus the outer loss's backward pass ({1e3 * a['outer_gradient_seconds']:.1f} "
              f"ms, timed alone) = {a['floor_ratio']:.2f}x plain, before any second-order work; "
              f"the exact floor, with one tangent pass of the network ({1e3 * a['tangent_seconds']:.1f} ms, "
              f"timed alone), {a['exact_floor_ratio']:.2f}x."]
    for mode, r in a.get("approximate", {}).items():
        tangent, outer = _approximate_fractions(mode)
        rounds = r["round_ratios"]
        lines.append(f"Approximate mode (tangent pass on {tangent:g} of the sub-envs, outer gradient on {outer:g}): "
                     f"{1e3 * r['seconds_per_iteration']:.1f} ms, {r['ratio_per_iteration']:.2f}x plain (per round "
                     f"{min(rounds):.2f}-{max(rounds):.2f}x), goal <= {r['max_overhead']:g}x: {_verdict(r['passed'])}; "
                     f"its variance cost: `python scripts/tangent_fraction_variance.py --fraction {tangent:g} "
                     f"--outer-fraction {outer:g}`.")
    return lines


def format_report(cfg: BenchMetaConfig, out: dict[str, Any]) -> str:
    """Markdown tables of the parts that ran."""
    lines: list[str] = []
    threads = out["torch_threads"]
    where = f"{cfg.device}, {threads} torch thread{'s' if threads != 1 else ''}"
    for a, size_cfg in ((out.get("a"), cfg), (out.get("a_reference"), _reference_batch(cfg))):
        if a is not None:
            lines += _report_a(size_cfg, a, where) + [""]
    b = out.get("b")
    if b is not None:
        if lines:
            lines.append("")
        lines += [f"### (b) One meta-update on fixed data: ours vs TorchOpt vs higher ({where}; RMSProp lr {cfg.lr:g}, "
                  f"decay {cfg.rmsprop_decay:g}, eps {cfg.rmsprop_eps:g}; median of {cfg.iterations} after "
                  f"{cfg.warmup} warm-up)", "",
                  "| K | contender | ms / meta-update | theirs / ours | theirs / ours-semi | d/d gamma | d/d lambda "
                  "| rel. diff vs ours | rel. diff vs ours-semi |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
        for k, r in b["by_k"].items():
            for name, c in r["contenders"].items():
                semi = "-" if c["ratio_vs_ours_semi"] is None else f"{c['ratio_vs_ours_semi']:.2f}x"
                semi_diff = "-" if c["rel_diff_ours_semi"] is None else f"{c['rel_diff_ours_semi']:.1e}"
                lines.append(f"| {k} | {CONTENDERS[name]} | {1e3 * c['seconds']:.1f} | {c['ratio_vs_ours']:.2f}x | "
                             f"{semi} | {c['grad']['gamma']:.4e} | {c['grad']['lambda']:.4e} | "
                             f"{c['rel_diff_ours']:.1e} | {semi_diff} |")
        lines.append("")
        for k, r in b["by_k"].items():
            if r["agree"] is None:
                agree = "meta-gradients not compared (for K > 1 the peers are compared with ours-semi)"
            else:
                which = "all, vs ours" if r["k"] == 1 else "the exact ones vs ours, the semi-gradient ones vs ours-semi"
                agree = (f"meta-gradients that must agree ({which}) agree within {cfg.grad_rtol:g}: "
                         f"{'yes' if r['agree'] else 'NO'} "
                         f"(max rel. diff {r['max_rel_diff']:.1e})")
            speed = ", ".join(f"{c} / ours {s:.2f}x" for c, s in r["speedups"].items()) or "no peers"
            lines.append(f"- K={k}: {speed}; required >= {r['required_speedup']:g}x: {_verdict(r['passed'])}; {agree}.")
            if "ours-reverse" in r["contenders"]:
                lines.append(f"  Reverse-over-reverse path (the reference) / ours = "
                             f"{r['contenders']['ours-reverse']['ratio_vs_ours']:.2f}x.")
            if r["best_possible_speedups"]:
                best = ", ".join(f"{c} / floor {s:.2f}x" for c, s in r["best_possible_speedups"].items())
                lines.append(f"  Floor: {r['k']} inner + 1 outer plain gradients = {1e3 * r['floor_seconds']:.1f} ms, "
                             f"which any method computes before its second-order work; {best}: the floor alone "
                             f"{'does not rule out' if r['goal_reachable'] else 'rules out'} the "
                             f"{r['required_speedup']:g}x goal here.")
            if r.get("best_exact_speedups"):
                best = ", ".join(f"{c} / exact floor {s:.2f}x" for c, s in r["best_exact_speedups"].items())
                lines.append(f"  Exact floor: that plus one tangent pass of the network on the inner batch "
                             f"({1e3 * r['tangent_seconds']:.1f} ms) = {1e3 * r['exact_floor_seconds']:.1f} ms, the "
                             f"least second-order work of an exact meta-gradient; ours / exact floor "
                             f"{r['ours_over_exact_floor']:.2f}x; {best}: an exact method at this floor "
                             f"{'could reach' if r['exact_goal_reachable'] else 'could not reach'} the "
                             f"{r['required_speedup']:g}x goal here.")
        if any(r["k"] > 1 for r in b["by_k"].values()):
            lines.append("- For K > 1 'ours' is the exact meta-gradient (targets differentiated through the earlier "
                         "updates); TorchOpt and higher, with detached targets, compute the semi-gradient one, "
                         "which 'ours-semi' reproduces.")
    c = out.get("c")
    if c is not None:
        if lines:
            lines.append("")
        what = c["rows"][0]["what"] if c["rows"] else ""
        lines += [f"### (c) Peak memory of one meta-update, ours, fixed data ({c['batch']:,} env steps per rollout; "
                  f"{where}; {what}, fresh process per row)", "",
                  "| estimator | " + " | ".join(f"K={k}" for k in cfg.memory_ks) + " |",
                  "|---|" + "---:|" * len(cfg.memory_ks)]
        for estimator in cfg.memory_estimators:
            rows = {r["k"]: r for r in c["rows"] if r["estimator"] == estimator}
            lines.append(f"| {estimator} MiB | " + " | ".join(f"{rows[k]['peak_mib']:.1f}" for k in cfg.memory_ks)
                         + " |")
            lines.append(f"| {estimator} s | " + " | ".join(f"{rows[k]['seconds']:.2f}" for k in cfg.memory_ks) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    import tyro

    run(tyro.cli(BenchMetaConfig))
