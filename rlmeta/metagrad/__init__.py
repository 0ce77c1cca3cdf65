"""Meta-gradient estimators and the outer objective (see ``estimators`` for the papers)."""

from rlmeta.metagrad.estimators import (
    ESTIMATORS, Bootstrapped, Estimator, MetaGradient, Mixed, MultiStep, OneStep, check_num_updates, mixing_weights,
)
from rlmeta.metagrad.outer import OuterObjective

__all__ = [
    "ESTIMATORS", "Bootstrapped", "Estimator", "MetaGradient", "Mixed", "MultiStep", "OneStep", "OuterObjective",
    "check_num_updates", "mixing_weights",
]
