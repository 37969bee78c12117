"""The CUDA kernels of a CuPy module: one ``cp.ElementwiseKernel`` per fused elementwise group and one
``cp.ReductionKernel`` per elementwise-then-reduce group, with C bodies printed from the group's sympy expression."""
from __future__ import annotations

from dataclasses import dataclass

import sympy

from graphc.backends.cupy.printer import CudaPrinter
from graphc.backends.emitter import expr_label
from graphc.ops.elementwise import arg_index

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
    parts = funcs[:2] or [expr_label(expr)]
    suffix = {"forward": "fwd", "backward": "bwd", "update": "update"}.get(phase, phase)
    return "_".join(["fused", *parts, suffix])


