"""An emulated GPU: the part of CuPy 13 that graphc's generated modules (and the code around them) use, on the CPU.

Arrays live in host memory behind ``cupy.ndarray``, which refuses implicit conversion to NumPy; kernels are
compiled with the host C++ compiler; ``cupy.emulation`` counts device operations, allocations and transfers.
README.md next to this file lists what is emulated and every place where the emulation has to guess.
"""
import builtins
import itertools
import sys

import numpy as np

from . import cuda, emulation, lib, random  # noqa: F401
from ._core import PYTHON_SCALARS, UFUNCS, fresh, ndarray, operand, private_copy, to_device, uninitialized
from ._kernel import ElementwiseKernel, ReductionKernel  # noqa: F401
from ._linalg import dot, einsum, matmul  # noqa: F401

EMULATED = True
__version__ = "13.6.0"

# dtypes: CuPy 13 has bool_ but no bool (cupy.bool came with CuPy 14)
bool_, float16, float32, float64 = np.bool_, np.float16, np.float32, np.float64
int8, int16, int32, int64, intp = np.int8, np.int16, np.int32, np.int64, np.intp
uint8, uint16, uint32, uint64 = np.uint8, np.uint16, np.uint32, np.uint64
complex64, complex128 = np.complex64, np.complex128
dtype, finfo, iinfo, result_type, can_cast, promote_types = (
    np.dtype, np.finfo, np.iinfo, np.result_type, np.can_cast, np.promote_types)
inf, nan, pi, e, newaxis = np.inf, np.nan, np.pi, np.e, None

globals().update(UFUNCS)
abs = UFUNCS["absolute"]


def get_array_module(*args):
    return sys.modules[__name__] if builtins.any(isinstance(a, ndarray) for a in args) else np


# -- creation --------------------------------------------------------------------------------------------
def empty(shape, dtype=float, order="C"):
    return ndarray._wrap(uninitialized(shape, dtype, "empty", order))


def empty_like(a, dtype=None, order="K", subok=None, shape=None):
    return empty(a.shape if shape is None else shape, a.dtype if dtype is None else dtype)


def full(shape, fill_value, dtype=None, order="C"):
    out = empty(shape, np.asarray(fill_value).dtype if dtype is None else dtype, order)
    out.fill(fill_value)
    return out


def zeros(shape, dtype=float, order="C"):
    return full(shape, 0, dtype, order)


def ones(shape, dtype=float, order="C"):
    return full(shape, 1, dtype, order)


def full_like(a, fill_value, dtype=None, order="K", subok=None, shape=None):
    return full(a.shape if shape is None else shape, fill_value, a.dtype if dtype is None else dtype)


def zeros_like(a, dtype=None, order="K", subok=None, shape=None):
    return full_like(a, 0, dtype, shape=shape)


def ones_like(a, dtype=None, order="K", subok=None, shape=None):
    return full_like(a, 1, dtype, shape=shape)


def arange(start, stop=None, step=1, dtype=None):
    emulation.op("kernel_launches", "arange")
    return fresh(np.arange(start, stop, step, dtype) if stop is not None else np.arange(start, dtype=dtype),
                 "arange")


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0):
    """A device array from a device array (copied unless ``copy=False`` allows a view) or from host data."""
    if not isinstance(obj, ndarray):
        return to_device(np.array(obj, dtype=dtype, order=order, ndmin=ndmin))
    if ndmin > obj.ndim:
        obj = obj.reshape((1,) * (ndmin - obj.ndim) + obj.shape)
    if copy or (dtype is not None and np.dtype(dtype) != obj.dtype):
        return obj.astype(obj.dtype if dtype is None else dtype, order=order)
    return obj


def asarray(a, dtype=None, order=None):
    return array(a, dtype, copy=False, order=order or "K")


asanyarray = asarray


def ascontiguousarray(a, dtype=None):
    if isinstance(a, ndarray) and a.flags.c_contiguous and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    if isinstance(a, ndarray):
        return a.astype(a.dtype if dtype is None else dtype, order="C")
    return to_device(np.ascontiguousarray(a, dtype))


def asnumpy(a, stream=None, order="C", out=None):
    if isinstance(a, ndarray):
        return a.get(stream, order, out)
    if out is not None:
        out[...] = a
        return out
    return np.asarray(a, order=order)


def copy(a, order="K"):
    return a.copy()


# -- shapes: views ---------------------------------------------------------------------------------------
def reshape(a, newshape, order="C"):
    return a.reshape(newshape, order=order)


def transpose(a, axes=None):
    return a.transpose() if axes is None else a.transpose(axes)


def ravel(a, order="C"):
    return a.ravel(order)


def squeeze(a, axis=None):
    return a.squeeze(axis)


def expand_dims(a, axis):
    return ndarray._wrap(np.expand_dims(a._a, axis))


def broadcast_to(array, shape):
    """A view with zero strides; unlike NumPy's it is writable, as CuPy arrays have no read-only flag."""
    b = np.broadcast_to(array._a, shape)
    return ndarray._wrap(np.lib.stride_tricks.as_strided(array._a, b.shape, b.strides))


def concatenate(tup, axis=0, out=None, *, dtype=None, casting="same_kind"):
    arrays = [operand(a) for a in tup]
    if builtins.any(not isinstance(a, np.ndarray) for a in arrays):
        raise TypeError("Only cupy arrays can be concatenated")
    for _ in arrays:  # one copy kernel per input (a guess: CuPy may fuse them into one)
        emulation.op("copies", "concatenate")
    if out is None:
        return fresh(np.concatenate(arrays, axis, dtype=dtype, casting=casting), "concatenate")
    np.concatenate(arrays, axis, out=out._a, dtype=dtype, casting=casting)
    return out


def stack(tup, axis=0, out=None, *, dtype=None, casting="same_kind"):
    """``concatenate`` of the arrays with a new axis, as CuPy builds it."""
    return concatenate([expand_dims(a, axis) for a in tup], axis, out, dtype=dtype, casting=casting)


# -- copies, indexing --------------------------------------------------------------------------------------
def copyto(dst, src, casting="same_kind", where=None):
    """Broadcasting copy as CuPy's: host scalars and one-element host arrays only, ``where=`` a device bool array."""
    src_is_scalar = False
    if type(src) in PYTHON_SCALARS:
        np.copyto(np.empty((), dst.dtype), src, casting=casting)  # raises when NumPy would not copy it
        src_is_scalar = True
    elif isinstance(src, np.ndarray) or np.isscalar(src):
        if src.size != 1:
            raise ValueError("non-scalar numpy.ndarray cannot be used for copyto")
        if not np.can_cast(src.dtype, dst.dtype, casting):
            raise TypeError(f"Cannot cast {src.dtype} to {dst.dtype} in {casting} casting mode")
        src, src_is_scalar = src.item(), True
    elif not np.can_cast(src.dtype, dst.dtype, casting):
        raise TypeError(f"Cannot cast {src.dtype} to {dst.dtype} in {casting} casting mode")
    if not src_is_scalar:
        pairs = itertools.zip_longest(reversed(src.shape), reversed(dst.shape), fillvalue=1)
        if not builtins.all(s in (d, 1) for s, d in pairs):
            raise ValueError(f"could not broadcast input array from shape {src.shape} into shape {dst.shape}")
        if src.ndim > dst.ndim:
            src = src.squeeze(tuple(range(src.ndim - dst.ndim)))
    if where is not None:
        if isinstance(where, ndarray) and where.dtype != np.bool_:
            raise TypeError(f"Cannot cast array data from {where.dtype!r} to {np.dtype(bool)!r} "
                            "according to the rule 'safe'")
        mask = operand(private_copy(where, (dst,))) if isinstance(where, ndarray) else bool(where)
        emulation.op("copies", "copyto where")
        np.copyto(dst._a, operand(private_copy(src, (dst,))), casting="unsafe", where=mask)
        return
    if dst.size == 0:
        return
    if not src_is_scalar and not _can_memcpy(dst, src):
        src = private_copy(src, (dst,))  # an elementwise copy kernel, a ufunc
    emulation.op("copies", "copyto")
    np.copyto(dst._a, operand(src), casting="unsafe")


def _can_memcpy(dst, src) -> bool:
    same_layout = (dst.flags.c_contiguous and src.flags.c_contiguous) or \
        (dst.flags.f_contiguous and src.flags.f_contiguous)
    return same_layout and dst.dtype == src.dtype and dst.size == src.size


def take(a, indices, axis=None, out=None):
    """Out-of-range indices wrap around, as in CuPy's take kernel (it has no ``mode=``)."""
    if not np.isscalar(indices) and not isinstance(indices, ndarray):
        indices = to_device(indices, dtype=int)
    result = np.take(a._a, operand(indices), axis=axis, mode="wrap")
    emulation.op("kernel_launches", "take")
    if out is None:
        return fresh(result, "take result")
    if out.dtype != a.dtype:
        raise TypeError("Output dtype mismatch")
    if out.shape != np.shape(result):
        raise ValueError("Output shape mismatch")
    out._a[...] = result
    return out


def put(a, ind, v, mode="wrap"):
    if mode not in ("raise", "wrap", "clip"):
        raise ValueError("clipmode not understood")
    ind = ind if isinstance(ind, ndarray) else to_device(ind)
    v = v if isinstance(v, ndarray) else to_device(v, dtype=a.dtype)
    if v.size == 0:
        return
    if mode == "raise":  # an error flag on the device, read back
        flag = zeros((), np.bool_)
        emulation.op("kernel_launches", "put")
        try:
            np.put(a._a, ind._a.ravel(), v._a, mode="raise")
        except IndexError:
            raise IndexError("invalid entry in indices array") from None
        finally:
            bool(flag)
        return
    emulation.op("kernel_launches", "put")
    np.put(a._a, ind._a.ravel(), v._a, mode=mode)


def where(condition, x=None, y=None):
    if x is None and y is None:
        emulation.op("kernel_launches", "nonzero")
        return tuple(fresh(i, "nonzero") for i in np.nonzero(operand(condition)))
    emulation.op("ufunc_calls", "where")
    return fresh(np.where(operand(condition), operand(x), operand(y)), "where result")


# -- reductions: the array's methods, as CuPy's functions call them ---------------------------------------
def sum(a, axis=None, dtype=None, out=None, keepdims=False):
    return a.sum(axis, dtype, out, keepdims)


def mean(a, axis=None, dtype=None, out=None, keepdims=False):
    return a.mean(axis, dtype, out, keepdims)


def max(a, axis=None, out=None, keepdims=False):
    return a.max(axis=axis, out=out, keepdims=keepdims)


def min(a, axis=None, out=None, keepdims=False):
    return a.min(axis=axis, out=out, keepdims=keepdims)


def argmax(a, axis=None, dtype=None, out=None, keepdims=False):
    return a.argmax(axis=axis, out=out, keepdims=keepdims)


def argmin(a, axis=None, dtype=None, out=None, keepdims=False):
    return a.argmin(axis=axis, out=out, keepdims=keepdims)


def all(a, axis=None, out=None, keepdims=False):
    return a.all(axis=axis, out=out, keepdims=keepdims)


def any(a, axis=None, out=None, keepdims=False):
    return a.any(axis=axis, out=out, keepdims=keepdims)


amax, amin = max, min
