"""Benchmarks: each prints a table. Run ``python -m harness.bench NAME [args]``."""
