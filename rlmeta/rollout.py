"""The ``Rollout``, the network adapter objectives read, and how a policy is evaluated on a rollout.

A rollout stores what the actor saw and did; values and log-probabilities under the *current*
parameters are recomputed by :func:`evaluate`, so an objective stays a pure function of
``params``. Truncated episodes keep their true final observations (sparse: only the ``(t, b)``
where a time limit cut the episode), so bootstrapping uses ``V(final_obs)``.

A population of P agents (Jackson et al. 2023 and Oh et al. 2020 train hundreds at once) is a
leading axis of every parameter tensor, ``[P, ...]``, with the agents' envs side by side in the
rollout's batch (env ``b`` belongs to agent ``b // B`` of ``P * B`` envs): a :class:`Population`
on the adapter says so, and the network's forward runs once for all agents under
``torch.func.vmap``. Only the forward is mapped; gradients stay ``torch.autograd.grad`` calls on
the whole population, so the learner, :class:`OutputSplit` and :class:`ForwardMemo` work unchanged.

Networks are read through a :class:`PolicyValue` adapter: a functional forward pass that returns
*named* outputs (``policy``, ``value``, an outer critic's ``outer_value``, or any extra head a
learned objective asks for by name), a way to make the policy's distribution from them, and
which outputs are the values. Two losses that evaluate the same parameters on the same rollout
can share one forward pass through an explicit :class:`ForwardMemo`; exact targets come from one
forward pass through an :class:`OutputSplit`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple, Protocol

import torch
from torch import Tensor
from torch.distributions import Distribution

from rlmeta.catalog import CONDITIONING

Params = dict[str, Tensor]
Outputs = Mapping[str, Tensor]  # named network outputs of one forward pass, each [N, ...]


class Forward(Protocol):
    """A network's functional forward pass: ``(params, obs [N, ...], conditioning [H] or None) -> outputs``."""

    def __call__(self, params: Params, obs: Tensor, conditioning: Tensor | None) -> Outputs:
        """Named outputs, each ``[N, ...]``."""


@dataclass(frozen=True)
class Population:
    """P agents with B envs each: parameters ``[P, ...]``, env ``b`` of ``P * B`` belongs to agent ``b // B``.

    Observations given to the adapter as a flat ``[N, ...]`` are rows of ``[K, P * B]`` (a rollout's
    steps, its bootstrap row, one batch of the actor's): row ``r`` belongs to agent ``(r // B) % P``.
    """

    num_agents: int
    envs_per_agent: int

    def __post_init__(self) -> None:
        for name in ("num_agents", "envs_per_agent"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Population.{name} must be an integer >= 1, got {value!r}")

    @property
    def num_envs(self) -> int:
        """P * B."""
        return self.num_agents * self.envs_per_agent

    def agents_of_rows(self, num_rows: int, device: torch.device | str = "cpu") -> Tensor:
        """``[N]`` agent of each row of ``[N / (P * B), P * B]`` flattened (see the class)."""
        if num_rows % self.num_envs:
            raise ValueError(f"a population of {self.num_agents} agents x {self.envs_per_agent} envs reads "
                             f"observations in rows of {self.num_envs}, got {num_rows} observations")
        return (torch.arange(num_rows, device=device) // self.envs_per_agent) % self.num_agents

    def agents_of_envs(self, env_index: Tensor) -> Tensor:
        """The agent of each env index (or flat ``t * P * B + b`` index) in ``env_index``."""
        return (env_index % self.num_envs) // self.envs_per_agent

    def forward(self, forward: "Forward", params: Params, obs: Tensor, conditioning: Tensor | None,
                agents: Tensor) -> dict[str, Tensor]:
        """``forward`` of every agent on its rows of ``obs [N, ...]`` (``agents [N]``), in one vmapped call.

        Rows are gathered into ``[P, M, ...]`` (M: the most rows of one agent; shorter agents are
        padded with copies of a row, whose outputs are dropped) and scattered back to ``[N, ...]``.
        ``conditioning`` is shared (``[H]``) or per agent (``[P, H]``).

        A network whose outputs are lookups of its rows' own entries (tabular agents) may define
        ``population_outputs(params, obs, agents)``: the same outputs read straight from ``[P, ...]``
        parameters; it is used, without grouping or vmap, when ``forward`` is that network's bound
        ``named_outputs`` and there is no conditioning.
        """
        num_agents = self.num_agents
        for name, value in params.items():
            if value.dim() == 0 or value.shape[0] != num_agents:
                raise ValueError(f"population parameters must have a leading axis of {num_agents} agents; "
                                 f"{name!r} has shape {tuple(value.shape)}")
        owner = getattr(forward, "__self__", None)
        rowwise = getattr(owner, "population_outputs", None)
        if rowwise is not None and conditioning is None and getattr(forward, "__func__", None) is getattr(
                type(owner), "named_outputs", None):
            return rowwise(params, obs, agents)
        index, inverse = group_rows(agents, num_agents)
        grouped = obs[index.reshape(-1)].reshape(num_agents, index.shape[1], *obs.shape[1:])
        per_agent = conditioning is not None and conditioning.dim() == 2
        mapped = torch.func.vmap(forward, in_dims=(0, 0, 0 if per_agent else None))
        outputs = mapped(params, grouped, conditioning)
        return {name: value.reshape(-1, *value.shape[2:])[inverse] for name, value in outputs.items()}


def group_rows(agents: Tensor, num_agents: int) -> tuple[Tensor, Tensor]:
    """``(index [P, M], inverse [N])`` for rows owned by ``agents [N]``: ``rows[index]`` groups them by
    agent (in order, padded with row 0), ``grouped.reshape(P * M, ...)[inverse]`` puts them back."""
    agents = agents.long()
    counts = torch.bincount(agents, minlength=num_agents)
    if counts.numel() > num_agents:
        raise ValueError(f"agent index {int(agents.max())} out of range for {num_agents} agents")
    width = int(counts.max()) if agents.numel() else 0
    order = torch.argsort(agents, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    position = torch.empty_like(agents)
    position[order] = torch.arange(agents.numel(), device=agents.device) - starts[agents[order]]
    index = torch.zeros(num_agents, width, dtype=torch.long, device=agents.device)
    index[agents, position] = torch.arange(agents.numel(), device=agents.device)
    return index, agents * width + position


@dataclass(frozen=True, eq=False)
class PolicyValue:
    """The network adapter: a policy distribution and named value outputs from one forward pass.

    * ``forward``: the network's functional forward (see :class:`Forward`). Every adapter of one
      network holds the same ``forward`` object: it is what a :class:`ForwardMemo` shares.
    * ``distribution``: the policy's distribution over N actions, from the named outputs.
    * ``value``: the output that gives the critic's values ``[N]``; ``outer_value``: the output of
      an outer critic the objective also trains (Bonnet et al. 2022; None: no outer critic).
    * ``extras``: further outputs objectives read (e.g. a learned objective's prediction vector);
      :func:`evaluate` gives them per step, ``[T, B, ...]``.
    * ``shares_forward``: the forward reads the hyperparameters through the conditioning input
      only and is a pure function of ``(params, obs, conditioning)``, so a memo may reuse its
      outputs between losses (the outer loss passes other hyperparameter values than the inner).
    * ``population``: the parameters are a population's (see :class:`Population`); None: one agent.
    * ``linearize``: optional ``(params, obs, conditioning) -> (outputs, jvp)``, the forward plus
      ``jvp(directions, names=None) -> d outputs`` (all outputs, or those named) reusing its
      activations (``ActorCritic.linearize``). Where a
      :class:`ForwardMemo` evaluates an unconditioned single agent, it keeps the ``jvp`` beside the
      outputs, for the tangent pass of the forward-over-reverse meta-gradient (``rlmeta.tangent``).
    """

    forward: Forward
    distribution: Callable[[Outputs], Distribution]
    value: str = "value"
    outer_value: str | None = None
    extras: tuple[str, ...] = ()
    shares_forward: bool = True
    population: Population | None = None
    linearize: Callable[[Params, Tensor, Tensor | None], tuple[Outputs, Callable[[Params], Outputs]]] | None = None

    @property
    def num_agents(self) -> int:
        """P (1 without a population)."""
        return 1 if self.population is None else self.population.num_agents

    def outputs(self, params: Params, obs: Tensor, hparams: Mapping[str, Any] | None,
                agents: Tensor | None = None) -> Outputs:
        """The named outputs on ``obs [N, ...]`` (the conditioning input read from ``hparams``).

        For a population, ``agents [N]`` names each row's agent (default: rows of ``[K, P * B]``).
        """
        if self.population is None:
            return self.forward(params, obs, conditioning(hparams))
        if agents is None:
            agents = self.population.agents_of_rows(obs.shape[0], obs.device)
        return self.population.forward(self.forward, params, obs, conditioning(hparams), agents)

    def __call__(self, params: Params, obs: Tensor, hparams: Mapping[str, Any] | None) -> tuple[Distribution, Tensor]:
        """``(distribution over N actions, values [N])`` on ``obs [N, ...]``."""
        out = self.outputs(params, obs, hparams)
        return self.distribution(out), out[self.value]

    def reading(self, value: str = "value", outer_value: str | None = None,
                extras: tuple[str, ...] | None = None) -> "PolicyValue":
        """The same network read with other value outputs (or extras); it shares this one's forward passes."""
        return dataclasses.replace(self, value=value, outer_value=outer_value,
                                   extras=self.extras if extras is None else tuple(extras))

    def for_population(self, num_agents: int, envs_per_agent: int) -> "PolicyValue":
        """The same network read for a population of ``num_agents`` agents with ``envs_per_agent`` envs
        each (parameters ``[P, ...]``); it shares this adapter's forward passes."""
        return dataclasses.replace(self, population=Population(num_agents, envs_per_agent))


def conditioning(hparams: Mapping[str, Any] | None) -> Tensor | None:
    """The conditioning input ``[H]`` that ``hparams`` carry for a conditioned network, or None."""
    return hparams.get(CONDITIONING) if hparams else None


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

    def envs(self, columns: Tensor) -> "Rollout":
        """The steps of the sub-envs ``columns`` (sorted long indices ``[B']``) only, as a rollout of B' envs."""
        num_envs = self.num_envs
        position = torch.full((num_envs,), -1, dtype=torch.long, device=columns.device)
        position[columns] = torch.arange(columns.numel(), device=columns.device)
        step, env = self.final_index // num_envs, self.final_index % num_envs
        keep = (position[env] >= 0) & (self.final_index < self.num_steps * num_envs)  # pads (pad_final) go
        return Rollout(
            obs=self.obs[:, columns], actions=self.actions[:, columns], rewards=self.rewards[:, columns],
            terminated=self.terminated[:, columns], truncated=self.truncated[:, columns],
            behaviour_logp=self.behaviour_logp[:, columns], last_obs=self.last_obs[columns],
            final_obs=self.final_obs[keep], final_index=step[keep] * columns.numel() + position[env[keep]],
        )


class Evaluation(NamedTuple):
    """A policy evaluated on a rollout: ``[T, B]`` log-probs, entropies, values and next values.

    ``outer_values``/``outer_next_values``: the same for the outer critic, where the adapter names
    one (``PolicyValue.outer_value``; see ``rlmeta.objectives.OuterCritic``), else None.
    ``extras``: the adapter's extra outputs on the rollout's observations, ``[T, B, ...]``;
    ``next_extras``: the same at the next observations (bootstrap and true final ones spliced in, as
    for ``next_values``).
    """

    logp: Tensor
    entropy: Tensor
    values: Tensor
    next_values: Tensor
    continues: Tensor
    dist: Distribution
    outer_values: Tensor | None = None
    outer_next_values: Tensor | None = None
    extras: Mapping[str, Tensor] = {}
    next_extras: Mapping[str, Tensor] = {}

    def detached(self) -> "Evaluation":
        """The same evaluation with every tensor held fixed (the semi-gradient's targets)."""
        fields = {k: v.detach() for k, v in self._asdict().items() if isinstance(v, Tensor)}
        return self._replace(**fields, extras={k: v.detach() for k, v in self.extras.items()},
                             next_extras={k: v.detach() for k, v in self.next_extras.items()})


def evaluate(policy_value: PolicyValue, params: Params, rollout: Rollout, hparams: Mapping[str, Any] | None,
             memo: "ForwardMemo | None" = None) -> Evaluation:
    """Run the network once on every observation of the rollout (plus bootstrap and final ones).

    ``memo``: reuse (or record) the outputs of this very evaluation (see :class:`ForwardMemo`).
    """
    return _evaluation(policy_value, _forward(policy_value, params, rollout, hparams, memo), rollout)


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


def evaluate_split(policy_value: PolicyValue, params: Params, rollout: Rollout, hparams: Mapping[str, Any] | None,
                   split: OutputSplit, memo: "ForwardMemo | None" = None) -> tuple[Evaluation, Evaluation]:
    """One forward pass, two evaluations: predictions from aliases (recorded in ``split``) and the
    targets' evaluation from the outputs themselves (see :class:`OutputSplit`)."""
    outputs = _forward(policy_value, params, rollout, hparams, memo)
    aliased = {name: split.alias(value) for name, value in outputs.items()}
    return _evaluation(policy_value, aliased, rollout), _evaluation(policy_value, outputs, rollout)


class ForwardMemo:
    """Network outputs on rollouts, shared by the losses that evaluate the same parameters on the same rollout.

    A meta-gradient unroll evaluates the agent twice at several points: the outer loss of the
    parameters after k updates is taken on rollout k, from which the next inner update then
    learns with the same parameters (within a mixed unroll, and from one meta-update to the next
    when the outer loss's rollout is reused). The estimator passes one memo to every loss of an
    unroll (the learner's ``UpdateMode.memo``, the outer loss's ``LossContext.memo``); given it,
    :func:`evaluate` and :func:`evaluate_split` run the network once per (``forward``, parameter
    tensors, rollout, conditioning input) and give every loss the same outputs: one graph with
    several consumers, so derivatives are unchanged.

    Only a :class:`PolicyValue` with ``shares_forward`` takes part. All adapters of one network
    hold the same ``forward``, so a learner reading both critics and an outer loss reading the
    outer critic share one evaluation. Entries are compared by identity (the key holds its
    objects, so their identities stay theirs).
    """

    def __init__(self, linearize: bool = False) -> None:
        self._entries: list[tuple[tuple, Outputs]] = []
        # linearize: record each forward's linearization where the adapter offers one (for the tangent
        # pass of rlmeta.tangent); id(outputs) -> their jvp.
        self.linearize = linearize
        self._jvps: dict[int, Callable[[Params], Outputs]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _key(forward: Forward, params: Params, rollout: Rollout, hparams: Mapping[str, Any] | None) -> tuple:
        return (forward, rollout, conditioning(hparams), *params.values())

    def lookup(self, forward: Forward, params: Params, rollout: Rollout,
               hparams: Mapping[str, Any] | None) -> Outputs | None:
        """The stored outputs of ``forward`` for these very objects (compared by identity), or None."""
        key = self._key(forward, params, rollout, hparams)
        for stored, outputs in self._entries:
            if len(stored) == len(key) and all(a is b for a, b in zip(stored, key)):
                return outputs
        return None

    def store(self, forward: Forward, params: Params, rollout: Rollout, hparams: Mapping[str, Any] | None,
              outputs: Outputs, jvp: Callable[[Params], Outputs] | None = None) -> None:
        """Remember the ``outputs`` of ``forward`` on these objects (and their ``jvp``, if linearized)."""
        self._entries.append((self._key(forward, params, rollout, hparams), outputs))
        if jvp is not None:
            self._jvps[id(outputs)] = jvp

    def jvp(self, forward: Forward, params: Params, rollout: Rollout,
            hparams: Mapping[str, Any] | None) -> Callable[[Params], Outputs] | None:
        """The stored outputs' ``jvp`` (see ``PolicyValue.linearize``), or None."""
        outputs = self.lookup(forward, params, rollout, hparams)
        return None if outputs is None else self._jvps.get(id(outputs))

    def keep_only(self, params: Params, rollout: Rollout) -> "ForwardMemo":
        """A memo with only the entries of ``params`` on ``rollout`` (what a next meta-update can reuse)."""
        kept = ForwardMemo(self.linearize)
        tensors = list(params.values())
        kept._entries = [(key, outputs) for key, outputs in self._entries
                         if key[1] is rollout and len(key) == 3 + len(tensors)
                         and all(a is b for a, b in zip(key[3:], tensors))]
        kept._jvps = {id(outputs): self._jvps[id(outputs)] for _key, outputs in kept._entries
                      if id(outputs) in self._jvps}
        return kept


def network_outputs(policy_value: PolicyValue, params: Params, rollout: Rollout, hparams: Mapping[str, Any] | None,
                    memo: ForwardMemo | None = None) -> Outputs:
    """The network's named outputs on :func:`observations` of the rollout, flat ``[T*B + B + N, ...]``
    (from ``memo`` where it has them; a new entry is linearized where the memo asks for it)."""
    return _forward(policy_value, params, rollout, hparams, memo)


def _forward(policy_value: PolicyValue, params: Params, rollout: Rollout, hparams: Mapping[str, Any] | None,
             memo: ForwardMemo | None) -> Outputs:
    """The named outputs on every observation of the rollout, then its bootstrap and final
    observations (reused from ``memo`` where it has them)."""
    if memo is None or not policy_value.shares_forward:
        return _rollout_outputs(policy_value, params, rollout, hparams)
    outputs = memo.lookup(policy_value.forward, params, rollout, hparams)
    if outputs is None:
        cond = conditioning(hparams)
        if memo.linearize and policy_value.linearize is not None and policy_value.population is None \
                and cond is None:
            outputs, jvp = policy_value.linearize(params, observations(rollout), None)
            memo.store(policy_value.forward, params, rollout, hparams, outputs, jvp)
        else:
            outputs = _rollout_outputs(policy_value, params, rollout, hparams)
            memo.store(policy_value.forward, params, rollout, hparams, outputs)
    return outputs


def _rollout_outputs(policy_value: PolicyValue, params: Params, rollout: Rollout,
                     hparams: Mapping[str, Any] | None) -> Outputs:
    """The named outputs on :func:`observations` of the rollout (a population's agents each on its own rows)."""
    obs = observations(rollout)
    population = policy_value.population
    if population is None:
        return policy_value.outputs(params, obs, hparams)
    if rollout.num_envs != population.num_envs:
        raise ValueError(f"a population of {population.num_agents} agents x {population.envs_per_agent} envs "
                         f"learns from rollouts of {population.num_envs} envs, got {rollout.num_envs}")
    regular = population.agents_of_rows((rollout.num_steps + 1) * rollout.num_envs, obs.device)
    agents = torch.cat([regular, population.agents_of_envs(rollout.final_index)])
    return policy_value.outputs(params, obs, hparams, agents)


def observations(rollout: Rollout) -> Tensor:
    """Every observation of the rollout, then its bootstrap and final observations, flat ``[T*B + B + N, ...]``."""
    num_steps, num_envs = rollout.num_steps, rollout.num_envs
    obs_shape = rollout.obs.shape[2:]
    flat = rollout.obs.reshape(num_steps * num_envs, *obs_shape)
    return torch.cat([flat, rollout.last_obs, rollout.final_obs.reshape(-1, *obs_shape)], dim=0)


def _evaluation(policy_value: PolicyValue, outputs: Outputs, rollout: Rollout) -> Evaluation:
    """Log-probs, entropies, values and next values ``[T, B]`` from the outputs of :func:`_forward`."""
    num_steps, num_envs = rollout.num_steps, rollout.num_envs
    n = num_steps * num_envs
    values, next_values = _values_and_next(named_output(outputs, policy_value.value), rollout)
    outer = (None, None)
    if policy_value.outer_value is not None:
        outer = _values_and_next(named_output(outputs, policy_value.outer_value), rollout)
    # The distribution over the rollout's own observations only.
    dist = policy_value.distribution({k: v[:n] for k, v in outputs.items()})
    actions = rollout.actions.reshape(n, *rollout.actions.shape[2:])
    logp = dist.log_prob(actions).reshape(num_steps, num_envs)
    entropy = dist.entropy().reshape(num_steps, num_envs)
    continues = 1.0 - torch.clamp(rollout.terminated + rollout.truncated, max=1.0)
    extras, next_extras = {}, {}
    for name in policy_value.extras:
        extras[name], next_extras[name] = _per_step_and_next(named_output(outputs, name), rollout)
    return Evaluation(logp, entropy, values, next_values, continues, dist, *outer, extras=extras,
                      next_extras=next_extras)


def named_output(outputs: Outputs, name: str) -> Tensor:
    """``outputs[name]``, or a ValueError naming the outputs the network has."""
    if name not in outputs:
        raise ValueError(f"the network has no output named {name!r}; it gives {sorted(outputs)}")
    return outputs[name]


def _values_and_next(values_all: Tensor, rollout: Rollout) -> tuple[Tensor, Tensor]:
    """``[T, B]`` values and next values (bootstrap and true final values spliced in) from ``[N]`` outputs."""
    if values_all.dim() != 1:
        raise ValueError(f"a value output must have shape [N], got {tuple(values_all.shape)}")
    return _per_step_and_next(values_all, rollout)


def _per_step_and_next(outputs: Tensor, rollout: Rollout) -> tuple[Tensor, Tensor]:
    """An output ``[N, ...]`` of :func:`observations` as ``[T, B, ...]`` at each step's observation and
    at the next one (the bootstrap observation after the last step, the true final observation
    where a time limit cut the episode)."""
    num_steps, num_envs = rollout.num_steps, rollout.num_envs
    n = num_steps * num_envs
    tail = outputs.shape[1:]
    current = outputs[:n].reshape(num_steps, num_envs, *tail)
    bootstrap = outputs[n : n + num_envs]
    final = outputs[n + num_envs :]
    following = torch.cat([current[1:], bootstrap[None]], dim=0).reshape(n, *tail)
    if rollout.final_index.numel():
        # Row n is scratch: pad_final's padding rows are written there and dropped.
        following = torch.cat([following, following.new_zeros(1, *tail)]).index_copy(0, rollout.final_index, final)[:n]
    return current, following.reshape(num_steps, num_envs, *tail)


def pad_final(rollout: Rollout, capacity: int) -> Rollout:
    """``rollout`` with its true final observations padded to ``capacity`` rows, so that rollouts with
    different numbers of truncated episodes have one shape (what a captured step needs: rlmeta.capture).

    The padding rows are zeros with flat index ``T * B``, one past the last step: the evaluation
    writes their outputs to a scratch row it drops, so every loss is the unpadded rollout's.
    """
    count = rollout.final_index.numel()
    if count > capacity:
        raise ValueError(f"the rollout has {count} final observations, more than the capacity {capacity}")
    if count == capacity:
        return rollout
    extra = capacity - count
    obs = rollout.final_obs
    final_obs = torch.cat([obs, obs.new_zeros(extra, *rollout.last_obs.shape[1:])])
    final_index = torch.cat([rollout.final_index,
                             rollout.final_index.new_full((extra,), rollout.num_steps * rollout.num_envs)])
    return rollout._replace(final_obs=final_obs, final_index=final_index)
