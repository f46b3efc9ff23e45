"""scout's benchmark rig: SSH targets, baselines, load generators and the report.

Every scenario runs scout and its baselines in one invocation on the same SSH servers,
so results are ratios on one (shared, noisy) machine. `python -m bench --quick` or
`--full`; the report is BENCHMARKS.md at the top of the repository.
"""
