"""Benchmarks: the product against a plain baseline, side by side (see bench/README.md)."""
