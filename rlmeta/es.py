"""Evolution strategies: OpenES (Salimans et al. 2017) on EvoTorch's functional PGPE, and evaluators
that compute a population's fitness in this process or on Ray workers.

    es = OpenES({"w": torch.zeros(4, 3), "b": torch.zeros(3)}, popsize=64)   # sigma 0.1, Adam lr 1e-2
    with RayEvaluator(fitness, num_workers=8) as evaluator:                # or InProcessEvaluator(fitness)
        history = run_es(es, evaluator, generations=500, checkpoint="es.pt")

A fitness function is ``fitness(candidates: list[dict[str, Tensor]], seeds: list[int]) -> list[float] |
Tensor``: one value per candidate, higher is better (``maximize=False`` flips it), deterministic per
``(candidate, seed)``. The two members of an antithetic pair get the same seed, so both are evaluated
on the same level.

The ES core is EvoTorch 0.6's functional PGPE (``evotorch.algorithms.functional``: ``pgpe``,
``pgpe_ask``, ``pgpe_tell``) with ``symmetric=True`` (antithetic sampling; ``SymmetricSeparableGaussian``
puts the pairs side by side: solution ``2i`` is ``center + sigma eps_i`` and ``2i+1`` is
``center - sigma eps_i``), ``ranking_method="centered"`` (ranks spaced evenly in [-0.5, 0.5]),
``optimizer="adam"`` and ``stdev_learning_rate=0`` (sigma not adapted, as OpenES). Optional schedules
as evosax's and groove's OpenES: ``sigma_decay``/``sigma_limit`` and ``lr_decay``/``lr_limit`` multiply
sigma and Adam's learning rate by the decay after every generation, down to the limit (default:
constant; groove decays the learning rate by 0.999 per generation, Lu et al.'s LPO runs used evosax's
defaults, sigma 0.04 decayed by 0.999 to 0.01).

How EvoTorch's center gradient relates to OpenES's. With N candidates, utilities ``u_j`` (the ranked
fitnesses; with ``ranking="raw"`` the fitnesses themselves, from which EvoTorch subtracts their mean,
which cancels within a pair) and the pairs above, EvoTorch (``SymmetricSeparableGaussian.
_compute_gradients`` with PGPE's ``divide_mu_grad_by="num_directions"``) computes

    grad_evotorch = 1/(N/2) sum_i (u_2i - u_2i+1)/2 * (sigma eps_i) = sigma/N sum_i (u_2i - u_2i+1) eps_i,

while OpenES (Salimans et al. 2017; evosax's ``OpenES``) uses, summing over all N with
``eps_2i+1 = -eps_2i``,

    g = 1/(N sigma) sum_j u_j eps_j = 1/(N sigma) sum_i (u_2i - u_2i+1) eps_i,

so ``grad_evotorch = sigma**2 * g`` exactly (EvoTorch follows the natural gradient of the mean: the
Fisher information of a Gaussian's mean is 1/sigma**2). With raw fitness, ``g`` is an unbiased
estimate of the gradient of the smoothed objective ``E[F(center + sigma eps)]``
(``tests/rlmeta/test_es.py`` checks it statistically). Adam's step ``m_hat / (sqrt(v_hat) + eps)`` is
invariant to scaling the gradient by ``c`` except through ``eps``, so this module gives EvoTorch's Adam
``epsilon = adam_eps * sigma**2``: the center then moves exactly (up to rounding) as Adam with
``eps=adam_eps`` fed OpenES's ``g`` (evosax's defaults: betas 0.9, 0.999, eps 1e-8); EvoTorch's stored
moments ``m`` and ``v`` are ``sigma**2`` and ``sigma**4`` times those. The metrics report ``g``'s norm
(OpenES's scale), and ``OpenES.estimate_gradient`` returns ``g`` as a tree.

What EvoTorch does not do, and is written here:

* Parameter trees. EvoTorch searches over one flat vector; a tree (a dict of named tensors of any
  shapes) is flattened into one vector of the tensors' promoted dtype and candidates are unflattened
  with each tensor's own dtype (``TreeSpec``).
* Reproducible sampling. EvoTorch's functional samplers draw from the global torch RNG (they take no
  generator), so ``ask`` forks the RNG (``torch.random.fork_rng``) and seeds it from ``(seed,
  generation)``: the population depends on nothing else, the caller's RNG is untouched, asking twice
  in a generation gives the same population, and a resumed run continues bit-identically.
* Evaluation seeds per antithetic pair, drawn from the same forked RNG.
* The gradient as a metric. ``pgpe_tell`` does not return it, so ``tell`` recomputes it with EvoTorch's
  public estimator (``make_functional_grad_estimator`` on ``SymmetricSeparableGaussian``, the same
  construction PGPE uses internally) for the metrics; the update itself is ``pgpe_tell``'s.
* Saving and loading. ``PGPEState`` is a named tuple; ``state_dict`` writes its tensors (center, Adam's
  moments and step count, sigma) with the generation counter and the settings, which is all that
  determines the rest of the run.
* Evaluation. The functional API has no evaluator; EvoTorch's own Ray parallelism belongs to its
  ``Problem`` class (Ray actors). ``RayEvaluator`` uses Ray *tasks*, one per chunk, so that Ray's task
  retries re-run the chunk of a worker process that dies and the generation completes.

In-process and Ray evaluation split the population into the same chunks (``chunk_bounds``, given
the same ``chunk_size``), so a fitness that is deterministic per chunk gives bit-identical results
either way. EvoTorch (and with it SciPy, pandas, cma and matplotlib) is imported when the first
``OpenES`` is built, and Ray when the first ``RayEvaluator`` is: evaluators and Ray workers do not
pay for EvoTorch's import.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

Tree = dict[str, Tensor]
Fitness = Callable[[list[Tree], list[int]], "Sequence[float] | Tensor"]
RANKINGS = ("centered", "raw", "linear", "nes", "normalized")  # EvoTorch's ranking methods
STATE_FORMAT = "rlmeta.es.OpenES/1"
_ADAM_FIELDS = ("center", "center_learning_rate", "beta1", "beta2", "epsilon", "m", "v", "t")
_PGPE_TENSORS = ("stdev", "stdev_learning_rate", "stdev_min", "stdev_max", "stdev_max_change")
_CONSTANT_SCHEDULES = {"sigma_decay": 1.0, "sigma_limit": 0.0, "lr_decay": 1.0, "lr_limit": 0.0}


def _functional() -> Any:
    # Imported here, not at the top: EvoTorch's import pulls in SciPy, pandas, cma, matplotlib and Ray
    # (seconds), which the evaluators and Ray workers that import this module do not need.
    with warnings.catch_warnings():  # EvoTorch 0.6 calls torch.jit.script at import, deprecated in torch 2.10+
        warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=DeprecationWarning)
        import evotorch.algorithms.functional as functional

    return functional


@dataclass(frozen=True)
class TreeSpec:
    """Names, shapes and dtypes of a parameter tree; flattens it to one vector and back."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[torch.dtype, ...]

    @staticmethod
    def of(tree: Tree, what: str = "center") -> "TreeSpec":
        if not isinstance(tree, dict) or not tree:
            raise ValueError(f"{what} must be a non-empty dict of named tensors, got {tree!r:.80}")
        devices = set()
        for name, value in tree.items():
            if not isinstance(name, str):
                raise ValueError(f"{what}: names must be strings, got {name!r}")
            if not isinstance(value, Tensor):
                raise ValueError(f"{what}[{name!r}] must be a tensor, got {type(value).__name__}")
            if not value.is_floating_point():
                raise ValueError(f"{what}[{name!r}] must be a floating-point tensor, got {value.dtype}")
            devices.add(value.device)
        if len(devices) > 1:
            raise ValueError(f"{what}: all tensors must be on one device, got {sorted(map(str, devices))}")
        spec = TreeSpec(tuple(tree), tuple(tuple(v.shape) for v in tree.values()), tuple(v.dtype for v in tree.values()))
        if spec.size == 0:
            raise ValueError(f"{what} has no elements (every tensor is empty)")
        return spec

    @property
    def numels(self) -> tuple[int, ...]:
        return tuple(math.prod(shape) for shape in self.shapes)

    @property
    def size(self) -> int:
        return sum(self.numels)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the flat vector: the promotion of the tensors' dtypes."""
        dtype = self.dtypes[0]
        for other in self.dtypes[1:]:
            dtype = torch.promote_types(dtype, other)
        return dtype

    def check(self, tree: Tree, what: str) -> None:
        other = TreeSpec.of(tree, what)
        if other != self:
            raise ValueError(f"{what} does not match the tree: {other.describe()} vs {self.describe()}")

    def describe(self) -> str:
        return ", ".join(f"{n}: {list(s)} {str(d).removeprefix('torch.')}"
                         for n, s, d in zip(self.names, self.shapes, self.dtypes))

    def flatten(self, tree: Tree) -> Tensor:
        return torch.cat([tree[name].detach().reshape(-1).to(self.dtype) for name in self.names])

    def unflatten(self, vector: Tensor) -> Tree:
        """A tree of views into ``vector`` (copies where a tensor's dtype differs from the vector's)."""
        tree, start = {}, 0
        for name, shape, dtype, numel in zip(self.names, self.shapes, self.dtypes, self.numels):
            tree[name] = vector[start:start + numel].view(shape).to(dtype)
            start += numel
        return tree

    def to_dict(self) -> dict:
        return {"names": list(self.names), "shapes": [list(s) for s in self.shapes],
                "dtypes": [str(d).removeprefix("torch.") for d in self.dtypes]}

    @staticmethod
    def from_dict(d: dict) -> "TreeSpec":
        return TreeSpec(tuple(d["names"]), tuple(tuple(s) for s in d["shapes"]),
                        tuple(getattr(torch, name) for name in d["dtypes"]))


class Population(NamedTuple):
    """One generation's candidates (trees) and their evaluation seeds (a pair shares one)."""

    candidates: list[Tree]
    seeds: list[int]


def _fitness_vector(fitness: Sequence[float] | Tensor, expected: int, what: str) -> Tensor:
    """``fitness`` as a float64 vector of length ``expected`` (ValueError otherwise)."""
    try:
        values = torch.as_tensor(fitness if isinstance(fitness, Tensor) else list(fitness))
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{what} must be a sequence of numbers or a tensor: {error}") from None
    values = values.detach().to("cpu", torch.float64)
    if values.ndim != 1 or values.numel() != expected:
        raise ValueError(f"{what} must hold {expected} values (one per candidate), got shape {list(values.shape)}")
    return values


class OpenES:
    """OpenES over a parameter tree: antithetic Gaussian perturbations of fixed ``sigma``, centered-rank
    fitness shaping and Adam on the center (EvoTorch's functional PGPE; see the module docstring).

    ``ask()`` returns the generation's ``Population`` (``popsize`` candidate trees, pairs ``2i`` and
    ``2i+1`` antithetic, and one seed per candidate, equal within a pair); ``tell(fitness)`` updates the
    center and returns metrics. The population depends only on ``(seed, generation)`` and the state.
    """

    def __init__(self, center: Tree, popsize: int, sigma: float = 0.1, lr: float = 1e-2,
                 ranking: str = "centered", seed: int = 0, *, maximize: bool = True,
                 adam_betas: tuple[float, float] = (0.9, 0.999), adam_eps: float = 1e-8,
                 sigma_decay: float = 1.0, sigma_limit: float = 0.0, lr_decay: float = 1.0, lr_limit: float = 0.0):
        if isinstance(popsize, bool) or not isinstance(popsize, (int, np.integer)) or popsize < 2 or popsize % 2:
            raise ValueError(f"popsize must be an even integer >= 2 (antithetic pairs), got {popsize!r}")
        for name, value in (("sigma", sigma), ("lr", lr), ("adam_eps", adam_eps)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        for name, decay, limit, start in (("sigma", sigma_decay, sigma_limit, sigma), ("lr", lr_decay, lr_limit, lr)):
            if not isinstance(decay, (int, float)) or not 0 < decay <= 1:
                raise ValueError(f"{name}_decay must be in (0, 1], got {decay!r}")
            if not isinstance(limit, (int, float)) or not 0 <= limit <= start:
                raise ValueError(f"{name}_limit must be in [0, {name}] = [0, {start:g}], got {limit!r}")
        if ranking not in RANKINGS:
            raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        if len(adam_betas) != 2 or not all(0 <= b < 1 for b in adam_betas):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {adam_betas!r}")
        self.spec = TreeSpec.of(center)
        vector = self.spec.flatten(center).clone()
        if not torch.isfinite(vector).all():
            raise ValueError("center holds non-finite values")
        self.popsize, self.sigma, self.lr = int(popsize), float(sigma), float(lr)
        self.sigma_decay, self.sigma_limit = float(sigma_decay), float(sigma_limit)
        self.lr_decay, self.lr_limit = float(lr_decay), float(lr_limit)
        self.ranking, self.seed, self.maximize = ranking, int(seed), bool(maximize)
        self.adam_betas, self.adam_eps = (float(adam_betas[0]), float(adam_betas[1])), float(adam_eps)
        functional = _functional()
        self._state = functional.pgpe(
            center_init=vector, center_learning_rate=self.lr, stdev_learning_rate=0.0,
            objective_sense="max" if self.maximize else "min", ranking_method=self.ranking,
            optimizer="adam",
            # sigma**2: EvoTorch's gradient is sigma**2 times OpenES's (module docstring).
            optimizer_config={"beta1": self.adam_betas[0], "beta2": self.adam_betas[1],
                              "epsilon": self.adam_eps * self.sigma**2},
            stdev_init=self.sigma, stdev_max_change=None, symmetric=True)
        self._grad = _grad_estimator()
        self.generation = 0
        self._asked: tuple[Tensor, Tensor] | None = None

    # -- the search ------------------------------------------------------------------------------
    @property
    def center(self) -> Tree:
        """The current center as a tree (a copy)."""
        return self.spec.unflatten(self._state.optimizer_state.center.clone())

    @property
    def device(self) -> torch.device:
        return self._state.optimizer_state.center.device

    def sigma_at(self, generation: int) -> float:
        """The perturbations' scale in ``generation``: ``max(sigma * sigma_decay**generation, sigma_limit)``
        (evosax's and groove's OpenES schedule; constant by default)."""
        return max(self.sigma * self.sigma_decay**generation, self.sigma_limit)

    def lr_at(self, generation: int) -> float:
        """Adam's learning rate for the step that ends ``generation``: ``max(lr * lr_decay**generation, lr_limit)``."""
        return max(self.lr * self.lr_decay**generation, self.lr_limit)

    def _schedule(self, generation: int) -> None:
        """Set the state's sigma and learning rate to ``generation``'s. Adam's moments hold sigma**2 times
        OpenES's (and sigma**4), and its epsilon is adam_eps * sigma**2 (module docstring): a new sigma
        rescales all three, so that the center keeps moving as Adam fed OpenES's ``g``."""
        state = self._state
        adam = state.optimizer_state
        lr = torch.full_like(adam.center_learning_rate, self.lr_at(generation))
        stdev = torch.full_like(state.stdev, self.sigma_at(generation))
        if not torch.equal(stdev, state.stdev):  # compared in the state's dtype: a constant sigma changes no bit
            scale = float(stdev.flatten()[0]) / float(state.stdev.flatten()[0])
            adam = adam._replace(m=adam.m * scale**2, v=adam.v * scale**4,
                                 epsilon=torch.full_like(adam.epsilon, self.adam_eps * float(stdev.flatten()[0])**2))
            state = state._replace(stdev=stdev)
        self._state = state._replace(optimizer_state=adam._replace(center_learning_rate=lr))

    def _generation_seed(self) -> int:
        state = np.random.SeedSequence([self.seed, self.generation]).generate_state(2, np.uint32)
        return (int(state[0]) << 31) ^ int(state[1])

    def ask(self) -> Population:
        """This generation's candidates and seeds (the same on every call until ``tell``)."""
        if self._asked is None:
            device = self.device
            cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
                if device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):
                seed = self._generation_seed()
                torch.default_generator.manual_seed(seed)
                if cuda:
                    with torch.cuda.device(cuda[0]):
                        torch.cuda.manual_seed(seed)
                population = _functional().pgpe_ask(self._state, popsize=self.popsize)
                pair_seeds = torch.randint(0, 2**31 - 1, (self.popsize // 2,), dtype=torch.int64)
            self._asked = (population, pair_seeds)
        population, pair_seeds = self._asked
        # Candidates are views into a copy, so a fitness that writes into one cannot change the
        # population the gradient is computed from.
        candidates = [self.spec.unflatten(row) for row in population.clone()]
        return Population(candidates, pair_seeds.repeat_interleave(2).tolist())

    def _check_told(self, fitness: Sequence[float] | Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The population, the fitness as float64 on the CPU, and as the population's dtype and device."""
        if self._asked is None:
            raise RuntimeError("tell() and estimate_gradient() need this generation's ask() first")
        values = _fitness_vector(fitness, self.popsize, "fitness")
        if not torch.isfinite(values).all():
            bad = torch.nonzero(~torch.isfinite(values)).flatten().tolist()
            raise ValueError(f"fitness must be finite; candidates {bad[:10]} are not")
        population = self._asked[0]
        return population, values, values.to(population.device, population.dtype)

    def _openes_gradient(self, population: Tensor, fitness: Tensor) -> Tensor:
        center = self._state.optimizer_state.center
        grads = self._grad(population, fitness, mu=center, sigma=self._state.stdev,
                           objective_sense="max" if self.maximize else "min", ranking_method=self.ranking)
        return grads["mu"] / self._state.stdev**2

    def estimate_gradient(self, fitness: Sequence[float] | Tensor) -> Tree:
        """OpenES's center gradient ``g`` (module docstring) for this generation's population, as a tree;
        changes nothing. The ascent direction of the objective (of ``-fitness`` with ``maximize=False``)."""
        population, _, values = self._check_told(fitness)
        return self.spec.unflatten(self._openes_gradient(population, values))

    def tell(self, fitness: Sequence[float] | Tensor) -> dict[str, float]:
        """Update the center with the fitness of ``ask()``'s candidates (in order); returns metrics."""
        population, f, values = self._check_told(fitness)
        old = self._state.optimizer_state.center
        gradient = self._openes_gradient(population, values)
        self._state = _functional().pgpe_tell(self._state, population, values)
        new = self._state.optimizer_state.center
        told = self.generation
        self.generation += 1
        self._asked = None
        self._schedule(self.generation)  # the next generation's sigma and step size
        return {"generation": told, "fitness_mean": f.mean().item(), "fitness_max": f.max().item(),
                "fitness_min": f.min().item(), "fitness_std": f.std().item(),
                "grad_norm": gradient.norm().item(), "step_norm": (new - old).norm().item(),
                "center_norm": new.norm().item(), "sigma": self.sigma_at(told), "lr": self.lr_at(told)}

    # -- saving ----------------------------------------------------------------------------------
    def _config(self) -> dict:
        return {"popsize": self.popsize, "sigma": self.sigma, "lr": self.lr, "ranking": self.ranking,
                "seed": self.seed, "maximize": self.maximize, "adam_betas": list(self.adam_betas),
                "adam_eps": self.adam_eps, **self._schedules()}

    def _schedules(self) -> dict:
        return {"sigma_decay": self.sigma_decay, "sigma_limit": self.sigma_limit, "lr_decay": self.lr_decay,
                "lr_limit": self.lr_limit}

    def state_dict(self) -> dict:
        """Everything an exact resume needs: settings, tree spec, generation and EvoTorch's state
        (center, Adam's moments and step count, sigma). Tensors are copies; ``torch.save``-able and
        loadable with ``weights_only=True``."""
        state = self._state
        return {
            "format": STATE_FORMAT, "config": self._config(), "spec": self.spec.to_dict(),
            "generation": self.generation,
            "pgpe": {**{name: getattr(state, name).clone() for name in _PGPE_TENSORS},
                     "ranking_method": state.ranking_method, "maximize": state.maximize,
                     "symmetric": state.symmetric, "optimizer": state.optimizer},
            "adam": {name: getattr(state.optimizer_state, name).clone() for name in _ADAM_FIELDS},
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict()``'s output; the settings and tree must be this instance's."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"not an OpenES state (format {STATE_FORMAT!r} expected)")
        spec = TreeSpec.from_dict(state["spec"])
        if spec != self.spec:
            raise ValueError(f"the state's tree ({spec.describe()}) differs from this one's ({self.spec.describe()})")
        saved = {**_CONSTANT_SCHEDULES, **state["config"]}  # states written before the schedules existed
        differ = {k: (v, saved.get(k)) for k, v in self._config().items() if saved.get(k) != v}
        if differ:
            raise ValueError("the state's settings differ from this instance's (this, state): "
                             + ", ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in differ.items()))
        device = self.device
        adam = type(self._state.optimizer_state)(**{k: state["adam"][k].to(device).clone() for k in _ADAM_FIELDS})
        pgpe = state["pgpe"]
        self._state = type(self._state)(
            optimizer=pgpe["optimizer"], optimizer_state=adam,
            **{name: pgpe[name].to(device).clone() for name in _PGPE_TENSORS},
            ranking_method=pgpe["ranking_method"], maximize=pgpe["maximize"], symmetric=pgpe["symmetric"])
        self.generation = int(state["generation"])
        self._asked = None

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device | str = "cpu") -> "OpenES":
        """An ``OpenES`` rebuilt from ``state_dict()``'s output alone."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"not an OpenES state (format {STATE_FORMAT!r} expected)")
        spec = TreeSpec.from_dict(state["spec"])
        center = spec.unflatten(state["adam"]["center"].to(device))
        config = dict(state["config"])
        es = cls(center, config.pop("popsize"), adam_betas=tuple(config.pop("adam_betas")), **config)
        es.load_state_dict(state)
        return es


def _grad_estimator() -> Callable:
    """EvoTorch's antithetic center/sigma gradient, built as its functional PGPE builds it."""
    from evotorch.distributions import SymmetricSeparableGaussian, make_functional_grad_estimator  # EvoTorch: see _functional

    return make_functional_grad_estimator(
        SymmetricSeparableGaussian, required_parameters=["mu", "sigma"],
        fixed_parameters={"divide_mu_grad_by": "num_directions", "divide_sigma_grad_by": "num_directions"})


# -- evaluators ------------------------------------------------------------------------------------
def chunk_bounds(popsize: int, chunk_size: int | None) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` splitting ``popsize`` candidates into chunks of ``chunk_size`` (the
    last may be shorter); ``None`` is one chunk. Both evaluators split by this."""
    if chunk_size is None or chunk_size >= popsize:
        return [(0, popsize)]
    return [(start, min(start + chunk_size, popsize)) for start in range(0, popsize, chunk_size)]


def _check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")


def _check_population(candidates: Sequence[Tree], seeds: Sequence[int]) -> None:
    if len(candidates) != len(seeds):
        raise ValueError(f"{len(candidates)} candidates but {len(seeds)} seeds")
    if not candidates:
        raise ValueError("no candidates to evaluate")


def evaluate_chunk(fitness: Fitness, candidates: list[Tree], seeds: list[int]) -> Tensor:
    """One call of ``fitness`` on a chunk; its values as a float64 vector (checked)."""
    return _fitness_vector(fitness(candidates, seeds), len(candidates), "the fitness function's result")


def _stack(candidates: Sequence[Tree]) -> Tree:
    return {name: torch.stack([c[name] for c in candidates]) for name in candidates[0]}


def _unstack_and_evaluate(fitness: Fitness, stacked: Tree, seeds: list[int]) -> Tensor:
    """A Ray task's body: the chunk arrives as one stacked tensor per name (one contiguous buffer each,
    not one pickled storage per candidate)."""
    candidates = [{name: value[i] for name, value in stacked.items()} for i in range(len(seeds))]
    return evaluate_chunk(fitness, candidates, seeds)


class InProcessEvaluator:
    """Evaluates a population in this process: one ``fitness`` call per chunk (one call for the whole
    population with ``chunk_size=None``, the fast path for a batched fitness)."""

    def __init__(self, fitness: Fitness, chunk_size: int | None = None):
        if not callable(fitness):
            raise ValueError(f"fitness must be callable, got {type(fitness).__name__}")
        _check_chunk_size(chunk_size)
        self.fitness, self.chunk_size = fitness, chunk_size

    def __call__(self, candidates: Sequence[Tree], seeds: Sequence[int]) -> Tensor:
        _check_population(candidates, seeds)
        candidates, seeds = list(candidates), [int(s) for s in seeds]
        return torch.cat([evaluate_chunk(self.fitness, candidates[a:b], seeds[a:b])
                          for a, b in chunk_bounds(len(candidates), self.chunk_size)])

    def close(self) -> None:
        pass

    def __enter__(self) -> "InProcessEvaluator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RayEvaluator:
    """Evaluates a population on Ray workers: one Ray task per chunk, each retried up to
    ``max_retries`` times if its worker process dies, so a generation completes.

    Connects to Ray if it is running (``ray.init(address=address)`` otherwise, or a new local Ray with
    ``num_cpus=num_workers``, no dashboard and warnings only when ``address`` is None; ``ray_init``
    adds keyword arguments to ``ray.init``, e.g. ``object_store_memory``). ``close()`` (or leaving the
    ``with`` block) shuts down a Ray that this evaluator started. ``chunk_size=None`` gives each
    worker one chunk (``ceil(popsize / num_workers)`` candidates); pass the same ``chunk_size`` to an
    ``InProcessEvaluator`` for bit-identical results. The fitness function is sent once (``ray.put``).
    """

    def __init__(self, fitness: Fitness, num_workers: int, address: str | None = None,
                 chunk_size: int | None = None, max_retries: int = 3, ray_init: dict | None = None):
        if not callable(fitness):
            raise ValueError(f"fitness must be callable, got {type(fitness).__name__}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"num_workers must be a positive integer, got {num_workers!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        _check_chunk_size(chunk_size)
        import ray  # here, not at the top: Ray is the optional extra "es" and slow to import

        self._ray = ray
        self.num_workers, self.chunk_size, self.max_retries = num_workers, chunk_size, max_retries
        self._owns_ray = False
        if not ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR}
            if address is None:  # "local": a new Ray of our own, even where `ray start` left a cluster to join
                options["num_cpus"] = num_workers
            options.update(ray_init or {})
            try:
                ray.init(address="local" if address is None else address, **options)
            except ConnectionError as error:
                raise ConnectionError(
                    f"could not join the Ray cluster at {address!r}: {error}. Ray's token authentication (on by "
                    "default since Ray 2.59) needs the cluster's token on this machine: RAY_AUTH_TOKEN, or the file "
                    "`ray get-auth-token` reads; on a node of the cluster, --ray-address auto finds it") from None
            self._owns_ray = True
        self._task = ray.remote(_unstack_and_evaluate).options(
            num_cpus=1, max_retries=max_retries, retry_exceptions=False)
        self._fitness = ray.put(fitness)

    def chunks(self, popsize: int) -> list[tuple[int, int]]:
        size = self.chunk_size
        if size is None:
            size = -(-popsize // self.num_workers)
        return chunk_bounds(popsize, size)

    def __call__(self, candidates: Sequence[Tree], seeds: Sequence[int]) -> Tensor:
        if self._fitness is None:
            raise RuntimeError("this RayEvaluator is closed")
        _check_population(candidates, seeds)
        candidates, seeds = list(candidates), [int(s) for s in seeds]
        refs = [self._task.remote(self._fitness, _stack(candidates[a:b]), seeds[a:b])
                for a, b in self.chunks(len(candidates))]
        return torch.cat(self._ray.get(refs))

    def close(self) -> None:
        self._fitness = None
        if self._owns_ray and self._ray.is_initialized():
            self._ray.shutdown()
        self._owns_ray = False

    def __enter__(self) -> "RayEvaluator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the driver ------------------------------------------------------------------------------------
def save_state(es: OpenES, path: str | os.PathLike) -> None:
    """``torch.save(es.state_dict())`` to a temporary file beside ``path``, then rename over it: a
    reader (or a resume after a crash) sees the old checkpoint or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(es.state_dict(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_state(es: OpenES, path: str | os.PathLike) -> None:
    """Load a ``save_state`` file into ``es``."""
    es.load_state_dict(torch.load(path, map_location=es.device, weights_only=True))


def run_es(es: OpenES, evaluator: Callable[[list[Tree], list[int]], Any], generations: int,
           checkpoint: str | os.PathLike | None = None, checkpoint_interval: int = 1,
           on_generation: Callable[[OpenES, dict], None] | None = None) -> list[dict[str, float]]:
    """Ask, evaluate, tell until ``es.generation == generations`` (a total, not a count of new ones).

    With ``checkpoint``: if the file exists, ``es`` resumes from it first; the state is written there
    (atomically, ``save_state``) every ``checkpoint_interval`` generations and after the last.
    ``on_generation(es, metrics)`` is called after each ``tell``. Returns the metrics of the generations
    run by this call.
    """
    if isinstance(generations, bool) or not isinstance(generations, int) or generations < 0:
        raise ValueError(f"generations must be an integer >= 0, got {generations!r}")
    if isinstance(checkpoint_interval, bool) or not isinstance(checkpoint_interval, int) or checkpoint_interval < 1:
        raise ValueError(f"checkpoint_interval must be a positive integer, got {checkpoint_interval!r}")
    if not callable(evaluator):
        raise ValueError(f"evaluator must be callable, got {type(evaluator).__name__}")
    if checkpoint is not None and Path(checkpoint).exists():
        load_state(es, checkpoint)
    history = []
    while es.generation < generations:
        population = es.ask()
        metrics = es.tell(evaluator(population.candidates, population.seeds))
        history.append(metrics)
        if on_generation is not None:
            on_generation(es, metrics)
        if checkpoint is not None and (es.generation % checkpoint_interval == 0 or es.generation == generations):
            save_state(es, checkpoint)
    return history
