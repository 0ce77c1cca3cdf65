"""The typed configuration of a training run: dataclasses, validated in ``__post_init__``.

The command line (``rlmeta train``) is generated from :class:`TrainConfig` by tyro; a TOML or JSON
file can give the starting values (``--config FILE``), and every run writes its full config as
``config.json`` beside its logs, so ``--resume`` and reproduction read it back.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from rlmeta.catalog import (
    ALGORITHMS, ESTIMATORS, HYPERPARAMETERS, OPTIMIZERS, check_hyperparameter, check_num_updates, learned_bounds,
    learning_start, mixing_weights, to_raw,
)

EnvOption = Union[int, float, bool, str]
# The choices of the catalog's tables, as types the command line offers.
OptimizerName = Literal[OPTIMIZERS]  # type: ignore[valid-type]
EstimatorName = Literal[ESTIMATORS]  # type: ignore[valid-type]
Algorithm = Literal[ALGORITHMS]  # type: ignore[valid-type]


def _positive(where: str, value: float, strict: bool = True) -> None:
    ok = value > 0 if strict else value >= 0
    if not ok or (isinstance(value, float) and not math.isfinite(value)):
        raise ValueError(f"{where} must be {'>' if strict else '>='} 0, got {value!r}")


def _unit(where: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{where} must be in [0, 1], got {value!r}")


@dataclass
class NetworkConfig:
    """Actor-critic network: MLP torso for vectors, a small CNN before it for grids."""

    hidden: tuple[int, ...] = (64, 64)
    """Sizes of the MLP torso's layers."""
    conv_channels: tuple[int, ...] = (16, 32)
    """Channels of the 3x3 convolutions used for grid observations."""
    activation: Literal["tanh", "relu", "elu"] = "tanh"
    init_log_std: float = 0.0
    """Initial log standard deviation of Gaussian policies (continuous actions)."""
    shared_torso: bool = False
    """Policy and value share the MLP torso (False: the value has its own; convolutions stay shared)."""
    channels_first: bool | None = None
    """Image observations are (channels, rows, cols); None: decided from the shape (the shorter end axis is channels)."""
    conv_kernel: int = 3
    """Kernel size of the convolutions (3: padded by 1; others pad as TensorFlow's "SAME")."""
    conv_strides: tuple[int, ...] = ()
    """One stride per convolution (empty: all 1)."""
    value_hidden: tuple[int, ...] = ()
    """Sizes of the value's MLP (empty: as hidden)."""
    value_convs: bool = False
    """The value gets its own convolutions (a separate value network, as the reference Snake agents)."""
    init: Literal["default", "lecun_normal"] = "default"
    """Weights: "default" (torch's layers, orthogonal heads: policy gain 0.01, value 1) or "lecun_normal"
    (every layer, heads included, as Haiku and Flax: truncated normal of variance 1 / fan_in, zero biases)."""

    def __post_init__(self) -> None:
        self.hidden, self.conv_channels = tuple(self.hidden), tuple(self.conv_channels)
        self.conv_strides, self.value_hidden = tuple(self.conv_strides), tuple(self.value_hidden)
        if self.conv_strides and len(self.conv_strides) != len(self.conv_channels):
            raise ValueError(f"network.conv_strides needs one stride per conv layer ({len(self.conv_channels)}), "
                             f"got {self.conv_strides}")
        if any(h < 1 for h in self.value_hidden) or any(s < 1 for s in self.conv_strides) or self.conv_kernel < 1:
            raise ValueError("network.value_hidden, conv_strides and conv_kernel must be >= 1")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError(f"network.hidden must be a non-empty list of sizes >= 1, got {self.hidden}")
        if any(c < 1 for c in self.conv_channels):
            raise ValueError(f"network.conv_channels must be sizes >= 1, got {self.conv_channels}")


@dataclass
class OptimizerConfig:
    """The learner's functional optimizer (``rlmeta.optim``)."""

    name: OptimizerName = "adam"
    lr: float = 2.5e-4
    max_grad_norm: float | None = 0.5
    """Clip gradients to this global norm (None or 0: no clipping; 0 is how a TOML file says none)."""
    anneal_lr: bool = False
    """Decay the learning rate linearly to 0 over ``total_steps``."""
    eps: float = 1e-5
    """Adam's and RMSProp's epsilon."""
    rmsprop_decay: float = 0.99
    momentum: float = 0.0
    """SGD's momentum."""
    eps_root: float = 0.0
    """Adam/RMSProp: epsilon inside the square root (0: as torch.optim). Meta-gradient runs use at
    least 1e-12, which keeps second derivatives finite where a second moment is zero."""

    def __post_init__(self) -> None:
        _positive("optimizer.lr", self.lr)
        if self.max_grad_norm == 0 and not isinstance(self.max_grad_norm, bool):
            self.max_grad_norm = None
        if self.max_grad_norm is not None:
            _positive("optimizer.max_grad_norm", self.max_grad_norm)
        _positive("optimizer.eps", self.eps, strict=False)
        _positive("optimizer.eps_root", self.eps_root, strict=False)
        _unit("optimizer.rmsprop_decay", self.rmsprop_decay)
        _unit("optimizer.momentum", self.momentum)

@dataclass
class HParamsConfig:
    """Hyperparameters the objectives read (the values meta-gradients can later tune)."""

    gamma: float = HYPERPARAMETERS["gamma"].default
    td_lambda: float = HYPERPARAMETERS["lambda"].default
    """Lambda of lambda-returns, GAE and V-trace (``hparams["lambda"]``)."""
    policy_cost: float = HYPERPARAMETERS["policy_cost"].default
    value_cost: float = HYPERPARAMETERS["value_cost"].default
    entropy_cost: float = HYPERPARAMETERS["entropy_cost"].default
    vtrace_alpha: float = HYPERPARAMETERS["vtrace_alpha"].default
    """Leaky V-trace's alpha (1: plain V-trace)."""

    def __post_init__(self) -> None:
        for name, value in self.as_dict().items():  # the catalog's ranges, closed (a fixed value may sit on an end)
            bounds = HYPERPARAMETERS[name].bounds
            if not (isinstance(value, (int, float)) and math.isfinite(value) and bounds.admits(value)):
                field_name = "td_lambda" if name == "lambda" else name
                where = f">= {bounds.low:g}" if math.isinf(bounds.high) else f"in [{bounds.low:g}, {bounds.high:g}]"
                raise ValueError(f"hparams.{field_name} must be {where}, got {value!r}")

    def as_dict(self) -> dict[str, float]:
        """The names the objectives use (``lambda`` for ``td_lambda``)."""
        out = dataclasses.asdict(self)
        out["lambda"] = out.pop("td_lambda")
        return out


@dataclass
class PPOConfig:
    """PPO's clipped surrogate and its epochs x minibatches (also algo lpo's and dpo's epochs, minibatches, value clip
    and advantage normalisation; their clip is lpo's ppo-init eps and the clip_fraction metric's threshold)."""

    clip: float = 0.2
    anneal_clip: bool = False
    """Decay the clip range linearly to 0 over ``total_steps``."""
    epochs: int = 4
    minibatches: int = 4
    value_clip: float | None = None
    normalize_advantages: bool = True

    def __post_init__(self) -> None:
        _positive("ppo.clip", self.clip)
        if self.value_clip is not None:
            _positive("ppo.value_clip", self.value_clip)
        if self.epochs < 1 or self.minibatches < 1:
            raise ValueError(f"ppo.epochs and ppo.minibatches must be >= 1, got {self.epochs} and {self.minibatches}")


@dataclass
class VTraceConfig:
    """V-trace's truncation levels (Espeholt et al. 2018)."""

    rho_bar: float = 1.0
    c_bar: float = 1.0
    pg_rho_bar: float = 1.0

    def __post_init__(self) -> None:
        for name in ("rho_bar", "c_bar", "pg_rho_bar"):
            _positive(f"vtrace.{name}", getattr(self, name))


@dataclass
class MetaConfig:
    """Online meta-gradient tuning of hyperparameters (``--meta.learn gamma lambda``; empty: off)."""

    learn: tuple[str, ...] = ()
    """Hyperparameters to meta-learn: gamma, lambda, policy_cost, value_cost, entropy_cost, lr, vtrace_alpha."""
    init: dict[str, float] = field(default_factory=dict)
    """Initial values (default: the hparams section's, and optimizer.lr for lr)."""
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Narrower intervals for sigmoid-bounded ones, e.g. ``--meta.bounds gamma 0.9 1.0``."""
    estimator: EstimatorName = "one-step"
    num_updates: int = 1
    """K: differentiable inner updates per meta-update."""
    truncation: int | None = None
    """Multi-step only: keep the graph of the last T inner updates."""
    weights: str = "uniform"
    """Mixed only: 'uniform', 'geometric', or K comma-separated numbers."""
    decay: float = 0.5
    """Mixed with geometric weights: w_k proportional to decay ** (K - k)."""
    target_updates: int = 1
    """Bootstrapped only: L further updates that make the target."""
    bmg_value_cost: float = 0.0
    outer_gamma: float = 0.99
    outer_lambda: float = 1.0
    outer_value_cost: float = 0.0
    outer_entropy_cost: float = 0.0
    outer_kl_cost: float = 0.0
    """STAC's KL from the policy before the last inner update."""
    outer_critic: bool = False
    """Debias the outer loss (Bonnet et al. 2022): a second value head, trained alongside the critic
    with outer_gamma and outer_lambda, gives the outer loss its values (instead of the critic of the
    meta-learned discount)."""
    outer_critic_cost: float = 0.5
    """Weight of the outer critic's value loss in the inner loss."""
    outer_critic_trains_torso: bool = False
    """False: the outer critic's value loss trains its own head only, so it cannot change what the
    agent learns (the derivatives through the update stay exact); True: it also trains the torso and
    convolutions it shares with the critic (on Snake 6x6 this lowered the final scores; docs/benchmarks.md)."""
    outer_critic_network: Literal["head", "separate"] = "head"
    """head: the outer critic is a second value head on the value torso; separate: its own network (own
    convolutions and MLP, as the reference code of Bonnet et al.), trained by its loss alone."""
    targets: Literal["exact", "semi"] = "exact"
    """How inner updates after the first are differentiated: exact (their bootstrap values, baselines and
    importance ratios stay functions of the meta-parameters) or semi (held fixed, as Xu et al. 2018 and
    the published code do)."""
    tangent: bool = True
    """Differentiate each unroll's first inner update forward-over-reverse (a plain inner gradient, then one
    tangent pass of the network along the meta-backward's direction and a backward through the loss
    head's own backward: rlmeta.tangent) where it applies; False: reverse-over-reverse everywhere (the
    reference). The same meta-gradient to rounding error; measured 1.89-1.97x plain A2C per iteration
    against 2.26-2.29x at 64 x 16, and equal on the Snake reference setup (docs/benchmarks.md)."""
    tangent_fraction: float = 1.0
    """Below 1: the approximate mode, the tangent pass on this fraction of the sub-envs, drawn at random
    each update: unbiased for A2C (without normalised advantages) and V-trace, noisier (docs/benchmarks.md)."""
    outer_fraction: float = 1.0
    """Below 1: the final outer loss's gradient from this fraction of its rollout's sub-envs, drawn at random each
    meta-update (its own forward and backward on them; unbiased, noisier; docs/benchmarks.md). With
    tangent_fraction, the approximate mode's other half: together they cut both second-order passes. Not for
    the bootstrapped estimator, whose final loss is a matching loss."""
    reuse_outer_rollout: bool = True
    """Learn from the outer loss's fresh rollout in the next meta-update's first inner update (Xu et al. 2018);
    False: collect a new one (the reference code of Bonnet et al.)."""
    condition: bool = False
    """Condition the policy and value on the meta-learned values (Xu et al. 2018): the network takes
    them as an extra input (an embedding joined to the torso's features); the outer loss feeds the
    reference values there (outer_gamma, outer_lambda; the current value for other names)."""
    recompute: bool = False
    """Memory-saving path for large K: store each inner update's inputs only and rebuild one update's
    graph at a time in the backward sweep (same meta-gradient, ~one more update's compute per step)."""
    optimizer: OptimizerName = "adam"
    lr: float = 1e-3
    """The meta-optimizer's learning rate (on the raw, unbounded values)."""
    max_grad_norm: float | None = 1.0
    variance_window: int = 0
    """Log the trace of the meta-gradient covariance over the last N meta-updates (0: off)."""

    def __post_init__(self) -> None:
        self.learn = tuple(self.learn)
        for name in self.learn:
            check_hyperparameter(name)
        if len(set(self.learn)) != len(self.learn):
            raise ValueError(f"meta.learn names a hyperparameter twice: {list(self.learn)}")
        stray = sorted(set(self.init) - set(self.learn))
        if stray:
            raise ValueError(f"meta.init gives {stray}, which meta.learn does not learn ({list(self.learn)})")
        check_num_updates(self.num_updates)
        if self.estimator == "one-step" and self.num_updates != 1:
            raise ValueError(f"the one-step estimator makes one inner update; got num_updates={self.num_updates}")
        if self.truncation is not None and self.estimator != "multi-step":
            raise ValueError("meta.truncation applies to the multi-step estimator only")
        if self.estimator == "mixed":
            mixing_weights(self.num_updates, self.mixing_weights(), self.decay)
        if self.target_updates < 1:
            raise ValueError(f"meta.target_updates must be >= 1, got {self.target_updates}")
        _positive("meta.lr", self.lr)
        if self.max_grad_norm == 0 and not isinstance(self.max_grad_norm, bool):
            self.max_grad_norm = None  # 0: no clipping (TOML has no null)
        if self.max_grad_norm is not None:
            _positive("meta.max_grad_norm", self.max_grad_norm)
        _unit("meta.outer_gamma", self.outer_gamma)
        _unit("meta.outer_lambda", self.outer_lambda)
        if self.condition and not self.learn:
            raise ValueError("meta.condition needs meta.learn: the network is conditioned on the learned values")
        if self.outer_critic and not self.learn:
            raise ValueError("meta.outer_critic needs meta.learn: the outer critic serves the meta-gradient's outer loss")
        if self.outer_critic and self.estimator == "bootstrapped":
            raise ValueError("meta.outer_critic needs an outer actor-critic loss; the bootstrapped estimator has none "
                             "(use one-step, multi-step or mixed)")
        _positive("meta.outer_critic_cost", self.outer_critic_cost)
        if self.outer_critic_trains_torso and not self.outer_critic:
            raise ValueError("meta.outer_critic_trains_torso applies to an outer critic: add meta.outer_critic")
        if self.outer_critic_network == "separate" and not self.outer_critic:
            raise ValueError("meta.outer_critic_network applies to an outer critic: add meta.outer_critic")
        if self.outer_critic_network == "separate" and self.outer_critic_trains_torso:
            raise ValueError("a separate outer critic network shares no torso: drop meta.outer_critic_trains_torso")
        if not (isinstance(self.tangent_fraction, (int, float)) and 0.0 < self.tangent_fraction <= 1.0):
            raise ValueError(f"meta.tangent_fraction must be in (0, 1], got {self.tangent_fraction!r}")
        if self.tangent_fraction < 1.0 and not self.tangent:
            raise ValueError("meta.tangent_fraction < 1 is a mode of the tangent path: it needs meta.tangent True")
        if not (isinstance(self.outer_fraction, (int, float)) and 0.0 < self.outer_fraction <= 1.0):
            raise ValueError(f"meta.outer_fraction must be in (0, 1], got {self.outer_fraction!r}")
        if self.outer_fraction < 1.0 and self.estimator == "bootstrapped":
            raise ValueError("meta.outer_fraction < 1 needs an outer loss on a rollout; the bootstrapped estimator's "
                             "final loss is a matching loss")
        if self.targets not in ("exact", "semi"):
            raise ValueError(f"meta.targets must be 'exact' or 'semi', got {self.targets!r}")
        if self.variance_window < 0 or self.variance_window == 1:
            raise ValueError(f"meta.variance_window must be 0 (off) or >= 2, got {self.variance_window}")

    def mixing_weights(self) -> str | list[float]:
        """``weights`` as mixing_weights() takes it."""
        if self.weights in ("uniform", "geometric"):
            return self.weights
        try:
            return [float(w) for w in self.weights.split(",")]
        except ValueError:
            raise ValueError(f"meta.weights must be 'uniform', 'geometric' or comma-separated numbers, "
                             f"got {self.weights!r}") from None

    @property
    def enabled(self) -> bool:
        """Whether any hyperparameter is meta-learned."""
        return bool(self.learn)

    def reference(self) -> dict[str, float]:
        """The outer objective's reference values of the hyperparameters it fixes (gamma, lambda)."""
        return {"gamma": self.outer_gamma, "lambda": self.outer_lambda}

def _check_compile(config: "TrainConfig") -> None:
    """Raise ValueError, before any work, where ``compile`` cannot apply."""
    if config.algo not in ("ppo", "lpo", "dpo"):
        raise ValueError(f"compile takes the minibatch steps of algo ppo, lpo or dpo; got algo {config.algo!r}")
    if config.meta.enabled:
        raise ValueError("compile applies to plain training: a meta-gradient differentiates through the update, "
                         "which the compiled loss does not")
    if config.device == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++",
                                                                      "clang++")):
        raise ValueError("compile on the CPU needs a C++ compiler (g++, c++ or clang++, or $CXX) on the PATH; "
                         "none was found: install one or train without --compile")


def _check_capture(config: "TrainConfig") -> None:
    """Raise ValueError, before any work, where ``capture`` cannot apply."""
    if config.algo not in ("a2c", "vtrace"):
        raise ValueError(f"capture takes the whole-rollout updates of algo a2c or vtrace; got algo {config.algo!r} "
                         "(ppo, lpo and dpo: --compile)")
    if config.meta.enabled:
        raise ValueError("capture applies to plain training: a meta-update collects its outer rollout between the "
                         "inner update and the outer loss, and is not captured")
    if config.compile:
        raise ValueError("capture and compile exclude each other (capture: a2c, vtrace; compile: ppo, lpo, dpo)")


@dataclass
class TrainConfig:
    """Train an actor-critic agent. ``--config FILE`` (TOML/JSON) sets defaults; ``--resume`` continues a run."""

    env: str = "envpool:CartPole-v1"
    """Env id for ``envs.make`` (see ``rlmeta envs``)."""
    env_options: dict[str, EnvOption] = field(default_factory=dict)
    """Options passed to ``envs.make``, e.g. ``--env-options rows 6 cols 6``."""
    num_envs: int = 8
    num_steps: int = 128
    """Rollout length T per sub-env and update."""
    total_steps: int = 100_000
    """Environment steps (all sub-envs together) to train for."""
    algo: Algorithm = "ppo"
    objective: str | None = None
    """algo lpg: the learned objective (a meta-train run's lpg.pt, a shipped name such as lpg-grid-small).
    algo lpo: a learned drift file (rlmeta.agents.learned.save_lpo), or 'ppo-init' (the default: PPO-clip with ppo.clip)."""
    mode: Literal["sync", "async"] = "sync"
    """sync: act then learn in turn. async: actor threads fill a bounded queue; V-trace corrects their lag."""
    num_actors: int = 2
    """Actor threads in async mode (each with its own ``num_envs`` sub-envs)."""
    queue_size: int = 2
    """Rollouts waiting for the learner in async mode, at most."""
    network: NetworkConfig = field(default_factory=NetworkConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    hparams: HParamsConfig = field(default_factory=HParamsConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    vtrace: VTraceConfig = field(default_factory=VTraceConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    normalize_advantages: bool = False
    """A2C: normalize advantages per rollout."""
    reward_scale: float = 1.0
    """Multiply rewards by this before learning (episode returns are logged unscaled)."""
    seed: int = 0
    device: str = "cpu"
    """``cpu``, ``cuda`` or ``cuda:N``."""
    torch_threads: int = 0
    """Intra-op threads for torch on the CPU (0: half of torch's own default, at least 1 and at most 4, so that
    two runs can share a machine: see rlmeta.agents.runs.set_threads)."""
    compile: bool = False
    """algo ppo, lpo, dpo: run each minibatch's loss (forward and backward) through torch.compile. Compiling
    takes seconds to a minute before the first update (cached across runs); then each gradient step is
    faster (see docs/benchmarks.md). On the CPU it needs a C++ compiler."""
    capture: bool = False
    """algo a2c, vtrace: the update as one CUDA graph, replayed each iteration (static shapes, nothing read
    on the host inside; see rlmeta.capture). On a CPU the same static-shape step runs eagerly (the same
    results; what the tests check)."""
    run_dir: str | None = None
    """Where logs, config, checkpoints and summary go (default: ``runs/<env>-<algo>-s<seed>-<time>``)."""
    resume: bool = False
    """Continue the run in ``run_dir`` from its latest checkpoint (its config.json gives the defaults)."""
    overwrite: bool = False
    """Replace an existing ``run_dir`` instead of refusing to touch it."""
    checkpoint_interval: int = 100_000
    """Write a checkpoint every this many env steps (0: only at the end)."""
    eval_interval: int = 0
    """Evaluate every this many env steps (0: only at the end)."""
    eval_episodes: int = 10
    eval_greedy: bool = True
    """Evaluate the most likely action (the mean for Gaussians) instead of sampling."""
    target_return: float | None = None
    """Stop early once an evaluation's mean return reaches this."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        if not isinstance(self.env, str) or not self.env.strip():
            raise ValueError(f"env must be a non-empty env id, got {self.env!r}")
        for name in ("num_envs", "num_steps", "total_steps", "num_actors", "queue_size", "eval_episodes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("checkpoint_interval", "eval_interval", "torch_threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.algo not in ALGORITHMS:
            raise ValueError(f"algo must be one of {sorted(ALGORITHMS)}, got {self.algo!r}")
        if self.algo == "dpo" and self.objective is not None:
            raise ValueError(f"algo 'dpo' has a fixed, closed-form drift: no --objective (got {self.objective!r}); "
                             "a learned drift is --algo lpo --objective FILE")
        if self.algo == "lpg" and self.objective is None:
            raise ValueError("algo 'lpg' needs --objective (a learned LPG file or shipped name)")
        if self.objective is not None and self.algo not in ("lpg", "lpo"):
            raise ValueError(f"--objective needs --algo lpg or --algo lpo; got algo {self.algo!r}, "
                             f"objective {self.objective!r}")
        if self.algo in ("lpo", "dpo") and self.ppo.anneal_clip:
            raise ValueError(f"ppo.anneal_clip anneals PPO's clip range; algo {self.algo!r} has a drift instead "
                             "(TA-LPO reads the training progress itself)")
        if self.algo == "lpg" and (self.meta.enabled or self.mode == "async"):
            raise ValueError("algo 'lpg' trains with a fixed learned objective: no --meta.learn, sync mode only")
        if self.mode not in ("sync", "async"):
            raise ValueError(f"mode must be 'sync' or 'async', got {self.mode!r}")
        if self.mode == "async" and self.algo in ("ppo", "lpo", "dpo"):
            raise ValueError("mode='async' needs an off-policy correction: use algo='vtrace' (or 'a2c' knowingly)")
        if not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other: resuming keeps the run, overwriting deletes it")
        if self.resume and not self.run_dir:
            raise ValueError("resume needs run_dir: the directory of the run to continue")
        if self.compile:
            _check_compile(self)
        if self.capture:
            _check_capture(self)
        _positive("reward_scale", self.reward_scale)
        if self.meta.enabled:  # initial values inside their bounds, or a ValueError now
            base = {**self.hparams.as_dict(), "lr": self.optimizer.lr}
            for name in self.meta.learn:
                start = learning_start(name, self.meta.init.get(name, base[name]), name in self.meta.init)
                to_raw(name, start, learned_bounds(name, self.meta.bounds.get(name)))
            if self.meta.tangent_fraction < 1.0 and (self.algo not in ("a2c", "vtrace") or
                                                     (self.algo == "a2c" and self.normalize_advantages)):
                raise ValueError("meta.tangent_fraction < 1 needs a loss that is a mean of per-sub-env losses: "
                                 "algo a2c without normalize_advantages, or vtrace "
                                 f"(got algo {self.algo!r}, normalize_advantages {self.normalize_advantages})")
            if "vtrace_alpha" in self.meta.learn:
                if self.algo != "vtrace":
                    raise ValueError(f"meta.learn vtrace_alpha: only algo 'vtrace' reads it (got {self.algo!r})")
                if self.mode != "async":
                    raise ValueError("meta.learn vtrace_alpha needs mode 'async': in sync mode the data is on-policy, "
                                     "every importance ratio is 1 and alpha has no effect, so its meta-gradient is 0")
            stray = sorted(set(self.meta.bounds) - set(self.meta.learn))
            if stray:
                raise ValueError(f"bounds given for hyperparameter(s) {stray} that are not learned")
        if self.algo in ("ppo", "lpo", "dpo") and self.num_envs * self.num_steps < self.ppo.minibatches:
            raise ValueError(f"ppo.minibatches={self.ppo.minibatches} exceeds the {self.num_envs * self.num_steps} "
                             "samples of a rollout (num_envs x num_steps)")
        if self.target_return is not None and not math.isfinite(self.target_return):
            raise ValueError(f"target_return must be a finite number, got {self.target_return!r}")


# --------------------------------------------------------------------------------------------
# Reading and writing configs.


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build the dataclass ``cls`` from a (nested) dict; unknown keys raise ValueError naming them."""
    if not isinstance(data, dict):
        raise ValueError(f"config{' section ' + where if where else ''} must be a table/object, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown config key(s) {[where + k for k in unknown]}; allowed: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            value = from_dict(kind, value, f"{where}{name}.")
        elif get_origin(kind) is tuple or (get_origin(kind) is Union and tuple in map(get_origin, get_args(kind))):
            value = tuple(value) if isinstance(value, list) else value
        kwargs[name] = value
    return cls(**kwargs)


def load_config(path: str | Path, cls: type = TrainConfig) -> Any:
    """Read a TOML or JSON config file into ``cls``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist")
    text = path.read_text()
    if path.suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"config file {str(path)!r} is not valid TOML: {error}") from None
    elif path.suffix == ".json":
        data = json.loads(text)
    else:
        raise ValueError(f"config file must end in .toml or .json, got {str(path)!r}")
    return from_dict(cls, data)


def save_config(config: Any, path: str | Path) -> None:
    """Write ``config`` as JSON (the form ``load_config`` and ``--resume`` read)."""
    Path(path).write_text(json.dumps(to_dict(config), indent=2) + "\n")


@dataclass
class VarianceConfig:
    """What to sample; the run's own config.json gives env, network, objective and optimizer."""

    run_dir: str
    """A training run with checkpoints (``rlmeta train ... --checkpoint-interval N``)."""
    out_dir: str | None = None
    """Where results go (default: ``<run_dir>/variance``; refuses to overwrite without --overwrite)."""
    overwrite: bool = False
    resume: bool = False
    """Continue an interrupted study in ``out_dir``: its finished cells (saved after each one in
    ``progress.pt``) are kept, the others sampled (fresh draws). The study's settings must match."""
    checkpoints: tuple[str, ...] = ()
    """Checkpoint files to use (default: the first, middle and last ckpt-*.pt of the run)."""
    estimators: tuple[str, ...] = ("multi-step", "mixed")
    targets: tuple[str, ...] = ("exact",)
    """How inner updates after the first are differentiated: exact, semi (the published form), or both."""
    ks: tuple[int, ...] = (1, 2, 4, 8)
    samples: int = 20
    reference_samples: int = 40
    reference_k: int = 0
    """Horizon of the reference (0: twice the largest K)."""
    learn: tuple[str, ...] = ()
    """Hyperparameters whose meta-gradient is studied (default: the run's own meta.learn, or gamma and lambda);
    the others stay at the run's values (its meta-learned ones where it learned them)."""
    seed: int = 0
    device: str = "cpu"
    torch_threads: int = 0
    """Intra-op threads for torch on the CPU (0: half of torch's own default, at least 1 and at most 4, so that
    two runs can share a machine: see rlmeta.agents.runs.set_threads)."""

    def __post_init__(self) -> None:
        if not isinstance(self.torch_threads, int) or self.torch_threads < 0:
            raise ValueError(f"torch_threads must be an integer >= 0, got {self.torch_threads!r}")
        self.checkpoints, self.estimators, self.targets = tuple(self.checkpoints), tuple(self.estimators), tuple(self.targets)
        if not self.targets or any(t not in ("exact", "semi") for t in self.targets):
            raise ValueError(f"targets must be some of ['exact', 'semi'], got {list(self.targets)}")
        self.ks, self.learn = tuple(self.ks), tuple(self.learn)
        unknown = [e for e in self.estimators if e not in ESTIMATORS]
        if unknown or not self.estimators:
            raise ValueError(f"estimators must be some of {list(ESTIMATORS)}, got {list(self.estimators)}")
        if not self.ks:
            raise ValueError("ks must name at least one K")
        for k in self.ks:
            check_num_updates(k)
        if self.reference_k:
            check_num_updates(self.reference_k)
        for name in self.learn:
            check_hyperparameter(name)
        if self.samples < 2 or self.reference_samples < 2:
            raise ValueError(f"samples and reference_samples must be >= 2, got {self.samples}, {self.reference_samples}")
        if not Path(self.run_dir, "config.json").is_file():
            raise ValueError(f"{self.run_dir!r} is not a run directory (no config.json)")


# --------------------------------------------------------------------------------------------
# Learned objectives: meta-training LPG on a population of grid-world agents.

# groove's agent lifetimes (agent updates) per level distribution (environments/gridworld/configs.py).
LEVEL_LIFETIMES = {"small": 250, "medium": 1000, "large": 2500, "all": 1000}


@dataclass
class LPGConfig:
    """The LPG network (Oh et al. 2020) and its agent-loss weight."""

    target_width: int = 8
    """m: size of the agent's categorical prediction vector y(s) (groove: 8)."""
    embedding_width: int = 16
    """Width of the MLP that embeds y into a scalar (groove: 16)."""
    gru_width: int = 64
    """Units of the backward GRU (groove: 256; smaller by default to fit a 2-core CPU)."""
    inputs_gamma: bool = True
    """Feed the discount to LPG, as the paper (groove does not)."""
    lifetime_conditioning: bool = False
    """TA-LPG (Jackson et al. 2024): also feed n/N and log N."""
    lifetime_normalised: bool = False
    """es-train, TA-LPG: feed log N mapped to [0, 1] over [lifetime_min, lifetime_max] (an affine map: the
    same information, on n/N's scale, so ES's perturbations of the two inputs' weights weigh alike)
    instead of log N itself (the paper's; in [2.3, 5.5] for lifetimes 10-250)."""
    target_cost: float = 0.5
    """alpha_y: weight of KL(y || y_hat) in the agent's loss (groove: 0.5)."""

    def __post_init__(self) -> None:
        for name in ("target_width", "embedding_width", "gru_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"lpg.{name} must be an integer >= 1, got {value!r}")
        if self.target_width < 2:
            raise ValueError(f"lpg.target_width must be >= 2, got {self.target_width}")
        if self.lifetime_normalised and not self.lifetime_conditioning:
            raise ValueError("lpg.lifetime_normalised scales TA-LPG's lifetime input: it needs lpg.lifetime_conditioning")
        _positive("lpg.target_cost", self.target_cost, strict=False)


@dataclass
class MetaTrainConfig:
    """Meta-train LPG by meta-gradients on a population of tabular grid-world agents (Oh et al. 2020; groove)."""

    levels: str = "small"
    """Level generator the agents' levels are drawn from (``rlmeta.envs.levels.GENERATORS``)."""
    curriculum: Literal["uniform", "groove"] = "uniform"
    """uniform: fresh random levels (domain randomisation); groove: prioritised replay by algorithmic regret."""
    num_agents: int = 32
    """P: agents in the population (groove: 512)."""
    envs_per_agent: int = 16
    """B: sub-envs per agent, all on the agent's level (groove: 64)."""
    num_steps: int = 20
    """Rollout length per agent update (groove: 20)."""
    num_updates: int = 5
    """K: agent updates per meta-update, differentiated through (groove: 5)."""
    lifetime: int = 0
    """Agent updates in one agent lifetime (0: groove's for the level set, e.g. 250 for small)."""
    meta_steps: int = 2000
    """Meta-updates to run."""
    lpg: LPGConfig = field(default_factory=LPGConfig)
    meta_lr: float = 3e-4
    """Adam learning rate of the LPG parameters (groove: 1e-4 with 512 agents; 3e-4 here: a pilot with 32
    agents reached 0.44 by 350 meta-updates at 1e-4, and plateaued at 0.67 from 100 on at 1e-3)."""
    meta_max_grad_norm: float = 0.5
    """Global clipping of the meta-gradient (groove: 0.5)."""
    estimator: EstimatorName = "multi-step"
    """How the K updates are differentiated: multi-step (groove's), mixed (Bonnet et al. 2021), one-step (K=1)."""
    exact: bool = False
    """Differentiate through LPG's inputs (the agent's pi and y) too; False holds them fixed, as groove does."""
    gamma: float = 0.99
    """Discount: LPG's input and the meta-loss's advantage estimation."""
    critic_lambda: float = 0.95
    """GAE lambda of the meta-loss's advantages (groove: 0.95)."""
    policy_entropy_cost: float = 5e-2
    """beta_0: the updated agent's policy entropy in the meta-loss (groove: 5e-2)."""
    target_entropy_cost: float = 1e-3
    """beta_1: the updated agent's prediction entropy (groove: 1e-3)."""
    pi_l2_cost: float = 5e-3
    """beta_2: L2 of LPG's pi_hat (groove: 5e-3)."""
    y_l2_cost: float = 1e-3
    """beta_3: L2 of LPG's y_hat (groove: 1e-3)."""
    agent_lr: float = 40.0
    """SGD rate of the agent's policy table (groove's tabular agents: 40)."""
    prediction_lr: float = 4.0
    """SGD rate of the prediction table (groove: 4)."""
    value_lr: float = 4.0
    """SGD rate of the critic table the meta-loss's advantages use."""
    agent_max_grad_norm: float = 0.5
    """Clipping of each table's gradient (groove: 0.5)."""
    replay_probability: float = 0.5
    """groove curriculum: chance a new agent replays a buffered level instead of a fresh one (groove: 0.5)."""
    buffer_size: int = 1000
    """groove curriculum: levels kept with their scores (groove: 4000)."""
    score_temperature: float = 1.0
    """groove curriculum: temperature of the rank prioritisation (PLR, Jiang et al. 2021)."""
    staleness_weight: float = 0.3
    """groove curriculum: weight of the staleness term in the replay distribution (PLR's rho)."""
    seed: int = 0
    device: str = "cpu"
    torch_threads: int = 0
    """Intra-op threads for torch on the CPU (0: half of torch's own default, at least 1 and at most 4, so that
    two runs can share a machine: see rlmeta.agents.runs.set_threads)."""
    run_dir: str | None = None
    """Where logs, config, checkpoints, curves and the learned LPG go (default: ``runs/lpg-<levels>-s<seed>-<time>``)."""
    resume: bool = False
    overwrite: bool = False
    checkpoint_interval: int = 50
    """Write a checkpoint (and the curves) every this many meta-updates."""
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("num_agents", "envs_per_agent", "num_steps", "num_updates", "meta_steps", "buffer_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("lifetime", "torch_threads", "checkpoint_interval"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.curriculum not in ("uniform", "groove"):
            raise ValueError(f"curriculum must be 'uniform' or 'groove', got {self.curriculum!r}")
        if self.estimator not in ESTIMATORS or self.estimator == "bootstrapped":
            raise ValueError(f"estimator must be 'one-step', 'multi-step' or 'mixed', got {self.estimator!r}")
        if self.estimator == "one-step" and self.num_updates != 1:
            raise ValueError("estimator 'one-step' differentiates one update: set num_updates=1")
        if self.lpg.lifetime_normalised:
            raise ValueError("lpg.lifetime_normalised is es-train's (it maps log N over the lifetimes an ES run draws); "
                             "meta-train trains at one lifetime")
        if self.lifetime == 0 and self.levels not in LEVEL_LIFETIMES:
            raise ValueError(f"levels {self.levels!r} has no default lifetime; set lifetime (agent updates)")
        if self.total_lifetime() < self.num_updates:
            raise ValueError(f"lifetime {self.total_lifetime()} is shorter than one meta-update's {self.num_updates} updates")
        for name in ("gamma", "critic_lambda", "replay_probability"):
            _unit(name, getattr(self, name))
        for name in ("meta_lr", "meta_max_grad_norm", "agent_lr", "prediction_lr", "value_lr", "agent_max_grad_norm",
                     "score_temperature"):
            _positive(name, getattr(self, name))
        for name in ("policy_entropy_cost", "target_entropy_cost", "pi_l2_cost", "y_l2_cost", "staleness_weight"):
            _positive(name, getattr(self, name), strict=False)
        if not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other: resuming keeps the run, overwriting deletes it")
        if self.resume and not self.run_dir:
            raise ValueError("resume needs run_dir: the directory of the run to continue")

    def total_lifetime(self) -> int:
        """Agent updates per lifetime (``lifetime``, or groove's for the level set)."""
        return self.lifetime or LEVEL_LIFETIMES[self.levels]


@dataclass
class LPOConfig:
    """The LPO drift network (Lu et al. 2022) an ES run searches over."""

    hidden: int = 128
    """tanh units of its one hidden layer, no biases (the reference's 128)."""
    lifetime_conditioning: bool = False
    """TA-LPO (Jackson et al. 2024): also the inputs scaled by n/N."""

    def __post_init__(self) -> None:
        if not isinstance(self.hidden, int) or isinstance(self.hidden, bool) or self.hidden < 1:
            raise ValueError(f"lpo.hidden must be an integer >= 1, got {self.hidden!r}")


@dataclass
class ESTrainConfig:
    """Meta-train a learned objective (LPG or TA-LPG on grid worlds; LPO or TA-LPO with PPO inner loops on
    any env) by evolution strategies over whole agent lifetimes (OpenES semantics, Jackson et al. 2024);
    on Ray workers with ``ray``."""

    objective: Literal["lpg", "lpo"] = "lpg"
    """lpg: LPG's network over tabular grid-world lifetimes; lpo: LPO's drift over PPO lifetimes (inner_config)."""
    inner_config: str = "configs/lpo_cartpole_inner.toml"
    """objective lpo: the training config of one lifetime (its algo becomes lpo, the drift the candidate)."""
    inner_steps: int = 0
    """objective lpo: env steps of one lifetime (0: the inner config's total_steps); fitness is the greedy
    evaluation return after it (the inner config's eval_episodes)."""
    lpo: LPOConfig = field(default_factory=LPOConfig)
    levels: str = "small"
    """Level generator each candidate's agents draw their levels from (``rlmeta.envs.levels.GENERATORS``)."""
    lifetime_min: int = 10
    """Shortest agent lifetime (updates). Each generation draws one lifetime log-uniformly from
    [lifetime_min, lifetime_max], shared by its candidates (TA-LPG learns to read it)."""
    lifetime_max: int = 250
    agents_per_candidate: int = 8
    """Agents (each on its own level) a candidate trains for one lifetime; its fitness is their mean
    normalised final return. Both members of an antithetic pair get the same levels and initial agents."""
    popsize: int = 32
    """Candidates per generation (even: antithetic pairs)."""
    sigma: float = 0.1
    """Standard deviation of the perturbations (groove's OpenES: 0.1)."""
    lr: float = 1e-2
    """Adam learning rate of the search distribution's center (groove's OpenES: 1e-2)."""
    sigma_decay: float = 1.0
    """sigma is multiplied by this after every generation, down to sigma_limit (1: constant, groove's;
    evosax's OpenES default, which Lu et al.'s LPO runs used: 0.999 from sigma 0.04 to 0.01)."""
    sigma_limit: float = 0.0
    lr_decay: float = 1.0
    """The same schedule for Adam's learning rate, down to lr_limit (groove: 0.999, limit 1e-5)."""
    lr_limit: float = 0.0
    generations: int = 200
    lpg: LPGConfig = field(default_factory=lambda: LPGConfig(gru_width=16))
    """The LPG network (``lpg.lifetime_conditioning``: TA-LPG). A narrower GRU than meta-train's default:
    ES's estimate degrades with the search space's dimension."""
    envs_per_agent: int = 8
    num_steps: int = 20
    agent_lr: float = 40.0
    prediction_lr: float = 4.0
    value_lr: float = 4.0
    agent_max_grad_norm: float = 0.5
    gamma: float = 0.99
    critic_lambda: float = 0.95
    eval_episodes: int = 8
    """First episodes per agent after its lifetime (actions sampled from its policy)."""
    chunk_size: int = 0
    """Candidates per fitness call (one batched population, and one Ray task); 0: the whole population.
    The same chunks run in process and on Ray, so both give identical results."""
    ray: bool = False
    """Evaluate chunks on Ray workers (a local Ray by default; see ray_address)."""
    ray_address: str | None = None
    """Join this Ray cluster (e.g. 'auto' or 'ray://host:10001') instead of starting a local one."""
    ray_workers: int = 2
    """CPUs of the local Ray started when ray_address is not given."""
    seed: int = 0
    device: str = "cpu"
    torch_threads: int = 0
    """Intra-op threads in process (fitness calls themselves run on one thread, as Ray workers do)."""
    run_dir: str | None = None
    """Where logs, config, checkpoints, the fitness curve and the learned LPG go (default: ``runs/es-...``)."""
    resume: bool = False
    overwrite: bool = False
    checkpoint_interval: int = 5
    """Write a checkpoint (ES state, curve, lpg.pt) every this many generations."""
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("lifetime_min", "lifetime_max", "agents_per_candidate", "popsize", "generations",
                     "envs_per_agent", "num_steps", "eval_episodes", "ray_workers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("chunk_size", "torch_threads", "checkpoint_interval", "inner_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.objective not in ("lpg", "lpo"):
            raise ValueError(f"objective must be 'lpg' or 'lpo', got {self.objective!r}")
        if self.popsize % 2:
            raise ValueError(f"popsize must be even (antithetic pairs), got {self.popsize}")
        if self.chunk_size % 2:
            raise ValueError(f"chunk_size must be even (a pair is evaluated in one call), got {self.chunk_size}")
        if self.lifetime_min > self.lifetime_max:
            raise ValueError(f"lifetime_min {self.lifetime_min} exceeds lifetime_max {self.lifetime_max}")
        if self.lpg.lifetime_normalised and self.lifetime_min == self.lifetime_max:
            raise ValueError("lpg.lifetime_normalised maps log N over [lifetime_min, lifetime_max], which is one "
                             f"lifetime ({self.lifetime_min}) here: the input would not vary")
        for name in ("sigma", "lr", "agent_lr", "prediction_lr", "value_lr", "agent_max_grad_norm"):
            _positive(name, getattr(self, name))
        for name in ("gamma", "critic_lambda"):
            _unit(name, getattr(self, name))
        for name in ("sigma", "lr"):
            decay, limit = getattr(self, f"{name}_decay"), getattr(self, f"{name}_limit")
            if not 0 < decay <= 1:
                raise ValueError(f"{name}_decay must be in (0, 1], got {decay!r}")
            if not 0 <= limit <= getattr(self, name):
                raise ValueError(f"{name}_limit must be in [0, {name}] = [0, {getattr(self, name):g}], got {limit!r}")
        if self.ray_address is not None and not self.ray:
            raise ValueError("ray_address needs --ray")
        if not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other: resuming keeps the run, overwriting deletes it")
        if self.resume and not self.run_dir:
            raise ValueError("resume needs run_dir: the directory of the run to continue")
