"""Runtime helpers of CuPy modules, copied into the generated file, whose ``cp`` (CuPy) and ``np`` they use:
this package imports no CuPy."""


def _finite(value):
    """A device flag: every element of ``value`` is finite (nothing is read back yet)."""
    return cp.all(cp.isfinite(value))


def _check_finite(checks):
    """Raise FloatingPointError naming the first value that is not finite and what computed it (check_numerics):
    the flags of a whole call come back to the host at once."""
    flags = cp.stack([flag for _, _, flag in checks]).get() if checks else ()
    for (name, what, _), ok in zip(checks, flags):
        if not ok:
            raise FloatingPointError(f"{name} = {what} produced NaN or Inf")


def _device(arrays, host=()):
    """The arrays on the GPU (host NumPy arrays are copied over), but for the names in ``host``."""
    return {name: value if name in host else cp.asarray(value) for name, value in arrays.items()}


def _write_back(host, device):
    """Copy updated device arrays back into the host NumPy arrays they came from."""
    for name, value in host.items():
        if isinstance(value, np.ndarray) and device[name] is not value:
            value[...] = device[name].get()


def _check_classes(outside, labels, classes, name):
    """Raise ValueError where ids fall outside 0 … classes − 1: ``outside`` counts them on the device."""
    if int(outside):
        low, high = int(labels.min()), int(labels.max())
        raise ValueError(f"{name} holds the id {low if low < 0 else high}, outside 0..{classes - 1}")
