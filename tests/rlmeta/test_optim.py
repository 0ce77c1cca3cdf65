"""Tests of the functional optimizers in ``rlmeta.optim``.

* Trajectories match ``torch.optim.SGD`` / ``RMSprop`` / ``Adam`` on the same parameters and the
  same gradients (float64, ``eps_root=0``), with and without gradient clipping (compared with
  ``torch.nn.utils.clip_grad_norm_`` followed by the torch optimizer).
* ``update`` is pure: it never mutates params, grads or state.
* Meta-gradients ``d loss(after K inner updates) / d lr`` match central finite differences, and
  stay finite through second moments that are exactly zero when ``eps_root > 0``.
* Bad hyperparameters and mismatched keys raise ``ValueError``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from rlmeta import optim as O

DT = torch.float64
STEPS = 20


def make_params(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(4, generator=g, dtype=DT),
        "b": torch.randn(2, 3, generator=g, dtype=DT),
    }


# A fixed quadratic-plus-smooth inner loss; its gradients depend on the parameters.
_G = torch.Generator().manual_seed(1234)
A = torch.randn(5, 4, generator=_G, dtype=DT)
Y = torch.randn(5, generator=_G, dtype=DT)
C = torch.rand(2, 3, generator=_G, dtype=DT) + 0.5
TARGET_W = torch.randn(4, generator=_G, dtype=DT)


def inner_loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
    return 0.5 * ((A @ p["w"] - Y) ** 2).sum() + (C * p["b"] ** 2).sum() + 0.3 * torch.sin(3 * p["b"]).sum()


def outer_loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
    return ((p["w"] - TARGET_W) ** 2).sum() + torch.cos(p["b"]).sum() + (p["w"][0] * p["b"][1, 2])


def quadratic_grads(step: int, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    grads = torch.autograd.grad(inner_loss(leaves), list(leaves.values()))
    return dict(zip(leaves, grads))


def random_grads(step: int, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A gradient stream independent of the params, with varying scale and some exact zeros."""
    g = torch.Generator().manual_seed(1000 + step)
    scale = 10.0 ** (3.0 * torch.rand((), generator=g, dtype=DT).item() - 2.0)  # 1e-2 .. 10
    grads = {k: scale * torch.randn(v.shape, generator=g, dtype=DT) for k, v in params.items()}
    if step < 3:
        grads["b"][0, 0] = 0.0  # a zero second moment for the first steps
    if step % 5 == 4:
        grads["w"] = torch.zeros_like(grads["w"])
    return grads


# (ours, torch class, torch kwargs)
CONFIGS = {
    "sgd": (lambda **kw: O.sgd(lr=0.05, **kw), torch.optim.SGD, dict(lr=0.05)),
    "sgd_momentum": (lambda **kw: O.sgd(lr=0.05, momentum=0.9, **kw), torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
    "rmsprop": (lambda **kw: O.rmsprop(lr=0.01, eps_root=0.0, **kw), torch.optim.RMSprop, dict(lr=0.01, alpha=0.99)),
    "rmsprop_decay": (
        lambda **kw: O.rmsprop(lr=0.02, decay=0.9, eps=1e-6, eps_root=0.0, **kw),
        torch.optim.RMSprop, dict(lr=0.02, alpha=0.9, eps=1e-6),
    ),
    "adam": (lambda **kw: O.adam(lr=0.05, eps_root=0.0, **kw), torch.optim.Adam, dict(lr=0.05)),
    "adam_betas": (
        lambda **kw: O.adam(lr=0.01, b1=0.5, b2=0.9, eps=1e-6, eps_root=0.0, **kw),
        torch.optim.Adam, dict(lr=0.01, betas=(0.5, 0.9), eps=1e-6),
    ),
}


def run_torch(cls, kwargs, params0, grad_fn, max_norm=None, exact_clip=False):
    ps = {k: v.clone().requires_grad_(True) for k, v in params0.items()}
    opt = cls(list(ps.values()), **kwargs)
    traj = []
    for i in range(STEPS):
        grads = grad_fn(i, {k: v.detach() for k, v in ps.items()})
        for k, p in ps.items():
            p.grad = grads[k].clone()
        if max_norm is not None and exact_clip:  # optax's rule: g * min(1, max_norm / ||g||)
            norm = torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in ps.values()]))
            for p in ps.values():
                p.grad = p.grad * min(1.0, max_norm / norm.item())
        elif max_norm is not None:
            torch.nn.utils.clip_grad_norm_(list(ps.values()), max_norm)
        opt.step()
        traj.append({k: v.detach().clone() for k, v in ps.items()})
    return traj


def run_ours(opt, params0, grad_fn):
    params = {k: v.clone() for k, v in params0.items()}
    state = opt.init(params)
    traj = []
    for i in range(STEPS):
        params, state = opt.update(params, grad_fn(i, params), state)
        traj.append({k: v.clone() for k, v in params.items()})
    return traj


def assert_traj_close(ours, theirs, atol):
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == DT
            np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=0, atol=atol, err_msg=f"step {i}, {k}")


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("grad_fn", [quadratic_grads, random_grads], ids=["quadratic", "random"])
def test_matches_torch_optim(name, grad_fn):
    ours, cls, kwargs = CONFIGS[name]
    params0 = make_params(0)
    theirs = run_torch(cls, kwargs, params0, grad_fn)
    mine = run_ours(ours(), params0, grad_fn)
    assert_traj_close(mine, theirs, atol=1e-6)
    assert_traj_close(mine, theirs, atol=1e-12)  # in fact equal up to rounding
    # the parameters did move
    assert max((mine[-1][k] - params0[k]).abs().max().item() for k in params0) > 1e-3


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("grad_fn", [quadratic_grads, random_grads], ids=["quadratic", "random"])
def test_max_grad_norm_matches_clip_grad_norm_then_torch_optim(name, grad_fn):
    ours, cls, kwargs = CONFIGS[name]
    params0 = make_params(1)
    max_norm = 1.0
    # clipping must bite on some steps and not on others for the test to mean something
    norms = [O.global_norm(grad_fn(i, params0)).item() for i in range(STEPS)]
    if grad_fn is random_grads:
        assert min(norms) < max_norm < max(norms)
    else:
        assert norms[0] > max_norm
    theirs = run_torch(cls, kwargs, params0, grad_fn, max_norm=max_norm)
    mine = run_ours(ours(max_grad_norm=max_norm), params0, grad_fn)
    # torch divides by (norm + 1e-6) where we divide by norm: a relative difference <= 1e-6
    assert_traj_close(mine, theirs, atol=1e-6)
    exact = run_torch(cls, kwargs, params0, grad_fn, max_norm=max_norm, exact_clip=True)
    assert_traj_close(mine, exact, atol=1e-12)


def test_global_norm_and_clip_by_global_norm():
    grads = make_params(3)
    flat = torch.cat([g.reshape(-1) for g in grads.values()])
    norm = O.global_norm(grads)
    assert abs(norm.item() - torch.linalg.vector_norm(flat).item()) < 1e-12
    # below the threshold: unchanged
    same, n0 = O.clip_by_global_norm(grads, norm.item() * 2)
    assert abs(n0.item() - norm.item()) < 1e-12
    for k in grads:
        torch.testing.assert_close(same[k], grads[k], rtol=0, atol=1e-15)
    # above: scaled to exactly max_norm, direction kept
    clipped, n1 = O.clip_by_global_norm(grads, 0.5)
    assert abs(n1.item() - norm.item()) < 1e-12
    assert abs(O.global_norm(clipped).item() - 0.5) < 1e-12
    for k in grads:
        torch.testing.assert_close(clipped[k], grads[k] * (0.5 / norm), rtol=1e-12, atol=0)
    # differentiable, with a finite (zero) gradient at zero
    z = {k: torch.zeros_like(v, requires_grad=True) for k, v in grads.items()}
    gz = torch.autograd.grad(O.global_norm(z), list(z.values()))
    assert all(torch.isfinite(g).all() and (g == 0).all() for g in gz)
    zc, _ = O.clip_by_global_norm(z, 1.0)
    gzc = torch.autograd.grad(sum(v.sum() for v in zc.values()), list(z.values()))
    assert all(torch.isfinite(g).all() for g in gzc)


@pytest.mark.parametrize(
    "make",
    [
        lambda: O.sgd(lr=0.1),
        lambda: O.sgd(lr=0.1, momentum=0.9, max_grad_norm=0.5),
        lambda: O.rmsprop(lr=0.1, eps_root=1e-12, max_grad_norm=0.5),
        lambda: O.adam(lr=0.1, max_grad_norm=0.5),
    ],
    ids=["sgd", "sgd_momentum", "rmsprop", "adam"],
)
def test_update_does_not_mutate_inputs(make):
    opt = make()
    params = make_params(4)
    state = opt.init(params)
    for i in range(2):  # get a non-trivial state first
        params, state = opt.update(params, random_grads(i + 5, params), state)
    grads = {k: 3.0 * v for k, v in random_grads(11, params).items()}  # large: clipping bites
    snapshot = copy.deepcopy((params, grads, state))
    new_params, new_state = opt.update(params, grads, state, lr=torch.tensor(0.05, dtype=DT))
    torch.testing.assert_close((params, grads, state), snapshot, rtol=0, atol=0)
    for k in params:
        assert new_params[k] is not params[k]
        assert not torch.equal(new_params[k], params[k])
    # calling again on the same inputs gives the same result (nothing hidden was updated)
    again_params, again_state = opt.update(params, grads, state, lr=torch.tensor(0.05, dtype=DT))
    torch.testing.assert_close((again_params, again_state), (new_params, new_state), rtol=0, atol=0)


def test_lr_override():
    params, grads = make_params(5), make_params(6)
    opt = O.sgd(lr=0.1)
    p_default, _ = opt.update(params, grads, opt.init(params))
    p_float, _ = opt.update(params, grads, opt.init(params), lr=0.3)
    for k in params:
        torch.testing.assert_close(p_default[k], params[k] - 0.1 * grads[k], rtol=0, atol=1e-15)
        torch.testing.assert_close(p_float[k], params[k] - 0.3 * grads[k], rtol=0, atol=1e-15)


# --------------------------------------------------------------------------------------------
# Meta-gradients
# --------------------------------------------------------------------------------------------

K = 3


def meta_loss(opt, lr, params0, create_graph: bool, loss_in=inner_loss, loss_out=outer_loss) -> torch.Tensor:
    params = {k: v.clone().requires_grad_(True) for k, v in params0.items()}
    state = opt.init(params)
    for _ in range(K):
        grads = torch.autograd.grad(loss_in(params), list(params.values()), create_graph=create_graph)
        params, state = opt.update(params, dict(zip(params, grads)), state, lr=lr)
    return loss_out(params)


META_OPTS = {
    "sgd": lambda mgn: O.sgd(lr=1.0, max_grad_norm=mgn),
    "sgd_momentum": lambda mgn: O.sgd(lr=1.0, momentum=0.9, max_grad_norm=mgn),
    "rmsprop": lambda mgn: O.rmsprop(lr=1.0, decay=0.9, max_grad_norm=mgn),
    "rmsprop_eps_root": lambda mgn: O.rmsprop(lr=1.0, decay=0.9, eps_root=1e-12, max_grad_norm=mgn),
    "adam": lambda mgn: O.adam(lr=1.0, max_grad_norm=mgn),
    "adam_eps_root": lambda mgn: O.adam(lr=1.0, b1=0.8, b2=0.95, eps_root=1e-12, max_grad_norm=mgn),
}


@pytest.mark.parametrize("name", list(META_OPTS))
@pytest.mark.parametrize("max_grad_norm", [None, 1.0])
def test_meta_gradient_wrt_lr_matches_finite_differences(name, max_grad_norm):
    opt = META_OPTS[name](max_grad_norm)
    params0 = make_params(7)
    lr0 = 0.03
    lr = torch.tensor(lr0, dtype=DT, requires_grad=True)
    (dlr,) = torch.autograd.grad(meta_loss(opt, lr, params0, create_graph=True), (lr,))
    h = 1e-6
    up = meta_loss(opt, lr0 + h, params0, create_graph=False).item()
    down = meta_loss(opt, lr0 - h, params0, create_graph=False).item()
    fd = (up - down) / (2 * h)
    assert abs(fd) > 1e-2
    rel = abs(dlr.item() - fd) / max(abs(dlr.item()), abs(fd))
    assert rel <= 1e-6, (dlr.item(), fd, rel)


def _inner_with_dead_entries(p):
    # w[2] and all of "u" do not affect the inner loss: their gradients are exactly zero.
    a = torch.tensor([1.0, 2.0, 0.0, 0.5], dtype=DT)
    return 0.5 * (a * p["w"] ** 2).sum() + (p["w"][0] * p["w"][1]) + 0.0 * (p["u"] ** 2).sum()


def _outer_with_dead_entries(p):
    return (p["w"] ** 2).sum() + p["w"][2] * p["w"][0] + (p["u"] ** 3).sum()


@pytest.mark.parametrize("name", ["rmsprop", "adam"])
def test_meta_gradients_finite_at_zero_second_moments_with_eps_root(name):
    make = {"rmsprop": O.rmsprop, "adam": O.adam}[name]
    g = torch.Generator().manual_seed(8)
    params0 = {"w": torch.randn(4, generator=g, dtype=DT), "u": torch.randn(3, generator=g, dtype=DT)}

    def meta_grads(eps_root):
        opt = make(lr=1.0, eps_root=eps_root)
        lr = torch.tensor(0.1, dtype=DT, requires_grad=True)
        leaves = {k: v.clone().requires_grad_(True) for k, v in params0.items()}
        params, state = dict(leaves), opt.init(leaves)
        first = True
        for _ in range(K):
            grads = dict(zip(params, torch.autograd.grad(_inner_with_dead_entries(params), list(params.values()), create_graph=True)))
            if first:  # the setup really has exactly-zero gradients, hence zero second moments
                assert grads["w"][2].item() == 0.0 and (grads["u"] == 0).all()
                first = False
            params, state = opt.update(params, grads, state, lr=lr)
        out = torch.autograd.grad(_outer_with_dead_entries(params), [lr, leaves["w"], leaves["u"]])
        return out

    dlr, dw, du = meta_grads(1e-12)
    assert torch.isfinite(dlr) and torch.isfinite(dw).all() and torch.isfinite(du).all(), (dlr, dw, du)
    assert dlr.item() != 0.0
    # control: without eps_root, the derivative of sqrt at 0 is infinite and the meta-gradient
    # is NaN, so the check above does exercise the singular point.
    dlr0, dw0, _ = meta_grads(0.0)
    assert not (torch.isfinite(dlr0) and torch.isfinite(dw0).all())


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: O.sgd(lr=-0.1),
        lambda: O.sgd(lr=float("nan")),
        lambda: O.sgd(lr=0.1, momentum=1.0),
        lambda: O.sgd(lr=0.1, momentum=-0.1),
        lambda: O.rmsprop(lr=-1e-3),
        lambda: O.rmsprop(lr=1e-3, decay=1.0),
        lambda: O.rmsprop(lr=1e-3, decay=1.5),
        lambda: O.rmsprop(lr=1e-3, decay=-0.1),
        lambda: O.rmsprop(lr=1e-3, eps=-1e-8),
        lambda: O.rmsprop(lr=1e-3, eps_root=-1e-12),
        lambda: O.adam(lr=-1e-3),
        lambda: O.adam(lr=1e-3, b1=1.0),
        lambda: O.adam(lr=1e-3, b1=-0.1),
        lambda: O.adam(lr=1e-3, b2=1.0),
        lambda: O.adam(lr=1e-3, b2=1.2),
        lambda: O.adam(lr=1e-3, eps=-1e-8),
        lambda: O.adam(lr=1e-3, eps_root=-1e-12),
    ],
)
def test_bad_hyperparameters_raise(make):
    with pytest.raises(ValueError):
        make()


def test_valid_edge_hyperparameters_accepted():
    O.sgd(lr=0.0, momentum=0.0)
    O.rmsprop(lr=0.0, decay=0.0, eps=0.0)
    O.adam(lr=0.0, b1=0.0, b2=0.0, eps=0.0)
    assert set(O.OPTIMIZERS) == {"sgd", "rmsprop", "adam"}


@pytest.mark.parametrize("make", [lambda: O.sgd(0.1, momentum=0.5), lambda: O.rmsprop(0.1), lambda: O.adam(0.1)])
def test_mismatched_keys_raise(make):
    opt = make()
    params = make_params(9)
    state = opt.init(params)
    with pytest.raises(ValueError):
        opt.update(params, {"w": params["w"]}, state)
    with pytest.raises(ValueError):
        opt.update(params, {**params, "extra": params["w"]}, state)
    with pytest.raises(ValueError):
        opt.update(params, {"w": params["w"], "c": params["b"]}, state)


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_non_positive_max_grad_norm_is_rejected(bad):
    from rlmeta.optim import adam, rmsprop, sgd

    for make in (sgd, rmsprop, adam):
        with pytest.raises(ValueError, match="max_grad_norm"):
            make(0.1, max_grad_norm=bad)


def test_partitioned_optimizer_equals_separate_optimizers_per_group():
    g = torch.Generator().manual_seed(0)
    params = {"policy.w": torch.randn(3, 4, generator=g), "policy.b": torch.randn(4, generator=g),
              "value.w": torch.randn(4, generator=g)}
    grads = {k: 3 * torch.randn(v.shape, generator=g) for k, v in params.items()}
    policy, value = O.adam(0.1, max_grad_norm=0.5), O.sgd(0.3, momentum=0.9, max_grad_norm=1.0)
    opt = O.Partitioned({"policy": policy, "value": value})
    state = opt.init(params)
    new, state = opt.update(params, grads, state)
    new, state = opt.update(new, grads, state)
    p_part = {k: v for k, v in params.items() if k.startswith("policy")}
    v_part = {k: v for k, v in params.items() if k.startswith("value")}
    p_state, v_state = policy.init(p_part), value.init(v_part)
    for _ in range(2):
        p_part, p_state = policy.update(p_part, {k: grads[k] for k in p_part}, p_state)
        v_part, v_state = value.update(v_part, {k: grads[k] for k in v_part}, v_state)
    for k, v in {**p_part, **v_part}.items():
        assert torch.allclose(new[k], v)
    assert list(new) == list(params)
    population = opt.for_population()
    assert population.per_agent and all(o.per_agent for o in population.groups.values())
    with pytest.raises(ValueError, match="matches 0 of the prefixes"):
        opt.init({"other": torch.zeros(1)})
    with pytest.raises(ValueError, match="matches 2 of the prefixes"):
        O.Partitioned({"p": O.sgd(0.1), "policy": O.sgd(0.1)}).init({"policy.w": torch.zeros(1)})
    with pytest.raises(ValueError, match="do not pass lr"):
        opt.update(params, grads, opt.init(params), lr=0.1)
    with pytest.raises(ValueError, match="all be per-agent or none"):
        O.Partitioned({"a": O.sgd(0.1), "b": O.sgd(0.1).for_population()})


@pytest.mark.parametrize(
    "make",
    [
        lambda: O.sgd(lr=0.1),
        lambda: O.sgd(lr=0.1, momentum=0.9, max_grad_norm=0.5),
        lambda: O.rmsprop(lr=0.1, eps_root=1e-12, max_grad_norm=0.5),
        lambda: O.adam(lr=0.1, max_grad_norm=0.5),
        lambda: O.adam(lr=0.1, eps=1e-5),
    ],
    ids=["sgd", "sgd_momentum", "rmsprop", "adam", "adam_unclipped"],
)
@pytest.mark.parametrize("pass_norm", [True, False])
def test_flat_steps_equal_a_loop_of_updates_bitwise(make, pass_norm):
    """FlatSteps (the learner's plain minibatch loop) is a loop of ``update`` calls, bit for bit, and
    leaves its inputs alone; its parameters are leaves that read the new values after each step."""
    opt = make()
    params = {k: v.requires_grad_(True) for k, v in make_params(3).items()}
    state = opt.init(params)
    params, state = opt.update(params, random_grads(0, params), state)  # a non-trivial state first
    params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    snapshot = copy.deepcopy(({k: v.detach() for k, v in params.items()}, state))
    flat = opt.flat_steps(params, state, lr=0.05)
    assert flat is not None
    ref_params, ref_state = params, state
    for step in range(6):
        assert all(v.is_leaf and v.requires_grad for v in flat.params.values())
        for k in params:
            assert torch.equal(flat.params[k].detach(), ref_params[k].detach())
        grads = {k: 3.0 * v for k, v in random_grads(step + 1, params).items()}  # clipping bites
        norm = O.global_norm(grads) if pass_norm else None
        flat.step(grads, norm)
        ref_params, ref_state = opt.update(ref_params, grads, ref_state, lr=0.05, grad_norm=norm)
    new_params, new_state = flat.result()
    torch.testing.assert_close((new_params, new_state), (ref_params, ref_state), rtol=0, atol=0)
    assert all(v.is_leaf and v.requires_grad for v in new_params.values())
    torch.testing.assert_close(({k: v.detach() for k, v in params.items()}, state), snapshot, rtol=0, atol=0)


def test_flat_steps_refused_where_the_update_needs_a_graph_or_per_agent_rows():
    params = {k: v.requires_grad_(True) for k, v in make_params(4).items()}
    opt = O.adam(lr=0.1)
    state = opt.init(params)
    assert opt.flat_steps(params, state) is not None
    assert opt.flat_steps(params, state, lr=torch.tensor(0.1, dtype=DT, requires_grad=True)) is None
    assert opt.flat_steps({k: v * 1.0 for k, v in params.items()}, state) is None  # not leaves
    assert opt.for_population().flat_steps(params, state) is None
    partitioned = O.Partitioned({"w": O.sgd(0.1), "b": O.adam(0.1)})
    assert partitioned.flat_steps(params, partitioned.init(params)) is None


VJP_OPTIMIZERS = {
    "sgd": lambda clip: O.sgd(0.3, max_grad_norm=clip),
    "sgd-momentum": lambda clip: O.sgd(0.3, momentum=0.9, max_grad_norm=clip),
    "rmsprop": lambda clip: O.rmsprop(0.02, decay=0.9, eps=1e-4, eps_root=1e-12, max_grad_norm=clip),
    "adam": lambda clip: O.adam(0.02, eps=1e-4, eps_root=1e-12, max_grad_norm=clip),
}


@pytest.mark.parametrize("lr_live", [False, True], ids=["fixed-lr", "tensor-lr"])
@pytest.mark.parametrize("which", ["params", "state", "both"])
@pytest.mark.parametrize("clip", [None, 0.5, 100.0], ids=["no-clip", "clip-active", "clip-idle"])
@pytest.mark.parametrize("name", list(VJP_OPTIMIZERS))
def test_closed_form_vjp_equals_autograd_through_update(name, clip, which, lr_live):
    """``Optimizer.flat_vjp`` (the tangent meta-gradient's step 2) is autograd through ``update``, to rounding."""
    _Layout, float_tensors = O._Layout, O.float_tensors

    g = torch.Generator().manual_seed(7)
    shapes = {"w": (5, 3), "b": (3,), "v": (4,)}
    params = {k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in shapes.items()}
    grads = {k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in shapes.items()}
    grads["b"][1] = 0.0  # a parameter without gradient (its moments stay at zero)
    opt = VJP_OPTIMIZERS[name](clip)
    state = opt.init(params)
    for _ in range(3):  # non-zero moments and count
        warm = {k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in shapes.items()}
        warm["b"][1] = 0.0
        _, state = opt.update(params, warm, state)
    lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True) if lr_live else None
    if clip == 0.5:
        assert float(O.global_norm(grads)) > 2 * clip
    # autograd through update
    leaves = {k: v.clone().requires_grad_(True) for k, v in grads.items()}
    new_params, new_state = opt.update(params, leaves, state, lr=lr)
    outputs = list(new_params.values()) + [t for t in float_tensors(new_state) if t.requires_grad]
    cotangents = [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in outputs]
    state_cotangents, params_cotangents = which != "params", which != "state"
    if not state_cotangents:
        cotangents = cotangents[: len(new_params)] + [torch.zeros_like(c) for c in cotangents[len(new_params):]]
    if not params_cotangents:
        cotangents = [torch.zeros_like(c) for c in cotangents[: len(new_params)]] + cotangents[len(new_params):]
    total = sum((o * c).sum() for o, c in zip(outputs, cotangents))
    wrt = list(leaves.values()) + ([lr] if lr_live else [])
    expected = torch.autograd.grad(total, wrt)
    # the closed form, on flat tensors
    layout = _Layout(params)
    trees = [k for k, v in state.items() if isinstance(v, dict)]
    bars = iter(cotangents[len(new_params):])
    state_bar = {k: (layout.flat({n: next(bars) for n in layout.keys}) if state_cotangents else None) for k in trees}
    flat_state = {k: (layout.flat(v) if k in trees else v) for k, v in state.items()}
    params_bar = layout.flat(dict(zip(params, cotangents))) if params_cotangents else None  # None: zero
    g_bar, lr_bar = opt.flat_vjp(layout.flat(grads), flat_state, lr, params_bar, state_bar, want_lr=lr_live)
    got = layout.split(g_bar)
    for k, e in zip(grads, expected):
        torch.testing.assert_close(got[k], e, rtol=1e-10, atol=1e-13)
    if lr_live:
        torch.testing.assert_close(lr_bar, expected[-1], rtol=1e-10, atol=1e-13)
    else:
        assert lr_bar is None


def test_closed_form_vjp_refuses_a_population_optimizer():
    with pytest.raises(ValueError, match="no closed-form"):
        O.adam(0.1).for_population().flat_vjp(torch.zeros(3), {}, None, None, {})
