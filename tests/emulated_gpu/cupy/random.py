"""cupy.random: Generator/default_rng and the legacy functions.

cuRAND's streams cannot be reproduced on the host: draws come from NumPy's Philox seeded like CuPy seeds
cuRAND (one uint32 from the SeedSequence), so they are deterministic per seed and differ from both NumPy's
default_rng stream and a real GPU's.
"""
from __future__ import annotations

import numpy as np

from . import emulation
from ._core import ndarray, uninitialized

XORWOW_STATE_BYTES = 48 * 8 * 256 * 16  # sizeof(curandState) × the threads CuPy initializes


class BitGenerator:
    def __init__(self, seed=None):
        if isinstance(seed, ndarray):
            seed = seed.get()
        self._seed_seq = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        self._seed = int(self._seed_seq.generate_state(1, np.uint32)[0])
        self._rng = np.random.Generator(np.random.Philox(self._seed))
        # the cuRAND states live on the device: allocated, zeroed and initialized by a kernel
        emulation.allocation(XORWOW_STATE_BYTES, "curand states")
        emulation.op("fills", "curand states")
        emulation.op("kernel_launches", "init_curand")


XORWOW = MRG32k3a = Philox4x3210 = BitGenerator


def _shape(size) -> tuple:
    return () if size is None else tuple(size) if np.iterable(size) else (int(size),)


class Generator:
    def __init__(self, bit_generator):
        self.bit_generator = bit_generator

    def _output(self, size, dtype, out, name):
        """``out`` (checked as CuPy checks it) or a new array: where one draw kernel writes."""
        dtype = np.dtype(dtype)
        if out is None:
            return ndarray._wrap(uninitialized(_shape(size), dtype, f"{name} result"))
        if out.dtype.char != dtype.char:
            raise TypeError(f"Supplied output array has the wrong type. Expected {dtype.name}, got {out.dtype.name}")
        if not (out.flags.c_contiguous or out.flags.f_contiguous):
            raise ValueError("Supplied output array is not contiguous, writable or aligned.")
        if size is not None and _shape(size) != out.shape:
            raise ValueError("size must match out.shape when used together")
        return out

    def standard_normal(self, size=None, dtype=np.float64, out=None):
        y = self._output(size, dtype, out, "standard_normal")
        if y.dtype.char not in "fd":
            raise TypeError(f"Unsupported dtype {y.dtype.name} for standard_normal")
        y._a[...] = self.bit_generator._rng.standard_normal(y.shape, dtype=y.dtype)
        emulation.op("random_draws", "standard_normal")
        return y

    def random(self, size=None, dtype=np.float64, out=None):
        y = self._output(size, dtype, out, "random")
        y._a[...] = self.bit_generator._rng.random(y.shape, dtype=y.dtype)
        emulation.op("random_draws", "random")
        return y

    def uniform(self, low=0.0, high=1.0, size=None, dtype=np.float64):
        y = self._output(size, np.float64, None, "uniform")
        y._a[...] = self.bit_generator._rng.uniform(low, high, y.shape)
        emulation.op("random_draws", "uniform")
        return y.astype(dtype, copy=False)

    def integers(self, low, high=None, size=None, dtype=np.int64, endpoint=False):
        y = self._output(size, dtype, None, "integers")
        y._a[...] = self.bit_generator._rng.integers(low, high, y.shape, dtype=y.dtype, endpoint=endpoint)
        emulation.op("random_draws", "integers")
        return y


def default_rng(seed=None) -> Generator:
    if isinstance(seed, Generator):
        return seed
    return Generator(seed if isinstance(seed, BitGenerator) else XORWOW(seed))


_legacy: Generator | None = None


def _global() -> Generator:
    global _legacy
    if _legacy is None:
        _legacy = default_rng()
    return _legacy


def seed(seed=None) -> None:
    global _legacy
    _legacy = default_rng(seed)


def rand(*size, dtype=float):
    return _global().random(size, dtype)


def randn(*size, dtype=float):
    return _global().standard_normal(size, dtype)


def normal(loc=0.0, scale=1.0, size=None, dtype=float):
    y = _global()._output(size, dtype, None, "normal")
    y._a[...] = _global().bit_generator._rng.normal(loc, scale, y.shape)
    emulation.op("random_draws", "normal")
    return y


def uniform(low=0.0, high=1.0, size=None, dtype=float):
    return _global().uniform(low, high, size, dtype)
