"""scout's benchmark rig: scout and its baselines on the same SSH servers in one
invocation, so results are ratios on one (shared, noisy) machine; see bench.run."""
