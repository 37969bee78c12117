"""Runtime helpers of CuPy modules, copied into the generated file, whose ``cp`` (CuPy) and ``np`` they use:
this package imports no CuPy."""


def _check_finite(name, what, value):
    """Raise FloatingPointError naming the value that is not finite and what computed it (check_numerics)."""
    if not bool(cp.all(cp.isfinite(value))):
        bad = "NaN" if bool(cp.any(cp.isnan(value))) else "Inf"
        raise FloatingPointError(f"{name} = {what} produced {bad}")


def _device(arrays, host=()):
    """The arrays on the GPU (host NumPy arrays are copied over), but for the names in ``host``."""
    return {name: value if name in host else cp.asarray(value) for name, value in arrays.items()}


def _write_back(host, device):
    """Copy updated device arrays back into the host NumPy arrays they came from."""
    for name, value in host.items():
        if isinstance(value, np.ndarray) and device[name] is not value:
            value[...] = device[name].get()
