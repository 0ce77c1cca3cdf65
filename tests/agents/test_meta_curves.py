"""The learning-curves benchmark (fixed gamma vs meta-gradient tuning): its variants and a tiny run."""

import json

import pytest

from meta_curves import MetaCurvesConfig, run, variant_config


def test_variants_build_the_runs_they_name(tmp_path):
    cfg = MetaCurvesConfig(seeds=1, total_steps=1000)
    fixed = variant_config("gamma=0.8", 0, cfg, tmp_path)
    assert fixed.hparams.gamma == 0.8 and not fixed.meta.enabled
    mixed = variant_config("mixed K=4", 2, cfg, tmp_path)
    assert (mixed.meta.estimator, mixed.meta.num_updates, mixed.meta.condition, mixed.seed) == ("mixed", 4, False, 2)
    conditioned = variant_config("one-step +cond", 0, cfg, tmp_path)
    assert (conditioned.meta.estimator, conditioned.meta.num_updates, conditioned.meta.condition) == ("one-step", 1, True)
    assert conditioned.meta.learn == ("gamma", "lambda") and conditioned.meta.lr == cfg.meta_lr
    assert not conditioned.meta.outer_critic and conditioned.meta.init == {}
    debiased = variant_config("mixed K=4 +cond +oc", 0, MetaCurvesConfig(init_gamma=0.9), tmp_path)
    assert (debiased.meta.estimator, debiased.meta.condition, debiased.meta.outer_critic) == ("mixed", True, True)
    assert debiased.meta.init == {"gamma": 0.9}
    assert variant_config("one-step +oc", 0, cfg, tmp_path).meta.outer_critic
    assert variant_config("gamma=0.9", 0, cfg, tmp_path).hparams.gamma == 0.9


@pytest.mark.parametrize("variants", [("mixed K=3",), ("gamma=0.8 +cond",), ("gamma=1.5",), ("one-step +oc +cond",), ()])
def test_unknown_variants_are_rejected(variants):
    with pytest.raises(ValueError, match="variants must be some of"):
        MetaCurvesConfig(variants=variants)


def test_init_gamma_and_outer_critic_cost_are_checked():
    with pytest.raises(ValueError, match="init_gamma must be in"):
        MetaCurvesConfig(init_gamma=1.0)
    with pytest.raises(ValueError, match="outer_critic_cost must be > 0, got 0"):
        MetaCurvesConfig(outer_critic_cost=0)
    cfg = MetaCurvesConfig(outer_critic_cost=0.1, outer_critic_trains_torso=True)
    debiased = variant_config("mixed K=4 +oc", 0, cfg, None).meta
    assert debiased.outer_critic_cost == 0.1 and debiased.outer_critic_trains_torso
    assert not variant_config("mixed K=4", 0, cfg, None).meta.outer_critic_trains_torso  # only +oc variants


def test_a_tiny_run_writes_the_table_plot_and_results(tmp_path):
    cfg = MetaCurvesConfig(seeds=1, total_steps=4096, variants=("gamma=0.99", "one-step +cond"), out_dir=str(tmp_path))
    result = run(cfg)
    assert "| one-step +cond |" in result["table"] and "| gamma=0.99 |" in result["table"]
    saved = json.loads((tmp_path / "meta_curves.json").read_text())
    records = saved["results"]["one-step +cond"]
    assert len(records) == 1 and records[0]["final_gamma"] != pytest.approx(0.99, abs=1e-6)  # it was tuned
    assert saved["results"]["gamma=0.99"][0]["final_gamma"] == pytest.approx(0.99)
    assert (tmp_path / "meta_curves.png").is_file()
