"""rlmeta.catalog is the one table of names: the code's tables and the configs' choices follow it."""

from __future__ import annotations

from typing import get_args, get_type_hints

import pytest

from rlmeta import catalog
from rlmeta.agents.config import HParamsConfig, MetaConfig, OptimizerConfig, TrainConfig
from rlmeta.hparams import KNOWN
from rlmeta.metagrad import ESTIMATORS
from rlmeta.objectives import DEFAULT_HPARAMS, OBJECTIVES
from rlmeta.optim import OPTIMIZERS


def test_code_tables_cover_the_catalog_names():
    assert tuple(ESTIMATORS) == catalog.ESTIMATORS
    assert set(OPTIMIZERS) == set(catalog.OPTIMIZERS)
    assert set(OBJECTIVES) == set(catalog.ALGORITHMS)
    assert KNOWN == {name: h.bounds for name, h in catalog.HYPERPARAMETERS.items()}
    assert DEFAULT_HPARAMS == catalog.DEFAULTS


def test_config_choices_and_defaults_come_from_the_catalog():
    assert set(get_args(get_type_hints(TrainConfig)["algo"])) == set(catalog.ALGORITHMS)
    assert set(get_args(get_type_hints(MetaConfig)["estimator"])) == set(catalog.ESTIMATORS)
    assert set(get_args(get_type_hints(OptimizerConfig)["name"])) == set(catalog.OPTIMIZERS)
    assert HParamsConfig().as_dict() == catalog.DEFAULTS


@pytest.mark.parametrize("name, value, message", [
    ("gamma", 1.0, r"gamma=1.0 is outside its bounds \(0, 1\)"),
    ("entropy_cost", 0.0, r"entropy_cost=0.0 is outside its bounds"),
])
def test_learned_values_must_lie_inside_the_open_interval(name, value, message):
    with pytest.raises(ValueError, match=message):
        catalog.to_raw(name, value)
    with pytest.raises(ValueError, match=message):
        TrainConfig(meta=MetaConfig(learn=(name,), init={name: value}))


def test_unknown_hyperparameter_is_named():
    with pytest.raises(ValueError, match="unknown hyperparameter 'gama'"):
        catalog.check_hyperparameter("gama")
