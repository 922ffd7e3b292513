"""Benchmarks, not tests: ``make bench`` (training) and ``make bench-scale`` (study size)."""
