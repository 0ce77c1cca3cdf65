"""rlmeta agents: networks, actors, learners and loops joining ``rlmeta`` and ``envs``."""
