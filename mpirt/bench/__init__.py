"""Benchmarks: results are JSON first; tables and plots are views."""
