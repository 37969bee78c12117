"""Runtime helpers of NumPy modules (copied into the generated file)."""
import numpy as np


def _check_finite(name, what, value):
    """Raise FloatingPointError naming the value that is not finite and what computed it (check_numerics)."""
    if not np.all(np.isfinite(value)):
        bad = "NaN" if np.any(np.isnan(value)) else "Inf"
        raise FloatingPointError(f"{name} = {what} produced {bad}")
