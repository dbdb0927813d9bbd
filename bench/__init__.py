"""Benchmarks that print measured figures, each run as `python -m bench.NAME`."""
