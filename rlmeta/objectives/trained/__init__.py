"""Learned objectives that ship with rlmeta: ``<name>.pt`` (parameters) and ``<name>.json`` (its card:
config, commit, scores). Load one by name: ``rlmeta meta-test lpg-grid-small``, ``--objective lpg-grid-small``."""
