"""rlmeta.es: OpenES on EvoTorch's functional PGPE, in-process and Ray evaluation, checkpoints.

Ray starts once for the module (``ray_cluster``, 2 CPUs); the evaluators connect to it and leave it
running. The fitness functions live in this file, which Ray workers cannot import, so they are
pickled by value (``register_pickle_by_value``).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from rlmeta.es import (InProcessEvaluator, OpenES, RayEvaluator, TreeSpec, chunk_bounds, load_state, run_es,
                       save_state)

TARGET = {"w": torch.tensor([[0.5, -1.0, 0.25], [1.5, 0.0, -0.5]]), "b": torch.tensor([0.3, -0.7], dtype=torch.float64)}


class Quadratic:
    """``-|x - target|^2`` plus a small seed-dependent offset (the same for both members of a pair, so it
    leaves the antithetic estimate unchanged); deterministic per (candidate, seed)."""

    def __init__(self, target: dict, noise: float = 0.01):
        self.target, self.noise = target, noise

    def __call__(self, candidates, seeds):
        values = []
        for candidate, seed in zip(candidates, seeds):
            offset = torch.randn((), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            distance = sum(((candidate[k].double() - t.double()) ** 2).sum() for k, t in self.target.items())
            values.append(-distance + self.noise * offset)
        return torch.stack(values)


class KillsItsWorker(Quadratic):
    """Kills its own Ray worker process (SIGKILL) on the first call for the chunk whose first seed is
    ``kill_seed``; ``marker`` (created exclusively) makes that happen once. Every call leaves a
    ``<first seed>-<pid>`` file in ``log`` first."""

    def __init__(self, target, kill_seed: int, marker: Path, log: Path, driver_pid: int):
        super().__init__(target)
        self.kill_seed, self.marker, self.log, self.driver_pid = kill_seed, marker, log, driver_pid

    def __call__(self, candidates, seeds):
        (self.log / f"{seeds[0]}-{os.getpid()}").touch()
        if seeds[0] == self.kill_seed and os.getpid() != self.driver_pid:
            try:
                with open(self.marker, "x") as f:
                    f.write(str(os.getpid()))
            except FileExistsError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(candidates, seeds)


def zeros_like_target(dtype_w=torch.float32):
    return {"w": torch.zeros(2, 3, dtype=dtype_w), "b": torch.zeros(2, dtype=torch.float64)}


def flat(es: OpenES, tree: dict) -> torch.Tensor:
    return es.spec.flatten(tree)


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    started = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, object_store_memory=100 * 2**20)
    print(f"ray.init: {time.perf_counter() - started:.1f} s")
    yield ray
    ray.shutdown()


# -- the search -------------------------------------------------------------------------------------
def test_quadratic_converges():
    es = OpenES({"x": torch.zeros(8, dtype=torch.float64)}, popsize=32, lr=0.05, seed=3)
    target = torch.linspace(-1, 1, 8, dtype=torch.float64)
    history = run_es(es, InProcessEvaluator(Quadratic({"x": target}, noise=0.0)), 250)
    assert len(history) == 250 and es.generation == 250
    assert (es.center["x"] - target).abs().max() < 0.05
    assert history[-1]["fitness_mean"] > 0.1 * history[0]["fitness_mean"]


def test_tree_of_two_shapes_converges_and_keeps_dtypes():
    es = OpenES(zeros_like_target(), popsize=32, lr=0.05, seed=1)
    run_es(es, InProcessEvaluator(Quadratic(TARGET)), 250)
    center = es.center
    assert center["w"].dtype == torch.float32 and center["b"].dtype == torch.float64
    assert center["w"].shape == (2, 3) and center["b"].shape == (2,)
    for name, target in TARGET.items():
        assert (center[name].double() - target.double()).abs().max() < 0.05, name


def test_pairs_are_antithetic_and_share_seeds():
    es = OpenES(zeros_like_target(), popsize=8, sigma=0.2, seed=5)
    population = es.ask()
    assert len(population.candidates) == 8 and len(population.seeds) == 8
    center = flat(es, es.center)
    x = torch.stack([flat(es, c) for c in population.candidates])
    assert torch.allclose(x[0::2] - center, -(x[1::2] - center), atol=1e-6)
    assert population.seeds[0::2] == population.seeds[1::2]
    assert len(set(population.seeds[0::2])) == 4
    assert all(c["w"].dtype == torch.float32 and c["b"].dtype == torch.float64 for c in population.candidates)


def test_sampling_depends_on_seed_and_generation_only():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a, b = OpenES(zeros_like_target(), popsize=6, seed=7), OpenES(zeros_like_target(), popsize=6, seed=7)
    first = a.ask()
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is untouched
    torch.manual_seed(123)  # ... and does not matter
    again, other = a.ask(), b.ask()
    for x, y, z in zip(first.candidates, again.candidates, other.candidates):
        assert all(torch.equal(x[k], y[k]) and torch.equal(x[k], z[k]) for k in x)
    assert first.seeds == again.seeds == other.seeds
    a.tell(torch.arange(6.0))
    assert a.ask().seeds != first.seeds
    assert OpenES(zeros_like_target(), popsize=6, seed=8).ask().seeds != first.seeds


def test_a_fitness_that_writes_into_candidates_cannot_change_the_update():
    es, clean = OpenES(zeros_like_target(), popsize=8, seed=2), OpenES(zeros_like_target(), popsize=8, seed=2)
    fitness = Quadratic(TARGET)
    population = es.ask()
    values = fitness(population.candidates, population.seeds)
    for c in population.candidates:
        c["b"].add_(100.0)  # b is float64 like the flat vector: a view, not a copy
    es.tell(values)
    reference = clean.ask()
    clean.tell(fitness(reference.candidates, reference.seeds))
    assert all(torch.equal(es.center[k], clean.center[k]) for k in TARGET)


def test_the_raw_antithetic_estimator_is_unbiased():
    """The mean of many OpenES gradient estimates with raw fitness matches the analytic gradient of the
    smoothed objective (for this quadratic, ``-2 (center - target) + a``) within 4 standard errors."""
    dim, target = 5, torch.tensor([1.0, -0.5, 0.0, 2.0, 0.3], dtype=torch.float64)
    a = torch.tensor([0.2, 0.0, -1.0, 0.5, 0.1], dtype=torch.float64)
    center = torch.tensor([0.5, 0.5, -0.5, 0.0, 1.0], dtype=torch.float64)

    def fitness(candidates, seeds):
        return [float(-((c["x"] - target) ** 2).sum() + a @ c["x"]) for c in candidates]

    estimates = []
    for seed in range(300):
        es = OpenES({"x": center.clone()}, popsize=8, sigma=0.1, ranking="raw", seed=seed)
        population = es.ask()
        assert population.seeds[0::2] == population.seeds[1::2]
        estimates.append(es.estimate_gradient(fitness(population.candidates, population.seeds))["x"])
    estimates = torch.stack(estimates)
    mean, se = estimates.mean(0), estimates.std(0) / math.sqrt(len(estimates))
    analytic = -2 * (center - target) + a
    assert ((mean - analytic).abs() < 4 * se).all(), (mean, analytic, se)
    assert (se < 0.2 * analytic.abs().max()).all()  # the test has power: estimates are not all noise


@pytest.mark.parametrize("schedules", [{}, {"sigma_decay": 0.7, "sigma_limit": 0.02, "lr_decay": 0.8, "lr_limit": 0.012}],
                         ids=["constant", "decaying"])
def test_evotorch_gradient_is_sigma_squared_times_openes_and_adam_matches_openes(schedules):
    """EvoTorch's Adam follows sigma**2 * g with epsilon adam_eps * sigma**2: the center moves as Adam
    (eps=adam_eps) fed OpenES's g, computed here by hand in float64; with decaying sigma and learning
    rate (evosax's schedule: multiplied after each generation, floored at the limit) as well."""
    sigma0, lr0, eps, (b1, b2) = 0.05, 0.02, 1e-8, (0.9, 0.999)
    es = OpenES({"x": torch.zeros(4, dtype=torch.float64)}, popsize=6, sigma=sigma0, lr=lr0, ranking="centered", seed=4,
                **schedules)
    fitness = Quadratic({"x": torch.tensor([1.0, 2.0, -1.0, 0.5], dtype=torch.float64)})
    theta, m, v = torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    sigma, lr = sigma0, lr0
    for t in range(1, 6):
        population = es.ask()
        values = fitness(population.candidates, population.seeds)
        # OpenES by hand: g = 1/(N sigma) sum_j u_j eps_j with centered ranks u in [-0.5, 0.5]
        x = torch.stack([c["x"] for c in population.candidates])
        noise = (x - theta) / sigma
        ranks = torch.empty(6, dtype=torch.float64)
        ranks[values.argsort()] = torch.arange(6, dtype=torch.float64) / 5 - 0.5
        g = (ranks[:, None] * noise).sum(0) / (6 * sigma)
        assert torch.allclose(es.estimate_gradient(values)["x"], g, rtol=1e-10, atol=1e-12)
        metrics = es.tell(values)
        assert metrics["grad_norm"] == pytest.approx(g.norm().item(), rel=1e-10)
        assert (metrics["sigma"], metrics["lr"]) == pytest.approx((sigma, lr), rel=1e-12)
        if t == 1 and not schedules:  # EvoTorch's first moment is (1 - b1) * (its gradient) = (1 - b1) sigma^2 g
            assert torch.allclose(es._state.optimizer_state.m, (1 - b1) * sigma**2 * g, rtol=1e-10, atol=1e-15)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g**2
        theta = theta + lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
        assert torch.allclose(es.center["x"], theta, rtol=1e-9, atol=1e-12)
        sigma = max(sigma * schedules.get("sigma_decay", 1.0), schedules.get("sigma_limit", 0.0))
        lr = max(lr * schedules.get("lr_decay", 1.0), schedules.get("lr_limit", 0.0))
        assert es.sigma_at(t) == pytest.approx(sigma, rel=1e-12) and es.lr_at(t) == pytest.approx(lr, rel=1e-12)
    assert torch.allclose(es._state.stdev, torch.full((4,), sigma, dtype=torch.float64), rtol=1e-12, atol=0)
    if schedules:  # both floors reached within five generations
        assert (sigma, lr) == (schedules["sigma_limit"], schedules["lr_limit"])
    else:
        assert torch.equal(es._state.stdev, torch.full((4,), sigma0, dtype=torch.float64))  # sigma stays fixed


def test_minimize_moves_downhill():
    es = OpenES({"x": torch.full((3,), 2.0)}, popsize=16, lr=0.05, maximize=False)
    run_es(es, InProcessEvaluator(lambda cs, seeds: [float((c["x"] ** 2).sum()) for c in cs]), 60)
    assert es.center["x"].abs().max() < 2.0 - 60 * 0.05 * 0.5


# -- checkpoints ------------------------------------------------------------------------------------
def assert_same_state(a: OpenES, b: OpenES) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["generation"] == sb["generation"] and sa["config"] == sb["config"]
    for group in ("adam", "pgpe"):
        for key, value in sa[group].items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, sb[group][key]), (group, key)
            else:
                assert value == sb[group][key]


@pytest.mark.parametrize("schedules", [{}, {"sigma_decay": 0.9, "sigma_limit": 0.05, "lr_decay": 0.95}],
                         ids=["constant", "decaying"])
def test_resume_through_a_file_is_bit_identical(tmp_path, schedules):
    evaluator = InProcessEvaluator(Quadratic(TARGET), chunk_size=4)
    straight = OpenES(zeros_like_target(), popsize=12, seed=9, **schedules)
    history = run_es(straight, evaluator, 10)

    checkpoint = tmp_path / "es.pt"
    first = OpenES(zeros_like_target(), popsize=12, seed=9, **schedules)
    part1 = run_es(first, evaluator, 4, checkpoint=checkpoint, checkpoint_interval=3)
    assert first.generation == 4 and checkpoint.exists()
    assert not [p for p in tmp_path.iterdir() if p.name != "es.pt"]  # no temporary file left
    resumed = OpenES(zeros_like_target(), popsize=12, seed=9, **schedules)  # a new process would start like this
    part2 = run_es(resumed, evaluator, 10, checkpoint=checkpoint)
    assert resumed.generation == 10 and len(part2) == 6
    assert part1 + part2 == history
    assert_same_state(straight, resumed)
    assert all(torch.equal(straight.center[k], resumed.center[k]) for k in TARGET)

    rebuilt = OpenES.from_state_dict(torch.load(checkpoint, weights_only=True))
    assert_same_state(rebuilt, resumed)
    assert run_es(resumed, evaluator, 10, checkpoint=checkpoint) == []  # already there


def test_a_constant_schedule_changes_no_bit(monkeypatch):
    """float32 centers and a sigma float32 cannot hold (0.04): the default schedules leave the run
    bit for bit as it was before they existed (no schedule step at all)."""
    center = {"x": torch.zeros(5), "y": torch.ones(2, 3)}
    fitness = InProcessEvaluator(Quadratic({"x": torch.ones(5), "y": torch.zeros(2, 3)}))
    scheduled = OpenES(center, popsize=8, sigma=0.04, lr=0.013, seed=3)
    run_es(scheduled, fitness, 6)
    monkeypatch.setattr(OpenES, "_schedule", lambda self, generation: None)
    before = OpenES(center, popsize=8, sigma=0.04, lr=0.013, seed=3)
    run_es(before, fitness, 6)
    assert_same_state(scheduled, before)


def test_a_state_from_before_the_schedules_loads_as_constant_and_a_changed_schedule_is_refused():
    es = OpenES(zeros_like_target(), popsize=4, seed=1)
    run_es(es, InProcessEvaluator(Quadratic(TARGET)), 2)
    old = es.state_dict()
    for key in ("sigma_decay", "sigma_limit", "lr_decay", "lr_limit"):  # the format written before them
        del old["config"][key]
    assert_same_state(OpenES.from_state_dict(old), es)
    with pytest.raises(ValueError, match="sigma_decay: 0.99 vs 1.0"):
        OpenES(zeros_like_target(), popsize=4, seed=1, sigma_decay=0.99).load_state_dict(old)


def test_save_state_replaces_atomically(tmp_path, monkeypatch):
    es = OpenES(zeros_like_target(), popsize=4)
    path = tmp_path / "state.pt"
    save_state(es, path)
    es.tell(Quadratic(TARGET)(*es.ask()))

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_state(es, path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]  # the old one, whole
    old = OpenES(zeros_like_target(), popsize=4)
    load_state(old, path)
    assert old.generation == 0


# -- evaluators -------------------------------------------------------------------------------------
def test_chunks_and_in_process_calls():
    assert chunk_bounds(10, None) == [(0, 10)]
    assert chunk_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_bounds(10, 16) == [(0, 10)]
    calls = []

    def fitness(candidates, seeds):
        calls.append(len(candidates))
        return Quadratic(TARGET)(candidates, seeds)

    es = OpenES(zeros_like_target(), popsize=10)
    population = es.ask()
    whole = InProcessEvaluator(fitness)(*population)
    assert calls == [10]
    chunked = InProcessEvaluator(fitness, chunk_size=4)(*population)
    assert calls == [10, 4, 4, 2] and torch.equal(whole, chunked) and whole.dtype == torch.float64


def test_in_process_and_ray_give_identical_centers(ray_cluster):
    fitness = Quadratic(TARGET)
    local = OpenES(zeros_like_target(), popsize=10, seed=11)
    remote = OpenES(zeros_like_target(), popsize=10, seed=11)
    history = run_es(local, InProcessEvaluator(fitness, chunk_size=4), 4)
    with RayEvaluator(fitness, num_workers=2, chunk_size=4) as evaluator:
        assert evaluator.chunks(10) == chunk_bounds(10, 4)
        started = time.perf_counter()
        remote_history = run_es(remote, evaluator, 4)
        print(f"4 generations on Ray: {time.perf_counter() - started:.2f} s")
    assert history == remote_history
    assert_same_state(local, remote)
    assert ray_cluster.is_initialized()  # it did not start this Ray, so it leaves it running


def test_a_killed_ray_worker_does_not_lose_a_generation(ray_cluster, tmp_path):
    fitness = Quadratic(TARGET)
    reference = OpenES(zeros_like_target(), popsize=8, seed=13)
    history = run_es(reference, InProcessEvaluator(fitness, chunk_size=4), 3)

    es = OpenES(zeros_like_target(), popsize=8, seed=13)
    probe = OpenES(zeros_like_target(), popsize=8, seed=13)
    probe.tell(fitness(*probe.ask()))
    kill_seed = probe.ask().seeds[4]  # generation 1, second chunk
    marker, log = tmp_path / "killed", tmp_path / "calls"
    log.mkdir()
    killer = KillsItsWorker(TARGET, kill_seed, marker, log, os.getpid())
    with RayEvaluator(killer, num_workers=2, chunk_size=4, max_retries=2) as evaluator:
        remote_history = run_es(es, evaluator, 3)
    assert marker.exists()
    killed = int(marker.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(killed, 0)  # that worker is gone
    runs = sorted(int(p.name.split("-")[1]) for p in log.iterdir() if p.name.startswith(f"{kill_seed}-"))
    assert len(runs) == 2 and killed in runs  # the chunk ran twice: killed, then re-run elsewhere
    assert remote_history == history
    assert_same_state(reference, es)


def test_ray_evaluator_reports_fitness_errors(ray_cluster):
    with RayEvaluator(lambda cs, seeds: [0.0], num_workers=2, chunk_size=2) as evaluator:
        with pytest.raises(ValueError, match="must hold 2 values"):
            evaluator(*OpenES(zeros_like_target(), popsize=4).ask())
    with pytest.raises(RuntimeError, match="closed"):
        evaluator(*OpenES(zeros_like_target(), popsize=4).ask())


# -- bad inputs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"popsize": 7}, "popsize must be an even integer"),
    ({"popsize": 0}, "popsize must be an even integer"),
    ({"popsize": 4.0}, "popsize must be an even integer"),
    ({"sigma": 0.0}, "sigma must be a finite number > 0"),
    ({"sigma": -0.1}, "sigma must be a finite number > 0"),
    ({"sigma": float("nan")}, "sigma must be a finite number > 0"),
    ({"sigma_decay": 0.0}, r"sigma_decay must be in \(0, 1\]"),
    ({"sigma_decay": 1.01}, r"sigma_decay must be in \(0, 1\]"),
    ({"sigma_limit": 0.2}, r"sigma_limit must be in \[0, sigma\]"),
    ({"lr_limit": -1e-3}, r"lr_limit must be in \[0, lr\]"),
    ({"lr_decay": float("nan")}, r"lr_decay must be in \(0, 1\]"),
    ({"lr": 0}, "lr must be a finite number > 0"),
    ({"ranking": "rank"}, "ranking must be one of"),
    ({"seed": -1}, "seed must be an integer >= 0"),
    ({"center": {}}, "non-empty dict"),
    ({"center": torch.zeros(3)}, "non-empty dict"),
    ({"center": {"x": torch.zeros(3, dtype=torch.int64)}}, "must be a floating-point tensor"),
    ({"center": {"x": [0.0, 1.0]}}, "must be a tensor"),
    ({"center": {"x": torch.zeros(0)}}, "has no elements"),
    ({"center": {"x": torch.tensor([0.0, float("inf")])}}, "non-finite"),
])
def test_bad_settings_are_refused(kwargs, message):
    settings = {"center": {"x": torch.zeros(3)}, "popsize": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        OpenES(**settings)


def test_bad_fitness_and_order_are_refused():
    es = OpenES({"x": torch.zeros(3)}, popsize=4)
    with pytest.raises(RuntimeError, match="ask"):
        es.tell([0.0] * 4)
    es.ask()
    with pytest.raises(ValueError, match="must hold 4 values"):
        es.tell([0.0] * 3)
    with pytest.raises(ValueError, match="must hold 4 values"):
        es.tell(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="candidates \\[2\\] are not"):
        es.tell([0.0, 1.0, float("nan"), 2.0])
    with pytest.raises(ValueError, match="sequence of numbers"):
        es.tell(["a", "b", "c", "d"])
    assert es.generation == 0
    es.tell([0.0, 1.0, 2.0, 3.0])
    assert es.generation == 1


def test_bad_evaluator_and_driver_inputs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="chunk_size"):
        InProcessEvaluator(Quadratic(TARGET), chunk_size=0)
    with pytest.raises(ValueError, match="callable"):
        InProcessEvaluator("fitness")
    with pytest.raises(ValueError, match="num_workers"):
        RayEvaluator(Quadratic(TARGET), num_workers=0)
    with pytest.raises(ValueError, match="max_retries"):
        RayEvaluator(Quadratic(TARGET), num_workers=2, max_retries=-1)
    with pytest.raises(ValueError, match="3 candidates but 2 seeds"):
        InProcessEvaluator(Quadratic(TARGET))([zeros_like_target()] * 3, [0, 1])
    es = OpenES(zeros_like_target(), popsize=4)
    with pytest.raises(ValueError, match="generations"):
        run_es(es, InProcessEvaluator(Quadratic(TARGET)), -1)
    with pytest.raises(ValueError, match="checkpoint_interval"):
        run_es(es, InProcessEvaluator(Quadratic(TARGET)), 1, checkpoint=tmp_path / "x.pt", checkpoint_interval=0)
    other = OpenES({"x": torch.zeros(3)}, popsize=4)
    with pytest.raises(ValueError, match="tree"):
        other.load_state_dict(es.state_dict())
    with pytest.raises(ValueError, match="settings differ.*popsize: 6 vs 4"):
        OpenES(zeros_like_target(), popsize=6).load_state_dict(es.state_dict())
    with pytest.raises(ValueError, match="not an OpenES state"):
        es.load_state_dict({"generation": 3})
    assert TreeSpec.of(zeros_like_target()).dtype == torch.float64
