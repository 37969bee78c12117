"""Central finite differences in float64 on the reference evaluator: the oracle for every gradient."""
from __future__ import annotations

import numpy as np


def numeric_grad(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """∂f/∂x by central differences; ``f`` maps an array like ``x`` to a float."""
    x = np.array(x, dtype=np.float64, order="C")  # C order: reshape(-1) below must be a view, not a copy
    out = np.zeros_like(x)
    flat, gflat = x.reshape(-1), out.reshape(-1)
    for i in range(flat.size):
        keep = flat[i]
        flat[i] = keep + eps
        up = f(x)
        flat[i] = keep - eps
        down = f(x)
        flat[i] = keep
        gflat[i] = (up - down) / (2 * eps)
    return out


def rel_error(a, b, floor: float = 1e-8) -> float:
    """max |a − b| relative to the size of ``b`` (at least ``floor``): how far apart two gradients are.

    The floor keeps a gradient that is exactly zero (rounding noise against 0) from counting as far off."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), floor))


def fd_grads(graph, loss: str, feeds: dict, names, eps: float = 1e-6) -> dict:
    """Finite-difference gradients of output ``loss`` w.r.t. the feeds ``names``."""
    out = {}
    for name in names:
        def f(value, name=name):
            return float(graph.evaluate({**feeds, name: value}, [loss])[loss])
        out[name] = numeric_grad(f, feeds[name], eps)
    return out
