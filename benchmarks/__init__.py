"""Benchmarks: commands to run by hand on a quiet machine, not tests (see benchmarks/README.md)."""
