"""matmul, dot and einsum: NumPy's products, with the copies and temporaries CuPy's cuBLAS path makes."""
from __future__ import annotations

import numpy as np

from . import emulation
from ._core import fresh, ndarray, overlaps


def _device(x) -> ndarray:
    if not isinstance(x, ndarray):
        raise TypeError(f"Unsupported type {type(x)}")
    return x


def _packed(x: ndarray, dtype, fortran_ok: bool) -> None:
    """cuBLAS reads C-contiguous operands (2-D ones also Fortran-contiguous) of the result type: others are copied."""
    flags = x._a.flags
    if x.dtype != dtype or not (flags.c_contiguous or (fortran_ok and flags.f_contiguous)):
        emulation.op("copies", "matmul operand")
        emulation.allocation(x.size * np.dtype(dtype).itemsize, "matmul operand copy")


def _batch(a: ndarray, b: ndarray, ndim: int) -> tuple[int, bool]:
    """The batch count of a matmul over more than two dims, and whether an operand is broadcast along it."""
    shapes = []
    for x, vector in ((a, (1, a.size)), (b, (b.size, 1))):
        shape = x.shape if x.ndim > 1 else vector
        shapes.append((1,) * (ndim - len(shape)) + shape)
    count, broadcast = 1, False
    for sa, sb in zip(shapes[0][:-2], shapes[1][:-2]):
        c = 0 if 0 in (sa, sb) else max(sa, sb)
        count *= c
        broadcast = broadcast or (c > 1 and 1 in (sa, sb))
    return count, broadcast


def _result(r: np.ndarray, out, direct: bool, name: str):
    """``r`` as a new array, or into ``out``: directly, or through a temporary and a copy kernel."""
    if out is None:
        return fresh(r, f"{name} result")
    if not direct:
        emulation.allocation(r.nbytes, f"{name} temporary")
        emulation.op("copies", f"{name} temporary into out")
    np.copyto(out._a, r, casting="unsafe")
    return out


def matmul(a, b, out=None, **kwargs):
    if kwargs:
        raise TypeError(f"Wrong arguments {kwargs}")
    a, b = _device(a), _device(b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("Scalar operands are not allowed, use '*' instead")
    dtype, ndim = np.promote_types(a.dtype, b.dtype), max(a.ndim, b.ndim)
    with np.errstate(all="ignore"):
        r = np.matmul(a._a, b._a)
    r = np.asarray(r)
    if out is not None and out.shape != r.shape:
        raise ValueError("Output array has an invalid size")
    _packed(a, dtype, ndim <= 2)
    _packed(b, dtype, ndim <= 2)
    if ndim > 2:
        count, broadcast = _batch(a, b, ndim)
        if broadcast:  # gemmBatched takes arrays of matrix pointers, one built by a kernel per operand
            for _ in range(3):
                emulation.allocation(count * 8, "matmul pointer array")
                emulation.op("kernel_launches", "cupy_mat_ptrs")
    emulation.op("matmuls", "matmul")
    direct = out is not None and out.dtype == dtype and out.flags.c_contiguous \
        and not overlaps(out, a) and not overlaps(out, b)
    return _result(r, out, direct, "matmul")


def dot(a, b, out=None):
    a, b = _device(a), _device(b)
    if out is not None:
        if np.result_type(a.dtype, b.dtype) != out.dtype:
            raise ValueError("Not supported dtype combination.")
        if not out.flags.c_contiguous:
            raise ValueError("Output array must be C-contiguous")
    with np.errstate(all="ignore"):
        r = np.asarray(np.dot(a._a, b._a))
    if out is not None and out.size != r.size:
        raise ValueError("Output array has an invalid size")
    dtype = np.promote_types(a.dtype, b.dtype)
    _packed(a, dtype, True)
    _packed(b, dtype, True)
    emulation.op("matmuls", "dot")
    return _result(r, out, out is not None and not overlaps(out, a) and not overlaps(out, b), "dot")


def einsum(*operands, **kwargs):
    """No ``out=`` (CuPy has none); one result allocation and one kernel (a guess: CuPy may launch several)."""
    kwargs.pop("dtype", None), kwargs.pop("optimize", None)
    if kwargs:
        raise TypeError(f"Did not understand the following kwargs: {list(kwargs.keys())}")
    subscripts, arrays = operands[0], [_device(x)._a for x in operands[1:]]
    with np.errstate(all="ignore"):
        r = np.einsum(subscripts, *arrays)
    emulation.op("kernel_launches", "einsum")
    return fresh(r, "einsum result")

