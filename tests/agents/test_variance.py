"""The variance study end to end on a tiny Snake run, and its statistics on known samples."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from rlmeta.agents.config import NetworkConfig, TrainConfig, load_config
from rlmeta.agents.train import train
from rlmeta.agents.variance import (
    Sampler, VarianceConfig, _verdict, interval_verdict, ratio_intervals, reference_snr, run, snr_interval, statistics_of,
)
from rlmeta.cli import main


def test_snr_interval_covers_the_true_snr():
    """Gaussian samples with a known mean and covariance: SNR = |mu|^2 / tr(Sigma) = 2 / 4 = 0.5."""
    generator = torch.Generator().manual_seed(0)
    hits = 0
    for trial in range(40):
        samples = torch.tensor([1.0, 1.0], dtype=torch.float64) + torch.randn(200, 2, generator=generator,
                                                                           dtype=torch.float64) * math.sqrt(2.0)
        low, high = snr_interval(samples, draws=500, seed=trial)
        hits += low <= 0.5 <= high
    assert hits >= 34  # a 95% interval: about 38 of 40, allowing for its small-sample shortfall


def test_statistics_of_known_samples():
    samples = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 2.0], [2.0, -2.0]], dtype=torch.float64)
    stats = statistics_of(samples, torch.tensor([1.0, 0.0], dtype=torch.float64))
    # mean (2, 0); unbiased variances 2/3 and 8/3
    assert stats["variance"] == pytest.approx(2 / 3 + 8 / 3)
    assert stats["variance_0"] == pytest.approx(2 / 3) and stats["variance_1"] == pytest.approx(8 / 3)
    assert stats["cosine_mean"] == pytest.approx(1.0)
    assert stats["cosine_samples"] == pytest.approx((1 + 1 + 2 / 8**0.5 + 2 / 8**0.5) / 4)
    assert stats["snr"] == pytest.approx(4 / (10 / 3))
    cosines = torch.tensor([1, 1, 2 / 8**0.5, 2 / 8**0.5], dtype=torch.float64)
    assert stats["cosine_samples_se"] == pytest.approx(float(cosines.std()) / 2)
    # The reference's SNR is that of its mean: R times a single sample's, less the 1 of pure noise.
    assert reference_snr(samples) == pytest.approx(4 * 4 / (10 / 3) - 1)


def test_reference_snr_is_about_zero_for_pure_noise_and_grows_with_the_samples():
    generator = torch.Generator().manual_seed(0)
    noise = [reference_snr(torch.randn(50, 2, generator=generator, dtype=torch.float64)) for _ in range(400)]
    assert abs(sum(noise) / len(noise)) < 0.3  # the raw R |mean|^2 / trace would average 1
    signal = torch.randn(400, 2, generator=generator, dtype=torch.float64) + torch.tensor([0.5, 0.0], dtype=torch.float64)
    # true SNR of one sample = 0.25 / 2; of the mean of R: R times that
    assert reference_snr(signal[:100]) == pytest.approx(100 * 0.125, rel=0.6)
    assert reference_snr(signal) == pytest.approx(400 * 0.125, rel=0.35)


def cell(variance, cosine, se, ref_snr=10.0):
    return {"variance": variance, "cosine_samples": cosine, "cosine_samples_se": se, "reference_snr": ref_snr}


@pytest.mark.parametrize(
    "mixed, multi, verdict",
    [
        (cell(1.0, 0.50, 0.05), cell(4.0, 0.50, 0.05), "claim **holds**"),
        (cell(1.0, 0.40, 0.05), cell(4.0, 0.50, 0.05), "claim **holds**"),  # within two standard errors
        (cell(1.0, 0.20, 0.05), cell(4.0, 0.50, 0.05), "claim **does not hold**"),  # lower cosine
        (cell(2.0, 0.60, 0.05), cell(4.0, 0.50, 0.05), "claim **does not hold**"),  # variance ratio 0.5
        (cell(1.0, 0.20, 0.05, 2.0), cell(4.0, 0.50, 0.05, 2.0), "cosine **not resolved**"),  # noisy reference
    ],
)
def test_the_paper_claim_verdict_accounts_for_noise(mixed, multi, verdict):
    assert verdict in _verdict(mixed, multi)


def test_variance_study_writes_csv_plots_tensorboard_and_summary(tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(TrainConfig(env="snake-6x6", algo="a2c", num_envs=8, num_steps=8, total_steps=64 * 3, checkpoint_interval=64,
                      run_dir=str(run_dir), progress=False, eval_episodes=2,
                      network=NetworkConfig(hidden=(16,), conv_channels=(4,), activation="relu")))
    result = run(VarianceConfig(run_dir=str(run_dir), ks=(1, 2), samples=3, reference_samples=2))
    out = run_dir / "variance"
    rows = list(csv.DictReader(open(out / "variance.csv")))
    assert len(rows) == 3 * 2 * 2  # checkpoints x estimators x K
    assert {r["estimator"] for r in rows} == {"multi-step", "mixed"}
    assert {int(r["step"]) for r in rows} == {64, 128, 192}
    assert all(float(r["variance"]) >= 0 and -1 <= float(r["cosine_mean"]) <= 1 for r in rows)
    assert {"variance_gamma", "variance_lambda"} <= set(rows[0])
    for name in ("variance.png", "cosine_mean.png", "summary.md", "config.json"):
        assert (out / name).is_file(), name
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tb").iterdir())
    summary = (out / "summary.md").read_text()
    assert "Multi-step (exact) variance grows with K" in summary and result["summary"] == summary
    assert json.loads((out / "config.json").read_text())["reference_k"] == 4
    # Every sample kept for re-analysis; SNRs with their intervals; the scale named.
    saved = np.load(out / "samples.npz")
    assert saved["ckpt-000000000064/mixed/K2/exact"].shape == (3, 2) and saved["ckpt-000000000064/reference"].shape == (2, 2)
    assert all(float(r["snr_low"]) <= float(r["snr"]) <= float(r["snr_high"]) for r in rows)
    assert "raw (unbounded, pre-transform" in summary and "SNR [95% CI]" in summary
    # Results are never overwritten silently.
    with pytest.raises(SystemExit, match="already has results"):
        main(["variance", "--run-dir", str(run_dir)])


def test_variance_study_of_a_conditioned_meta_run(tmp_path):
    """A run whose agent is conditioned on its meta-learned values is studied at those values."""
    from rlmeta.agents.config import MetaConfig

    run_dir = tmp_path / "run"
    meta = MetaConfig(learn=("gamma", "entropy_cost"), lr=0.05, condition=True)
    train(TrainConfig(env="snake-6x6", algo="a2c", num_envs=8, num_steps=8, total_steps=64 * 2, checkpoint_interval=64,
                      run_dir=str(run_dir), progress=False, eval_episodes=2, meta=meta,
                      network=NetworkConfig(hidden=(16,), conv_channels=(4,), activation="relu")))
    result = run(VarianceConfig(run_dir=str(run_dir), ks=(1, 2), estimators=("mixed",), samples=3, reference_samples=2))
    rows = result["rows"]
    assert [(r["estimator"], r["k"]) for r in rows] == [("mixed", 1), ("mixed", 2)]  # one checkpoint (the end)
    assert {"variance_gamma", "variance_entropy_cost"} <= set(rows[0])
    assert all(math.isfinite(r["variance"]) and r["variance"] > 0 for r in rows)
    # Asking for other meta-parameters than the conditioned network reads is refused with the reason.
    # Exact and semi targets side by side.
    both = run(VarianceConfig(run_dir=str(run_dir), ks=(2,), estimators=("mixed",), targets=("exact", "semi"),
                              samples=2, reference_samples=2, out_dir=str(tmp_path / "both")))
    assert [r["targets"] for r in both["rows"]] == ["exact", "semi"]
    assert "| mixed | 2 | exact |" in both["summary"] and "| mixed | 2 | semi |" in both["summary"]
    with pytest.raises(ValueError, match="conditioned on \\['gamma', 'entropy_cost'\\]"):
        run(VarianceConfig(run_dir=str(run_dir), learn=("lambda",), ks=(1,), estimators=("mixed",), samples=2,
                           reference_samples=2, out_dir=str(tmp_path / "other")))


def test_variance_studies_the_asked_meta_parameters_of_a_meta_run(tmp_path):
    """--learn X on a run that learned Y studies X, with Y at the run's learned values."""
    from rlmeta.agents.config import MetaConfig

    run_dir = tmp_path / "run"
    train(TrainConfig(env="snake-6x6", algo="a2c", num_envs=8, num_steps=8, total_steps=64 * 2, checkpoint_interval=64,
                      run_dir=str(run_dir), progress=False, eval_episodes=2,
                      meta=MetaConfig(learn=("gamma",), init={"gamma": 0.9}, lr=0.5),
                      network=NetworkConfig(hidden=(16,), conv_channels=(4,), activation="relu")))
    bare = sorted((run_dir / "checkpoints").glob("ckpt-*.pt"))[-1].name  # as variance.csv names checkpoints
    result = run(VarianceConfig(run_dir=str(run_dir), learn=("lambda", "entropy_cost"), ks=(1,), estimators=("mixed",),
                                samples=2, reference_samples=2, checkpoints=(bare,)))
    with pytest.raises(ValueError, match="neither a file nor in"):
        run(VarianceConfig(run_dir=str(run_dir), checkpoints=("ckpt-missing.pt",), out_dir=str(tmp_path / "x"),
                           samples=2, reference_samples=2))
    assert {"variance_lambda", "variance_entropy_cost"} <= set(result["rows"][0])
    assert "variance_gamma" not in result["rows"][0]
    final = json.loads((run_dir / "summary.json").read_text())["meta"]["gamma"]["final"]
    sampler = Sampler(load_config(run_dir / "config.json"), run_dir / "checkpoints" / "latest.pt", ("lambda",), 0, "cpu")
    assert sampler.fixed["gamma"] == pytest.approx(final, abs=1e-6) and final != pytest.approx(0.9, abs=1e-3)
    sampler.close()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(estimators=("multi-stp",)), "estimators must be some of"),
        (dict(ks=(0,)), "K must be an integer >= 1, got 0"),
        (dict(samples=1), "samples and reference_samples must be >= 2"),
        (dict(learn=("gama",)), "unknown hyperparameter 'gama'"),
        (dict(targets=("exakt",)), "targets must be some of \\['exact', 'semi'\\]"),
        (dict(torch_threads=-1), "torch_threads must be an integer >= 0"),
    ],
)
def test_bad_variance_config(tmp_path, kwargs, message):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=message):
        VarianceConfig(run_dir=str(tmp_path), **kwargs)


def test_variance_needs_a_run_directory(tmp_path):
    with pytest.raises(ValueError, match="is not a run directory"):
        VarianceConfig(run_dir=str(tmp_path / "nothing"))


def test_ratio_intervals_and_verdicts():
    generator = torch.Generator().manual_seed(0)
    strong = 1.0 + 0.5 * torch.randn(200, 2, generator=generator, dtype=torch.float64)  # SNR 2 / 0.5 = 4
    weak = 1.0 + 2.0 * torch.randn(200, 2, generator=generator, dtype=torch.float64)  # SNR 2 / 8 = 0.25
    ratios = ratio_intervals(strong, weak, draws=1000)
    assert ratios["snr_ratio_low"] > 1 and ratios["variance_ratio_high"] < 1 / 3
    assert interval_verdict(ratios["snr_ratio_low"], ratios["snr_ratio_high"], 1.0, "higher", "lower") == "higher"
    assert interval_verdict(0.8, 1.3, 1.0, "higher", "lower") == "unresolved"
    assert interval_verdict(0.1, 0.2, 1 / 3, "above", "below") == "below"


def test_an_interrupted_variance_study_resumes_keeping_its_finished_cells(tmp_path, monkeypatch):
    from rlmeta.agents import variance as variance_module

    run_dir = tmp_path / "run"
    train(TrainConfig(env="snake-6x6", algo="a2c", num_envs=8, num_steps=8, total_steps=64 * 2, checkpoint_interval=64,
                      run_dir=str(run_dir), progress=False, eval_episodes=2,
                      network=NetworkConfig(hidden=(16,), conv_channels=(4,), activation="relu")))
    cfg = dict(run_dir=str(run_dir), ks=(1, 2), samples=2, reference_samples=2)
    with pytest.raises(ValueError, match="nothing to resume"):
        run(VarianceConfig(**cfg, resume=True))
    original, calls = variance_module.Sampler.sample, [0]

    def interrupted(self, estimator):
        calls[0] += 1
        if calls[0] > 2 + 3 * 2:  # the reference, three cells, then Ctrl-C inside the fourth
            raise KeyboardInterrupt
        return original(self, estimator)

    monkeypatch.setattr(variance_module.Sampler, "sample", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(VarianceConfig(**cfg))
    out = run_dir / "variance"
    assert not (out / "variance.csv").exists() and (out / "progress.pt").is_file()
    saved = torch.load(out / "progress.pt", weights_only=False)
    assert len(saved["rows"]) == 3
    with pytest.raises(ValueError, match="already has results; pass --overwrite, --resume"):
        run(VarianceConfig(**cfg))
    with pytest.raises(ValueError, match=r"other settings than the interrupted study: \['samples'\]"):
        run(VarianceConfig(**{**cfg, "samples": 3, "resume": True}))
    monkeypatch.setattr(variance_module.Sampler, "sample", original)
    result = run(VarianceConfig(**cfg, resume=True))
    rows = list(csv.DictReader(open(out / "variance.csv")))
    assert len(rows) == len(result["rows"]) == 2 * 2 * 2  # checkpoints x estimators x K
    for kept, row in zip(saved["rows"], result["rows"]):  # the finished cells are the saved ones
        assert kept["variance"] == row["variance"] and kept["estimator"] == row["estimator"]
    key = "ckpt-000000000064/multi-step/K1/exact"
    np.testing.assert_array_equal(np.load(out / "samples.npz")[key], saved["raw"][key].numpy())
