"""Benchmarks of pool behaviour under concurrency: ``python -m benchmarks --help``."""
