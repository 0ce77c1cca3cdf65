"""A plain update as one CUDA graph: static shapes, nothing read back to the host, replayed each update.

    update = CapturedUpdate(objective, optimizer)
    params, opt_state, metrics = update(params, opt_state, rollout, hparams, progress)   # as rlmeta.learner.update

On a GPU, at the sizes RL agents have (a few convolutions, 64-unit layers), an update is hundreds of
small kernels and launching them is most of its cost; a CUDA graph launches them all at once. A graph
replays fixed kernels on fixed memory, so the step it records must read nothing back to the host
(no ``.item()``, ``float(t)``, ``bool(t)``, ``nonzero``, boolean masks) and must see the same shapes
every time. The learner's plain update is made so:

* the loss gives its metrics as tensors (``LossContext.tensor_metrics``), and the check that the loss
  and gradient norm are finite runs after the replay, on its outputs (one read per update, outside
  the graph; a non-finite one raises ``FloatingPointError`` and nothing is returned);
* the rollout's true final observations (one per truncated episode: their number varies) are padded
  to a fixed capacity (``rlmeta.rollout.pad_final``; by default a sixteenth of the sub-envs, at least 4,
  doubled and the step captured again whenever a rollout has more: the network runs on the pads too);
* what changes between updates (the rollout, the parameters, the optimizer state, an annealed
  learning rate, the progress) is copied into the graph's static inputs; the other hyperparameters
  are constants of the graph, and a change of them captures it again.

Where there is no GPU the same step runs eagerly on the same static inputs (there are no CPU graphs):
the tests check there that it equals the learner's update and reads nothing on the host
(:func:`forbid_host_syncs`), which is what capture needs. It takes whole-rollout objectives (A2C,
V-trace); minibatch objectives (PPO, LPO, DPO) have ``--compile``, and meta-gradients are not captured
(the one-step meta-update collects its outer rollout between the inner update and the outer loss).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from rlmeta.learner import _check_finite, _check_population, _gradients
from rlmeta.objectives.base import LossContext, MinibatchObjective, Objective
from rlmeta.optim import Optimizer, global_norm
from rlmeta.rollout import Params, Rollout, pad_final

# Operators that read a tensor's value on the host, or whose output shape depends on values.
HOST_SYNC_OPS = frozenset({"_local_scalar_dense", "is_nonzero", "equal", "nonzero", "nonzero_static", "masked_select",
                           "_unique", "_unique2", "unique_dim", "unique_consecutive", "unique_dim_consecutive",
                           "repeat_interleave", "_assert_async"})
# Indexing operators, which do the same when an index is a boolean mask.
MASK_INDEX_OPS = frozenset({"index", "index_put", "index_put_", "_index_put_impl_"})


class HostSyncError(RuntimeError):
    """A step meant for capture read a value on the host or made a shape from values."""


class _ForbidHostSyncs(TorchDispatchMode):
    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = func.overloadpacket.__name__
        masked = name in MASK_INDEX_OPS and len(args) > 1 and any(
            torch.is_tensor(i) and i.dtype in (torch.bool, torch.uint8) for i in (args[1] or ()))
        if name in HOST_SYNC_OPS or masked:
            raise HostSyncError(f"{func}{' with a boolean mask' if masked else ''} reads a tensor's value on the host "
                                "or makes a shape from values; a step captured as a CUDA graph cannot")
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def forbid_host_syncs() -> Iterator[None]:
    """Raise :class:`HostSyncError` at any operator that would make the device wait for the host (on any
    device: on a CPU it shows what a CUDA capture would refuse)."""
    with _ForbidHostSyncs():
        yield


def _tree_map(fn: Any, tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _tree_map(fn, v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_tree_map(fn, v) for v in tree)
    return fn(tree) if torch.is_tensor(tree) else tree


def _tree_copy_(dst: Any, src: Any) -> None:
    """Copy every tensor of ``src`` into the tensor at the same place in ``dst`` (same structure)."""
    if isinstance(dst, dict):
        if dst.keys() != src.keys():
            raise ValueError(f"the state's keys changed: {sorted(dst)} vs {sorted(src)}")
        for k in dst:
            _tree_copy_(dst[k], src[k])
    elif isinstance(dst, (list, tuple)):
        for d, s in zip(dst, src, strict=True):
            _tree_copy_(d, s)
    elif torch.is_tensor(dst):
        dst.copy_(src) if torch.is_tensor(src) else dst.fill_(src)


def _on_device(tree: Any, device: torch.device) -> Any:
    """A static copy of an optimizer state: its tensors cloned, its numbers (Adam's step count) as 0-d
    float64 tensors on ``device``, so that they change on the device, not in the graph's constants."""
    if isinstance(tree, dict):
        return {k: _on_device(v, device) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_on_device(v, device) for v in tree)
    if torch.is_tensor(tree):
        return tree.detach().clone()
    if isinstance(tree, (int, float)) and not isinstance(tree, bool):
        return torch.tensor(float(tree), dtype=torch.float64, device=device)
    return tree


def _signature(tree: Any, numbers: bool = True) -> Any:
    """The structure, shapes, dtypes and devices of a tree's tensors, and its other leaves' values
    (``numbers`` False: a number, or a 0-d float64 tensor standing for one, is just a number)."""
    if isinstance(tree, dict):
        return tuple((k, _signature(v, numbers)) for k, v in tree.items())
    if isinstance(tree, (list, tuple)):
        return tuple(_signature(v, numbers) for v in tree)
    if not numbers and (isinstance(tree, (int, float)) or (torch.is_tensor(tree) and tree.dim() == 0
                                                          and tree.dtype == torch.float64)):
        return ("number",)
    if torch.is_tensor(tree):
        return ("tensor", tuple(tree.shape), tree.dtype, str(tree.device))
    return ("value", tree)


class CapturedUpdate:
    """``objective``'s plain update with ``optimizer``, captured as a CUDA graph on a GPU (see the module).

    ``capacity``: rows kept for true final observations (default: a sixteenth of the sub-envs, at least 4;
    doubled when a rollout has more); ``warmup``:
    eager steps on a side stream before the capture (CUDA's requirement; their outputs are discarded).
    ``captured`` says whether the last call replayed a graph.
    """

    def __init__(self, objective: Objective, optimizer: Optimizer, capacity: int | None = None, warmup: int = 3):
        if isinstance(objective, MinibatchObjective):
            raise ValueError(f"capture takes whole-rollout objectives (A2C, V-trace), not {type(objective).__name__}'s "
                             "minibatch steps (train those with --compile)")
        if _check_population(objective, optimizer) > 1:
            raise ValueError("capture takes one agent's update, not a population's")
        if capacity is not None and capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.objective, self.optimizer = objective, optimizer
        self.capacity, self.warmup = capacity, warmup
        self.captured = False
        self.captures = 0  # how many times a step was (re)built
        self._key: Any = None
        self._inputs: dict[str, Any] = {}
        self._constants: dict[str, Any] = {}
        self._outputs: tuple | None = None
        self._graph: Any = None

    # ------------------------------------------------------------------------------------------

    def _step(self) -> tuple[Params, Any, Tensor, Tensor, dict[str, Tensor]]:
        """The update on the static inputs: new parameters and optimizer state, loss, gradient norm, metrics."""
        inputs = self._inputs
        params = inputs["params"]
        keys = list(params)
        hparams = dict(self._constants)
        if inputs["lr"] is not None:
            hparams["lr"] = inputs["lr"]
        context = LossContext(tensor_metrics=True)
        result = self.objective(params, inputs["rollout"], hparams, inputs["progress"], context)

        def gradient(term: Tensor, names: list[str], last: bool) -> list[Tensor]:
            grads = torch.autograd.grad(term, [params[k] for k in names], retain_graph=not last, allow_unused=True)
            return [torch.zeros_like(params[k]) if g is None else g for k, g in zip(names, grads)]

        loss, grads = _gradients(result, keys, gradient, None)
        with torch.no_grad():
            norm = global_norm(grads)
            new_params, new_state = self.optimizer.update(params, grads, inputs["opt_state"], lr=inputs["lr"],
                                                          grad_norm=norm)
        metrics = {k: v if torch.is_tensor(v) else torch.as_tensor(v) for k, v in result.metrics.items()}
        return new_params, new_state, loss.detach(), norm, metrics

    def _build(self, params: Params, opt_state: Any, rollout: Rollout, lr: Any, constants: dict[str, Any]) -> None:
        """Static inputs shaped as these, then (on a GPU) the warm-up and the capture."""
        self._constants = constants
        static_params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        self._inputs = {
            "params": static_params,
            "opt_state": _on_device(opt_state, rollout.rewards.device),
            "rollout": Rollout(*(t.detach().clone() for t in rollout)),
            "lr": None if lr is None else torch.as_tensor(lr, dtype=torch.float64 if isinstance(lr, float) else None,
                                                          device=rollout.rewards.device).detach().clone(),
            "progress": torch.zeros((), dtype=rollout.rewards.dtype, device=rollout.rewards.device),
        }
        self._graph, self._outputs = None, None
        self.captures += 1
        device = rollout.rewards.device
        if device.type != "cuda":
            return
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):  # the step does not modify its inputs: warm-up has no effect
                self._step()
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._outputs = self._step()
        self._graph = graph

    def __call__(self, params: Params, opt_state: Any, rollout: Rollout, hparams: dict[str, Any],
                 progress: float = 0.0) -> tuple[Params, Any, dict[str, float]]:
        """As ``rlmeta.learner.update(objective, optimizer, params, opt_state, rollout, hparams, progress)``
        (plain): fresh parameters (leaves) and optimizer state, and the loss's metrics as floats."""
        hparams = dict(hparams or {})
        lr = hparams.pop("lr", None)
        if torch.is_tensor(lr) and lr.requires_grad:
            raise ValueError("capture takes plain updates; this learning rate carries a gradient (meta-learning)")
        if any(torch.is_tensor(v) for v in hparams.values()):
            raise ValueError("capture bakes the hyperparameters other than lr into the graph: give them as numbers")
        capacity = self.capacity or max(4, rollout.num_envs // 16)  # pads cost forward passes: start small
        while rollout.final_index.numel() > capacity:  # more truncations than ever: a larger capture
            capacity *= 2
        self.capacity = capacity
        padded = pad_final(rollout, capacity)
        key = (_signature(params), _signature(opt_state, numbers=False), _signature(tuple(padded)), lr is None,
               tuple(sorted(hparams.items())))
        if key != self._key:
            self._build(params, opt_state, padded, lr, hparams)
            self._key = key
        inputs = self._inputs
        with torch.no_grad():
            _tree_copy_(inputs["params"], params)
            _tree_copy_(inputs["opt_state"], opt_state)
            _tree_copy_(list(inputs["rollout"]), list(padded))
            if lr is not None:
                inputs["lr"].copy_(torch.as_tensor(lr))
            inputs["progress"].fill_(progress)
        if self._graph is not None:
            self._graph.replay()
            outputs = self._outputs
            self.captured = True
        else:
            outputs = self._step()
            self.captured = False
        new_params, new_state, loss, norm, metrics = outputs
        names = list(metrics)
        values = torch.stack([loss.float(), norm.float(), *(metrics[k].float() for k in names)]).tolist()  # one read
        _check_finite(torch.tensor(values[0]), torch.tensor(values[1]))  # raises before anything is returned
        new_params = {k: v.detach().clone().requires_grad_(True) for k, v in new_params.items()}
        new_state = _tree_map(lambda t: t.detach().clone(), new_state)
        return new_params, new_state, {**dict(zip(names, values[2:])), "loss": values[0], "grad_norm": values[1]}
