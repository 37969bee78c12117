"""Runtime helpers of NumPy modules (copied into the generated file)."""
import numpy as np


def _check_finite(name, op, value):
    """Raise FloatingPointError naming the node whose value is not finite (check_numerics)."""
    if not np.all(np.isfinite(value)):
        bad = "NaN" if np.any(np.isnan(value)) else "Inf"
        raise FloatingPointError(f"node {name!r} (op {op}) produced {bad}")
