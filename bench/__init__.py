"""Benchmarks: graphc against hand-written NumPy, PyTorch and JAX."""
