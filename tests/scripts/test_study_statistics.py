"""The statistics the study reports compute: Welch intervals (Snake), paired bootstrap differences
(TA-LPG), one-sided Welch p-values (LPO), against scipy and hand-computed values."""

from __future__ import annotations

import math
import statistics
import sys

import numpy as np
import pytest

stats = pytest.importorskip("scipy.stats")

from lpo_study import welch_greater  # noqa: E402 - scripts/ is on sys.path (tests/conftest.py)
from snake_reference_study import INNER_FRACTION, VARIANTS, _mean_se, _read_curve, _window_mean, welch  # noqa: E402
from ta_lpg_study import paired_difference  # noqa: E402


def test_welch_interval_matches_scipy_and_the_hand_formula():
    a, b = [6.1, 6.5, 6.9], [6.55, 6.6, 6.62]
    diff, se, (lo, hi), p = welch(a, b)
    va, vb = statistics.variance(a) / 3, statistics.variance(b) / 3
    assert diff == pytest.approx(statistics.fmean(a) - statistics.fmean(b))
    assert se == pytest.approx(math.sqrt(va + vb))
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    assert hi - diff == pytest.approx(stats.t.ppf(0.975, df) * se) and diff - lo == pytest.approx(hi - diff)
    assert p == pytest.approx(stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)
    assert welch_greater(a, b) == pytest.approx(p)
    assert welch([2.0, 2.1, 2.2], [1.0, 1.1, 1.2])[2][0] > 0  # a clear difference: the interval excludes 0


def test_window_mean_and_curve_mean_keep_the_seed_count_fixed():
    run = [(500_000 * i, float(i)) for i in range(1, 41)]  # to 20M
    assert _window_mean(run, 20_000_000) == pytest.approx(statistics.fmean([39.0, 40.0]))  # (19M, 20M]
    assert _window_mean(run[:30], 20_000_000) is None  # a run that stopped at 15M has no 20M value
    xs, means, _ = _mean_se([run, run[:30]], [10_000_000, 15_000_000, 20_000_000])
    assert xs == [10_000_000, 15_000_000] and means == [20.0, 30.0]  # 20M: not every run reached it


def test_committed_curve_reads_back_both_kinds(tmp_path):
    path = tmp_path / "curve.csv"  # the format report() writes and later reads when the run is gone
    path.write_text("kind,env_step,value\neval_return,501760,3.5\neval_return,1000960,4.25\n"
                    "gamma,5120,0.8\ngamma,10240,0.81\n")
    returns, gammas = _read_curve(path)
    assert returns == [(501760, 3.5), (1000960, 4.25)] and gammas == [(5120, 0.8), (10240, 0.81)]


def test_inner_fractions_follow_the_reference_configs():
    """A meta variant's inner share of its env steps: K inner rollouts of K + 1 when the outer one is not reused."""
    from pathlib import Path

    from rlmeta.agents.config import TrainConfig, load_config

    configs = Path(__file__).resolve().parents[2] / "configs"
    for variant, name in VARIANTS.items():
        config = load_config(configs / name, TrainConfig)
        if not config.meta.enabled:
            assert variant not in INNER_FRACTION
            continue
        k = config.meta.num_updates
        assert INNER_FRACTION[variant] == pytest.approx(1.0 if config.meta.reuse_outer_rollout else k / (k + 1))


def test_paired_difference_is_exact_on_a_shift_and_zero_on_itself():
    rng = np.random.default_rng(0)
    levels = [{"level": f"l{i}", "return": float(r), "random": 0.0, "a2c": 2.0} for i, r in enumerate(rng.random(50))]
    a = {"per_level": levels}
    b = {"per_level": [{**lvl, "return": lvl["return"] - 0.5} for lvl in levels]}
    diff, se = paired_difference(a, b)
    assert diff == pytest.approx(0.25) and se == pytest.approx(0.0, abs=1e-12)  # (0.5 / 2.0), no noise in a shift
    assert paired_difference(a, a) == (0.0, 0.0)
    with pytest.raises(ValueError, match="different levels"):
        paired_difference(a, {"per_level": [{**lvl, "level": "x"} for lvl in levels]})


def test_lpo_pooled_reads_committed_returns_and_takes_the_es_seed_as_a_unit(tmp_path, monkeypatch):
    """``lpo_study.py pooled`` works from the committed per-seed returns alone (the run directories are
    gone), uses only the ES seeds whose two drifts were tested, and its ES-seed-level p-value is the
    one-sample t-test of the per-ES-seed mean gains."""
    import json

    import lpo_study

    monkeypatch.setattr(lpo_study, "RESULTS", tmp_path)
    monkeypatch.setattr(lpo_study, "RETURNS", tmp_path / "returns")
    monkeypatch.setattr(lpo_study, "RUNS", tmp_path / "runs")
    rng = np.random.default_rng(0)
    base = {h: rng.normal(300, 50, 32).tolist() for h in lpo_study.HORIZONS}
    gains = {0: 10.0, 1: 30.0, 2: -5.0}
    written = [("ppo", None, 0.0), ("dpo", None, -20.0)]
    for seed in (0, 2):  # TA-LPO gains 5 and 8 over LPO
        written += [(arm, seed, gains[seed] + (5.0 + 1.5 * seed if arm == "ta-lpo" else 0.0)) for arm in lpo_study.ARMS]
    written += [("lpo", 1, gains[1])]  # ES seed 1's TA-LPO untested: seed 1 is left out
    for name, seed, shift in written:
        lpo_study.ES_SEED = seed or 0
        for h in lpo_study.HORIZONS:
            path = lpo_study.test_path(name, h)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"returns": [v + shift for v in base[h]]}))
    lpo_study.pooled()
    text = (tmp_path / "pooled.md").read_text()
    assert "2 ES seeds" in text and "lpo (ES seeds 0, 2)" in text and "lpo-s1" not in text
    row = next(line for line in text.splitlines() if line.startswith("| lpo - ppo | 1x |"))
    assert "+10.0, -5.0" in row and f"{lpo_study.ttest_greater_zero([10.0, -5.0]):.3f}" in row
    assert lpo_study.ttest_greater_zero([10.0, -5.0]) == pytest.approx(
        stats.ttest_1samp([10.0, -5.0], 0.0, alternative="greater").pvalue)
    assert math.isnan(lpo_study.ttest_greater_zero([1.0]))
    ta_row = next(line for line in text.splitlines() if line.startswith("| ta-lpo - lpo |"))
    assert "+5.0, +8.0" in ta_row

    # a --sigma variant: its own files beside the study's, its own pooled table against the same PPO
    monkeypatch.setattr(lpo_study, "SIGMA", 0.04)
    lpo_study.ES_SEED = 0
    for arm, shift in (("lpo", 40.0), ("ta-lpo", 45.0)):
        for h in lpo_study.HORIZONS:
            path = lpo_study.test_path(arm, h)
            assert path.name == f"{arm}-sigma0.04-s0-h{h:g}.json" and not path.exists()
            path.write_text(json.dumps({"returns": [v + shift for v in base[h]]}))
    assert lpo_study.run_dir("lpo").name == "lpo-sigma0.04-s0"
    lpo_study.pooled()
    variant = (tmp_path / "sigma-0.04" / "pooled.md").read_text()
    assert "1 ES seed, ES sigma 0.04" in variant and "lpo-s2" not in variant
    assert "| lpo - ppo | 1x | +40.0 |" in variant and "| ta-lpo - lpo | all horizons | +5.0 |" in variant
    assert (tmp_path / "pooled.md").read_text() == text  # the study's table is untouched


def test_lpo_center_rows_pair_each_center_with_ppo_on_the_same_seeds(tmp_path, monkeypatch):
    import json

    import lpo_study

    monkeypatch.setattr(lpo_study, "RETURNS", tmp_path / "returns")
    monkeypatch.setattr(lpo_study, "ES_SEED", 2)
    n = len(lpo_study.CENTER_SEEDS)
    ppo = [300.0 + 10 * i for i in range(32)]
    (tmp_path / "returns").mkdir()
    lpo_study.test_path("ppo", 1.0).write_text(json.dumps({"returns": ppo}))
    assert lpo_study.center_rows() == []  # no center tested yet
    shifts = {25: [5.0] * n, 50: [float(i % 2) * 20 for i in range(n)]}  # +5 exactly; 0 and +20 alternating
    for generation, shift in shifts.items():
        path = lpo_study.center_path("lpo", generation)
        assert path.name == f"lpo-s2-g{generation}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"returns": [p + d for p, d in zip(ppo, shift)]}))
    rows = lpo_study.center_rows()
    row = next(line for line in rows if line.startswith("| lpo |"))
    se = statistics.stdev(shifts[50]) / math.sqrt(n)
    assert row == f"| lpo | +5.0 +- 0.0 | +10.0 +- {se:.1f} |"
    assert next(line for line in rows if line.startswith("| ta-lpo |")) == "| ta-lpo |  |  |"


def test_lpo_horizon_variant_keeps_its_own_files_and_budget(tmp_path, monkeypatch):
    """``lpo_study.py --horizon H``: the runs, results, test returns (PPO's too: they depend on the
    horizon) and centers of another lifetime are named apart from the study's, and its generations
    keep the study's env-step budget."""
    import lpo_study

    for name in ("RESULTS", "RETURNS", "RUNS"):
        monkeypatch.setattr(lpo_study, name, tmp_path / name.lower())
    monkeypatch.setattr(lpo_study, "ES_SEED", 0)
    study = {n: lpo_study.test_path(n, 1.0).name for n in ("ppo", "lpo")}
    assert study == {"ppo": "ppo-h1.json", "lpo": "lpo-s0-h1.json"} and lpo_study.results_dir() == tmp_path / "results"
    assert list(lpo_study.center_generations()) == [25, 50, 75, 100, 125, 150]
    monkeypatch.setattr(lpo_study, "HORIZON", 4096)
    monkeypatch.setattr(lpo_study, "GENERATIONS", 300)
    assert lpo_study.test_path("ppo", 2.0).name == "ppo-horizon4096-h2.json"
    assert lpo_study.test_path("lpo", 1.0).name == "lpo-horizon4096-s0-h1.json"
    assert lpo_study.results_dir() == tmp_path / "results" / "horizon-4096"
    monkeypatch.setattr(lpo_study, "SIGMA", 0.04)
    assert lpo_study.run_dir("ta-lpo").name == "ta-lpo-sigma0.04-horizon4096-s0"
    assert lpo_study.results_dir() == tmp_path / "results" / "sigma-0.04-horizon-4096"
    assert lpo_study.center_path("lpo", 50).name == "lpo-sigma0.04-horizon4096-s0-g50.json"
    assert list(lpo_study.center_generations()) == [50, 100, 150, 200, 250, 300]
    assert lpo_study._study_flags()[-2:] == ["--horizon", "4096"]
    assert lpo_study._variant_options() == " --sigma 0.04 --horizon 4096"


def test_lpo_transfer_results_keep_the_commit_their_runs_ran_at(tmp_path, monkeypatch):
    """A report re-reads the finished Breakout runs; an objective whose returns are kept already keeps
    the commit and kernels recorded when they were first read (the runs do not record them), and a
    new one is stamped with today's."""
    import json

    import lpo_study

    monkeypatch.setattr(lpo_study, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(lpo_study, "TRANSFER_RESULTS", tmp_path / "transfer.json")
    monkeypatch.setattr(lpo_study, "objectives", lambda: {"ppo": [], "dpo": []})
    monkeypatch.setattr(lpo_study, "_commit", lambda: "today")
    for name, returns in (("ppo", [9.0, 10.0, 11.0]), ("dpo", [8.0, 8.5, 9.0])):
        for seed, value in zip(lpo_study.TRANSFER_SEEDS, returns):
            run = tmp_path / "runs" / "transfer" / f"{name}-s{seed}"
            run.mkdir(parents=True)
            (run / "summary.json").write_text(json.dumps({"status": "completed", "eval": {"return_mean": value}}))
    kept = {"ppo": {"seeds": list(lpo_study.TRANSFER_SEEDS), "returns": [9.0, 10.0, 11.0], "commit": "then",
                    "kernels": {"torch": "AVX2"}}}
    (tmp_path / "transfer.json").write_text(json.dumps(kept))
    found = lpo_study.transfer_returns()
    assert found["ppo"]["commit"] == "then" and found["ppo"]["kernels"] == {"torch": "AVX2"}
    assert found["dpo"]["commit"] == "today" and found["dpo"]["returns"] == [8.0, 8.5, 9.0]
    assert json.loads((tmp_path / "transfer.json").read_text()) == found


def _breakout_runs(tmp_path, lpo_study, returns: dict[str, list[float]]) -> None:
    import json

    for name, values in returns.items():
        for seed, value in enumerate(values):
            run = tmp_path / "runs" / "transfer" / f"{name}-s{seed}"
            run.mkdir(parents=True, exist_ok=True)
            (run / "summary.json").write_text(json.dumps({"status": "completed", "eval": {"return_mean": value}}))


def test_lpo_transfer_more_seeds_extend_the_kept_record_and_a_rerun_replaces_it(tmp_path, monkeypatch):
    """``--transfer-seeds 5`` adds seeds 3-4 to a kept 3-seed record (its first commit kept, the new seeds
    stamped in ``added``); reading 3 seeds again leaves a 5-seed record alone; runs whose returns
    differ from the kept ones replace it; a prefix with a gap stops at the gap."""
    import json

    import lpo_study

    monkeypatch.setattr(lpo_study, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(lpo_study, "TRANSFER_RESULTS", tmp_path / "transfer.json")
    monkeypatch.setattr(lpo_study, "objectives", lambda: {"ppo": [], "dpo": []})
    monkeypatch.setattr(lpo_study, "_commit", lambda: "today")
    monkeypatch.setattr(lpo_study, "_kernels", lambda: {"torch": "AVX512"})
    kept = {"ppo": {"seeds": [0, 1, 2], "returns": [9.0, 10.0, 11.0], "commit": "then", "kernels": {"torch": "AVX2"}},
            "dpo": {"seeds": [0, 1, 2], "returns": [8.0, 8.5, 9.0], "commit": "then", "kernels": {"torch": "AVX2"}}}
    (tmp_path / "transfer.json").write_text(json.dumps(kept))
    _breakout_runs(tmp_path, lpo_study, {"ppo": [9.0, 10.0, 11.0, 12.0, 8.0], "dpo": [7.0, 8.5, 9.0, 9.5]})
    monkeypatch.setattr(lpo_study, "TRANSFER_SEEDS", tuple(range(5)))
    found = lpo_study.transfer_returns()
    assert found["ppo"]["returns"] == [9.0, 10.0, 11.0, 12.0, 8.0] and found["ppo"]["seeds"] == [0, 1, 2, 3, 4]
    assert found["ppo"]["commit"] == "then" and found["ppo"]["added"] == [
        {"seeds": [3, 4], "commit": "today", "kernels": {"torch": "AVX512"}}]
    # dpo's seed 0 was rerun elsewhere (7.0, not 8.0) and seed 4 is missing: seeds 0-3 replace the record
    assert found["dpo"] == {"seeds": [0, 1, 2, 3], "returns": [7.0, 8.5, 9.0, 9.5], "commit": "today",
                            "kernels": {"torch": "AVX512"}}
    monkeypatch.setattr(lpo_study, "TRANSFER_SEEDS", (0, 1, 2))
    assert lpo_study.transfer_returns() == found == json.loads((tmp_path / "transfer.json").read_text())


def test_lpo_transfer_runs_only_the_seeds_not_kept_and_extends_a_record_whose_runs_are_gone(tmp_path, monkeypatch):
    """In a fresh checkout (no runs), ``transfer --transfer-seeds 5`` runs only what ``transfer.json`` does
    not keep (seeds 3-4 of a 3-seed record, every seed of a new objective), so a record made on other
    kernels is extended, not replaced by reruns; the report then adds the new seeds to it."""
    import json

    import lpo_study

    monkeypatch.setattr(lpo_study, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(lpo_study, "TRANSFER_RESULTS", tmp_path / "transfer.json")
    monkeypatch.setattr(lpo_study, "objectives", lambda: {"ppo": ["--algo", "ppo"], "lpo": ["--algo", "lpo"]})
    monkeypatch.setattr(lpo_study, "_commit", lambda: "today")
    monkeypatch.setattr(lpo_study, "_kernels", lambda: {"torch": "AVX2"})
    kept = {"ppo": {"seeds": [0, 1, 2], "returns": [9.0, 10.0, 11.0], "commit": "then", "kernels": {"torch": "AVX512"}}}
    (tmp_path / "transfer.json").write_text(json.dumps(kept))
    monkeypatch.setattr(lpo_study, "TRANSFER_SEEDS", tuple(range(5)))
    jobs = []
    monkeypatch.setattr(lpo_study, "run_jobs", lambda found, *a, **k: jobs.extend(name for name, *_ in found))
    lpo_study.transfer(2)
    assert jobs == ["ppo-s3", "ppo-s4", "lpo-s0", "lpo-s1", "lpo-s2", "lpo-s3", "lpo-s4"]
    _breakout_runs(tmp_path, lpo_study, {"lpo": [7.0, 8.0, 9.0, 6.0, 5.0]})
    for seed, value in ((3, 12.0), (4, 8.0)):
        run = tmp_path / "runs" / "transfer" / f"ppo-s{seed}"
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps({"status": "completed", "eval": {"return_mean": value}}))
    found = lpo_study.transfer_returns()
    assert found["ppo"] == {"seeds": [0, 1, 2, 3, 4], "returns": [9.0, 10.0, 11.0, 12.0, 8.0], "commit": "then",
                            "kernels": {"torch": "AVX512"},
                            "added": [{"seeds": [3, 4], "commit": "today", "kernels": {"torch": "AVX2"}}]}
    assert found["lpo"]["returns"] == [7.0, 8.0, 9.0, 6.0, 5.0] and found["lpo"]["commit"] == "today"
    jobs.clear()
    lpo_study.transfer(2)
    assert jobs == []


def test_lpo_transfer_lines_check_three_seeds_and_compare_all_with_welch():
    """The issue's check reads seeds 0-2 only; the table over all seeds has the Welch difference, its
    90% interval (hand-computed here) and the one-sided p."""
    import lpo_study
    from scipy import stats

    rows = {"ppo": [10.0, 12.0, 14.0, 10.0, 14.0], "dpo": [11.0, 11.0, 11.0, 13.0, 9.0]}
    lines = lpo_study.transfer_lines(rows)
    # 3 seeds: PPO 12.00 +- 1.15 (bar 10.85), DPO 11.00 +- 0.00
    assert lines[0] == "- ppo: 12.00 +- 1.15 (seeds 0-2: 10.00, 12.00, 14.00)"
    assert lines[1] == "- dpo: 11.00 +- 0.00 (seeds 0-2: 11.00, 11.00, 11.00); >= PPO - 1 SE (10.85): yes"
    # all 5: PPO mean 12, variance 4 -> SE^2 0.8; DPO mean 11, variance 2 -> SE^2 0.4; diff -1 +- sqrt(1.2)
    se = 1.2 ** 0.5
    dof = 1.2 ** 2 / (0.8 ** 2 / 4 + 0.4 ** 2 / 4)
    half = stats.t.ppf(0.95, dof) * se
    diff, diff_se, (low, high), _ = welch(rows["dpo"], rows["ppo"], level=0.9)
    assert diff == pytest.approx(-1.0) and diff_se == pytest.approx(se)
    assert (low, high) == pytest.approx((-1.0 - half, -1.0 + half))
    dpo_row = next(line for line in lines if line.startswith("| dpo |"))
    assert f"| -1.00 +- {se:.2f} | [{-1 - half:+.2f}, {-1 + half:+.2f}] |" in dpo_row
    p = stats.ttest_ind(rows["dpo"], rows["ppo"], equal_var=False, alternative="greater").pvalue
    assert dpo_row.endswith(f"| {p:.3f} | no |")  # over 5 seeds the bar is 12.0 - sqrt(0.8) = 11.11 > 11.0


def test_ta_lpg_study_generations_variant_is_tagged_and_checked(monkeypatch):
    """``--generations N`` other than the study's runs and reports into its own folders; N < 1 is refused."""
    import ta_lpg_study

    monkeypatch.setattr(ta_lpg_study, "RUNS", ta_lpg_study.RUNS)
    monkeypatch.setattr(ta_lpg_study, "RESULTS", ta_lpg_study.RESULTS)
    ta_lpg_study.tag(600)
    assert ta_lpg_study.RUNS.name == "generations-600" and ta_lpg_study.RUNS.parent.name == "ta-lpg-study"
    assert ta_lpg_study.RESULTS == ta_lpg_study.ROOT / "results" / "ta_lpg" / "generations-600"
    monkeypatch.setattr(sys, "argv", ["ta_lpg_study.py", "train", "--generations", "0"])
    with pytest.raises(SystemExit):
        ta_lpg_study.main()


@pytest.mark.parametrize("seeds", [["-1"], ["0", "0"]])
def test_ta_lpg_study_refuses_negative_or_repeated_seeds(monkeypatch, capsys, seeds):
    """``--seeds`` takes further replicates (any seed >= 0), but a negative or repeated one stops before any work."""
    import ta_lpg_study

    monkeypatch.setattr(ta_lpg_study, "SEEDS", ta_lpg_study.SEEDS)
    monkeypatch.setattr(ta_lpg_study, "train", lambda *a: pytest.fail("train ran"))
    monkeypatch.setattr(sys, "argv", ["ta_lpg_study.py", "train", "--seeds", *seeds])
    with pytest.raises(SystemExit):
        ta_lpg_study.main()
    assert "--seeds must be distinct non-negative integers" in capsys.readouterr().err


def test_ta_lpg_study_takes_a_further_seed(monkeypatch):
    """A seed beyond the study's two (a further replicate) reaches the stage as given."""
    import ta_lpg_study

    seen = []
    monkeypatch.setattr(ta_lpg_study, "SEEDS", ta_lpg_study.SEEDS)
    monkeypatch.setattr(ta_lpg_study, "test", lambda *a: seen.append(ta_lpg_study.SEEDS))
    monkeypatch.setattr(sys, "argv", ["ta_lpg_study.py", "test", "--seeds", "2"])
    ta_lpg_study.main()
    assert seen == [(2,)]


def test_ta_lpg_report_gives_each_lifetimes_gap_across_seeds(tmp_path, monkeypatch):
    """With two ES seeds the report adds, per lifetime, the mean paired gap over the seeds and its SE
    over them (the seed as the unit), next to the per-seed rows."""
    import json

    import ta_lpg_study

    monkeypatch.setattr(ta_lpg_study, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(ta_lpg_study, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(ta_lpg_study, "LIFETIMES", (10, 30))
    monkeypatch.setattr(ta_lpg_study, "SEEDS", (0, 1))
    monkeypatch.setattr(ta_lpg_study, "_plot", lambda: None)
    (tmp_path / "results").mkdir()
    levels = [f"small/1000/{i}" for i in range(4)]
    # TA-LPG minus LPG in A2C-minus-random units (1 per level): seed 0 -0.2 and -0.1, seed 1 0.0 and +0.1.
    shift = {(0, 10): -0.2, (0, 30): -0.1, (1, 10): 0.0, (1, 30): 0.1}
    for seed in (0, 1):
        for lifetime in (10, 30):
            for arm, delta in (("lpg-es", 0.0), ("ta-lpg-es-unit", shift[seed, lifetime])):
                per_level = [{"level": lvl, "return": 0.5 + 0.1 * i + delta, "random": 0.0, "a2c": 1.0}
                             for i, lvl in enumerate(levels)]
                result = {"normalized_score": 0.0, "normalized_score_se": 0.0, "per_level": per_level}
                path = tmp_path / "results" / f"meta_test-{arm}-s{seed}-{lifetime}.json"
                path.write_text(json.dumps(result))
    ta_lpg_study.report()
    text = (tmp_path / "results" / "report.md").read_text()
    assert "| ta-lpg-es-unit-s0 (vs lpg-es-s0) | -0.20 +- 0.00 | -0.10 +- 0.00 | -0.150 |" in text
    # Across seeds: lifetime 10: mean -0.1, SE |(-0.2) - 0| / 2 = 0.1; lifetime 30: 0.0 and 0.1; means -0.15 and +0.05.
    assert "| ta-lpg-es-unit | 2 | -0.100 +- 0.100 | +0.000 +- 0.100 | -0.050 +- 0.100 |" in text


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--transfer-seeds", "2", "--transfer-seeds must be in [3, 100]"),
    ("--transfer-seeds", "101", "--transfer-seeds must be in [3, 100]"),
    ("--transfer-steps", "99000", "--transfer-steps must be a multiple of 1000 in [100000, 20000000]"),
    ("--transfer-steps", "1000500", "--transfer-steps must be a multiple of 1000 in [100000, 20000000]"),
    ("--transfer-steps", "30000000", "--transfer-steps must be a multiple of 1000 in [100000, 20000000]"),
])
def test_lpo_study_refuses_a_transfer_seed_count_or_budget_outside_its_range(monkeypatch, capsys, option, value,
                                                                             message):
    """``--transfer-seeds`` below the issue's 3 (the check needs them) or above 100, and ``--transfer-steps``
    not in whole thousands (the results file is named by them) or outside [100k, 20M], stop before any run."""
    import lpo_study

    monkeypatch.setattr(lpo_study, "TRANSFER_SEEDS", lpo_study.TRANSFER_SEEDS)
    monkeypatch.setattr(lpo_study, "TRANSFER_STEPS", lpo_study.TRANSFER_STEPS)
    monkeypatch.setattr(lpo_study, "transfer", lambda *a: pytest.fail("transfer ran"))
    monkeypatch.setattr(sys, "argv", ["lpo_study.py", "transfer", option, value])
    with pytest.raises(SystemExit):
        lpo_study.main()
    assert message in capsys.readouterr().err


def test_lpo_kernel_check_retests_ppo_only_on_other_kernels_and_the_report_pairs_like_with_like(tmp_path, monkeypatch):
    """``kernel-check`` retests PPO where its committed returns ran on other kernels than this machine's
    (and nothing once done, or where they match); the report's kernel rows compare a drift tested here
    with PPO retested here, and PPO here with the committed PPO."""
    import json

    import lpo_study

    monkeypatch.setattr(lpo_study, "RETURNS", tmp_path / "returns")
    monkeypatch.setattr(lpo_study, "_kernels", lambda: {"torch": "AVX2", "MKL_CBWR": None})
    rng = np.random.default_rng(0)
    table = {"ppo": {}, "lpo": {}}
    for h in lpo_study.HORIZONS:
        for name, kernels, shift in (("ppo", "AVX512", 0.0), ("lpo", "AVX2", 40.0)):
            table[name][h] = (rng.normal(300, 50, 32) + shift).tolist()
            path = lpo_study.test_path(name, h)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"kernels": {"torch": kernels}, "returns": table[name][h]}))
    jobs = []
    monkeypatch.setattr(lpo_study, "run_jobs", lambda found, *a, **k: jobs.extend(args for _, args, _ in found))
    lpo_study.kernel_check(2)
    assert len(jobs) == len(lpo_study.HORIZONS) and all("--kernels-tag" in args and "ppo" in args for args in jobs)
    assert "ppo" not in [line for line in lpo_study.kernel_rows(table) if line.startswith("- ")]
    for h in lpo_study.HORIZONS:
        path = lpo_study.test_path("ppo", h, "AVX2")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"kernels": {"torch": "AVX2"}, "returns": [v + 1.0 for v in table["ppo"][h]]}))
    jobs.clear()
    lpo_study.kernel_check(2)
    assert jobs == []
    rows = lpo_study.kernel_rows(table)
    assert "The test returns ran on: ppo AVX512; lpo AVX2." in rows
    one = next(line for line in rows if line.startswith("- 1x"))
    retest = [v + 1.0 for v in table["ppo"][1.0]]
    assert "(minus committed +1.0, p = " in one
    assert f"lpo p = {lpo_study.welch_greater(table['lpo'][1.0], retest):.3f}" in one


def test_lpo_transfer_at_another_budget_keeps_its_own_file_and_runs_and_the_report_adds_it(tmp_path, monkeypatch):
    """``transfer --transfer-steps 1000000 --transfer-objectives ppo dpo`` trains only those, for that
    many steps, in runs and a results file of its own (``transfer-1000k.json``), never touching the
    study's; the study's report then has a section for each budget."""
    import json

    import lpo_study

    monkeypatch.setattr(lpo_study, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(lpo_study, "TRANSFER_RESULTS", tmp_path / "transfer.json")
    monkeypatch.setattr(lpo_study, "objectives", lambda: {"ppo": ["--algo", "ppo"], "dpo": ["--algo", "dpo"],
                                                          "lpo": ["--algo", "lpo"]})
    monkeypatch.setattr(lpo_study, "_commit", lambda: "today")
    monkeypatch.setattr(lpo_study, "TRANSFER_STEPS", 1_000_000)
    monkeypatch.setattr(lpo_study, "TRANSFER_ONLY", ("ppo", "dpo"))
    jobs = []
    monkeypatch.setattr(lpo_study, "run_jobs", lambda found, *a, **k: jobs.extend(found))
    lpo_study.transfer(2)
    assert [name for name, *_ in jobs] == ["ppo-1000k-s0", "ppo-1000k-s1", "ppo-1000k-s2",
                                           "dpo-1000k-s0", "dpo-1000k-s1", "dpo-1000k-s2"]
    assert all(args[args.index("--total-steps") + 1] == "1000000" for _, args, _ in jobs)
    _breakout_runs(tmp_path, lpo_study, {"ppo-1000k": [20.0, 22.0, 24.0], "dpo-1000k": [21.0, 23.0, 25.0]})
    assert lpo_study.transfer_budgets() == [(300_000, 16), (1_000_000, 16)]  # from its finished runs, before any file
    assert lpo_study.transfer_file() == tmp_path / "transfer-1000k.json"
    assert set(lpo_study.transfer_returns()) == {"ppo", "dpo"} and not (tmp_path / "transfer.json").exists()
    monkeypatch.setattr(lpo_study, "TRANSFER_STEPS", lpo_study.STUDY_TRANSFER_STEPS)
    _breakout_runs(tmp_path, lpo_study, {"ppo": [9.0, 10.0, 11.0], "lpo": [8.0, 8.5, 9.0]})
    (tmp_path / "transfer-notes.json").write_text("{}")  # another file beside them is no budget
    assert lpo_study.transfer_budgets() == [(300_000, 16), (1_000_000, 16)]
    lines = lpo_study.transfer_sections()
    assert "## Transfer: MinAtar Breakout, 300k env steps (evaluation return, mean +- SE over seeds)" in lines
    assert "## Transfer: MinAtar Breakout, 1000k env steps (evaluation return, mean +- SE over seeds)" in lines
    assert any(line.startswith("- dpo: 23.00 +- 1.15") for line in lines)
    assert lpo_study.TRANSFER_STEPS == lpo_study.STUDY_TRANSFER_STEPS
    assert json.loads((tmp_path / "transfer.json").read_text()).keys() == {"ppo", "lpo"}
    # a --sigma variant's report: the other budget only once its own drifts ran there
    monkeypatch.setattr(lpo_study, "SIGMA", 0.04)
    _breakout_runs(tmp_path, lpo_study, {"lpo-sigma0.04": [8.0, 8.5, 9.0]})
    lines = lpo_study.transfer_sections()
    assert not any("1000k env steps" in line for line in lines) and any("300k env steps" in line for line in lines)
    _breakout_runs(tmp_path, lpo_study, {"lpo-sigma0.04-1000k": [15.0, 16.0, 17.0]})
    lines = lpo_study.transfer_sections()
    assert any(line.startswith("- lpo-sigma0.04: 16.00 +- 0.58") for line in lines)
    assert "## Transfer: MinAtar Breakout, 1000k env steps (evaluation return, mean +- SE over seeds)" in lines


def test_lpo_transfer_with_another_env_count_runs_and_reports_it_apart(tmp_path, monkeypatch, capsys):
    """``transfer --transfer-envs 64`` passes ``--num-envs 64`` to its runs, tags them and its results file
    with ``-e64`` (with the budget's own tag before it), leaves the study's file alone, and the report
    adds a section naming the env count; a count outside [1, 1024] stops before any run."""
    import json

    import lpo_study

    monkeypatch.setattr(lpo_study, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(lpo_study, "TRANSFER_RESULTS", tmp_path / "transfer.json")
    monkeypatch.setattr(lpo_study, "objectives", lambda: {"ppo": ["--algo", "ppo"], "dpo": ["--algo", "dpo"]})
    monkeypatch.setattr(lpo_study, "_commit", lambda: "today")
    assert lpo_study.STUDY_TRANSFER_ENVS == 16  # the config's
    monkeypatch.setattr(lpo_study, "TRANSFER_STEPS", lpo_study.STUDY_TRANSFER_STEPS)
    monkeypatch.setattr(lpo_study, "TRANSFER_ENVS", 64)
    jobs = []
    monkeypatch.setattr(lpo_study, "run_jobs", lambda found, *a, **k: jobs.extend(found))
    lpo_study.transfer(2)
    assert [name for name, *_ in jobs][:3] == ["ppo-e64-s0", "ppo-e64-s1", "ppo-e64-s2"]
    assert all(args[args.index("--num-envs") + 1] == "64" and "--total-steps" not in args for _, args, _ in jobs)
    assert lpo_study.transfer_file() == tmp_path / "transfer-e64.json"
    monkeypatch.setattr(lpo_study, "TRANSFER_STEPS", 1_000_000)
    assert lpo_study.transfer_file() == tmp_path / "transfer-1000k-e64.json"
    assert lpo_study.diagnostics_file() == tmp_path / "transfer-1000k-e64-diagnostics.json"
    monkeypatch.setattr(lpo_study, "TRANSFER_STEPS", lpo_study.STUDY_TRANSFER_STEPS)
    _breakout_runs(tmp_path, lpo_study, {"ppo-e64": [9.0, 10.0, 11.0], "dpo-e64": [7.0, 8.0, 9.0],
                                         "ppo-1000k-e64": [15.0, 16.0, 17.0], "ppo-1000k": [18.0, 18.5, 19.0]})
    monkeypatch.setattr(lpo_study, "TRANSFER_ENVS", lpo_study.STUDY_TRANSFER_ENVS)
    _breakout_runs(tmp_path, lpo_study, {"ppo": [11.0, 12.0, 13.0]})
    assert lpo_study.transfer_budgets() == [(300_000, 16), (1_000_000, 16), (300_000, 64), (1_000_000, 64)]
    lines = lpo_study.transfer_sections()
    assert (lpo_study.TRANSFER_STEPS, lpo_study.TRANSFER_ENVS) == (300_000, 16)
    assert "## Transfer: MinAtar Breakout, 300k env steps, 64 envs (the study's: 16) (evaluation return, " \
           "mean +- SE over seeds)" in lines
    assert "## Transfer: MinAtar Breakout, 1000k env steps, 64 envs (the study's: 16) (evaluation return, " \
           "mean +- SE over seeds)" in lines
    assert any(line.startswith("- dpo: 8.00 +- 0.58") and "(9.42): no" in line for line in lines)
    assert json.loads((tmp_path / "transfer-e64.json").read_text()).keys() == {"ppo", "dpo"}
    assert json.loads((tmp_path / "transfer.json").read_text()).keys() == {"ppo"}
    monkeypatch.setattr(lpo_study, "transfer", lambda *a: pytest.fail("transfer ran"))
    for bad in ("0", "2000"):
        monkeypatch.setattr(sys, "argv", ["lpo_study.py", "transfer", "--transfer-envs", bad])
        with pytest.raises(SystemExit):
            lpo_study.main()
        assert "--transfer-envs must be in [1, 1024]" in capsys.readouterr().err


def test_lpo_transfer_resumes_an_interrupted_run_and_spaces_a_long_runs_evaluations(tmp_path, monkeypatch):
    """At 10M steps a run evaluates and checkpoints every 1M (ten a run, as at 1M); a run stopped after a
    checkpoint (an ``interrupted`` summary) resumes from it instead of starting over; one without a
    checkpoint (or a failed one) starts afresh; a completed one is left alone."""
    import json

    import lpo_study

    monkeypatch.setattr(lpo_study, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(lpo_study, "TRANSFER_RESULTS", tmp_path / "transfer.json")
    monkeypatch.setattr(lpo_study, "objectives", lambda: {"ppo": ["--algo", "ppo"]})
    monkeypatch.setattr(lpo_study, "_commit", lambda: "today")
    monkeypatch.setattr(lpo_study, "TRANSFER_STEPS", 10_000_000)
    monkeypatch.setattr(lpo_study, "TRANSFER_SEEDS", (0, 1, 2, 3))
    runs = tmp_path / "runs" / "transfer"
    for seed, status in ((0, "interrupted"), (1, "failed"), (2, "completed")):
        run = runs / f"ppo-10000k-s{seed}"
        (run / "checkpoints").mkdir(parents=True)
        summary = {"status": status, "eval": {"return_mean": 30.0} if status == "completed" else None}
        (run / "summary.json").write_text(json.dumps(summary))
        if seed == 0:
            (run / "config.json").write_text("{}")
            (run / "checkpoints" / "latest.pt").write_bytes(b"")
    jobs = []
    monkeypatch.setattr(lpo_study, "run_jobs", lambda found, *a, **k: jobs.extend(found))
    lpo_study.transfer(2)
    assert [name for name, *_ in jobs] == ["ppo-10000k-s0", "ppo-10000k-s1", "ppo-10000k-s3"]
    resumed, fresh = jobs[0][1], jobs[2][1]
    assert "--resume" in resumed and "--overwrite" not in resumed and "--config" not in resumed
    assert resumed[resumed.index("--run-dir") + 1] == str(runs / "ppo-10000k-s0")
    assert "--overwrite" in jobs[1][1] and "--resume" not in jobs[1][1]
    for flag, value in (("--total-steps", "10000000"), ("--eval-interval", "1000000"),
                        ("--checkpoint-interval", "1000000"), ("--seed", "3")):
        assert fresh[fresh.index(flag) + 1] == value
    jobs.clear()
    monkeypatch.setattr(lpo_study, "TRANSFER_STEPS", 1_000_000)  # at 1M and below: the config's intervals
    lpo_study.transfer(2)
    assert jobs and all("--eval-interval" not in args for _, args, _ in jobs)


def test_lpo_transfer_diagnostics_read_entropy_and_clip_fraction_by_thirds_and_keep_longer_records(tmp_path, monkeypatch):
    """The Breakout runs' entropy and clip fraction, averaged over the first and the last third of the
    budget from their TensorBoard events, kept per budget beside the returns; a record with more seeds
    (run elsewhere) is not replaced by fewer runs here; the report prints them as a table."""
    import json

    from torch.utils.tensorboard import SummaryWriter

    import lpo_study

    monkeypatch.setattr(lpo_study, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(lpo_study, "TRANSFER_RESULTS", tmp_path / "transfer.json")
    monkeypatch.setattr(lpo_study, "objectives", lambda: {"ppo": ["--algo", "ppo"], "dpo": ["--algo", "dpo"]})
    monkeypatch.setattr(lpo_study, "_commit", lambda: "today")
    monkeypatch.setattr(lpo_study, "TRANSFER_STEPS", 300_000)
    _breakout_runs(tmp_path, lpo_study, {"ppo": [9.0, 10.0, 11.0], "dpo": [8.0]})  # ppo-s2 without events: not counted
    for name, offset in (("ppo-s0", 0.0), ("ppo-s1", 0.1), ("dpo-s0", 0.5)):
        with SummaryWriter(str(tmp_path / "runs" / "transfer" / name)) as writer:
            for step in range(0, 300_001, 50_000):  # 0..100k: first third; 250k, 300k: last third
                writer.add_scalar("loss/entropy", offset + (1.0 if step <= 100_000 else 0.2 if step > 200_000 else 9.0), step)
                writer.add_scalar("loss/clip_fraction", 0.3 if step <= 100_000 else 0.05, step)
    kept = lpo_study.transfer_diagnostics()
    assert lpo_study.diagnostics_file() == tmp_path / "transfer-diagnostics.json"
    assert kept["ppo"]["seeds"] == [0, 1] and kept["dpo"]["seeds"] == [0]
    assert np.allclose(kept["ppo"]["entropy"], [[1.0, 0.2], [1.1, 0.3]])
    assert np.allclose(kept["dpo"]["clip fraction"], [[0.3, 0.05]])
    record = {"seeds": [0, 1, 2], "entropy": [[0.7, 0.6]] * 3, "clip fraction": [[0.3, 0.1]] * 3}
    saved = json.loads(lpo_study.diagnostics_file().read_text())
    lpo_study.diagnostics_file().write_text(json.dumps({**saved, "dpo": record}))
    assert lpo_study.transfer_diagnostics()["dpo"] == record  # three seeds elsewhere beat one here
    lines = lpo_study.diagnostic_lines(lpo_study.transfer_diagnostics())
    assert "| ppo | 2 | 1.050 +- 0.050 | 0.250 +- 0.050 | 0.300 +- 0.000 | 0.050 +- 0.000 |" in lines
    assert any(line.startswith("| dpo | 3 | 0.700 +- 0.000") for line in lines)
    assert lpo_study.diagnostic_lines({}) == []
