"""The CuPy emitter: a graph becomes a standalone module that runs on an NVIDIA GPU with CuPy.

It shares the NumPy emitter's structure (statements, buffer plan, checks, API) and differs where the GPU
pays off: each fused elementwise group is one ``cp.ElementwiseKernel`` and each elementwise-then-reduce
group one ``cp.ReductionKernel``, both defined once at module level with C bodies printed from the
group's sympy expression; matmuls go to ``cp.matmul`` (cuBLAS); the remaining ops are CuPy array calls.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import sympy

from graphc.backends import numpy_backend as base
from graphc.backends.codewriter import CodeWriter, Names
from graphc.backends.printer import CudaPrinter
from graphc.ops.elementwise import arg_index

BACKEND = "cupy"
C_TYPES = {"float32": "float", "float64": "double", "int64": "long long", "bool": "bool"}
DIM_TYPE = "int64"  # symbolic dims (the batch size m) are passed to kernels as scalars


@dataclass(frozen=True)
class Kernel:
    """One CUDA kernel of the module: its CuPy parameter lists and its C code."""

    kind: str  # "elementwise" | "reduction"
    in_params: str
    out_params: str
    body: str  # elementwise: the loop body; reduction: the map function's body (assigns y)
    out_ctype: str

    def arguments(self) -> list[tuple[str, str]]:
        """(cupy type, name) of every input parameter."""
        return [tuple(p.split()) for p in self.in_params.split(", ")]

    def definition(self, name: str) -> list[str]:
        if self.kind == "elementwise":
            return [f"{name} = cp.ElementwiseKernel(", f"    {self.in_params!r}, {self.out_params!r},",
                    f"    {self.body!r},", f"    {name!r})"]
        args = ", ".join(f"{C_TYPES[t]} {n}" for t, n in self.arguments())
        call = f"{name}_map({', '.join(n for _, n in self.arguments())})"
        preamble = f"__device__ {self.out_ctype} {name}_map({args}) {{ {self.out_ctype} y; {self.body} return y; }}"
        return [f"{name} = cp.ReductionKernel(", f"    {self.in_params!r}, {self.out_params!r},",
                f"    {call!r}, 'a + b', 'y = a', '0', {name!r},", f"    preamble={preamble!r})"]


def kernel_for(kind: str, expr, in_dtypes, out_dtype: str) -> tuple[Kernel, list[str]]:
    """The kernel computing ``expr`` over inputs of ``in_dtypes``, and the dim names it takes as scalars."""
    names = {s: f"x{arg_index(s)}" for s in expr.free_symbols if arg_index(s) is not None}
    dims = sorted({s.name for s in expr.free_symbols if arg_index(s) is None})
    names.update({s: s.name for s in expr.free_symbols if arg_index(s) is None})
    kinds = {s.name: DIM_TYPE if s.is_integer else "float64" for s in expr.free_symbols if arg_index(s) is None}
    params = [f"{t} x{i}" for i, t in enumerate(in_dtypes)] + [f"{kinds[d]} {d}" for d in dims]
    body = " ".join(CudaPrinter(names).statements(expr, "y", C_TYPES[out_dtype]))
    kernel = Kernel(kind, ", ".join(params), f"{out_dtype} y", body, C_TYPES[out_dtype])
    return kernel, dims


def kernel_label(expr, phase: str) -> str:
    """A readable kernel name: its functions (relu, exp, …) or its top operation, and its phase."""
    funcs = []
    for sub in sympy.preorder_traversal(expr):
        if isinstance(sub, sympy.Function) and type(sub).__name__.lower() not in funcs:
            funcs.append(type(sub).__name__.lower())
    parts = funcs[:2] or [base._expr_label(expr)]
    suffix = {"forward": "fwd", "backward": "bwd", "update": "update"}.get(phase, phase)
    return "_".join(["fused", *parts, suffix])


def _launch(st, kind: str, expr, out_dtype: str) -> str:
    """Registers the kernel for ``expr`` with the module; returns the call's argument list text."""
    ins = [st.fn.graph.nodes[i].dtype for i in st.node.inputs]
    kernel, dims = kernel_for(kind, expr, ins, out_dtype)
    name = st.fn.module.kernel(kernel, kernel_label(expr, st.node.phase))
    return f"{name}({', '.join([*st.args, *dims])}"


def _ew(st):
    st.line(f"{_launch(st, 'elementwise', st.node.attr('expr'), st.node.dtype)}, {st.out})")


def _sum_ew(st):
    n = st.node
    full = tuple(n.attr("ew_shape"))
    axes, keep = base._axes(n), n.attr("keepdims")
    if any(tuple(st.fn.graph.nodes[i].shape) == full for i in n.inputs):  # inputs span the reduced shape
        call = _launch(st, "reduction", n.attr("expr"), n.dtype)
        return st.line(f"{call}, axis={axes!r}, keepdims={keep}, out={st.out})")
    tmp = st.scratch(n.dtype, full)  # broadcast beyond every input: materialize, then reduce
    st.line(f"{_launch(st, 'elementwise', n.attr('expr'), n.dtype)}, {tmp})")
    st.line(f"np.sum({tmp}, axis={axes!r}, keepdims={keep}, out={st.out})")
    return None


def _update(st):
    (_ew if st.node.op == "ew" else base._update)(st)


def _random_normal(st):
    """Drawn on the GPU by a module-level ``cp.random`` generator (a stream of its own, unlike NumPy's)."""
    rng = st.fn.module.generator(st.node)
    st.line(f"cp.copyto({st.out}, {rng}.standard_normal({st.dims(st.node.shape)}, dtype=cp.{st.node.dtype}))")


class FunctionEmitter(base.FunctionEmitter):
    EMIT = {**base.EMIT, "ew": _ew, "sum_ew": _sum_ew, "random_normal": _random_normal}
    BACKEND, XP = BACKEND, "cp"

    def _run(self, st):
        if st.node.id in self.updates:
            _update(st)
            st.lines = [self.translate(text) for text in st.lines]
            return
        super()._run(st)

    def translate(self, text: str) -> str:
        # cp.sum / cp.max take out= and keepdims; ufunc.reduce is NumPy's allocation-free spelling of them
        text = text.replace("np.add.reduce(", "cp.sum(").replace("np.maximum.reduce(", "cp.max(")
        text = re.sub(r"\bnp\.", "cp.", text)
        hit = re.fullmatch(r"(\w+ = )?cp\.einsum\((.*), out=([^,()]+(?:\[\d+\])?)\)(.*)", text)
        if hit:  # cupy.einsum has no out=: bind the result, or copy it into the planned buffer
            bind, args, out, rest = hit.groups()
            text = f"{bind}cp.einsum({args}){rest}" if bind else f"cp.copyto({out}, cp.einsum({args})){rest}"
        if text.startswith("cp.take("):  # cupy.take has no mode: indices here are always in range
            text = text.replace(", mode='clip'", "")
        return text


class ModuleEmitter(base.ModuleEmitter):
    FUNCTION = FunctionEmitter
    TITLE, XP = "CuPy", "cp"
    IMPORTS = ("import cupy as cp", "import numpy as np")
    ARRAY = "(np.ndarray, cp.ndarray)"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.kernels: dict[Kernel, str] = {}
        self.kernel_names = Names()
        self.runtime.add("device")

    def kernel(self, kernel: Kernel, label: str) -> str:
        """The module-level name of ``kernel``, defined once however many nodes launch it."""
        if kernel not in self.kernels:
            self.kernels[kernel] = self.kernel_names.fresh(label)
        return self.kernels[kernel]

    def _array_text(self, host: str) -> str:
        return f"cp.asarray({host})"

    RUNTIME = {**{k: v for k, v in base.ModuleEmitter.RUNTIME.items() if k in ("feeds", "numerics")}, "device": '''
def _device(arrays):
    """The arrays on the GPU (host NumPy arrays are copied over)."""
    return {name: cp.asarray(value) for name, value in arrays.items()}


def _write_back(host, device):
    """Copy updated device arrays back into the host NumPy arrays they came from."""
    for name, value in host.items():
        if isinstance(value, np.ndarray):
            value[...] = device[name].get()
'''}

    def _definitions(self, w: CodeWriter) -> None:
        super()._definitions(w)
        w.line("")
        w.line("# CUDA kernels: compiled by CuPy on first launch and cached")
        for kernel, name in self.kernels.items():
            for text in kernel.definition(name):
                w.line(text)
        w.line("")
        w.line("")

    def _to_device(self, w: CodeWriter, *tables: str) -> None:
        for table in tables:
            if table == "params":
                w.line("host, params = params, _device(params)")
            else:
                w.line(f"{table} = _device({table})")

    def _train_return(self, w: CodeWriter, call: str) -> None:
        w.line(f"out = {call}")
        w.line("_write_back(host, params)")
        w.line("return out")
