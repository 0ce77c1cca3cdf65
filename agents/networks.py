"""Actor-critic networks for vector and grid observations, usable functionally.

One module, :class:`ActorCritic`, picks its torso from the observation space (an MLP for vectors,
a small CNN for ``(rows, cols, channels)`` grids such as Snake's) and its policy head from the
action space (categorical logits for ``Discrete``, a diagonal Gaussian for ``Box``). It can be
conditioned on the current hyperparameters (an embedding of their values joined to the torso's
features, as in Xu et al. 2018, "Meta-Gradient Reinforcement Learning"), can carry a second
value head, the *outer critic* (Bonnet, Midgley and Laterre 2022, "Debiasing Meta-Gradient RL by
Learning the Outer Value Function": a value of the meta-gradient's outer discount, next to the
one of the meta-learned discount), and can carry extra outputs that learned objectives need
(e.g. LPG's categorical prediction vector).

Learners call it functionally, ``net.apply_params(params, obs, conditioning)`` with ``params`` a
dict of tensors, so an update can be differentiated; objectives read its *named* outputs
(:meth:`ActorCritic.named_outputs`: ``policy``, ``value``, ``log_std``, ``outer_value`` and
each extra head by its name) through an ``rlmeta.rollout.PolicyValue`` adapter
(``rlmeta.agents.actor.make_policy_value``).
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple, Sequence

import gymnasium as gym
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.distributions import Categorical, Distribution, Independent, Normal
from torch.distributions.utils import lazy_property

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU}


class AgentOutput(NamedTuple):
    """Network outputs: policy parameters ``[..., A]``, value ``[...]`` and named extras."""

    policy: Tensor  # logits (discrete) or Gaussian mean (continuous)
    value: Tensor | None  # None when asked for the policy only
    log_std: Tensor | None = None  # continuous actions only, broadcastable to policy
    extras: dict[str, Tensor] | None = None
    outer_value: Tensor | None = None  # [...]: the outer critic's value, for networks that have one


def _conv_stack(channels: int, rows: int, cols: int, conv_channels: tuple[int, ...], kernel: int,
                strides: tuple[int, ...], activation: type[nn.Module]) -> tuple[nn.Sequential, int]:
    """Convolutions (then Flatten) and the number of features they give.

    Kernel 3 with stride 1 pads by 1 on every side (the default network); other kernels and strides
    pad as TensorFlow's and haiku's ``"SAME"`` (output ``ceil(size / stride)``, the extra row and
    column at the end), as the reference Snake networks of Bonnet et al. do.
    """
    if not isinstance(kernel, int) or kernel < 1:
        raise ValueError(f"conv_kernel must be an integer >= 1, got {kernel!r}")
    strides = tuple(strides) or (1,) * len(conv_channels)
    if len(strides) != len(conv_channels) or any(not isinstance(s, int) or s < 1 for s in strides):
        raise ValueError(f"conv_strides must give one stride >= 1 per conv layer ({len(conv_channels)}), got {strides}")
    layers: list[nn.Module] = []
    c_in, h, w = channels, rows, cols
    for c_out, stride in zip(conv_channels, strides):
        if kernel == 3 and stride == 1:
            layers += [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1), activation()]
        else:
            pad_h, pad_w = _same_padding(h, kernel, stride), _same_padding(w, kernel, stride)
            if any(pad_h + pad_w):
                layers.append(nn.ZeroPad2d((pad_w[0], pad_w[1], pad_h[0], pad_h[1])))
            layers += [nn.Conv2d(c_in, c_out, kernel_size=kernel, stride=stride), activation()]
            h, w = -(-h // stride), -(-w // stride)
        c_in = c_out
    return nn.Sequential(*layers, nn.Flatten()), c_in * h * w


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """``(before, after)`` padding of ``"SAME"`` convolution along one axis."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _mlp(sizes: list[int], activation: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers += [nn.Linear(sizes[i], sizes[i + 1]), activation()]
    return nn.Sequential(*layers)


INITS = ("default", "lecun_normal")
_TRUNCATED_STD = 0.87962566103423978  # std of a unit normal truncated to [-2, 2]


def lecun_normal_(module: nn.Module) -> nn.Module:
    """Re-initialise every Linear and Conv2d in ``module`` as Haiku and Flax do by default: weights from
    a normal truncated at two standard deviations, scaled to variance ``1 / fan_in``; biases zero."""
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            fan_in = layer.weight[0].numel()
            std = (1.0 / fan_in) ** 0.5 / _TRUNCATED_STD
            nn.init.trunc_normal_(layer.weight, 0.0, std, -2 * std, 2 * std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module


def _init_linear(layer: nn.Linear, gain: float) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class ActorCritic(nn.Module):
    """Shared-torso actor-critic for one observation and action space (see module docstring)."""

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        hidden: tuple[int, ...] = (64, 64),
        conv_channels: tuple[int, ...] = (16, 32),
        activation: str = "tanh",
        num_hparams: int = 0,
        hparam_embedding: int = 16,
        extra_outputs: dict[str, int] | None = None,
        init_log_std: float = 0.0,
        shared_torso: bool = False,
        outer_critic: bool = False,
        channels_first: bool | None = None,
        outer_critic_network: bool = False,
        conv_kernel: int = 3,
        conv_strides: tuple[int, ...] = (),
        value_hidden: tuple[int, ...] = (),
        value_convs: bool = False,
        init: str = "default",
    ):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if not hidden or any(h < 1 for h in hidden):
            raise ValueError(f"hidden must be a non-empty tuple of positive sizes, got {hidden}")
        act = ACTIVATIONS[activation]
        if isinstance(observation_space, gym.spaces.Dict):
            raise ValueError("dict observations need a key: make the env with a plain array observation")
        shape = observation_space.shape
        self.grid = len(shape) == 3
        self.channels_first = False
        value_hidden = tuple(value_hidden) or tuple(hidden)
        if shared_torso and value_hidden != tuple(hidden):
            raise ValueError(f"a shared torso has one size: value_hidden {value_hidden} differs from hidden {hidden}")
        if value_convs and shared_torso:
            raise ValueError("value_convs gives the value its own convolutions: it cannot share the torso too")
        self.value_conv = None
        if self.grid:  # (rows, cols, channels) or (channels, rows, cols)
            self.channels_first = grid_channels_first(shape) if channels_first is None else bool(channels_first)
            rows, cols, channels = (shape[1], shape[2], shape[0]) if self.channels_first else shape
            stack = lambda: _conv_stack(channels, rows, cols, conv_channels, conv_kernel, conv_strides, act)  # noqa: E731
            self.conv, features = stack()
            value_features = features
            if value_convs:
                self.value_conv, value_features = stack()
            conv_features = value_features
        elif len(shape) == 1:
            if value_convs:
                raise ValueError("value_convs needs image observations (rows, cols, channels)")
            self.conv = None
            features = value_features = conv_features = int(shape[0])
        else:
            raise ValueError(f"observations of shape {shape} are not supported (need (D,) or (rows, cols, C))")
        self.num_hparams = num_hparams
        if num_hparams:
            self.hparam_embed = nn.Sequential(nn.Linear(num_hparams, hparam_embedding), act())
            features += hparam_embedding
            value_features += hparam_embedding
        self.torso = _mlp([features, *hidden], act)
        # shared_torso=False: the value gets its own MLP (the convolutions stay shared unless value_convs),
        # as SB3 and CleanRL do.
        self.value_torso = None if shared_torso else _mlp([value_features, *value_hidden], act)
        width, value_width = hidden[-1], value_hidden[-1]
        if isinstance(action_space, gym.spaces.Discrete):
            self.continuous = False
            self.policy_head = _init_linear(nn.Linear(width, int(action_space.n)), 0.01)
        elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            self.continuous = True
            self.policy_head = _init_linear(nn.Linear(width, action_space.shape[0]), 0.01)
            self.log_std = nn.Parameter(torch.full((action_space.shape[0],), float(init_log_std)))
        else:
            raise ValueError(f"action space {action_space} is not supported (need Discrete or a 1-D Box)")
        self.value_head = _init_linear(nn.Linear(value_width, 1), 1.0)
        # The outer critic (Bonnet et al. 2022): a second value head on the value torso, or its own network
        # (convolutions, MLP and head of the same sizes, reading the observation only), as their reference code.
        if outer_critic_network and not outer_critic:
            raise ValueError("outer_critic_network=True needs outer_critic=True")
        self.outer_value_head = _init_linear(nn.Linear(value_width, 1), 1.0) \
            if outer_critic and not outer_critic_network else None
        self.outer_critic = None
        if outer_critic_network:  # the value network's architecture, its own parameters
            parts: dict[str, nn.Module] = {}
            if self.conv is not None:
                parts["conv"], _ = stack()
            parts["torso"] = _mlp([conv_features, *value_hidden], act)
            parts["head"] = _init_linear(nn.Linear(value_width, 1), 1.0)
            self.outer_critic = nn.ModuleDict(parts)
        self.extra_heads = nn.ModuleDict(
            {name: nn.Linear(width, size) for name, size in (extra_outputs or {}).items()}
        )
        if init == "lecun_normal":
            lecun_normal_(self)

    def forward(self, obs: Tensor, hparams: Tensor | None = None) -> AgentOutput:
        """Outputs for observations ``[N, *obs_shape]`` and optional hyperparameters ``[N, H]`` or ``[H]``."""
        return self.apply_params(dict(self.named_parameters()), obs, hparams)

    def apply_params(
        self, params: dict[str, Tensor], obs: Tensor, hparams: Tensor | None = None, value: bool = True,
        tape: Tape | None = None,
    ) -> AgentOutput:
        """The network with ``params`` (a dict named as ``named_parameters()``) in place of its own.

        A plain functional forward (``F.linear``/``F.conv2d`` on the given tensors), equal to
        ``torch.func.functional_call(self, params, (obs, hparams))`` but without swapping the
        module's tensors: faster, and safe to call from several threads at once. ``value=False``
        skips the value (``output.value`` and ``output.outer_value`` are then None), as acting
        needs only the policy. ``tape``: record the ops for :meth:`Tape.tangents` (unconditioned
        networks only).
        """
        p = params
        if tape is not None and self.num_hparams:
            raise ValueError("a tape records unconditioned networks only (the conditioning input depends on eta)")
        x = image = obs.to(p["value_head.weight"].dtype)
        if self.conv is not None:
            x = _apply(self.conv, "conv", p, _channels_first(x, self.channels_first), tape)
        if self.num_hparams:
            if hparams is None:
                raise ValueError(f"this network is conditioned on {self.num_hparams} hyperparameters; pass hparams")
            h = torch.as_tensor(hparams).to(x.dtype)
            if h.shape[-1] != self.num_hparams:
                raise ValueError(f"hparams must end in a dimension of {self.num_hparams}, got shape {tuple(h.shape)}")
            x = torch.cat([x, _apply(self.hparam_embed, "hparam_embed", p, h.expand(x.shape[0], self.num_hparams))], -1)
        z = _apply(self.torso, "torso", p, x, tape)
        z_value = None
        if value:
            x_value = x
            if self.value_conv is not None:
                x_value = _apply(self.value_conv, "value_conv", p, _channels_first(image, self.channels_first),
                                 tape)
                if self.num_hparams:
                    x_value = torch.cat([x_value, x[:, -self.hparam_embed[0].out_features:]], -1)
            z_value = z if self.value_torso is None else _apply(self.value_torso, "value_torso", p, x_value, tape)
        extras = {name: _linear(p, f"extra_heads.{name}", z, tape) for name in self.extra_heads} or None
        return AgentOutput(
            policy=_linear(p, "policy_head", z, tape),
            value=None if z_value is None else _squeeze(_linear(p, "value_head", z_value, tape), tape),
            log_std=p["log_std"] if self.continuous else None,
            extras=extras,
            outer_value=None if z_value is None else self._outer_value(p, obs, z_value, tape),
        )

    @property
    def has_outer_critic(self) -> bool:
        """Whether the network has an outer critic (a head or its own network)."""
        return self.outer_value_head is not None or self.outer_critic is not None

    def _outer_value(self, p: dict[str, Tensor], obs: Tensor, z_value: Tensor, tape: Tape | None = None
                     ) -> Tensor | None:
        """The outer critic's values ``[N]``: a head on the value torso's features, or its own network."""
        if self.outer_value_head is not None:
            return _squeeze(_linear(p, "outer_value_head", z_value, tape), tape)
        if self.outer_critic is None:
            return None
        x = obs.to(p["outer_critic.head.weight"].dtype)
        if "conv" in self.outer_critic:
            x = _apply(self.outer_critic["conv"], "outer_critic.conv", p, _channels_first(x, self.channels_first),
                       tape)
        z = _apply(self.outer_critic["torso"], "outer_critic.torso", p, x, tape)
        return _squeeze(_linear(p, "outer_critic.head", z, tape), tape)

    def named_outputs(self, params: dict[str, Tensor], obs: Tensor, conditioning: Tensor | None = None
                      ) -> dict[str, Tensor]:
        """The outputs as a dict, each ``[N, ...]``: ``policy``, ``value``, ``log_std`` (continuous actions,
        expanded to the policy's shape), ``outer_value`` (with an outer critic) and every extra head.

        This is the network's ``rlmeta.rollout.Forward``.
        """
        return self._named(self.apply_params(params, obs, conditioning))

    def linearize(self, params: dict[str, Tensor], obs: Tensor, conditioning: Tensor | None = None
                  ) -> tuple[dict[str, Tensor], Callable[[dict[str, Tensor]], dict[str, Tensor]]]:
        """:meth:`named_outputs` and ``jvp(directions) -> d outputs``, which reuses this forward's
        activations (:class:`Tape`). Unconditioned networks only (``conditioning`` must be None)."""
        if conditioning is not None:
            raise ValueError("linearize takes unconditioned networks only")
        tape = Tape(params)
        named = self._named(self.apply_params(params, obs, None, tape=tape))
        return named, lambda directions, names=None, rows=None: tape.tangents(directions, named, names, rows)

    @staticmethod
    def _named(out: AgentOutput) -> dict[str, Tensor]:
        named = {"policy": out.policy, "value": out.value}
        if out.log_std is not None:
            named["log_std"] = out.log_std.expand_as(out.policy)
        if out.outer_value is not None:
            named["outer_value"] = out.outer_value
        named.update(out.extras or {})
        return named


def grid_channels_first(shape: tuple[int, ...]) -> bool:
    """Whether a ``(a, b, c)`` image observation is channels-first: its first axis is shorter than its last
    (``(3, 10, 10)``: channels first; ``(12, 12, 5)``: channels last, gymnasium's convention, also on ties)."""
    return shape[0] < shape[-1]


def _channels_first(image: Tensor, channels_first: bool) -> Tensor:
    """``[N, C, H, W]`` in memory order (a copy of a channels-last observation, whose permuted view would
    make every activation channels-last): this torch's convolutions run about 20% faster forward and in
    forward mode on contiguous NCHW inputs here (Snake 6x6, 1088 observations: 3.6 vs 4.5 ms for the
    network, 6.5 vs 7.4 ms for its tangent), the same in reverse, and the flatten after them is a view.
    It also keeps ReLU's backward off mismatched layouts: a channels-last activation given the flatten's
    contiguous gradient takes 2.9 ms against 0.27 at [1088, 16, 6, 6]."""
    return image if channels_first else image.movedim(-1, -3).contiguous()


def _apply(seq: nn.Sequential, prefix: str, params: dict[str, Tensor], x: Tensor, tape: "Tape | None" = None
           ) -> Tensor:
    """Run ``seq`` (Linear, Conv2d, ZeroPad2d, Flatten and activations) with the tensors in ``params``
    (recording each op on ``tape`` if given)."""
    for i, module in enumerate(seq):
        if isinstance(module, nn.Linear):
            x = _linear(params, f"{prefix}.{i}", x, tape)
        elif isinstance(module, nn.Conv2d):
            y = F.conv2d(x, params[f"{prefix}.{i}.weight"], params[f"{prefix}.{i}.bias"], module.stride, module.padding)
            if tape is not None:
                tape.record("conv", x, y, f"{prefix}.{i}", (module.stride, module.padding))
            x = y
        elif isinstance(module, nn.Flatten):
            y = x.flatten(module.start_dim, module.end_dim)
            if tape is not None:
                tape.record("flatten", x, y, None, (module.start_dim, module.end_dim))
            x = y
        elif isinstance(module, nn.ZeroPad2d):
            y = module(x)
            if tape is not None:
                tape.record("pad", x, y, None, tuple(module.padding))
            x = y
        else:  # a parameter-free activation (Tanh and ReLU called as their functions: no module call)
            kind = type(module)
            if kind is nn.Tanh:
                y = torch.tanh(x)
            elif kind is nn.ReLU and not module.inplace:
                y = torch.relu(x)
            else:
                y = module(x)
            if tape is not None:
                tape.record("act", x, y, None, type(module).__name__)
            x = y
    return x


def _squeeze(x: Tensor, tape: "Tape | None") -> Tensor:
    y = x.squeeze(-1)
    if tape is not None:
        tape.record("squeeze", x, y, None, None)
    return y


def _linear(params: dict[str, Tensor], prefix: str, x: Tensor, tape: "Tape | None") -> Tensor:
    y = F.linear(x, params[f"{prefix}.weight"], params[f"{prefix}.bias"])
    if tape is not None:
        tape.record("linear", x, y, prefix, None)
    return y


class Tape:
    """The ops and primal values of one forward pass, for tangents that reuse them.

    :meth:`ActorCritic.linearize` records the forward on a tape; :meth:`tangents` then gives the
    outputs' directional derivatives along parameter directions without running the forward
    again: each layer's tangent from its saved input and output (a Linear or Conv2d layer
    computes ``W dx + dW x + db`` as one op on the inputs joined along the feature or channel
    axis; an activation multiplies by its derivative, read off its output). This is the tangent
    pass of the forward-over-reverse meta-gradient (``rlmeta.tangent``).
    """

    def __init__(self, params: dict[str, Tensor]):
        self.params = {k: v.detach() for k, v in params.items()}
        self.ops: list[tuple[str, Tensor, Tensor, str | None, object]] = []
        self._pruned: dict[frozenset[int], list[tuple[str, Tensor, Tensor, str | None, object]]] = {}

    def record(self, kind: str, x: Tensor, y: Tensor, key: str | None, extra: object) -> None:
        # The tensors themselves (not detached copies): the tape links ops by their identities, which
        # stay unique while it holds them.
        self.ops.append((kind, x, y, key, extra))

    def _needed(self, outputs: dict[str, Tensor]) -> list[tuple[str, Tensor, Tensor, str | None, object]]:
        """The ops that some of ``outputs`` depends on, in recorded order."""
        wanted = {id(v) for v in outputs.values()}
        key = frozenset(wanted)
        cached = self._pruned.get(key)
        if cached is None:
            cached = []
            for op in reversed(self.ops):
                if id(op[2]) in wanted:
                    cached.append(op)
                    wanted.add(id(op[1]))
            cached.reverse()
            self._pruned[key] = cached
        return cached

    def tangents(self, directions: dict[str, Tensor], outputs: dict[str, Tensor],
                 names: Sequence[str] | None = None, rows: Tensor | None = None) -> dict[str, Tensor]:
        """d outputs along ``directions`` (one tensor per parameter, named as the parameters).

        ``names``: only these outputs (the ops that none of them reads are skipped: an outer
        critic's own network when the inner loss's tangent needs the policy and value only).
        ``rows``: only these rows of every output (the tangent pass then runs on those inputs alone:
        the approximate mode of ``rlmeta.tangent``)."""
        p, tan = self.params, {}
        if names is not None:
            outputs = {name: outputs[name] for name in names}
        picked: dict[int, Tensor] = {}

        def primal(t: Tensor) -> Tensor:
            if rows is None:
                return t.detach()
            if id(t) not in picked:
                picked[id(t)] = t.detach().index_select(0, rows)
            return picked[id(t)]

        for kind, x, original, key, extra in self._needed(outputs):
            dx = tan.get(id(x))
            if kind in ("linear", "conv"):
                x = primal(x)
            elif kind == "act" and dx is not None:
                y = primal(original)
            if kind == "linear":
                w, dw, db = p[f"{key}.weight"], directions[f"{key}.weight"], directions[f"{key}.bias"]
                dy = F.linear(x, dw, db)
                if dx is not None:  # + W dx, accumulated in place (no joined copy of x and dx)
                    if dy.dim() == 2:
                        dy.addmm_(dx, w.t())
                    else:
                        dy = dy + F.linear(dx, w)
            elif kind == "conv":
                w, dw, db = p[f"{key}.weight"], directions[f"{key}.weight"], directions[f"{key}.bias"]
                if dx is None:
                    dy = F.conv2d(x, dw, db, *extra)  # type: ignore[misc]
                else:  # dW * x + W * dx as one convolution on the joined channels (NCHW activations, see
                    # _channels_first: two block copies; 2.9 vs 3.2 ms for two convolutions at [1088, 16, 6, 6])
                    dy = F.conv2d(torch.cat([x, dx], 1), torch.cat([dw, w], 1), db, *extra)  # type: ignore[misc]
            elif dx is None:
                continue  # an op on something that does not depend on the parameters
            elif kind == "act":  # the activations' own backward kernels, read off their outputs: one pass each
                if extra == "ReLU":
                    dy = torch.ops.aten.threshold_backward(dx, y, 0)
                elif extra == "Tanh":
                    dy = torch.ops.aten.tanh_backward(dx, y)
                elif extra == "ELU":  # alpha = 1: the derivative is exp(x) = y + 1 where x <= 0
                    dy = torch.ops.aten.elu_backward(dx, 1.0, 1.0, 1.0, True, y)
                else:
                    raise NotImplementedError(f"no tangent for activation {extra}")
            elif kind == "flatten":
                dy = dx.flatten(*extra)  # type: ignore[misc]
            elif kind == "pad":
                dy = F.pad(dx, extra)  # type: ignore[arg-type]
            elif kind == "squeeze":
                dy = dx.squeeze(-1)
            else:
                raise NotImplementedError(kind)
            tan[id(original)] = dy
        out = {}
        for name, value in outputs.items():
            shape = value.shape if rows is None else (rows.numel(), *value.shape[1:])
            if name == "log_std":
                out[name] = directions["log_std"].expand(shape)
            else:
                out[name] = tan[id(value)] if id(value) in tan else value.new_zeros(shape)
        return out


class _Categorical(Categorical):
    """torch's Categorical, with ``log_prob`` of values shaped as its batch (the usual case) as one gather:
    the same values and gradient as the parent's, without its broadcasting ops; and ``probs`` as the
    exponential of the normalised logits, which is the softmax (to rounding) in one op instead of
    torch's softmax kernel, slow over a few actions (``rlmeta.ops``)."""

    @lazy_property
    def probs(self) -> Tensor:  # type: ignore[override]
        return self.logits.exp()

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args or value.shape != self._batch_shape:
            return super().log_prob(value)
        return self.logits.gather(-1, value.long().unsqueeze(-1)).squeeze(-1)


def distribution(output: AgentOutput) -> Distribution:
    """The policy distribution of network outputs (Categorical, or a diagonal Normal)."""
    if output.log_std is None:
        return _Categorical(logits=output.policy, validate_args=False)
    scale = output.log_std.exp().expand_as(output.policy)
    return Independent(Normal(output.policy, scale, validate_args=False), 1, validate_args=False)


def named_distribution(outputs: Mapping[str, Tensor]) -> Distribution:
    """The policy distribution of :meth:`ActorCritic.named_outputs` (Categorical, or a diagonal Normal)."""
    if "log_std" not in outputs:
        return _Categorical(logits=outputs["policy"], validate_args=False)
    return Independent(Normal(outputs["policy"], outputs["log_std"].exp(), validate_args=False), 1,
                       validate_args=False)



class TabularAgent(nn.Module):
    """Tables over a discrete observation (an ``index`` into ``num_states``): the tabular agents of LPG
    and groove (a linear layer without bias on a one-hot state, written as a table lookup).

    Outputs, each a row of its table: ``policy`` logits ``[A]``, ``value`` (a scalar; the critic
    a meta-loss's advantages use), and, with ``prediction=m``, LPG's prediction vector as ``m``
    logits. Initialisation as groove's (flax's ``lecun_normal`` on a one-hot input: normal with
    standard deviation ``1/sqrt(num_states)``); the value table starts at zero.
    """

    def __init__(self, num_states: int, num_actions: int, prediction: int = 0):
        super().__init__()
        for name, value in (("num_states", num_states), ("num_actions", num_actions)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TabularAgent {name} must be an integer >= 1, got {value!r}")
        if not isinstance(prediction, int) or prediction < 0 or prediction == 1:
            raise ValueError(f"TabularAgent prediction must be 0 (none) or an integer >= 2, got {prediction!r}")
        scale = num_states ** -0.5
        self.num_states, self.num_actions = num_states, num_actions
        self.policy = nn.Parameter(torch.randn(num_states, num_actions) * scale)
        self.value = nn.Parameter(torch.zeros(num_states))
        self.prediction = nn.Parameter(torch.randn(num_states, prediction) * scale) if prediction else None

    @classmethod
    def for_spaces(cls, observation_space: gym.Space, action_space: gym.Space, prediction: int = 0) -> "TabularAgent":
        """The agent for a ``Discrete`` observation (e.g. ``grid`` with ``obs="index"``) and action space."""
        if not isinstance(observation_space, gym.spaces.Discrete) or not isinstance(action_space, gym.spaces.Discrete):
            raise ValueError(f"a tabular agent needs Discrete observations and actions (e.g. envs.make('grid', "
                             f"obs='index')), got {observation_space} and {action_space}")
        return cls(int(observation_space.n), int(action_space.n), prediction)

    def named_outputs(self, params: dict[str, Tensor], obs: Tensor, conditioning: Tensor | None = None
                      ) -> dict[str, Tensor]:
        """``policy [N, A]``, ``value [N]`` and ``prediction [N, m]`` for observations ``[N]`` (state indices).

        This is the network's ``rlmeta.rollout.Forward``; ``conditioning`` is not read.
        """
        index = obs.reshape(-1).long()
        out = {"policy": params["policy"][index], "value": params["value"][index]}
        if "prediction" in params:
            out["prediction"] = params["prediction"][index]
        return out

    def population_outputs(self, params: dict[str, Tensor], obs: Tensor, agents: Tensor) -> dict[str, Tensor]:
        """:meth:`named_outputs` of a population (tables ``[P, S, ...]``), each row ``obs [N]`` read from
        the tables of its agent ``agents [N]``: one gather per output (``rlmeta.rollout.Population.forward``)."""
        rows = agents.long() * self.num_states + obs.reshape(-1).long()  # row of the [P * S, ...] tables
        return {name: params[name].flatten(0, 1).index_select(0, rows)
                for name in ("policy", "value", "prediction") if name in params}
