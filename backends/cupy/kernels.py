"""The CUDA kernels of a CuPy module: one ``cp.ElementwiseKernel`` per fused elementwise group and one
``cp.ReductionKernel`` per elementwise-then-reduce group, with C bodies printed from the group's sympy expression."""
from __future__ import annotations

from dataclasses import dataclass

import sympy

from graphc.backends.cupy.printer import CudaPrinter
from graphc.backends.emitter import expr_label
from graphc.core.dtypes import is_float
from graphc.ops.elementwise import arg, arg_index, work_dtype

C_TYPES = {"float32": "float", "float64": "double", "int64": "long long", "bool": "bool"}


@dataclass(frozen=True)
class Kernel:
    """One CUDA kernel of the module: its CuPy parameter lists and its C code."""

    kind: str  # "elementwise" | "reduction"
    in_params: str
    out_params: str
    body: str  # elementwise: the loop body; reduction: the map function's body (assigns y)
    out_ctype: str
    post: str = "a"  # reduction: the result from the sum ``a`` (a mean's 1/m rides here)
    gathers: tuple = ()  # (name, C index) of the raw inputs read at one element each

    def arguments(self) -> list[tuple[str, str]]:
        """(cupy type, name) of every input parameter."""
        return [tuple(p.split()[-2:]) for p in self.in_params.split(", ")]

    def definition(self, name: str) -> list[str]:
        if self.kind == "elementwise":
            return [f"{name} = cp.ElementwiseKernel(", f"    {self.in_params!r}, {self.out_params!r},",
                    f"    {self.body!r},", f"    {name!r})"]
        args = ", ".join(f"{C_TYPES[t]} {n}" for t, n in self.arguments())
        index = dict(self.gathers)  # a raw input reaches the map function as the one element it reads
        call = f"{name}_map({', '.join(f'{n}[{index[n]}]' if n in index else n for _, n in self.arguments())})"
        preamble = f"__device__ {self.out_ctype} {name}_map({args}) {{ {self.out_ctype} y; {self.body} return y; }}"
        return [f"{name} = cp.ReductionKernel(", f"    {self.in_params!r}, {self.out_params!r},",
                f"    {call!r}, 'a + b', {'y = ' + self.post!r}, '0', {name!r},", f"    preamble={preamble!r})"]


def kernel_for(kind: str, expr, in_dtypes, out_dtype: str, post=1, gathers=None) -> tuple[Kernel, list]:
    """The kernel computing ``expr`` over inputs of ``in_dtypes``, and the scalars (dims, hyper-parameters) it
    takes after them, in order. Parameter names are generated (``x0``…, ``s0``…), never the user's: a dim named
    ``i``, ``y`` or ``int`` must not reach C. Scalars come in the kernel's own type, so ``1/m`` divides as numbers
    and a float32 kernel computes in float32. ``gathers`` maps an input to the C index (over the other inputs) at
    which it is read as a raw array: ``x0[x3 * 10 + x4]``, a row's label logit."""
    gathers = {f"x{k}": index for k, index in (gathers or {}).items()}
    work = work_dtype(expr, list(in_dtypes))
    free = expr.free_symbols | sympy.sympify(post).free_symbols
    scalars = sorted((s for s in free if arg_index(s) is None), key=lambda s: s.name)
    names = {s: f"x{arg_index(s)}" for s in expr.free_symbols if arg_index(s) is not None}
    names.update({s: f"s{k}" for k, s in enumerate(scalars)})
    scalar_type = work if is_float(work) else "int64"
    params = [f"{'raw ' * (f'x{i}' in gathers)}{t} x{i}" for i, t in enumerate(in_dtypes)]
    params += [f"{scalar_type} s{k}" for k in range(len(scalars))]
    if kind == "elementwise":  # a reduction's map function takes the element itself
        names.update({s: f"{name}[{gathers[name]}]" for s, name in names.items() if name in gathers})
    printer = CudaPrinter(names, C_TYPES[work])
    body = " ".join(printer.statements(expr, "y", C_TYPES[out_dtype]))
    after = "a" if post == 1 else printer.doprint(sympy.Symbol("a") * post)
    kernel = Kernel(kind, ", ".join(params), f"{out_dtype} y", body, C_TYPES[out_dtype], after,
                    tuple(sorted(gathers.items())))
    return kernel, scalars


def update_kernel(exprs, targets, in_dtypes, dtype: str) -> tuple[Kernel, list, list[int]]:
    """The one kernel of a fused update: inputs ``x0…`` (the node's inputs it does not write), scalars ``s0…``,
    outputs ``y0…`` (the params and state it updates, read in place before they are written); each expression in
    turn, kept in a local ``v<k>`` where only later expressions read it. Returns the kernel, its scalars and the
    input slots of its outputs."""
    n = len(in_dtypes)
    written = [slot for slot in targets if slot >= 0]
    read = [i for i in range(n) if i not in written]
    scalars = sorted({s for e in exprs for s in e.free_symbols if arg_index(s) is None}, key=lambda s: s.name)
    names = {arg(i): f"x{k}" for k, i in enumerate(read)}
    names.update({arg(slot): f"y{k}" for k, slot in enumerate(written)})
    names.update({s: f"s{k}" for k, s in enumerate(scalars)})
    printer, ctype = CudaPrinter(names, C_TYPES[dtype]), C_TYPES[dtype]
    body = []
    for k, (expr, slot) in enumerate(zip(exprs, targets)):
        value = f"y{written.index(slot)}" if slot >= 0 else f"v{k}"
        body += printer.statements(expr, value if slot >= 0 else f"const {ctype} {value}", ctype, prefix=f"t{k}_")
        names[arg(n + k)] = value
    params = [f"{in_dtypes[i]} x{k}" for k, i in enumerate(read)] + [f"{dtype} s{k}" for k in range(len(scalars))]
    outs = ", ".join(f"{dtype} y{k}" for k in range(len(written)))
    return Kernel("elementwise", ", ".join(params), outs, " ".join(body), ctype), scalars, written


def kernel_label(expr, phase: str) -> str:
    """A readable kernel name: its functions (relu, exp, …) or its top operation, and its phase."""
    funcs = []
    for sub in sympy.preorder_traversal(expr):
        if isinstance(sub, sympy.Function) and type(sub).__name__.lower() not in funcs:
            funcs.append(type(sub).__name__.lower())
    parts = funcs[:2] or [expr_label(expr)]
    suffix = {"forward": "fwd", "backward": "bwd", "update": "update"}.get(phase, phase)
    return "_".join(["fused", *parts, suffix])




@dataclass(frozen=True)
class Fixed:
    """A kernel written out in full (``{name}`` stands for its module-level name)."""

    text: str

    def definition(self, name: str) -> list[str]:
        return self.text.format(name=name).splitlines()


OUTSIDE = Fixed("{name} = cp.ReductionKernel(\n    'int64 t, int64 k', 'int64 y', '(t < 0 || t >= k) ? 1 : 0', "
                "'a + b', 'y = a', '0', '{name}')")  # how many class ids fall outside 0 … k − 1
