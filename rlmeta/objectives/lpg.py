"""Learned Policy Gradient: Oh et al. 2020, "Discovering Reinforcement Learning Algorithms" (LPG),
with the temporally-aware inputs of Jackson et al. 2024 (TA-LPG) as an option.

The agent has a policy ``pi(a|s)`` and a prediction vector ``y(s)``, a categorical distribution
over ``m`` entries (the network's extra output named ``prediction``, as logits) whose meaning
nobody fixes: the learned objective decides what it predicts. The objective is a small network
``eta``: a GRU run backward in time over each trajectory of a rollout (its state reset where an
episode ended), reading per step

    x_t = [r_t, d_t, gamma, pi(a_t|s_t), phi(y(s_t)), phi(y(s_t+1))]   (+ [n/N, log N] for TA-LPG)

(``phi`` a small MLP from ``m`` to a scalar; ``d_t`` 1 where the episode terminated, ``y(s_t+1)``
zero there, the true final observation's where a time limit cut it) and giving per step a scalar
``pi_hat_t`` and a categorical ``y_hat_t``. The agent's loss is

    L(theta) = E[ log pi_theta(a_t|s_t) * pi_hat_t ] + alpha_y E[ KL(y_theta(s_t) || y_hat_t) ]

(minimised: ``pi_hat = -G_t`` gives REINFORCE). The inputs ``pi``, ``y(s_t)``, ``y(s_t+1)`` are
the agent's held fixed, like an actor-critic's bootstrap targets: detached in the published
semi-gradient form, exact functions of the parameters (``LossContext.exact``) for exact
meta-gradients.

``eta`` is a parameter tree: meta-learned it is a ``MetaParams`` tree (``trees={"lpg": ...}``,
read from ``hparams["lpg"]``); a trained one can be given to the objective to use as is.

Differences from the ``groove`` reference implementation (Jackson et al. 2023), each on purpose:
``gamma`` is an input as in the paper (groove omits it; ``inputs_gamma=False`` drops it); a time
limit is not a termination (groove's grid worlds report it as ``done`` and zero the next
prediction; here the true final observation's prediction is read, as every objective of this
package bootstraps); the GRU is PyTorch's cell (flax's differs in where one bias sits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from rlmeta.objectives.actor_critic import DEFAULT_HPARAMS, OuterCritic
from rlmeta.objectives.base import PLAIN, HParams, Loss, LossContext, Objective
from rlmeta.ops import log_softmax, softmax
from rlmeta.rollout import Params, PolicyValue, Rollout

PREDICTION = "prediction"  # the network output LPG reads as y(s) (logits over m entries)


@dataclass(frozen=True)
class LPGNetwork:
    """The shape of an LPG network (``eta``): prediction size ``m``, embedding and GRU widths, inputs.

    ``embedding_width`` 16, ``gru_width`` 256, ``target_width`` 8 are groove's defaults.
    """

    target_width: int = 8
    embedding_width: int = 16
    gru_width: int = 256
    inputs_gamma: bool = True
    lifetime_conditioning: bool = False  # TA-LPG: also n/N and log N
    # TA-LPG's lifetime input as (log N - log lo) / (log hi - log lo): 0 to 1 over the lifetimes
    # [lo, hi] it meta-trains on (an affine map of log N, so the same information; the scale of n/N's,
    # so an evolution strategy's perturbations move both inputs alike). None: log N itself, the paper's.
    lifetime_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        for name in ("target_width", "embedding_width", "gru_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"LPGNetwork.{name} must be an integer >= 1, got {value!r}")
        if self.target_width < 2:
            raise ValueError(f"LPGNetwork.target_width must be >= 2 (a categorical), got {self.target_width}")
        if self.lifetime_range is not None:
            if not self.lifetime_conditioning:
                raise ValueError("LPGNetwork.lifetime_range scales the lifetime input: it needs lifetime_conditioning")
            low, high = self.lifetime_range
            if not 1 <= low < high:
                raise ValueError(f"LPGNetwork.lifetime_range must be (lo, hi) with 1 <= lo < hi, got {self.lifetime_range}")
            object.__setattr__(self, "lifetime_range", (float(low), float(high)))

    def lifetime_input(self, lifetime: float) -> float:
        """The value TA-LPG reads for a lifetime of N updates: log N, or its map by ``lifetime_range``."""
        value = math.log(max(float(lifetime), 1.0))
        if self.lifetime_range is None:
            return value
        low, high = (math.log(v) for v in self.lifetime_range)
        return (value - low) / (high - low)

    @property
    def input_size(self) -> int:
        """Per-step inputs: reward, terminal flag, pi(a|s), two embeddings (+ gamma, + n/N and log N)."""
        return 5 + int(self.inputs_gamma) + 2 * int(self.lifetime_conditioning)

    def init(self, seed: int = 0, dtype: torch.dtype = torch.float32) -> Params:
        """Initial parameters (PyTorch's default initialisation of each layer), seeded.

        A TA-LPG (``lifetime_conditioning``) starts as the LPG of the same seed: the same draws for
        every parameter, and zero GRU input weights on n/N and log N, so that at initialisation it
        computes that LPG's function (to rounding) whatever the lifetime. A comparison of the two at equal
        budget then starts from one point (with random weights on log N, in [2.3, 5.5] for lifetimes
        10-250, the TA-LPG started elsewhere: measured 0.02 initial ES fitness against LPG's 0.14),
        and what it learns from time, it learns.
        """
        if self.lifetime_conditioning:
            base = replace(self, lifetime_conditioning=False, lifetime_range=None).init(seed, dtype)
            weight = base["gru.weight_ih"]
            base["gru.weight_ih"] = torch.cat([weight, weight.new_zeros(weight.shape[0], 2)], dim=1)
            return base
        generator = torch.Generator().manual_seed(seed)
        shapes = self.shapes()
        params: Params = {}
        for name, shape in shapes.items():
            fan_in = shape[-1] if len(shape) > 1 else shapes[name.replace("bias", "weight")][-1]
            if name.startswith("gru."):
                bound = 1.0 / math.sqrt(self.gru_width)  # torch.nn.GRUCell's
            else:
                bound = 1.0 / math.sqrt(fan_in)  # torch.nn.Linear's (kaiming-uniform with a = sqrt(5))
            params[name] = (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1).mul(bound).to(dtype)
        return params

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's shape, by name."""
        e, h, m = self.embedding_width, self.gru_width, self.target_width
        return {
            "embed.0.weight": (e, m), "embed.0.bias": (e,), "embed.1.weight": (1, e), "embed.1.bias": (1,),
            "gru.weight_ih": (3 * h, self.input_size), "gru.weight_hh": (3 * h, h),
            "gru.bias_ih": (3 * h,), "gru.bias_hh": (3 * h,),
            "pi_head.weight": (1, h), "pi_head.bias": (1,), "y_head.weight": (m, h), "y_head.bias": (m,),
        }

    def check(self, params: Params, grouped: bool = False) -> None:
        """Raise ValueError unless ``params`` has exactly this network's parameters and shapes
        (``grouped``: with one leading axis of any common size G, one LPG per group)."""
        expected = self.shapes()
        got = {k: tuple(v.shape) for k, v in params.items()}
        if grouped:
            sizes = {shape[0] for shape in got.values() if shape}
            if len(sizes) != 1 or any(not shape for shape in got.values()):
                raise ValueError(f"grouped LPG parameters need one common leading axis, got shapes {got}")
            got = {k: shape[1:] for k, shape in got.items()}
        if got != expected:
            missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
            wrong = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
            raise ValueError(f"LPG parameters do not fit {self}: missing {missing}, unexpected {extra}, "
                             f"wrong shapes {[(k, got[k], expected[k]) for k in wrong]}")

    def is_grouped(self, params: Params) -> bool:
        """Whether ``params`` hold G LPGs along a leading axis (see :meth:`__call__`)."""
        return params["pi_head.weight"].dim() == 3

    def __call__(self, params: Params, rewards: Tensor, terminated: Tensor, ended: Tensor, gamma: Tensor | float,
                 pi: Tensor, y: Tensor, next_y: Tensor, progress: float = 0.0, lifetime: float = 1.0
                 ) -> tuple[Tensor, Tensor]:
        """``(pi_hat [T, B], y_hat [T, B, m])`` for a rollout's ``[T, B]`` rewards, terminal flags,
        episode ends (terminated or truncated: where the GRU state resets), discount, ``pi(a_t|s_t)``
        and predictions ``y(s_t)``, ``y(s_t+1)`` (``[T, B, m]``, probabilities). ``progress``: n/N;
        ``lifetime``: N (TA-LPG only).

        Grouped parameters (every tensor with a leading axis G, e.g. the candidates of an evolution
        strategy) apply LPG ``g`` to the ``g``-th of G equal contiguous column blocks of the batch
        (one vmapped call; column block ``g`` gives the same outputs as a call with LPG ``g`` alone).
        """
        if self.is_grouped(params):
            groups, columns = params["pi_head.weight"].shape[0], rewards.shape[1]
            if columns % groups:
                raise ValueError(f"{groups} grouped LPGs need a batch divisible by {groups}, got {columns} columns")

            def split(t: Tensor) -> Tensor:
                return t.reshape(t.shape[0], groups, columns // groups, *t.shape[2:])

            def one(p: Params, *tensors: Tensor) -> tuple[Tensor, Tensor]:
                return self(p, *tensors[:3], gamma, *tensors[3:], progress=progress, lifetime=lifetime)

            pi_hat, y_hat = torch.func.vmap(one, in_dims=(0, 1, 1, 1, 1, 1, 1), out_dims=1)(
                params, *map(split, (rewards, terminated, ended, pi, y, next_y)))
            return pi_hat.reshape(pi_hat.shape[0], columns), y_hat.reshape(y_hat.shape[0], columns, -1)
        p = params

        def embed(v: Tensor) -> Tensor:
            hidden = F.relu(F.linear(v, p["embed.0.weight"], p["embed.0.bias"]))
            return F.linear(hidden, p["embed.1.weight"], p["embed.1.bias"])

        columns = [rewards[..., None], terminated[..., None], pi[..., None], embed(y),
                   embed(next_y) * (1.0 - terminated[..., None])]
        if self.inputs_gamma:
            columns.append(torch.as_tensor(gamma, dtype=rewards.dtype, device=rewards.device).expand_as(rewards)[..., None])
        if self.lifetime_conditioning:
            columns.append(torch.full_like(rewards, float(progress))[..., None])
            columns.append(torch.full_like(rewards, self.lifetime_input(lifetime))[..., None])
        x = torch.cat(columns, dim=-1)  # [T, B, D]
        num_steps = x.shape[0]
        h = x.new_zeros(*x.shape[1:-1], self.gru_width)
        keep = 1.0 - ended
        states = []
        for t in reversed(range(num_steps)):  # backward in time: the state carries what follows t
            h = _gru_cell(x[t], h * keep[t][..., None], p)
            states.append(h)
        z = F.relu(torch.stack(states[::-1]))
        pi_hat = F.linear(z, p["pi_head.weight"], p["pi_head.bias"]).squeeze(-1)
        y_hat = softmax(F.linear(z, p["y_head.weight"], p["y_head.bias"]))
        return pi_hat, y_hat


def _gru_cell(x: Tensor, h: Tensor, p: Params) -> Tensor:
    """One step of PyTorch's GRU cell (``torch.nn.GRUCell``), written out so it differentiates twice and vmaps."""
    gi = F.linear(x, p["gru.weight_ih"], p["gru.bias_ih"])
    gh = F.linear(h, p["gru.weight_hh"], p["gru.bias_hh"])
    i_r, i_z, i_n = gi.chunk(3, -1)
    h_r, h_z, h_n = gh.chunk(3, -1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1.0 - z) * n + z * h


@dataclass
class LPGOutputs:
    """What LPG made of a rollout: its targets, and the agent's predictions they were computed from."""

    pi_hat: Tensor  # [T, B]
    y_hat: Tensor  # [T, B, m]
    logp: Tensor  # [T, B] log pi(a_t|s_t), the agent's prediction (with gradient)
    y_logits: Tensor  # [T, B, m] the agent's prediction vector y(s_t) as logits (with gradient)
    entropy: Tensor  # [T, B] the policy's entropy


class LPG(Objective):
    """The LPG agent loss (see the module docstring) as an :class:`~rlmeta.objectives.Objective`.

    * ``policy_value``: the agent's adapter; it must read the prediction output by name
      (``extras=("prediction",)``).
    * ``network``: the LPG network's shape; ``params``: its parameters when they are not
      meta-learned (otherwise ``hparams[tree]`` holds them and takes precedence).
    * ``target_cost``: ``alpha_y``, the weight of the prediction's KL term (groove: 0.5).
    * ``outer_critic``: a value head the objective also trains, restricted to its own parameters,
      for a meta-loss's advantages (groove trains a separate value critic for them).
    * ``lifetime``: N, the agent's lifetime in updates (TA-LPG reads n/N from ``progress``).
    * ``grouped``: ``params`` hold G LPGs along a leading axis, LPG ``g`` applied to the ``g``-th of
      G equal column blocks of each rollout (a population of agents split among G candidates).
    """

    def __init__(self, policy_value: PolicyValue, network: LPGNetwork = LPGNetwork(), params: Params | None = None,
                 tree: str = "lpg", target_cost: float = 0.5, outer_critic: OuterCritic | None = None,
                 prediction: str = PREDICTION, lifetime: float = 1.0, grouped: bool = False):
        if prediction not in policy_value.extras:
            raise ValueError(f"LPG reads the network output {prediction!r}; give the adapter extras=({prediction!r},) "
                             f"(it reads {list(policy_value.extras)})")
        if not target_cost >= 0:
            raise ValueError(f"target_cost must be >= 0, got {target_cost!r}")
        if outer_critic is not None:
            outer_critic.check(policy_value)
        if params is not None:
            network.check(params, grouped=True) if grouped else network.check(params)
        self.policy_value, self.network, self.params, self.tree = policy_value, network, params, tree
        self.target_cost, self.outer_critic, self.prediction, self.lifetime = target_cost, outer_critic, prediction, lifetime

    def lpg_params(self, hparams: HParams) -> Params:
        """The LPG parameters to use: the meta-learned tree in ``hparams``, else the objective's own."""
        if self.tree in hparams:
            return hparams[self.tree]
        if self.params is None:
            raise ValueError(f"LPG has no parameters: meta-learn them as the tree {self.tree!r} or pass params=")
        return self.params

    def outputs(self, params: Params, rollout: Rollout, hparams: HParams, progress: float = 0.0,
                context: LossContext = PLAIN) -> tuple[LPGOutputs, object, object]:
        """LPG's targets on ``rollout`` for the agent ``params``, with the evaluations they came from."""
        ev, fixed = context.evaluate(self.policy_value, params, rollout, hparams)
        y = softmax(fixed.extras[self.prediction])
        next_y = softmax(fixed.next_extras[self.prediction])
        ended = torch.clamp(rollout.terminated + rollout.truncated, max=1.0)
        gamma = hparams["gamma"] if "gamma" in hparams else DEFAULT_HPARAMS["gamma"]
        pi_hat, y_hat = self.network(self.lpg_params(hparams), rollout.rewards, rollout.terminated, ended, gamma,
                                     fixed.logp.exp(), y, next_y, progress, self.lifetime)
        return LPGOutputs(pi_hat, y_hat, ev.logp, ev.extras[self.prediction], ev.entropy), ev, fixed

    def __call__(self, params: Params, rollout: Rollout, hparams: HParams, progress: float = 0.0,
                 context: LossContext = PLAIN) -> Loss:
        """``E[log pi * pi_hat] + target_cost * E[KL(y || y_hat)]`` (+ the critic's restricted term)."""
        out, ev, fixed = self.outputs(params, rollout, hparams, progress, context)
        policy_loss = (out.logp * out.pi_hat).mean()
        kl = kl_to_target(out.y_logits, out.y_hat).mean()
        loss = policy_loss + self.target_cost * kl
        metrics = {"policy_loss": float(policy_loss.detach()), "target_kl": float(kl.detach()),
                   "pi_hat_l2": float((out.pi_hat.detach() ** 2).mean()),
                   "y_hat_l2": float((out.y_hat.detach() ** 2).sum(-1).mean()),
                   "entropy": float(out.entropy.detach().mean())}
        if self.outer_critic is not None:
            return self.outer_critic.add(loss, self.outer_critic.loss(ev, fixed, rollout), metrics)
        return Loss(loss, metrics)


def kl_to_target(logits: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """``KL(softmax(logits) || target)`` over the last axis (``target`` probabilities)."""
    log_y = log_softmax(logits)
    return (log_y.exp() * (log_y - torch.log(target + eps))).sum(-1)


def categorical_entropy(logits: Tensor) -> Tensor:
    """The entropy of ``softmax(logits)`` over the last axis."""
    log_y = log_softmax(logits)
    return -(log_y.exp() * log_y).sum(-1)


class LPGMetaObjective:
    """The meta-loss LPG is trained with (Oh et al. 2020, eq. 3; groove's regularised form), an outer loss.

    ``outer`` judges the updated agent on a fresh rollout: a policy gradient with advantages from
    a critic LPG does not shape (the outer critic ``lpg`` trains, ``OuterObjective(value_cost=0,
    entropy_cost=beta_0)`` reading its values). Added here, on the same rollout:

        - beta_1 * H(y(s))  +  beta_2 * E[pi_hat^2]  +  beta_3 * E[||y_hat||^2]

    (the prediction's entropy under the updated agent; the L2 sizes of LPG's outputs, which keep
    its targets from drifting; LPG's inputs are held fixed in them, so those two terms reach the
    LPG parameters directly). groove averages these regularisers over the K inner updates'
    rollouts instead; here they are taken on the rollout the agent is judged on, so the meta-loss
    stays a function of the final agent and of LPG (defaults: groove's beta_1..3).

    ``hparams``: ``() -> the hyperparameters the agent learns with``, the LPG tree among them
    (``meta.hparams``: the meta-learned tree, differentiable).
    """

    def __init__(self, outer, lpg: LPG, hparams, target_entropy_cost: float = 1e-3,
                 pi_l2_cost: float = 5e-3, y_l2_cost: float = 1e-3):
        for name, value in (("target_entropy_cost", target_entropy_cost), ("pi_l2_cost", pi_l2_cost),
                            ("y_l2_cost", y_l2_cost)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        self.outer, self.lpg, self.hparams = outer, lpg, hparams
        self.target_entropy_cost, self.pi_l2_cost, self.y_l2_cost = target_entropy_cost, pi_l2_cost, y_l2_cost

    def __call__(self, params: Params, rollout: Rollout, previous: Params | None = None,
                 context: LossContext = PLAIN) -> Tensor:
        """The meta-loss of the agent ``params`` on ``rollout`` (see the class)."""
        loss = self.outer(params, rollout, previous, context)
        out, _, _ = self.lpg.outputs(params, rollout, self.hparams(), 0.0, LossContext(memo=context.memo))
        loss = loss - self.target_entropy_cost * categorical_entropy(out.y_logits).mean()
        loss = loss + self.pi_l2_cost * (out.pi_hat ** 2).mean()
        return loss + self.y_l2_cost * (out.y_hat ** 2).sum(-1).mean()
