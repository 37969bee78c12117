"""ElementwiseKernel and ReductionKernel: the CUDA C body is compiled as C++ by the host compiler and run with ctypes.

The C++ mirrors the code CuPy generates (cupy/_core/_kernel.pyx, _reduction.pyx): scalar parameters are
by-value function parameters, arrays are ``CArray``s named ``_raw_<name>``, the loop runs ``i`` over ``_ind``,
and inside it each array element is a reference ``const T &x = _raw_x[_ind.get()];``. So C's integer
division, float-vs-double arithmetic, name clashes and shadowing behave as they do on the GPU.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np

from . import emulation
from ._core import host_scalar, ndarray, uninitialized
from .cuda.compiler import CompileException

MAX_NDIM = 25
C_TYPES = {np.dtype(k): v for k, v in {
    "float64": "double", "float32": "float", "int64": "long long", "int32": "int", "int16": "short",
    "int8": "signed char", "uint64": "unsigned long long", "uint32": "unsigned int", "uint16": "unsigned short",
    "uint8": "unsigned char", "bool": "bool"}.items()}
FLAGS = ("-O2", "-fno-fast-math", "-ffp-contract=off", "-std=c++17", "-shared", "-fPIC", "-w")
CACHE = Path(os.environ.get("CUPY_EMULATION_CACHE")
             or Path(tempfile.gettempdir()) / f"cupy-emulation-{getattr(os, 'getuid', lambda: 0)()}")
AxisError = getattr(np, "exceptions", np).AxisError

# What every kernel sees before its preamble: CUDA's spellings, CuPy's CArray and CIndexer.
PRELUDE = r"""
#include <cmath>
#include <math.h>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <algorithm>
#define __device__
#define __host__
#define __global__
#define __forceinline__ inline
#define __restrict__
#define CUDART_INF_F INFINITY
#define CUDART_INF ((double)INFINITY)
#define CUDART_NAN_F NAN
#define CUDART_NAN ((double)NAN)
using std::max;
using std::min;
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
template <typename T> T atomicAdd(T* p, T v) { T old = *p; *p += v; return old; }

struct CIndexer {  // the loop position: flat index and its per-dimension indices
  ptrdiff_t size_; int ndim; ptrdiff_t shape_[25]; ptrdiff_t index_[25];
  ptrdiff_t size() const { return size_; }
  void set(ptrdiff_t i) { for (int d = ndim - 1; d >= 0; --d) { index_[d] = i % shape_[d]; i /= shape_[d]; } }
  const ptrdiff_t* get() const { return index_; }
};

template <typename T> struct CArray {  // strided memory, indexed per dimension or by a flat C-order index
  char* data_; ptrdiff_t size_; int ndim; ptrdiff_t shape_[25]; ptrdiff_t strides_[25];
  T& operator[](const ptrdiff_t* index) const {
    ptrdiff_t offset = 0;
    for (int d = 0; d < ndim; ++d) offset += index[d] * strides_[d];
    return *reinterpret_cast<T*>(data_ + offset);
  }
  T& operator[](ptrdiff_t i) const {
    ptrdiff_t offset = 0;
    for (int d = ndim - 1; d >= 0; --d) { offset += i % shape_[d] * strides_[d]; i /= shape_[d]; }
    return *reinterpret_cast<T*>(data_ + offset);
  }
  ptrdiff_t size() const { return size_; }
  const ptrdiff_t* shape() const { return shape_; }
  const ptrdiff_t* strides() const { return strides_; }
  T* data() const { return reinterpret_cast<T*>(data_); }
};
"""


class _ArrayArg(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("size", ctypes.c_ssize_t), ("ndim", ctypes.c_int),
                ("shape", ctypes.c_ssize_t * MAX_NDIM), ("strides", ctypes.c_ssize_t * MAX_NDIM)]


class _IndexerArg(ctypes.Structure):
    _fields_ = [("size", ctypes.c_ssize_t), ("ndim", ctypes.c_int), ("shape", ctypes.c_ssize_t * MAX_NDIM),
                ("index", ctypes.c_ssize_t * MAX_NDIM)]


def c_type(dtype) -> str:
    try:
        return C_TYPES[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"Unable to find C++ type for dtype {dtype} (not emulated)") from None


class Param:
    """One entry of in_params/out_params: ``[raw] type name``, the type a dtype name or a one-letter placeholder."""

    def __init__(self, text: str, is_const: bool):
        words = text.split()
        if len(words) < 2:
            raise Exception(f"Syntax error: {text}")
        t, self.name = words[-2:]
        self.raw, self.is_const, self.dtype = False, is_const, None
        if len(t) == 1:
            self.ctype = t
        else:
            self.dtype = np.dtype(t)
            self.ctype = c_type(self.dtype)
        for word in words[:-2]:
            if word == "raw":
                self.raw = True
            elif word == "_non_const":
                self.is_const = False
            else:
                raise Exception(f'Unknown keyword "{word}"')


def _params(text: str, is_const: bool) -> tuple:
    return () if len(text) == 0 else tuple(Param(p, is_const) for p in text.strip().split(","))


def _check_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f'Invalid kernel name: "{name}"')


def decide_types(in_params, out_params, in_dtypes, out_dtypes):
    """CuPy's _decide_params_type_core: declared dtypes must match the arrays' exactly; placeholders take the
    first array's dtype; scalars (None) are not checked: they are converted to the parameter's type."""
    types = {}
    for params, dtypes in ((out_params, out_dtypes), (in_params, in_dtypes)):
        for p, a in zip(params, dtypes):
            if a is None:
                continue
            if p.dtype is not None:
                if np.dtype(a) != p.dtype:
                    raise TypeError(f"Type is mismatched. {p.name} {np.dtype(a)} {p.dtype}")
            elif p.ctype in types:
                if np.dtype(types[p.ctype]) != np.dtype(a):
                    raise TypeError(f"Type is mismatched. {p.name} {np.dtype(a)} {types[p.ctype]} {p.ctype}")
            else:
                types[p.ctype] = np.dtype(a)
    in_types = tuple(types[p.ctype] if p.dtype is None else p.dtype for p in in_params)
    out_types = tuple(types[p.ctype] if p.dtype is None else p.dtype for p in out_params)
    return in_types, out_types, tuple(sorted(types.items()))


def _prepare(args) -> list:
    for a in args:
        if not (isinstance(a, ndarray) or host_scalar(a)):
            raise TypeError(f"Unsupported type {type(a)}")
    return list(args)


def _broadcast(shapes: list) -> tuple:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise ValueError("operands could not be broadcast together with shapes "
                         + ", ".join(str(s) for s in shapes)) from None


def _outputs(outs: list, out_types, shape, out_params, sized: bool) -> list:
    if not outs:
        if any(p.raw for p in out_params) and not sized:
            raise ValueError("Output array size is Undecided")
        return [ndarray._wrap(uninitialized(shape, t, "kernel output")) for t in out_types]
    for p, a in zip(out_params, outs):
        if not p.raw and a.shape != tuple(shape):
            raise ValueError("Out shape is mismatched")
    return outs


def _check_outs(outs) -> None:
    if any(not isinstance(a, ndarray) for a in outs):
        raise TypeError("Output arguments type must be cupy.ndarray")


# -- C++ source ----------------------------------------------------------------------------------------
def _signature(params, args, dtypes, indexers: tuple) -> tuple[list, list]:
    """The kernel's parameter declarations as CuPy writes them, and the launcher's casts of each argument."""
    decls, casts = [], []
    for p, a, t in zip(params, args, dtypes):
        const = "const " if p.is_const else ""
        if isinstance(a, ndarray):
            decl_type, var = f"CArray<{c_type(t)}>", (p.name if p.raw else f"_raw_{p.name}")
        else:
            decl_type, var = c_type(t), p.name
        decls.append(f"{const}{decl_type} {var}")
        casts.append(f"*reinterpret_cast<{decl_type}*>(_args[{len(casts)}])")
    for name in indexers:
        decls.append(f"CIndexer {name}")
        casts.append(f"*reinterpret_cast<CIndexer*>(_args[{len(casts)}])")
    return decls, casts


def _unit(name: str, head: str, decls: list, body: str, casts: list) -> str:
    return (f"{PRELUDE}{head}\nextern \"C\" void {name}({', '.join(decls)}) {{\n{body}\n}}\n"
            f"extern \"C\" void _emulation_launch(void** _args) {{ {name}({', '.join(casts)}); }}\n")


def _typedefs(type_map) -> str:
    return "".join(f"typedef {c_type(t)} {placeholder};\n" for placeholder, t in type_map)


def compiler() -> str | None:
    for candidate in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


_loaded: dict[str, object] = {}


def _build(source: str, name: str):
    """The launcher of ``source``, compiled once per source text (a shared library cached on disk by hash)."""
    key = hashlib.sha256(" ".join((source, *FLAGS)).encode()).hexdigest()[:32]
    if key in _loaded:
        return _loaded[key]
    library = CACHE / f"{key}.so"
    if not library.exists():
        cxx = compiler()
        if cxx is None:
            raise CompileException(f"cannot compile kernel {name}: no C++ compiler (set CXX)", source, name)
        CACHE.mkdir(parents=True, exist_ok=True)
        unit, partial = CACHE / f"{key}.{os.getpid()}.cpp", CACHE / f"{key}.{os.getpid()}.so"
        unit.write_text(source)
        done = subprocess.run([cxx, *FLAGS, str(unit), "-o", str(partial)], capture_output=True, text=True,
                              check=False)
        unit.unlink()
        if done.returncode:
            raise CompileException(f"kernel {name}:\n{done.stderr}", source, name)
        os.replace(partial, library)  # atomic: concurrent test processes may build the same kernel
        emulation.compiled(name)
    launch = ctypes.CDLL(str(library))._emulation_launch
    launch.argtypes, launch.restype = [ctypes.POINTER(ctypes.c_void_p)], None
    _loaded[key] = launch
    return launch


def _array_arg(a: np.ndarray) -> _ArrayArg:
    if a.ndim > MAX_NDIM:
        raise ValueError(f"at most {MAX_NDIM} dimensions")
    arg = _ArrayArg(a.ctypes.data, a.size, a.ndim)
    arg.shape[:a.ndim], arg.strides[:a.ndim] = a.shape, a.strides
    return arg


def _indexer_arg(shape) -> _IndexerArg:
    arg = _IndexerArg(int(np.prod(shape, dtype=np.int64)), len(shape))
    arg.shape[:len(shape)] = shape
    return arg


def _scalar_arg(value, dtype) -> np.ndarray:
    """A Python or NumPy scalar converted to the parameter's type as C would assign it (no range checks)."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.array(np.asarray(value).astype(dtype))


def _launch(source: str, name: str, values: list) -> None:
    """Run the kernel of ``source``: ``values`` are ctypes structs and 0-d arrays, passed by address."""
    launch = _build(source, name)
    launch((ctypes.c_void_p * len(values))(*[
        v.ctypes.data if isinstance(v, np.ndarray) else ctypes.addressof(v) for v in values]))
    emulation.op("kernel_launches", name)


def _values(params, args, dtypes, view) -> list:
    """Each argument as the launcher receives it: arrays as ``CArray`` structs (non-raw ones through ``view``),
    scalars as 0-d arrays of the parameter's type."""
    values = []
    for p, a, t in zip(params, args, dtypes):
        if isinstance(a, ndarray):
            values.append(_array_arg(a._a if p.raw else view(a._a)))
        else:
            values.append(_scalar_arg(a, t))
    return values


# -- the kernels ---------------------------------------------------------------------------------------
class ElementwiseKernel:
    """User-defined elementwise kernel (cupy.ElementwiseKernel): broadcast inputs and outputs, one ``operation``
    per element of the loop shape, outputs allocated when not given."""

    def __init__(self, in_params, out_params, operation, name="kernel", reduce_dims=True, preamble="",
                 no_return=False, return_tuple=False, **kwargs):
        _check_name(name)
        self.in_params, self.out_params = _params(in_params, True), _params(out_params, False)
        self.nin, self.nout = len(self.in_params), len(self.out_params)
        self.nargs = self.nin + self.nout
        self.params = self.in_params + self.out_params
        self.operation, self.name, self.__name__, self.preamble = operation, name, name, preamble
        self.no_return, self.return_tuple = no_return, return_tuple
        self.loop_prep, self.after_loop = kwargs.pop("loop_prep", ""), kwargs.pop("after_loop", "")
        self.kwargs = kwargs  # options=: compiler flags for NVRTC, ignored here
        if "i" in [p.name for p in self.params]:
            raise ValueError("Can not use 'i' as a parameter name")

    def __call__(self, *args, size=-1, stream=None, block_size=128, **kwargs):
        if kwargs:
            raise TypeError(f"Wrong arguments {kwargs}")
        if block_size <= 0:
            raise ValueError("block_size must be greater than zero")
        if len(args) not in (self.nin, self.nargs):
            raise TypeError(f"Wrong number of arguments for {self.name!r}. It must be either {self.nin} or "
                            f"{self.nargs} (with outputs), but given {len(args)}.")
        args = _prepare(args)
        ins, outs = args[:self.nin], args[self.nin:]
        _check_outs(outs)
        arrays = [a.shape for a, p in zip(args, self.params) if isinstance(a, ndarray) and not p.raw]
        if size != -1 and arrays:
            raise ValueError("Specified 'size' can be used only if all of the ndarray are 'raw'.")
        if size == -1 and not arrays:
            raise ValueError("Loop size is undecided.")
        shape = (size,) if size != -1 else _broadcast(arrays)
        in_types, out_types, type_map = decide_types(
            self.in_params, self.out_params, [a.dtype if isinstance(a, ndarray) else None for a in ins],
            [a.dtype for a in outs])
        outs = _outputs(outs, out_types, shape, self.out_params, size != -1)
        ret = None if self.no_return else outs[0] if self.nout == 1 and not self.return_tuple else tuple(outs)
        if 0 in shape:
            return ret
        args, dtypes = [*ins, *outs], [*in_types, *out_types]
        decls, casts = _signature(self.params, args, dtypes, ("_ind",))
        refs = " ".join(f"{'const ' if p.is_const else ''}{p.ctype} &{p.name} = _raw_{p.name}[_ind.get()];"
                        for p, a in zip(self.params, args) if isinstance(a, ndarray) and not p.raw)
        body = (f"  {self.loop_prep};\n  for (ptrdiff_t i = 0; i < _ind.size(); ++i) {{\n    _ind.set(i);\n"
                f"    {refs}\n    {self.operation};\n  }}\n  {self.after_loop};")
        source = _unit(self.name, _typedefs(type_map) + self.preamble, decls, body, casts)
        values = _values(self.params, args, dtypes, lambda a: np.broadcast_to(a, shape))
        _launch(source, self.name, [*values, _indexer_arg(shape)])
        return ret


def _axes(axis, ndim: int) -> tuple[tuple, tuple]:
    """CuPy's _get_axis: the sorted reduced axes and the kept ones."""
    axes = range(ndim) if axis is None else axis if isinstance(axis, (tuple, list)) else (axis,)
    reduced = []
    for ax in axes:
        if not -ndim <= ax < ndim:
            raise AxisError(ax, ndim)
        reduced.append(ax % ndim)
    reduced = tuple(sorted(reduced))
    if len(set(reduced)) != len(reduced):
        raise ValueError("duplicate value in 'axis'")
    return reduced, tuple(d for d in range(ndim) if d not in reduced)


class ReductionKernel:
    """User-defined reduction kernel (cupy.ReductionKernel): per output element, ``_s = identity``, then
    ``_s = REDUCE(_s, map_expr)`` over the reduced elements in C order, then ``POST_MAP(_s)``."""

    def __init__(self, in_params, out_params, map_expr, reduce_expr, post_map_expr, identity,
                 name="reduce_kernel", reduce_type=None, reduce_dims=True, preamble="", options=()):
        _check_name(name)
        self.in_params, self.out_params = _params(in_params, True), _params(out_params, False)
        self.nin, self.nout = len(self.in_params), len(self.out_params)
        self.nargs = self.nin + self.nout
        self.params = self.in_params + self.out_params
        self.map_expr, self.reduce_expr, self.post_map_expr = map_expr, reduce_expr, post_map_expr
        self.identity = "" if identity is None else str(identity)
        self.name = self.__name__ = name
        self.reduce_type = self.out_params[0].ctype if reduce_type is None else reduce_type
        self.preamble, self.options = preamble, options

    def __call__(self, *args, out=None, axis=None, keepdims=False, stream=None, **kwargs):
        if kwargs:
            raise TypeError(f"Wrong arguments {kwargs}")
        if len(args) not in (self.nin, self.nargs):
            raise TypeError(f"Wrong number of arguments for {self.name}")
        outs = list(args[self.nin:])
        if out is not None:
            if self.nout != 1:
                raise NotImplementedError("")
            if outs:
                raise ValueError("cannot specify 'out' as both a positional and keyword argument")
            outs = [out]
        ins = _prepare(args[:self.nin])
        _check_outs(outs)
        arrays = [a.shape for a, p in zip(ins, self.in_params) if isinstance(a, ndarray) and not p.raw]
        if not arrays:
            raise ValueError("Loop size is undecided.")
        shape = _broadcast(arrays)
        in_types, out_types, type_map = decide_types(
            self.in_params, self.out_params, [a.dtype if isinstance(a, ndarray) else None for a in ins],
            [a.dtype for a in outs])
        reduced, kept = _axes(axis, len(shape))
        out_shape = tuple(1 if d in reduced else n for d, n in enumerate(shape)) if keepdims \
            else tuple(shape[d] for d in kept)
        outs = _outputs(outs, out_types, out_shape, self.out_params, False)
        if outs[0].size == 0:
            return outs[0]
        if self.identity == "" and 0 in shape:
            raise ValueError(f"zero-size array to reduction operation {self.name} which has no identity")
        args, dtypes = [*ins, *outs], [*in_types, *out_types]
        decls, casts = _signature(self.params, args, dtypes, ("_in_ind", "_out_ind"))
        loads = " ".join(f"const {p.ctype} {p.name} = _raw_{p.name}[_in_ind.get()];" if p.is_const
                         else f"{p.ctype}& {p.name} = _raw_{p.name}[_in_ind.get()];"
                         for p, a in zip(self.in_params, ins) if isinstance(a, ndarray) and not p.raw)
        stores = " ".join(f"{p.ctype} &{p.name} = _raw_{p.name}[_out_ind.get()];"
                          for p, a in zip(self.out_params, outs) if not p.raw)
        head = (f"{_typedefs(type_map)}{self.preamble}\n#define REDUCE(a, b) ({self.reduce_expr})\n"
                f"#define POST_MAP(a) ({self.post_map_expr})\ntypedef {self.reduce_type} _type_reduce;")
        body = (f"  for (ptrdiff_t _i = 0; _i < _out_ind.size(); ++_i) {{\n"
                f"    _type_reduce _s = _type_reduce({self.identity});\n"
                f"    for (ptrdiff_t _j = _i; _j < _in_ind.size(); _j += _out_ind.size()) {{\n"
                f"      _in_ind.set(_j);\n      {loads}\n"
                f"      _type_reduce _a = static_cast<_type_reduce>({self.map_expr});\n"
                f"      _s = REDUCE(_s, _a);\n    }}\n"
                f"    _out_ind.set(_i);\n    {stores}\n    POST_MAP(_s);\n  }}")
        source = _unit(self.name, head, decls, body, casts)
        permuted = reduced + kept  # reduced axes first: the flat input index is J * out_size + i
        values = _values(self.in_params, ins, in_types, lambda a: np.broadcast_to(a, shape).transpose(permuted))
        values += _values(self.out_params, outs, out_types, lambda a: a)
        _launch(source, self.name, [*values, _indexer_arg(tuple(shape[d] for d in permuted)),
                                    _indexer_arg(out_shape)])
        return outs[0]
