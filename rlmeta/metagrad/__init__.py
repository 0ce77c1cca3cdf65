"""Meta-gradient estimators and the outer objective (see ``estimators`` for the papers)."""

from rlmeta.catalog import check_num_updates, mixing_weights
from rlmeta.metagrad.estimators import (
    ESTIMATORS, Bootstrapped, Collect, Estimator, InnerUpdate, MetaGradient, Mixed, MultiStep, OneStep, OuterLoss,
)
from rlmeta.metagrad.outer import OuterObjective

__all__ = [
    "ESTIMATORS", "Bootstrapped", "Collect", "Estimator", "InnerUpdate", "MetaGradient", "Mixed", "MultiStep",
    "OneStep", "OuterLoss", "OuterObjective", "check_num_updates", "mixing_weights",
]
