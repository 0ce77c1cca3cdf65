"""Profile one PPO update at RL Zoo's CartPole sizes: ours vs Stable-Baselines3, per gradient step.

Run with ``.venv/bin/python scripts/profile_ppo_step.py`` (needs the ``bench`` extras for SB3).

Both sides learn from a rollout of 8 envs x 32 steps (256 samples) in minibatches of 256 for 20
epochs: 20 gradient steps per update, (64, 64) tanh MLPs for policy and value, Adam with
max_grad_norm 0.5 (RL Zoo's hyperparameters, as ``scripts/bench_train.py``'s ``ours-zoo``), on
one torch thread, in the same process, the two interleaved ``repeats`` times.

* ours: ``rlmeta.learner.update`` on one rollout of ``envpool:CartPole-v1`` (everything the
  learner does: ``prepare``, the minibatch shuffles and gathers, forward, loss, metrics, gradient,
  clipping, Adam), built by ``agents.train.Trainer`` from bench_train's ``ours-zoo`` config;
* SB3: ``PPO.train()`` on a full rollout buffer (after one ``learn`` of 256 steps; its progress
  reset to 1 so the learning rate and clip range are the initial ones).

Reported: the median over ``repeats`` of ms per gradient step (update time / 20) for each, the
ratio SB3 / ours (and for ours with ``--compile``, whose compilation is excluded: it happens once), then a ``torch.profiler`` table of one of our updates (op counts per gradient
step and self CPU time) and a cProfile of our update by Python function. ``--floor`` also times
the bare ops of one gradient step (forward of the two MLPs at batch 256, the loss, backward, one
fused clip+Adam) to show how much is left above them.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


@dataclass
class ProfileConfig:
    repeats: int = 15
    """Timed updates per side (interleaved); the median is reported."""
    warmup: int = 5
    """Untimed updates per side first."""
    torch_profile: bool = True
    """Print the torch.profiler table of one of our updates."""
    cprofile: bool = True
    """Print the cProfile of our updates (by cumulative time)."""
    floor: bool = True
    """Also time the bare ops of one gradient step (the physical floor)."""
    floor_batches: tuple[int, ...] = (256, 64)
    """Minibatch sizes to time the floor at (256: RL Zoo's and the shipped config's)."""
    rows: int = 30
    compiled: bool = True
    """Also time ours with ``--compile`` (the minibatch losses through torch.compile; compiled before timing)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Each seed: its own network initialisations and rollout on both sides, timed in turn (the profiles: seed 0)."""


def build_ours(tmp: Path, seed: int = 0):
    """Our learner's parts at ours-zoo's config and one rollout."""
    from bench_train import BenchTrainConfig, _ours_config
    from rlmeta.agents.train import Trainer

    cfg = BenchTrainConfig(threads=1)
    trainer = Trainer(_ours_config("ours-zoo", seed, cfg, tmp / f"ours-{seed}", cfg.budget))
    learning = trainer.learning
    learning.start(trainer.state, trainer.loop)
    rollout = trainer.loop.next().rollout
    trainer.loop.close()
    return learning, trainer.state, rollout


def build_sb3(seed: int = 0):
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    from bench_train import ZOO, _Linear

    env = make_vec_env("CartPole-v1", n_envs=ZOO["n_envs"], seed=seed)
    model = PPO("MlpPolicy", env, n_steps=ZOO["n_steps"], batch_size=ZOO["batch_size"], gae_lambda=ZOO["gae_lambda"],
                gamma=ZOO["gamma"], n_epochs=ZOO["n_epochs"], ent_coef=ZOO["ent_coef"],
                learning_rate=_Linear(ZOO["learning_rate"]), clip_range=_Linear(ZOO["clip_range"]),
                seed=seed, device="cpu", verbose=0)
    model.learn(total_timesteps=ZOO["n_envs"] * ZOO["n_steps"])  # one rollout (and one train)
    return model


def ours_update(learning, state, rollout, compile: bool = False):
    from rlmeta.learner import UpdateMode, update

    hparams = learning.hparams(state)
    mode = UpdateMode(compile=compile)
    return lambda: update(learning.objective, learning.optimizer, state.params, state.opt_state, rollout, hparams,
                          progress=0.0, mode=mode, generator=learning.generator)


def sb3_update(model):
    def run():
        model._current_progress_remaining = 1.0
        model.train()
    return run


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def floor_ms(n: int = 256, steps: int = 200) -> dict[str, float]:
    """ms per gradient step of the bare ops: two (64, 64) tanh MLPs at batch ``n`` (CartPole: 4 inputs,
    2 actions), a PPO loss, backward into a flat buffer, clip + Adam on the flat buffer."""
    torch.manual_seed(0)
    d, a = 4, 2
    shapes = [(64, d), (64,), (64, 64), (64,), (a, 64), (a,), (64, d), (64,), (64, 64), (64,), (1, 64), (1,)]
    flat = torch.randn(sum(torch.Size(s).numel() for s in shapes)) * 0.1
    flat.requires_grad_(True)
    sizes = [torch.Size(s).numel() for s in shapes]
    obs, act = torch.randn(n, d), torch.randint(0, a, (n,))
    old_logp, adv, ret = -torch.rand(n), torch.randn(n), torch.randn(n)
    mu, nu = torch.zeros_like(flat), torch.zeros_like(flat)

    def forward():
        w = [v.view(s) for v, s in zip(flat.split(sizes), shapes)]
        h = torch.tanh(torch.nn.functional.linear(obs, w[0], w[1]))
        h = torch.tanh(torch.nn.functional.linear(h, w[2], w[3]))
        logits = torch.nn.functional.linear(h, w[4], w[5])
        g = torch.tanh(torch.nn.functional.linear(obs, w[6], w[7]))
        g = torch.tanh(torch.nn.functional.linear(g, w[8], w[9]))
        value = torch.nn.functional.linear(g, w[10], w[11]).squeeze(-1)
        return logits, value

    def loss_of(logits, value):
        logp_all = torch.log_softmax(logits, -1)
        logp = logp_all.gather(-1, act[:, None]).squeeze(-1)
        ratio = torch.exp(logp - old_logp)
        surr = torch.min(ratio * adv, torch.clamp(ratio, 0.8, 1.2) * adv).mean()
        return -surr + 0.5 * 0.5 * ((ret - value) ** 2).mean()

    def adam_step(grad):
        with torch.no_grad():
            norm = torch.linalg.vector_norm(grad)
            g = grad * torch.clamp(0.5 / norm, max=1.0)
            mu.mul_(0.9).add_(g, alpha=0.1)
            nu.mul_(0.999).addcmul_(g, g, value=0.001)
            flat.sub_(mu / 0.1 / ((nu / 0.001).sqrt_().add_(1e-5)), alpha=1e-3)

    parts: dict[str, float] = {}

    def clock(name, fn, reps=steps):
        for _ in range(20):
            fn()
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        parts[name] = (time.perf_counter() - start) / reps * 1e3

    clock("forward (2 MLPs)", forward)
    outs = forward()
    clock("forward + loss", lambda: loss_of(*forward()))
    clock("forward + loss + backward", lambda: loss_of(*forward()).backward())
    flat.grad = None
    grad = torch.randn_like(flat)
    clock("clip + Adam (flat, fused)", lambda: adam_step(grad))

    def full():
        flat.grad = None
        loss_of(*forward()).backward()
        adam_step(flat.grad)
    clock("whole step (fwd, loss, bwd, clip, Adam)", full)
    del outs
    return parts


def time_seed(cfg: ProfileConfig, tmp: Path, seed: int) -> tuple[dict, Any]:
    """Ours, SB3 and ours --compile on one seed's networks and rollout: ms per gradient step, interleaved."""
    learning, state, rollout = build_ours(tmp, seed)
    steps = learning.objective.epochs * learning.objective.minibatches
    model = build_sb3(seed)
    sb3_steps = model.n_epochs * (model.n_steps * model.n_envs // model.batch_size)
    ours, sb3 = ours_update(learning, state, rollout), sb3_update(model)
    compiled = ours_update(learning, state, rollout, compile=True) if cfg.compiled else None
    if compiled is not None:
        print(f"seed {seed}: compiling ours: {timed(compiled):.1f} s (the first update; cached across runs)")
    for _ in range(cfg.warmup):
        for fn in (ours, sb3, compiled):
            if fn is not None:
                fn()
    t_ours, t_sb3, t_compiled = [], [], []
    for _ in range(cfg.repeats):
        t_ours.append(timed(ours) / steps * 1e3)
        t_sb3.append(timed(sb3) / sb3_steps * 1e3)
        if compiled is not None:
            t_compiled.append(timed(compiled) / steps * 1e3)
    m_ours, m_sb3 = statistics.median(t_ours), statistics.median(t_sb3)
    print(f"seed {seed}: gradient steps per update: ours {steps}, SB3 {sb3_steps} (batch 256, (64, 64) tanh MLPs, "
          f"1 thread)")
    print(f"seed {seed}: ms per gradient step (median of {cfg.repeats}): ours {m_ours:.3f}, SB3 {m_sb3:.3f}; "
          f"SB3 / ours {m_sb3 / m_ours:.2f}x")
    out = {"ours_ms": m_ours, "sb3_ms": m_sb3, "ratio": m_sb3 / m_ours}
    if compiled is not None:
        m_compiled = statistics.median(t_compiled)
        paired = statistics.median(b / c for b, c in zip(t_sb3, t_compiled))
        print(f"seed {seed}: ours --compile {m_compiled:.3f} ms per gradient step; SB3 / ours --compile "
              f"{m_sb3 / m_compiled:.2f}x (median of per-round ratios {paired:.2f}x)")
        out.update(compiled_ms=m_compiled, compiled_ratio=m_sb3 / m_compiled, compiled_paired_ratio=paired)
    return out, (ours, steps)


def main(cfg: ProfileConfig) -> dict:
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="rlmeta-profile-ppo-"))
    try:
        results, profiled = {}, None
        for seed in cfg.seeds:
            results[seed], timed_fns = time_seed(cfg, tmp, seed)
            profiled = profiled or timed_fns
        print("\n| seed | ours ms | ours --compile ms | SB3 ms | SB3 / ours | SB3 / ours --compile |")
        print("|---:|---:|---:|---:|---:|---:|")
        for seed, r in results.items():
            print(f"| {seed} | {r['ours_ms']:.3f} | {r.get('compiled_ms', float('nan')):.3f} | {r['sb3_ms']:.3f} | "
                  f"{r['ratio']:.2f}x | {r.get('compiled_ratio', float('nan')):.2f}x |")
        out: dict[str, Any] = {"seeds": results}
        ours, steps = profiled
        if cfg.torch_profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                ours()
            events = prof.key_averages()
            total_calls = sum(e.count for e in events if not e.key.startswith("autograd::engine") and
                              e.key.startswith("aten::"))
            print(f"\ntorch.profiler, one update of ours ({steps} gradient steps): "
                  f"{total_calls / steps:.0f} aten op calls per gradient step (incl. nested)")
            print(events.table(sort_by="self_cpu_time_total", row_limit=cfg.rows))
        if cfg.cprofile:
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(5):
                ours()
            prof.disable()
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(cfg.rows)
            print(f"\ncProfile of 5 updates of ours ({5 * steps} gradient steps):")
            print(s.getvalue())
        if cfg.floor:
            out["floor"] = {}
            for n in cfg.floor_batches:
                parts = out["floor"][n] = floor_ms(n)
                print(f"\nthe bare ops of one gradient step (ms; batch {n}, CartPole sizes, 1 thread):")
                for name, ms in parts.items():
                    print(f"  {name:<42} {ms:.3f}")
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    import tyro

    main(tyro.cli(ProfileConfig))
