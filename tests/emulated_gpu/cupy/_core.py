"""``cupy.ndarray`` over host memory, ufuncs and reductions, with CuPy's rules for what allocates and copies.

Device memory is a NumPy array the host may not read implicitly; every operation that would run on a real
GPU is counted in ``emulation``, and every buffer CuPy would allocate is counted as an allocation.
"""
from __future__ import annotations

import numpy as np

from . import emulation

NO_IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. "
               "Please use `.get()` to construct a NumPy array explicitly.")
PYTHON_SCALARS = (bool, int, float, complex)


def uninitialized(shape, dtype, why: str, order: str = "C") -> np.ndarray:
    """Fresh "device" memory holding garbage: NaN for floats, 0xA5 bytes for integers, True for bools,
    so a buffer nobody wrote shows up as wrong numbers instead of as lucky zeros."""
    a = np.empty(shape, dtype, order="F" if order == "F" else "C")
    if a.dtype.kind in "fc":
        a.fill(np.nan)
    elif a.dtype.kind == "b":
        a.fill(True)
    elif a.size:
        a.reshape(-1, order="A").view(np.uint8).fill(0xA5)
    emulation.allocation(a.nbytes, why)
    return a


def fresh(result, why: str) -> ndarray:
    """A result NumPy computed, as a new device array (counted as one allocation)."""
    a = np.array(result, copy=True)
    emulation.allocation(a.nbytes, why)
    return ndarray._wrap(a)


def host_scalar(x) -> bool:
    return type(x) in PYTHON_SCALARS or isinstance(x, np.generic)


def operand(x):
    """What a kernel or ufunc may take: a device array (its memory) or a Python/NumPy scalar."""
    if isinstance(x, ndarray):
        return x._a
    if host_scalar(x):
        return x
    raise TypeError(f"Unsupported type {type(x)}")


def overlaps(a: ndarray, b: ndarray) -> bool:
    """CuPy's may_share_bounds: the memory ranges intersect (not whether an element is shared)."""
    return np.may_share_memory(a._a, b._a)


def to_device(obj, dtype=None) -> ndarray:
    """A host array-like copied to a new device array (one allocation, one transfer)."""
    a = np.array(obj, dtype=dtype, copy=True)
    if a.dtype == object:
        raise ValueError("Unsupported dtype object")
    emulation.allocation(a.nbytes, "array from host")
    emulation.transfer(True, a.nbytes)
    return ndarray._wrap(a)


def _device_key(key):
    """An index with device index arrays as their memory; host index arrays are transferred first."""
    parts = key if isinstance(key, tuple) else (key,)
    out = []
    for k in parts:
        if isinstance(k, ndarray):
            k = k._a
        elif isinstance(k, (list, np.ndarray)):
            k = to_device(k)._a
        out.append(k)
    return tuple(out)


def _advanced(key: tuple) -> bool:
    return any(isinstance(k, np.ndarray) for k in key)


class _Flags:
    def __init__(self, a: np.ndarray):
        self.c_contiguous, self.f_contiguous = a.flags.c_contiguous, a.flags.f_contiguous
        self.owndata = a.base is None

    def __getitem__(self, name):
        return {"C_CONTIGUOUS": self.c_contiguous, "F_CONTIGUOUS": self.f_contiguous, "OWNDATA": self.owndata}[name]


class _MemoryPointer:
    def __init__(self, a: np.ndarray):
        self.ptr = a.ctypes.data


class ndarray:
    """An array in (emulated) device memory. Views share memory; reading it needs ``.get()``."""

    __array_ufunc__ = None  # NumPy hands operators with a device array back to us instead of converting it
    __hash__ = None

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        if memptr is not None or strides is not None:
            raise NotImplementedError("ndarray(memptr=, strides=) is not emulated; use lib.stride_tricks.as_strided")
        self._a = uninitialized(shape, dtype, "ndarray", order)

    @classmethod
    def _wrap(cls, a: np.ndarray) -> ndarray:
        obj = cls.__new__(cls)
        obj._a = a
        return obj

    # -- attributes ----------------------------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: _Flags(self._a))
    data = property(lambda self: _MemoryPointer(self._a))
    T = property(lambda self: self.transpose())

    @property
    def device(self):
        from .cuda import Device
        return Device(0)

    # -- to the host: only explicitly ------------------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError(NO_IMPLICIT)

    def get(self, stream=None, order="C", out=None):
        if not (self._a.flags.c_contiguous or self._a.flags.f_contiguous):  # CuPy packs it on the device first
            self.copy()
        emulation.transfer(False, self.nbytes)
        if out is not None:
            out[...] = self._a
            return out
        return np.array(self._a, order=order, copy=True)

    def set(self, arr, stream=None):
        if not isinstance(arr, np.ndarray) or arr.shape != self.shape or arr.dtype != self.dtype:
            raise ValueError("Shape or dtype mismatch")
        emulation.transfer(True, arr.nbytes)
        self._a[...] = arr

    def item(self):
        if self.size != 1:
            raise ValueError("can only convert an array of size 1 to a Python scalar")
        emulation.transfer(False, self.itemsize)
        return self._a.item()

    def tolist(self):
        return self.get().tolist()

    def __bool__(self):
        if self.size != 1:
            raise ValueError("The truth value of an array with more than one element is ambiguous.")
        return bool(self.item())

    __float__ = lambda self: float(self.item())  # noqa: E731
    __int__ = lambda self: int(self.item())  # noqa: E731
    __complex__ = lambda self: complex(self.item())  # noqa: E731

    def __index__(self):
        if self.dtype.kind not in "iu" or self.size != 1:
            raise TypeError("only integer scalar arrays can be converted to a scalar index")
        return int(self.item())

    def __repr__(self):
        return repr(self.get())

    def __str__(self):
        return str(self.get())

    def __format__(self, spec):
        return format(self.get(), spec)

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of unsized object")
        return self.shape[0]

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self.shape[0]))

    # -- views and copies ------------------------------------------------------------------------------
    def __getitem__(self, key):
        key = _device_key(key)
        if _advanced(key):  # a gather kernel into a new array
            emulation.op("kernel_launches", "take")
            return fresh(self._a[key], "advanced indexing")
        if Ellipsis not in key:
            key = (*key, Ellipsis)  # basic indexing always gives a view, even of one element
        return ndarray._wrap(self._a[key])

    def __setitem__(self, key, value):
        key = _device_key(key)
        if isinstance(value, np.ndarray):  # host data only as a scalar: CuPy fills with it
            if value.ndim:
                raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
            value = value.item()
        if isinstance(value, ndarray) and not _advanced(key):
            target = ndarray._wrap(self._a[key if Ellipsis in key else (*key, Ellipsis)])
            if value._a.__array_interface__ == target._a.__array_interface__:
                return  # the same memory: CuPy skips the copy
            value = private_copy(value, (target,))
        emulation.op("copies" if isinstance(value, ndarray) else "fills", "setitem")
        with np.errstate(all="ignore"):
            self._a[key] = operand(value)

    def view(self, dtype=None):
        return ndarray._wrap(self._a.view() if dtype is None else self._a.view(dtype))

    def copy(self, order="C"):
        emulation.op("copies", "copy")
        return fresh(np.array(self._a, order=order), "copy")

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        if not copy and np.dtype(dtype) == self.dtype:
            return self
        emulation.op("copies", "astype")
        with np.errstate(all="ignore"):
            return fresh(self._a.astype(dtype, order=order), "astype")

    def reshape(self, *shape, order="C"):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        a = self._a.reshape(shape, order=order)
        if a.size and not np.may_share_memory(a, self._a):  # NumPy had to copy: so does CuPy
            emulation.op("copies", "reshape")
            return fresh(a, "reshape copy")
        return ndarray._wrap(a)

    def ravel(self, order="C"):
        return self.reshape(-1, order=order)

    def flatten(self):
        return self.copy().reshape(-1)

    def transpose(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        return ndarray._wrap(self._a.transpose(*axes))

    def swapaxes(self, a, b):
        return ndarray._wrap(self._a.swapaxes(a, b))

    def squeeze(self, axis=None):
        return ndarray._wrap(self._a.squeeze(axis))

    def fill(self, value):
        if isinstance(value, (np.ndarray, ndarray)):
            if value.shape != ():
                kind = "numpy" if isinstance(value, np.ndarray) else "cupy"
                raise ValueError(f"non-scalar {kind}.ndarray cannot be used for fill")
            value = value.item() if isinstance(value, np.ndarray) else value._a
        emulation.op("fills", "fill")
        with np.errstate(all="ignore"):
            self._a.fill(value)

    # -- reductions and products as methods ------------------------------------------------------------
    def sum(self, axis=None, dtype=None, out=None, keepdims=False):
        return reduce("sum", self, axis, out, keepdims, dtype=dtype)

    def mean(self, axis=None, dtype=None, out=None, keepdims=False):
        return reduce("mean", self, axis, out, keepdims, dtype=dtype)

    def max(self, axis=None, out=None, keepdims=False):
        return reduce("max", self, axis, out, keepdims)

    def min(self, axis=None, out=None, keepdims=False):
        return reduce("min", self, axis, out, keepdims)

    def argmax(self, axis=None, out=None, keepdims=False):
        return reduce("argmax", self, axis, out, keepdims)

    def argmin(self, axis=None, out=None, keepdims=False):
        return reduce("argmin", self, axis, out, keepdims)

    def all(self, axis=None, out=None, keepdims=False):
        return reduce("all", self, axis, out, keepdims)

    def any(self, axis=None, out=None, keepdims=False):
        return reduce("any", self, axis, out, keepdims)

    def dot(self, b, out=None):
        from ._linalg import dot
        return dot(self, b, out)

    # -- operators: the ufuncs -------------------------------------------------------------------------
    def __matmul__(self, other):
        from ._linalg import matmul
        return matmul(self, other)

    def __rmatmul__(self, other):
        from ._linalg import matmul
        return matmul(other, self)

    __neg__ = lambda self: UFUNCS["negative"](self)  # noqa: E731
    __pos__ = lambda self: UFUNCS["positive"](self)  # noqa: E731
    __abs__ = lambda self: UFUNCS["absolute"](self)  # noqa: E731
    __invert__ = lambda self: UFUNCS["invert"](self)  # noqa: E731


def _binary(name: str, ufunc_name: str) -> None:
    setattr(ndarray, f"__{name}__", lambda self, other: UFUNCS[ufunc_name](self, other))
    setattr(ndarray, f"__r{name}__", lambda self, other: UFUNCS[ufunc_name](other, self))
    setattr(ndarray, f"__i{name}__", lambda self, other: UFUNCS[ufunc_name](self, other, out=self))


class ufunc:
    """A CuPy ufunc: scalars and device arrays only, ``out=`` arrays, inputs that overlap an output copied."""

    def __init__(self, name: str):
        self.name = self.__name__ = name
        self._np = getattr(np, name)
        self.nin, self.nout = self._np.nin, self._np.nout
        self.nargs = self.nin + self.nout

    def __repr__(self):
        return f"<ufunc '{self.name}'>"

    def __call__(self, *args, out=None, dtype=None, casting="same_kind", **kwargs):
        if kwargs:  # NumPy's where= among them: CuPy has none
            raise TypeError(f"Wrong arguments {kwargs}")
        if not self.nin <= len(args) <= self.nargs:
            raise TypeError(f"Wrong number of arguments for '{self.name}'. It must be either {self.nin} or "
                            f"{self.nargs} (with outputs), but given {len(args)}.")
        ins, outs = args[:self.nin], args[self.nin:]
        if out is not None:
            if outs:
                raise ValueError("Cannot specify 'out' as both a positional and keyword argument")
            outs = out if isinstance(out, tuple) else (out,)
        if any(not isinstance(o, ndarray) for o in outs):
            raise TypeError("Output arguments type must be cupy.ndarray")
        ins = [operand(private_copy(x, outs)) for x in ins]
        emulation.op("ufunc_calls", self.name)
        with np.errstate(all="ignore"):
            if outs:
                self._np(*ins, out=tuple(o._a for o in outs), dtype=dtype, casting=casting)
                return outs[0] if self.nout == 1 else tuple(outs)
            result = self._np(*ins, dtype=dtype, casting=casting)
        if self.nout == 1:
            return fresh(result, f"{self.name} result")
        return tuple(fresh(r, f"{self.name} result") for r in result)


def private_copy(x, outs):
    """An input that overlaps an output it is not is copied first (CuPy's _copy_in_args_if_needed)."""
    if isinstance(x, ndarray) and any(x is not o and overlaps(x, o) for o in outs):
        return x.copy()
    return x


UFUNC_NAMES = (
    "add", "subtract", "multiply", "divide", "true_divide", "floor_divide", "remainder", "power", "negative",
    "positive", "absolute", "sign", "exp", "expm1", "exp2", "log", "log1p", "log2", "log10", "sqrt", "square",
    "reciprocal", "tanh", "sinh", "cosh", "sin", "cos", "tan", "arctan", "maximum", "minimum", "fmax", "fmin",
    "logaddexp", "greater", "greater_equal", "less", "less_equal", "equal", "not_equal", "logical_and",
    "logical_or", "logical_xor", "logical_not", "isfinite", "isnan", "isinf", "invert", "bitwise_and",
    "bitwise_or", "bitwise_xor", "floor", "ceil", "rint",
)
UFUNCS = {name: ufunc(name) for name in UFUNC_NAMES}
globals().update(UFUNCS)
for _name, _ufunc in (("add", "add"), ("sub", "subtract"), ("mul", "multiply"), ("truediv", "divide"),
                      ("floordiv", "floor_divide"), ("mod", "remainder"), ("pow", "power"), ("and", "bitwise_and"),
                      ("or", "bitwise_or"), ("xor", "bitwise_xor")):
    _binary(_name, _ufunc)
for _name, _ufunc in (("lt", "less"), ("le", "less_equal"), ("gt", "greater"), ("ge", "greater_equal"),
                      ("eq", "equal"), ("ne", "not_equal")):
    setattr(ndarray, f"__{_name}__", lambda self, other, _u=_ufunc: UFUNCS[_u](self, other))

REDUCTIONS = {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min, "argmax": np.argmax,
              "argmin": np.argmin, "all": np.all, "any": np.any, "prod": np.prod}


def reduce(name: str, a, axis=None, out=None, keepdims=False, **kw):
    """One reduction kernel; ``out`` must have the result's shape and takes it with unsafe casting."""
    if not isinstance(a, ndarray):
        raise TypeError(f"Argument 'a' has incorrect type (expected cupy.ndarray, got {type(a).__name__})")
    if out is not None and not isinstance(out, ndarray):
        raise TypeError(f"Argument 'out' has incorrect type (expected cupy.ndarray, got {type(out).__name__})")
    kw = {k: v for k, v in kw.items() if v is not None}
    with np.errstate(all="ignore"):
        result = np.asarray(REDUCTIONS[name](a._a, axis=axis, keepdims=keepdims, **kw))
    emulation.op("reductions", name)
    if out is None:
        return fresh(result, f"{name} result")
    if out.shape != result.shape:
        raise ValueError("Out shape is mismatched")
    np.copyto(out._a, result, casting="unsafe")
    return out
