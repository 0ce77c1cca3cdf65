"""Forward-over-reverse meta-gradient of one update whose parameters do not depend on the meta-parameters.

For ``theta' = theta + step(g(eta), lr(eta))`` with ``g = d L_in(theta, eta) / d theta`` and a
cotangent ``v = d L_out / d theta'``, the chain rule gives

    d L_out / d eta = u . (d g / d eta) + v . (d step / d lr)(d lr / d eta),   u = (d step / d g)^T v,

and ``u . (d g / d eta) = d/d eta [ D_u L_in(theta, eta) ]``, the eta-derivative of the inner loss's
directional derivative along ``u``. So instead of differentiating the inner backward pass a second
time (reverse-over-reverse: the inner gradient built with ``create_graph=True`` and then
backpropagated through), this path takes

1. the inner gradient ``g`` with no graph through the network (only the loss head keeps one, see 3)
   and the optimizer's step, as plain training does;
2. when the meta-backward reaches ``theta'`` with ``v``: ``u`` from the optimizer's step alone
   (elementwise for SGD/RMSProp/Adam, plus the rank-one term of global-norm clipping, exactly): in
   closed form on flat buffers (``Optimizer.flat_vjp``), or by autograd through the step with
   ``g`` held as a leaf for an optimizer without one;
3. ``u . (d g / d eta)`` with the inner loss cut at the network's outputs (:class:`_Cut`): the
   head's gradient ``gout`` was taken with ``create_graph`` in step 1, the network's tangent along
   ``u`` (``J u``, reusing the inner forward's activations: ``ActorCritic.linearize``) is one pass,
   and ``d/d eta [(J u) . gout]`` is a backward through the head's own backward graph. Where the
   objective has no network adapter to cut at, forward-mode AD runs the whole inner loss along
   ``u`` instead (``torch.autograd.forward_ad``) and reverse mode records only its loss head.

The optimizer's new state (RMSProp/Adam moments read by later updates of a K-step unroll) is an
output too, so every k-step term's first update can take this path; updates whose parameters
already depend on eta keep the reverse-over-reverse path (their Hessian-vector part needs it).
Restricted loss terms (``Loss.restricted``) get their own tangent along ``u`` restricted to their
parameters, where they depend on eta. The result equals the reverse-over-reverse meta-gradient to
rounding error (tests: ``tests/rlmeta/test_tangent.py``).

The approximate mode (``fraction`` < 1) runs the tangent pass on a random subset of the sub-envs:
on the cut, their rows of the network's outputs (steps, bootstrap and final observations), the
sum scaled by B / B'; otherwise the loss on those sub-envs alone. For an objective that is a mean
of per-sub-env losses (``Objective.per_env``) both are the same unbiased estimate, since the
directional derivative is linear in the per-env terms; its variance is the price (measured by
``scripts/tangent_fraction_variance.py``).

Where it does not apply (populations, minibatch objectives such as PPO whose update is many
steps, an objective whose network input depends on eta) the learner falls back to the reference
path; :func:`applies` says which.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.autograd.forward_ad as fwad
from torch import Tensor

from rlmeta.objectives.base import Loss, LossContext, MinibatchObjective, Objective
from rlmeta.optim import Optimizer, _Layout, float_tensors, global_norm
from rlmeta.rollout import ForwardMemo, Rollout, conditioning, network_outputs


def applies(objective: Any, num_agents: int) -> bool:
    """Whether the tangent path can take this update (else the learner uses reverse-over-reverse)."""
    return num_agents == 1 and not isinstance(objective, MinibatchObjective)


def _flatten_hparams(hparams: dict) -> tuple[list[tuple[str, str | None]], list[Tensor]]:
    """The hyperparameters' tensors that require grad, with where each sits (name, tree key or None)."""
    where, tensors = [], []
    for name, value in hparams.items():
        if torch.is_tensor(value) and value.requires_grad:
            where.append((name, None))
            tensors.append(value)
        elif isinstance(value, dict):
            for key, leaf in value.items():
                if torch.is_tensor(leaf) and leaf.requires_grad:
                    where.append((name, key))
                    tensors.append(leaf)
    return where, tensors


def _with(hparams: dict, where: list[tuple[str, str | None]], tensors: list[Tensor]) -> dict:
    """``hparams`` with the tensors at ``where`` replaced by ``tensors``."""
    out = dict(hparams)
    for (name, key), tensor in zip(where, tensors):
        if key is None:
            out[name] = tensor
        else:
            if out[name] is hparams[name]:
                out[name] = dict(hparams[name])
            out[name][key] = tensor
    return out


class _Step:
    """One update's primal results and what its meta-backward needs."""

    def __init__(self, objective: Objective, optimizer: Optimizer, params: dict, opt_state: Any, data: Any,
                 hparams: dict, progress: float, context: LossContext,
                 check: Callable[[Tensor, Tensor], None], fraction: float = 1.0,
                 generator: torch.Generator | None = None):
        self.objective, self.optimizer, self.data, self.progress = objective, optimizer, data, progress
        self.given = params  # the memo (shared forward passes) knows these very tensors
        self.params = {k: v.detach() for k, v in params.items()}
        self.opt_state = opt_state
        self.hparams = hparams
        self.where, _ = _flatten_hparams(hparams)
        # The inner forward goes through a memo, which keeps the network's linearization where the
        # adapter offers one (PolicyValue.linearize): the tangent pass then reuses its activations.
        self.keep = context.memo is not None  # a shared forward may be differentiated again later
        self.memo = context.memo if context.memo is not None else ForwardMemo(linearize=True)
        self.context = LossContext(memo=self.memo)
        self.check = check
        self.metrics: dict[str, float] = {}
        # The approximate mode: the tangent pass on a random subset of the sub-envs (drawn now, so a
        # run's draws follow its generator in order).
        self.tangent_data = data
        self.columns: Tensor | None = None
        if fraction < 1.0:
            if not getattr(objective, "per_env", False) or not isinstance(data, Rollout):
                raise ValueError(f"an approximate tangent pass (fraction {fraction:g}) needs an objective that is a mean "
                                 f"of per-sub-env losses (per_env); {type(objective).__name__} is not")
            self.columns = draw_columns(data.num_envs, max(1, round(fraction * data.num_envs)), generator,
                                        data.rewards.device)
            self.tangent_data = data.envs(self.columns)

    def forward(self, eta: list[Tensor]) -> list[Tensor]:
        """The plain update; returns the new parameters, then the new state's float tensors."""
        keys = list(self.params)
        with torch.enable_grad():
            leaves = {k: (v if v.requires_grad else v.detach().requires_grad_(True)) for k, v in self.given.items()}
            keep = self.keep  # a shared forward pass may be differentiated again later (mixed unrolls)
            cut = self._cut(leaves, eta)
            if cut is None:
                hparams = _with(self.hparams, self.where, [e.detach() for e in eta])
                context = self.context
            else:
                hparams, context = cut.hparams, LossContext(memo=cut.memo)
            result = self.objective(leaves, self.data, hparams, self.progress, context)
            if not isinstance(result, Loss):
                raise TypeError(f"an objective must return a rlmeta.objectives.Loss, got {type(result).__name__}")
            terms = [(keys, result.total)] + [([k for k in keys if k.startswith(p)], t)
                                              for p, t in result.restricted.items()]
            grads = {k: torch.zeros_like(leaves[k]) for k in keys}
            loss = result.total.detach()
            for i, (names, term) in enumerate(terms):
                if not names:
                    raise ValueError(f"the objective restricts a loss term to parameters named "
                                     f"{list(result.restricted)[i - 1]!r}..., but there are none among {keys}")
                retain = keep or i < len(terms) - 1
                found = (torch.autograd.grad(term, [leaves[k] for k in names], retain_graph=retain, allow_unused=True)
                         if cut is None else cut.gradient(term, names, leaves, retain, always=i == 0))
                for k, g in zip(names, found):
                    if g is not None:
                        grads[k] = grads[k] + g
                if i:
                    loss = loss + term.detach()
        self.grads = {k: g.detach() for k, g in grads.items()}
        self.cut = cut
        self.jvp = self._linearization(leaves) if cut is None and self.tangent_data is self.data else None
        # Nothing that may hold this node's outputs stays referenced (see the template below).
        self.given = self.memo = self.context = None  # type: ignore[assignment]
        norm = global_norm(grads)
        self.check(loss, norm)
        self.metrics = {**result.metrics, "loss": float(loss), "grad_norm": float(norm)}
        self.restricted = list(result.restricted)
        with torch.no_grad():
            new_params, new_state = self.optimizer.update(self.params, grads, self.opt_state,
                                                          lr=hparams.get("lr"), grad_norm=norm)
        # The structure only: holding the outputs themselves would close a reference cycle through the
        # autograd node (outputs -> grad_fn -> ctx.step -> outputs) that the garbage collector cannot see.
        self.keys, self.state_template = keys, _template(new_state)
        return list(new_params.values()) + float_tensors(new_state)

    def _cut(self, leaves: dict[str, Tensor], eta: list[Tensor]) -> "_Cut | None":
        """The split of the inner loss at the network's outputs where it applies (see :class:`_Cut`), else None."""
        adapter = getattr(self.objective, "policy_value", None)
        if (adapter is None or not isinstance(self.data, Rollout) or not adapter.shares_forward
                or adapter.population is not None or conditioning(self.hparams) is not None):
            return None
        live = [e.detach().requires_grad_(True) for e in eta]
        hparams = _with(self.hparams, self.where, live)
        outputs = network_outputs(adapter, leaves, self.data, hparams, self.memo)
        jvp = self.memo.jvp(adapter.forward, leaves, self.data, hparams)
        if jvp is None:  # no linearization: forward-mode AD of the network alone (not the loss head)
            params, data = self.params, self.data

            def jvp(directions: dict[str, Tensor], names: Any = None, rows: Tensor | None = None
                    ) -> dict[str, Tensor]:
                with fwad.dual_level():
                    duals = {k: fwad.make_dual(v, directions[k]) for k, v in params.items()}
                    out = network_outputs(adapter, duals, data, None, None)
                    found = {k: fwad.unpack_dual(v).tangent for k, v in out.items() if names is None or k in names}
                return found if rows is None else {k: None if v is None else v.index_select(0, rows)
                                                   for k, v in found.items()}
        sample = None
        if self.columns is not None:  # the approximate mode: the rows of the drawn sub-envs, scaled up
            sample = (_rows_of_envs(self.data, self.columns), self.data.num_envs / self.columns.numel())
        return _Cut(adapter, leaves, self.data, hparams, live, outputs, jvp, sample)

    def backward(self, eta: list[Tensor], cotangents: tuple[Tensor | None, ...]) -> list[Tensor | None]:
        """``d (sum_i outputs_i . cotangents_i) / d eta`` (see the module docstring)."""
        keys = self.keys
        with torch.enable_grad():
            live = [e.detach().requires_grad_(True) for e in eta]
            hparams = _with(self.hparams, self.where, live)
            # 2. u = (d step / d g)^T v (and the learning rate's own part), through the optimizer alone.
            lr = hparams.get("lr")
            lr_live = torch.is_tensor(lr) and lr.requires_grad
            flat = self._flat_vjp(cotangents, lr, live)
            if flat is not None:
                u, eta_bar = flat
            else:
                g = {k: self.grads[k].detach().requires_grad_(True) for k in keys}
                new_params, new_state = self.optimizer.update(self.params, g, self.opt_state, lr=lr,
                                                              grad_norm=global_norm(g))
                outputs = list(new_params.values()) + float_tensors(new_state)
                pairs = [(o, c) for o, c in zip(outputs, cotangents) if c is not None and o.requires_grad]
                total = sum((o * c).sum() for o, c in pairs) if pairs else None
                wrt = [g[k] for k in keys] + live
                grads = torch.autograd.grad(total, wrt, allow_unused=True) if total is not None else [None] * len(wrt)
                u = {k: (torch.zeros_like(self.params[k]) if d is None else d)
                     for k, d in zip(keys, grads[: len(keys)])}
                eta_bar = list(grads[len(keys):]) if lr_live else [None] * len(live)
            # 3. d/d eta of the inner loss's directional derivative along u, one tangent pass per term.
            if self.cut is not None:
                directional, wrt = self.cut.directional(u), self.cut.live
                self.cut = None  # its graph is spent
            else:
                directional, wrt = self._directional(u, hparams), live
            if directional is not None and directional.requires_grad:
                more = torch.autograd.grad(directional, wrt, allow_unused=True)
                eta_bar = [a if b is None else (b if a is None else a + b) for a, b in zip(eta_bar, more)]
        return [None if b is None else b.detach() for b in eta_bar]

    def _flat_vjp(self, cotangents: tuple[Tensor | None, ...], lr: Any, live: list[Tensor]
                  ) -> tuple[dict[str, Tensor], list[Tensor | None]] | None:
        """Step 2 on flat buffers: ``(u, d/d eta of the rate's part)``, or None where it does not apply.

        The optimizer's update is elementwise but for the global norm, so on all parameters joined
        into one tensor (and each per-parameter tree of its state likewise) ``u`` takes a few ops for
        all parameters at once: the closed form (``Optimizer.flat_vjp``) for SGD, RMSProp and Adam,
        else autograd through the update run on the joined tensors. Not for a partitioned optimizer
        (its groups clip apart) or a population's."""
        optimizer, keys = self.optimizer, self.keys
        if type(optimizer) is not Optimizer or optimizer.per_agent or not keys:
            return None
        state = self.opt_state
        names = set(keys)
        trees = [k for k, v in state.items() if isinstance(v, dict) and set(v) == names
                 and all(torch.is_tensor(t) for t in v.values())]
        if any(isinstance(v, dict) for k, v in state.items() if k not in trees):
            return None
        layout = _Layout(self.params)
        cot_params = dict(zip(keys, cotangents[: len(keys)]))
        cot_state = _rebuild(self.state_template, list(cotangents[len(keys):]))

        def joined(tree: dict[str, Tensor | None], like: dict[str, Tensor]) -> Tensor | None:
            if all(tree[k] is None for k in keys):
                return None
            return layout.flat({k: like[k].new_zeros(like[k].shape) if tree[k] is None else tree[k] for k in keys})

        lr_live = torch.is_tensor(lr) and lr.requires_grad
        if optimizer.direction_vjp is not None and (not lr_live or ("lr", None) in self.where):
            # The closed form (Optimizer.flat_vjp): the same products in a few fused elementwise ops.
            g = layout.flat(self.grads)
            g_bar, lr_bar = optimizer.flat_vjp(
                g, {k: (layout.flat(v) if k in trees else v) for k, v in state.items()}, lr,
                joined(cot_params, self.params), {k: joined(cot_state[k], state[k]) for k in trees}, want_lr=lr_live)
            eta_bar: list[Tensor | None] = [None] * len(live)
            if lr_live:  # in the rate's own dtype (meta-parameters may be wider than the network)
                eta_bar[self.where.index(("lr", None))] = lr_bar.to(lr.dtype)  # type: ignore[union-attr]
            return layout.split(g_bar), eta_bar
        g = layout.flat(self.grads).requires_grad_(True)
        flat_state = {k: ({"": layout.flat(v)} if k in trees else v) for k, v in state.items()}
        new_params, new_state = optimizer.update({"": layout.flat(self.params)}, {"": g}, flat_state, lr=lr,
                                                 grad_norm=global_norm({"": g}))
        pairs = [(new_params[""], joined(cot_params, self.params))]
        for k, v in new_state.items():
            if k in trees:
                pairs.append((v[""], joined(cot_state[k], state[k])))
            elif torch.is_tensor(v) and v.is_floating_point():
                pairs.append((v, cot_state[k]))
        pairs = [(o, c) for o, c in pairs if c is not None and o.requires_grad]
        if not pairs:
            return {k: torch.zeros_like(v) for k, v in self.params.items()}, [None] * len(live)
        total = sum((o * c).sum() for o, c in pairs)
        found = torch.autograd.grad(total, [g] + (live if lr_live else []), allow_unused=True)
        u = layout.split(torch.zeros_like(g) if found[0] is None else found[0])
        return u, (list(found[1:]) if lr_live else [None] * len(live))

    def _linearization(self, leaves: dict[str, Tensor]) -> tuple[Any, dict[str, Tensor], Any] | None:
        """``(adapter, primal outputs, jvp)`` of the inner forward where the memo linearized it, else None."""
        adapter = getattr(self.objective, "policy_value", None)
        if adapter is None or not isinstance(self.data, Rollout):
            return None
        jvp = self.memo.jvp(adapter.forward, leaves, self.data, self.hparams)
        if jvp is None:
            return None
        outputs = self.memo.lookup(adapter.forward, leaves, self.data, self.hparams)
        return adapter, {k: v.detach().contiguous() for k, v in outputs.items()}, jvp  # type: ignore[union-attr]

    def _directional(self, u: dict[str, Tensor], hparams: dict) -> Tensor | None:
        """``D_u L_in`` (restricted terms along u restricted to their parameters), a function of eta.

        With the inner forward's linearization, the network's tangent reuses its activations and only
        the loss head runs again (on dual outputs); otherwise forward-mode AD runs the whole loss.
        A restricted term gets its own tangent only where it depends on eta (an outer critic's loss,
        with the fixed outer gamma and lambda, does not)."""
        total, pending = None, [None]
        while pending:
            prefix = pending.pop(0)
            tangent = u if prefix is None else {k: (t if k.startswith(prefix) else torch.zeros_like(t))
                                                for k, t in u.items()}
            with fwad.dual_level():
                duals = {k: fwad.make_dual(self.params[k], tangent[k]) for k in self.keys}
                memo = None
                if self.jvp is not None:
                    adapter, outputs, jvp = self.jvp
                    d_outputs = jvp(tangent)
                    memo = ForwardMemo()
                    memo.store(adapter.forward, duals, self.data, hparams,
                               {k: fwad.make_dual(v, d_outputs[k]) for k, v in outputs.items()})
                result = self.objective(duals, self.tangent_data, hparams, self.progress, LossContext(memo=memo))
                term = result.total if prefix is None else result.restricted[prefix]
                part = fwad.unpack_dual(term).tangent
                if prefix is None:
                    pending = [p for p, t in result.restricted.items() if t.requires_grad]
            if part is not None and part.requires_grad:
                total = part if total is None else total + part
        return total


class _Cut:
    """The inner loss cut at the network's outputs: the loss head differentiated twice, the network once.

    The objective reads the network's outputs through a memo that hands it detached copies
    (``cuts``), so its graph stops there. Each loss term's gradient is then taken in two parts:
    ``gout = d term / d outputs`` by a backward through the loss head alone with ``create_graph``
    (cheap: elementwise and per-step ops, run by autograd's engine), and the network's part by a
    plain backward of the real outputs with ``gout``; a gradient that reaches the parameters
    directly (an objective that also reads them outside the memo) is kept with its graph. For
    the meta-backward, ``D_u g . = (J u) . gout + u . direct`` is differentiated in eta with ``J u``
    from the network's linearization (the tangent pass reusing the inner forward's activations,
    pruned to the outputs the term reads), so eta's derivative costs a backward through the loss
    head's backward graph only: no op of the head runs again in Python, and no network op runs in
    reverse twice.
    """

    def __init__(self, adapter: Any, leaves: dict[str, Tensor], data: Rollout, hparams: dict, live: list[Tensor],
                 outputs: dict[str, Tensor], jvp: Callable[..., dict[str, Tensor]],
                 sample: tuple[Tensor, float] | None = None):
        self.hparams, self.live, self.outputs, self.jvp = hparams, live, outputs, jvp
        self.sample = sample  # (output rows, scale): the approximate mode's tangent pass on those rows only
        self.cuts = {k: v.detach().requires_grad_(True) for k, v in outputs.items()}
        self.memo = ForwardMemo()
        self.memo.store(adapter.forward, leaves, data, hparams, self.cuts)
        # Per loss term: (parameter names, d term / d outputs, direct d term / d parameters), each a
        # function of eta through the loss head's graph.
        self.terms: list[tuple[list[str], dict[str, Tensor], dict[str, Tensor]]] = []

    def gradient(self, term: Tensor, names: list[str], leaves: dict[str, Tensor], retain: bool,
                 always: bool) -> list[Tensor | None]:
        """``d term / d leaves[names]``; remembers what the meta-backward needs where the term depends on eta
        (``always``: assume it does, as the total loss)."""
        cut_names = list(self.cuts)
        found = torch.autograd.grad(term, [self.cuts[k] for k in cut_names] + [leaves[k] for k in names],
                                    create_graph=True, allow_unused=True)
        gout = {k: g for k, g in zip(cut_names, found) if g is not None}
        direct = {k: g for k, g in zip(names, found[len(cut_names):]) if g is not None}
        if gout:
            net = torch.autograd.grad([self.outputs[k] for k in gout], [leaves[k] for k in names],
                                      [g.detach() for g in gout.values()], retain_graph=retain, allow_unused=True)
        else:
            net = [None] * len(names)
        if always or _reaches(term, self.live):
            self.terms.append((names, gout, {k: g for k, g in direct.items() if g.requires_grad}))
        return [a if b is None else (b.detach() if a is None else a + b.detach())
                for a, b in zip(net, (direct.get(k) for k in names))]

    def directional(self, u: dict[str, Tensor]) -> Tensor | None:
        """``sum over terms of (J u_term) . gout + u_term . direct``, a function of eta (``self.live``)."""
        total = None
        for names, gout, direct in self.terms:
            inside = set(names)
            tangent = u if len(inside) == len(u) else {k: (t if k in inside else torch.zeros_like(t))
                                                     for k, t in u.items()}
            parts = []
            if gout:
                rows, scale = self.sample if self.sample is not None else (None, 1.0)
                d_outputs = self.jvp(tangent, list(gout), rows)
                parts += [(g if rows is None else g.index_select(0, rows)).mul(d_outputs[k]).sum() * scale
                          for k, g in gout.items() if d_outputs.get(k) is not None]
            parts += [(g * u[k]).sum() for k, g in direct.items()]
            for part in parts:
                total = part if total is None else total + part
        self.terms = []
        return total


def draw_columns(num_envs: int, count: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """The approximate mode's sub-envs: ``count`` of ``num_envs`` drawn uniformly without replacement, sorted."""
    draw = torch.randperm(num_envs, generator=generator, device="cpu")[:count]
    return torch.sort(draw).values.to(device)


def _rows_of_envs(data: Rollout, columns: Tensor) -> Tensor:
    """The rows of the sub-envs ``columns`` in the network's outputs on ``observations(data)``: their steps,
    their bootstrap observations and their true final observations (not the pads)."""
    num_steps, num_envs = data.num_steps, data.num_envs
    device = columns.device
    steps = (torch.arange(num_steps, device=device)[:, None] * num_envs + columns[None, :]).reshape(-1)
    env = data.final_index % num_envs
    member = torch.isin(env, columns) & (data.final_index < num_steps * num_envs)
    finals = num_steps * num_envs + num_envs + torch.nonzero(member).reshape(-1)
    return torch.cat([steps, num_steps * num_envs + columns, finals])


def _reaches(tensor: Tensor, leaves: list[Tensor]) -> bool:
    """Whether ``tensor``'s autograd graph reaches one of ``leaves``."""
    targets = {id(t) for t in leaves}
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None and id(variable) in targets:
            return True
        stack.extend(n for n, _ in node.next_functions)
    return False


_FLOAT = object()  # where a template had a floating-point tensor


def _template(tree: Any) -> Any:
    """``tree`` with its floating-point tensors replaced by a placeholder."""
    if torch.is_tensor(tree):
        return _FLOAT if tree.is_floating_point() else tree
    if isinstance(tree, dict):
        return {k: _template(v) for k, v in tree.items()}
    return tree


def _rebuild(template: Any, floats: list[Tensor]) -> Any:
    """``template`` with its placeholders filled, in order, from ``floats`` (consumed)."""
    if template is _FLOAT:
        return floats.pop(0)
    if isinstance(template, dict):
        return {k: _rebuild(v, floats) for k, v in template.items()}
    return template


class _TangentFunction(torch.autograd.Function):
    """The update as one autograd node: plain forward, forward-over-reverse backward to eta."""

    @staticmethod
    def forward(ctx, step: _Step, *eta: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        ctx.step = step
        ctx.save_for_backward(*eta)
        return tuple(step.forward(list(eta)))

    @staticmethod
    def backward(ctx, *cotangents: Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        eta = list(ctx.saved_tensors)
        return (None, *ctx.step.backward(eta, cotangents))


def tangent_step(objective: Objective, optimizer: Optimizer, params: dict, opt_state: Any, data: Any,
                 hparams: dict, progress: float, context: LossContext,
                 check: Callable[[Tensor, Tensor], None], fraction: float = 1.0,
                 generator: torch.Generator | None = None) -> tuple[dict, Any, dict[str, float]]:
    """One differentiable update from parameters independent of eta, by the tangent path.

    Returns the new parameters and optimizer state (functions of eta through one autograd node)
    and the update's metrics. ``check(loss, grad_norm)`` raises on non-finite values. ``fraction``
    < 1: the approximate mode, the tangent pass on that fraction of the sub-envs (drawn with
    ``generator``): an unbiased estimate of the eta-derivative for ``per_env`` objectives.
    """
    step = _Step(objective, optimizer, params, opt_state, data, hparams, progress, context, check, fraction,
                 generator)
    _, eta = _flatten_hparams(hparams)
    if not eta:  # nothing to differentiate: a plain update
        outputs = step.forward([])
    else:
        outputs = list(_TangentFunction.apply(step, *eta))
    keys = step.keys
    new_params = dict(zip(keys, outputs[: len(keys)]))
    new_state = _rebuild(step.state_template, list(outputs[len(keys):]))
    return new_params, new_state, step.metrics
