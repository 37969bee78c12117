"""Parameter initializers. ``init_array`` is self-contained (NumPy only): the backends copy its source
into generated modules, so a generated ``init_params(seed)`` gives exactly what ``gc.init_params`` gives."""
import numpy as np


def init_array(spec, shape, dtype, seed, index):
    """Array for init ``spec`` (name, *args) of param number ``index``; one random stream per param."""
    kind, args = spec[0], spec[1:]
    rng = np.random.default_rng([seed, index])
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    if len(shape) >= 2:  # dense (in, out); conv (out, in, kh, kw)
        fan_in, fan_out = (shape[0], shape[1]) if len(shape) == 2 else (shape[1] * receptive, shape[0] * receptive)
    else:
        fan_in = fan_out = shape[0] if shape else 1
    if kind == "zeros":
        a = np.zeros(shape)
    elif kind == "ones":
        a = np.ones(shape)
    elif kind == "normal":
        a = rng.normal(0.0, args[0] if args else 0.01, shape)
    elif kind == "uniform":
        low, high = args if len(args) == 2 else (-0.05, 0.05)
        a = rng.uniform(low, high, shape)
    elif kind == "glorot_uniform":
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        a = rng.uniform(-limit, limit, shape)
    elif kind == "glorot_normal":
        a = rng.normal(0.0, np.sqrt(2.0 / (fan_in + fan_out)), shape)
    elif kind == "he_normal":
        a = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
    elif kind == "he_uniform":
        limit = np.sqrt(6.0 / fan_in)
        a = rng.uniform(-limit, limit, shape)
    else:
        raise ValueError(f"unknown init {kind!r}")
    return np.array(a, dtype=dtype, order="C")
