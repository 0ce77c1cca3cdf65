"""The learned objectives that ship with rlmeta: loadable by name with the loader of their kind, and
``meta-test`` reproduces each card's check score."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from rlmeta.agents.learned import load_lpg, load_lpo, objective_kind, shipped_card, shipped_objectives
from rlmeta.repro import PINNED, run_pinned

TRAINED = resources.files("rlmeta.objectives.trained")
SHIPPED = shipped_objectives()


def test_the_expected_objectives_ship():
    assert {"lpg-grid-small", "ta-lpg-grid-small", "ta-lpg-grid-small-g600", "ta-lpg-grid-all"} <= set(
        shipped_objectives("lpg"))
    assert {"lpo-cartpole", "ta-lpo-cartpole"} <= set(shipped_objectives("lpo"))
    assert set(shipped_objectives("lpg")) | set(shipped_objectives("lpo")) == set(SHIPPED)
    with pytest.raises(ValueError, match="kind must be one of"):
        shipped_objectives("ppo")


@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_objective_has_a_card_and_loads_by_name(name):
    card = shipped_card(name)
    assert {"name", "kind", "config", "commit", "check", "network", "objective", "source_run"} <= set(card)
    assert card["name"] == name and objective_kind(name) == card["kind"]
    assert (TRAINED / f"{name}.pt").stat().st_size < 1_000_000  # small enough to ship
    if card["kind"] == "lpg":
        learned = load_lpg(name)
        assert learned.network.lifetime_conditioning == card["network"]["lifetime_conditioning"]
        with pytest.raises(ValueError, match="is a shipped LPG, not an LPO drift"):
            load_lpo(name)
    else:
        learned = load_lpo(name)
        assert learned.network.lifetime_conditioning == card["network"]["lifetime_conditioning"]
        with pytest.raises(ValueError, match="is a shipped LPO drift, not an LPG"):
            load_lpg(name)
    assert learned.source.endswith(f"{name}.pt")


def test_the_ta_lpg_cards_are_time_aware_lpgs_from_es_checked_on_their_levels():
    for name, levels in (("ta-lpg-grid-small", "small"), ("ta-lpg-grid-small-g600", "small"), ("ta-lpg-grid-all", "all")):
        card = shipped_card(name)
        assert card["network"]["lifetime_conditioning"] and card["generations"] >= 1 and "popsize" in card["config"]
        assert card["config"]["levels"] == card["check"]["args"]["levels"] == levels


def test_the_lpo_cards_are_drifts_from_es_one_time_aware():
    """LPO and TA-LPO meta-trained by ES on CartPole, with their meta-test at the three horizons."""
    for name, time_aware in (("lpo-cartpole", False), ("ta-lpo-cartpole", True)):
        card = shipped_card(name)
        assert card["kind"] == "lpo" and card["network"]["lifetime_conditioning"] is time_aware
        assert card["generations"] >= 1 and "popsize" in card["config"] and len(card["meta_test"]) == 3


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_meta_test_reproduces_the_cards_check(name):
    """In a process pinned to AVX2 kernels (``rlmeta.repro``), as the card's check was computed: the
    same number on any AVX2 machine (the tolerance leaves room for a change of dependencies)."""
    card = json.loads((TRAINED / f"{name}.json").read_text())
    check = card["check"]
    assert check["pinned"] == PINNED and check["torch_threads"] == 1
    got = run_pinned("rlmeta.agents.meta_test:card_check", name, card["kind"], check["args"])
    assert abs(got["score"] - check["score"]) <= 2 * check["se"], (got, check)
