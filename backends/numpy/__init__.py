"""The NumPy backend: a standalone module that needs only NumPy.

Fused elementwise groups become the shortest chains of in-place ufunc calls into planned buffers
(``ufuncs.UfuncChain``); the other ops lower through ``lowering.LOWERINGS`` (core ops) and ``conv`` (convolution
and pooling).
"""
from __future__ import annotations

from graphc.backends import emitter
from graphc.backends.numpy import conv  # noqa: F401 - registers the conv and pooling lowerings
from graphc.backends.numpy.lowering import LOWERINGS
from graphc.backends.numpy.printer import NumPyScalarPrinter
from graphc.backends.numpy.runtime import _check_finite


class ModuleEmitter(emitter.ModuleEmitter):
    BACKEND, TITLE, XP = "numpy", "NumPy", "np"
    IMPORTS = ("import numpy as np",)
    ARRAY = "np.ndarray"
    LOWERINGS = LOWERINGS
    NUMERICS = (_check_finite,)
    GEMV_SUMS = True

    @staticmethod
    def printer(names):
        return NumPyScalarPrinter(names, "np")

    @staticmethod
    def reduce(ufunc: str, x: str, axis, keepdims, out: str) -> str:
        """``ufunc.reduce``: NumPy's allocation-free spelling of sum and max."""
        keep = "" if keepdims is None else f", keepdims={keepdims}"
        return f"np.{ufunc}.reduce({x}, axis={axis!r}{keep}, out={out})"

    @staticmethod
    def take(src: str, index: str, out: str, axis=None) -> str:
        """The array's own ``take``: ``np.take`` wraps it in a call that allocates (~200 bytes) every time; mode
        'clip' writes straight into ``out`` (mode 'raise' buffers it)."""
        along = "" if axis is None else f", axis={axis}"
        return f"{src}.take({index}{along}, out={out}, mode='clip')"

    @staticmethod
    def put(dst: str, index: str, values: str) -> str:
        return f"{dst}.put({index}, {values}, mode='clip')"
