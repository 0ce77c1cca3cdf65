"""rlmeta: meta-gradient reinforcement learning in PyTorch (the algorithmic core).

This package depends on torch alone; environments live in ``envs`` and agents in ``agents``.
Only ``rlmeta.cli`` ties them together for the command line.
"""

__version__ = "0.1.0"
