"""Snake 6x6 learning curves: fixed gamma vs one-step, multi-step and mixed meta-gradient tuning.

Usage: python scripts/meta_curves.py [--seeds 3] [--total-steps 300000] [--out-dir DIR]
See ``agents/meta_curves.py`` for the protocol.
"""

import tyro

from agents.meta_curves import MetaCurvesConfig, run

if __name__ == "__main__":
    run(tyro.cli(MetaCurvesConfig))
