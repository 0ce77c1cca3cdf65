"""The ``Rollout``: T steps of B sub-envs as torch tensors, and how to evaluate a policy on it.

A rollout stores what the actor saw and did; values and log-probabilities under the *current*
parameters are recomputed by :func:`evaluate`, so an objective stays a pure function of
``params``. Truncated episodes keep their true final observations (sparse: only the ``(t, b)``
where a time limit cut the episode), so bootstrapping uses ``V(final_obs)``.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Iterator, NamedTuple

import torch
from torch import Tensor
from torch.distributions import Distribution

from rlmeta.hparams import CONDITIONING

# policy_value(params, obs [N, ...], hparams) -> (distribution over N actions, values [N]), or values
# [N, 2] for a network with an outer critic: the critic's, then the outer critic's (see ``Evaluation``).
PolicyValue = Callable[[dict, Tensor, dict], tuple[Distribution, Tensor]]


class Rollout(NamedTuple):
    """T consecutive steps of B sub-envs; shapes in brackets."""

    obs: Tensor  # [T, B, *obs_shape] observation the action was taken in
    actions: Tensor  # [T, B, *action_shape]
    rewards: Tensor  # [T, B]
    terminated: Tensor  # [T, B] float 0/1: terminal state reached (no bootstrap)
    truncated: Tensor  # [T, B] float 0/1: cut by a time limit (bootstrap from final obs)
    behaviour_logp: Tensor  # [T, B] log mu(a_t | s_t) of the policy that acted
    last_obs: Tensor  # [B, *obs_shape] observation after the last step (bootstrap)
    final_obs: Tensor  # [N, *obs_shape] true final observations of truncated episodes
    final_index: Tensor  # [N] long, flat index t * B + b of each row of final_obs

    @property
    def num_steps(self) -> int:
        """T."""
        return self.rewards.shape[0]

    @property
    def num_envs(self) -> int:
        """B."""
        return self.rewards.shape[1]

    def to(self, device: torch.device | str) -> "Rollout":
        """The same rollout on ``device``."""
        return Rollout(*(t.to(device) for t in self))


class Evaluation(NamedTuple):
    """A policy evaluated on a rollout: ``[T, B]`` log-probs, entropies, values and next values.

    ``outer_values``/``outer_next_values``: the same for the outer critic, where ``policy_value``
    gives two value columns (Bonnet et al. 2022; see ``rlmeta.objectives.OuterCritic``), else None.
    """

    logp: Tensor
    entropy: Tensor
    values: Tensor
    next_values: Tensor
    continues: Tensor
    dist: Distribution
    outer_values: Tensor | None = None
    outer_next_values: Tensor | None = None

    def detached(self) -> "Evaluation":
        """The same evaluation with every tensor held fixed (the semi-gradient's targets)."""
        return self._replace(**{k: v.detach() for k, v in self._asdict().items() if isinstance(v, Tensor)})


def evaluate(policy_value: PolicyValue, params: dict, rollout: Rollout, hparams: dict) -> Evaluation:
    """Run the network once on every observation of the rollout (plus bootstrap and final ones)."""
    return _evaluation(*_forward(policy_value, params, rollout, hparams), rollout)


class OutputSplit:
    """The network outputs of one forward pass, and the aliases an objective's loss predicts with.

    For exact meta-gradients an update must hold its targets fixed (no gradient through them)
    while they stay differentiable functions of the parameters. Rather than running the network
    twice, :func:`evaluate_split` runs it once and gives the loss *aliases* (views) of the outputs
    as its predictions and the outputs themselves as its targets. The learner then takes the
    loss's gradient in the aliases only (``grads``): the targets' paths are left out of it, but
    remain in the graph that a meta-gradient differentiates.
    """

    def __init__(self) -> None:
        self.outputs: list[Tensor] = []
        self.aliases: list[Tensor] = []

    def alias(self, output: Tensor) -> Tensor:
        """A view of ``output`` to predict with (recorded with it)."""
        view = output.view_as(output)
        self.outputs.append(output)
        self.aliases.append(view)
        return view

    def grads(self, loss: Tensor, params: list[Tensor]) -> list[Tensor]:
        """``d loss / d params`` through the aliases only, keeping the graph (``create_graph=True``)."""
        cotangents = torch.autograd.grad(loss, self.aliases, create_graph=True, allow_unused=True)
        used = [(o, c) for o, c in zip(self.outputs, cotangents) if c is not None]
        grads = torch.autograd.grad([o for o, _ in used], params, grad_outputs=[c for _, c in used],
                                    create_graph=True, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def evaluate_split(policy_value: PolicyValue, params: dict, rollout: Rollout, hparams: dict,
                   split: OutputSplit) -> tuple[Evaluation, Evaluation]:
    """One forward pass, two evaluations: predictions from aliases (recorded in ``split``) and the
    targets' evaluation from the outputs themselves (see :class:`OutputSplit`)."""
    dist_all, values_all = _forward(policy_value, params, rollout, hparams)
    predictions = _evaluation(_alias_distribution(dist_all, split), split.alias(values_all), rollout)
    return predictions, _evaluation(dist_all, values_all, rollout)


class ForwardMemo:
    """Network outputs on rollouts, shared by the losses that evaluate the same parameters on the same rollout.

    A meta-gradient unroll evaluates the agent twice at several points: the outer loss of the
    parameters after k updates is taken on rollout k, from which the next inner update then
    learns with the same parameters (within a mixed unroll, and from one meta-update to the next
    when the outer loss's rollout is reused). While a memo is active (``with memo.active():``),
    :func:`evaluate` and :func:`evaluate_split` run the network once per (``policy_value``,
    parameter tensors, rollout, conditioning input) and give every loss the same outputs: one
    graph with several consumers, so derivatives are unchanged.

    Only a ``policy_value`` with ``shares_forward = True`` takes part: it declares that it reads
    ``hparams`` through the conditioning input only (``agents.actor.make_policy_value``'s do),
    since the outer loss passes other hyperparameter values than the inner one. One with a
    ``forward_source = (network, select)`` shares the raw ``network`` outputs with every other
    ``policy_value`` of the same source (e.g. a learner's reading both critics and an outer loss's
    reading the outer critic) and applies its own ``select`` to them.
    """

    def __init__(self) -> None:
        self._entries: list[tuple[tuple, Any]] = []

    @contextlib.contextmanager
    def active(self) -> Iterator["ForwardMemo"]:
        """Make this memo the one :func:`evaluate` consults, for the ``with`` block."""
        token = _ACTIVE_MEMO.set(self)
        try:
            yield self
        finally:
            _ACTIVE_MEMO.reset(token)

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _key(source: Callable, params: dict, rollout: Rollout, hparams: dict | None) -> tuple:
        conditioning = hparams.get(CONDITIONING) if isinstance(hparams, dict) else None
        return (source, rollout, conditioning, *params.values())

    def lookup(self, source: Callable, params: dict, rollout: Rollout, hparams: dict | None) -> Any:
        """The stored outputs of ``source`` for these very objects (compared by identity), or None."""
        key = self._key(source, params, rollout, hparams)
        for stored, outputs in self._entries:
            if len(stored) == len(key) and all(a is b for a, b in zip(stored, key)):
                return outputs
        return None

    def store(self, source: Callable, params: dict, rollout: Rollout, hparams: dict | None, outputs: Any) -> None:
        """Remember the ``outputs`` of ``source`` (the key's objects are held, so their identities stay theirs)."""
        self._entries.append((self._key(source, params, rollout, hparams), outputs))

    def keep_only(self, params: dict, rollout: Rollout) -> "ForwardMemo":
        """A memo with only the entries of ``params`` on ``rollout`` (what a next meta-update can reuse)."""
        kept = ForwardMemo()
        tensors = list(params.values())
        kept._entries = [(key, outputs) for key, outputs in self._entries
                         if key[1] is rollout and len(key) == 3 + len(tensors)
                         and all(a is b for a, b in zip(key[3:], tensors))]
        return kept


_ACTIVE_MEMO: contextvars.ContextVar[ForwardMemo | None] = contextvars.ContextVar("rlmeta_forward_memo", default=None)


def _forward(policy_value: PolicyValue, params: dict, rollout: Rollout, hparams: dict) -> tuple[Distribution, Tensor]:
    """The network on every observation of the rollout, then its bootstrap and final observations
    (reused from the active :class:`ForwardMemo` where it has them)."""
    memo = _ACTIVE_MEMO.get() if getattr(policy_value, "shares_forward", False) else None
    if memo is None:
        return policy_value(params, _observations(rollout), hparams)
    # A policy_value may name a forward_source (network, select): the raw network outputs, shared by
    # every policy_value of that network, and how it reads its (distribution, values) from them.
    network, select = getattr(policy_value, "forward_source", (policy_value, None))
    outputs = memo.lookup(network, params, rollout, hparams)
    if outputs is None:
        outputs = network(params, _observations(rollout), hparams)
        memo.store(network, params, rollout, hparams, outputs)
    return outputs if select is None else select(outputs)


def _observations(rollout: Rollout) -> Tensor:
    """Every observation of the rollout, then its bootstrap and final observations, flat."""
    num_steps, num_envs = rollout.num_steps, rollout.num_envs
    obs_shape = rollout.obs.shape[2:]
    flat = rollout.obs.reshape(num_steps * num_envs, *obs_shape)
    return torch.cat([flat, rollout.last_obs, rollout.final_obs.reshape(-1, *obs_shape)], dim=0)


def _evaluation(dist_all: Distribution, values_all: Tensor, rollout: Rollout) -> Evaluation:
    """Log-probs, entropies, values and next values ``[T, B]`` from the outputs of :func:`_forward`."""
    num_steps, num_envs = rollout.num_steps, rollout.num_envs
    n = num_steps * num_envs
    if values_all.dim() == 2 and values_all.shape[-1] == 2:  # critic and outer critic
        values, next_values = _values_and_next(values_all[:, 0], rollout)
        outer = _values_and_next(values_all[:, 1], rollout)
    elif values_all.dim() == 1:
        values, next_values = _values_and_next(values_all, rollout)
        outer = (None, None)
    else:
        raise ValueError(f"policy_value must give values of shape [N] or [N, 2], got {tuple(values_all.shape)}")
    # The distribution over the rollout's own observations only.
    dist = _slice_distribution(dist_all, n)
    actions = rollout.actions.reshape(n, *rollout.actions.shape[2:])
    logp = dist.log_prob(actions).reshape(num_steps, num_envs)
    entropy = dist.entropy().reshape(num_steps, num_envs)
    continues = 1.0 - torch.clamp(rollout.terminated + rollout.truncated, max=1.0)
    return Evaluation(logp, entropy, values, next_values, continues, dist, *outer)


def _values_and_next(values_all: Tensor, rollout: Rollout) -> tuple[Tensor, Tensor]:
    """``[T, B]`` values and next values (bootstrap and true final values spliced in) from ``[N]`` outputs."""
    num_steps, num_envs = rollout.num_steps, rollout.num_envs
    n = num_steps * num_envs
    values = values_all[:n].reshape(num_steps, num_envs)
    bootstrap = values_all[n : n + num_envs]
    final_values = values_all[n + num_envs :]
    next_values = torch.cat([values[1:], bootstrap[None]], dim=0).reshape(-1)
    if rollout.final_index.numel():
        next_values = next_values.index_copy(0, rollout.final_index, final_values)
    return values, next_values.reshape(num_steps, num_envs)


def _alias_distribution(dist: Distribution, split: OutputSplit) -> Distribution:
    """The same distribution, built on aliases of its parameters."""
    return _map_distribution(dist, split.alias)


def _slice_distribution(dist: Distribution, n: int) -> Distribution:
    """The first ``n`` rows of a batched distribution."""
    return _map_distribution(dist, lambda t: t[:n])


def _map_distribution(dist: Distribution, fn: Callable[[Tensor], Tensor]) -> Distribution:
    """A Categorical or Independent(Normal) distribution with ``fn`` applied to each parameter tensor."""
    from torch.distributions import Categorical, Independent, Normal

    if isinstance(dist, Categorical):
        return Categorical(logits=fn(dist.logits), validate_args=False)
    if isinstance(dist, Independent) and isinstance(dist.base_dist, Normal):
        base = dist.base_dist
        return Independent(Normal(fn(base.loc), fn(base.scale), validate_args=False), dist.reinterpreted_batch_ndims,
                           validate_args=False)
    raise TypeError(f"unsupported distribution {type(dist).__name__}")
