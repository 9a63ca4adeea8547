"""Benchmarks behind ``layeredge bench ...``: ours vs. baselines, side by side in one run."""
