"""The typed configuration of a training run: dataclasses, validated in ``__post_init__``.

The command line (``rlmeta train``) is generated from :class:`TrainConfig` by tyro; a TOML or JSON
file can give the starting values (``--config FILE``), and every run writes its full config as
``config.json`` beside its logs, so ``--resume`` and reproduction read it back.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

EnvOption = Union[int, float, bool, str]


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

    def __post_init__(self) -> None:
        self.hidden, self.conv_channels = tuple(self.hidden), tuple(self.conv_channels)
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError(f"network.hidden must be a non-empty list of sizes >= 1, got {self.hidden}")
        if any(c < 1 for c in self.conv_channels):
            raise ValueError(f"network.conv_channels must be sizes >= 1, got {self.conv_channels}")


@dataclass
class OptimizerConfig:
    """The learner's functional optimizer (``rlmeta.optim``)."""

    name: Literal["adam", "rmsprop", "sgd"] = "adam"
    lr: float = 2.5e-4
    max_grad_norm: float | None = 0.5
    """Clip gradients to this global norm (None: no clipping)."""
    anneal_lr: bool = False
    """Decay the learning rate linearly to 0 over ``total_steps``."""
    eps: float = 1e-5
    """Adam's and RMSProp's epsilon."""
    rmsprop_decay: float = 0.99
    momentum: float = 0.0
    """SGD's momentum."""

    def __post_init__(self) -> None:
        _positive("optimizer.lr", self.lr)
        if self.max_grad_norm is not None:
            _positive("optimizer.max_grad_norm", self.max_grad_norm)
        _positive("optimizer.eps", self.eps, strict=False)
        _unit("optimizer.rmsprop_decay", self.rmsprop_decay)
        _unit("optimizer.momentum", self.momentum)

    def build(self):
        """The ``rlmeta.optim.Optimizer`` this config describes."""
        from rlmeta.optim import adam, rmsprop, sgd

        if self.name == "adam":
            return adam(self.lr, eps=self.eps, max_grad_norm=self.max_grad_norm)
        if self.name == "rmsprop":
            return rmsprop(self.lr, decay=self.rmsprop_decay, eps=self.eps, max_grad_norm=self.max_grad_norm)
        return sgd(self.lr, momentum=self.momentum, max_grad_norm=self.max_grad_norm)


@dataclass
class HParamsConfig:
    """Hyperparameters the objectives read (the values meta-gradients can later tune)."""

    gamma: float = 0.99
    td_lambda: float = 0.95
    """Lambda of lambda-returns, GAE and V-trace (``hparams["lambda"]``)."""
    policy_cost: float = 1.0
    value_cost: float = 0.5
    entropy_cost: float = 0.01
    vtrace_alpha: float = 1.0
    """Leaky V-trace's alpha (1: plain V-trace)."""

    def __post_init__(self) -> None:
        _unit("hparams.gamma", self.gamma)
        _unit("hparams.td_lambda", self.td_lambda)
        _unit("hparams.vtrace_alpha", self.vtrace_alpha)
        for name in ("policy_cost", "value_cost", "entropy_cost"):
            _positive(f"hparams.{name}", getattr(self, name), strict=False)

    def as_dict(self) -> dict[str, float]:
        """The names the objectives use (``lambda`` for ``td_lambda``)."""
        out = dataclasses.asdict(self)
        out["lambda"] = out.pop("td_lambda")
        return out


@dataclass
class PPOConfig:
    """PPO's clipped surrogate and its epochs x minibatches."""

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
    algo: Literal["ppo", "a2c", "vtrace"] = "ppo"
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
    normalize_advantages: bool = False
    """A2C: normalize advantages per rollout."""
    reward_scale: float = 1.0
    """Multiply rewards by this before learning (episode returns are logged unscaled)."""
    seed: int = 0
    device: str = "cpu"
    """``cpu``, ``cuda`` or ``cuda:N``."""
    torch_threads: int = 0
    """Intra-op threads for torch on the CPU (0: torch's default)."""
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
        if self.algo not in ("ppo", "a2c", "vtrace"):
            raise ValueError(f"algo must be one of ['a2c', 'ppo', 'vtrace'], got {self.algo!r}")
        if self.mode not in ("sync", "async"):
            raise ValueError(f"mode must be 'sync' or 'async', got {self.mode!r}")
        if self.mode == "async" and self.algo == "ppo":
            raise ValueError("mode='async' needs an off-policy correction: use algo='vtrace' (or 'a2c' knowingly)")
        if not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other: resuming keeps the run, overwriting deletes it")
        if self.resume and not self.run_dir:
            raise ValueError("resume needs run_dir: the directory of the run to continue")
        _positive("reward_scale", self.reward_scale)
        if self.algo == "ppo" and self.num_envs * self.num_steps < self.ppo.minibatches:
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
        data = tomllib.loads(text)
    elif path.suffix == ".json":
        data = json.loads(text)
    else:
        raise ValueError(f"config file must end in .toml or .json, got {str(path)!r}")
    return from_dict(cls, data)


def save_config(config: Any, path: str | Path) -> None:
    """Write ``config`` as JSON (the form ``load_config`` and ``--resume`` read)."""
    Path(path).write_text(json.dumps(to_dict(config), indent=2) + "\n")
