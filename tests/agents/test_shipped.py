"""The learned objectives that ship with rlmeta: loadable by name, and ``meta-test`` reproduces each card's score."""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch

from rlmeta.agents.learned import load_lpg, shipped_objectives
from rlmeta.agents.meta_test import meta_test

TRAINED = resources.files("rlmeta.objectives.trained")


def test_lpg_grid_small_ships_with_a_card():
    assert "lpg-grid-small" in shipped_objectives()
    card = json.loads((TRAINED / "lpg-grid-small.json").read_text())
    assert {"config", "commit", "check", "meta_steps", "network"} <= set(card)
    lpg = load_lpg("lpg-grid-small")
    assert lpg.network.target_width == card["network"]["target_width"] and lpg.source.endswith("lpg-grid-small.pt")
    assert (TRAINED / "lpg-grid-small.pt").stat().st_size < 1_000_000  # small enough to ship


@pytest.mark.slow
def test_meta_test_reproduces_the_cards_score():
    card = json.loads((TRAINED / "lpg-grid-small.json").read_text())
    check = card["check"]
    torch.set_num_threads(check["torch_threads"])
    results = meta_test("lpg-grid-small", **check["args"])
    assert abs(results["normalized_score"] - check["normalized_score"]) <= 2 * check["normalized_score_se"], (
        results["normalized_score"], check)
