"""The CuPy lowering: NumPy's table (written against the array module's API), with CuPy's own lowerings where the
GPU differs: each fused elementwise group is one ``ElementwiseKernel``, each elementwise-then-reduce group one
``ReductionKernel``, random draws come from a device generator."""
from __future__ import annotations

from graphc.backends.cupy.kernels import kernel_for, kernel_label, update_kernel
from graphc.backends.emitter import Lowerings
from graphc.backends.numpy.lowering import LOWERINGS as NUMPY_LOWERINGS

LOWERINGS = Lowerings(NUMPY_LOWERINGS)


def _launch(st, kind: str, expr, out_dtype: str) -> str:
    """Registers the kernel for ``expr`` with the module; returns the call's argument list text."""
    ins = [st.fn.graph.nodes[i].dtype for i in st.node.inputs]
    kernel, scalars = kernel_for(kind, expr, ins, out_dtype)
    name = st.module.kernel(kernel, kernel_label(expr, st.node.phase))
    return f"{name}({', '.join([*st.args, *(st.fn.dim_names.get(s, s.name) for s in scalars)])}"


@LOWERINGS.register("ew")
def _ew(st):
    st.line(f"{_launch(st, 'elementwise', st.node.attr('expr'), st.node.dtype)}, {st.out})")


@LOWERINGS.register("fused_update")
def _fused_update(st):
    """One kernel launch: every param and state array of the update written in place, each element once."""
    n = st.node
    ins = [st.fn.graph.nodes[i].dtype for i in n.inputs]
    kernel, scalars, written = update_kernel(n.attr("exprs"), n.attr("targets"), ins, n.dtype)
    name = st.module.kernel(kernel, "fused_update")
    args = [a for i, a in enumerate(st.args) if i not in written]
    args += [st.fn.dim_names.get(s, s.name) for s in scalars] + [st.args[i] for i in written]
    st.line(f"{name}({', '.join(args)})")


@LOWERINGS.register("sum_ew")
def _sum_ew(st):
    n = st.node
    full = tuple(n.attr("ew_shape"))
    axes = n.attr("axes")
    axes, keep = axes[0] if len(axes) == 1 else axes, n.attr("keepdims")
    if any(tuple(st.fn.graph.nodes[i].shape) == full for i in n.inputs):  # inputs span the reduced shape
        call = _launch(st, "reduction", n.attr("expr"), n.dtype)
        return st.line(f"{call}, axis={axes!r}, keepdims={keep}, out={st.out})")
    tmp = st.scratch(n.dtype, full)  # broadcast beyond every input: materialize, then reduce
    st.line(f"{_launch(st, 'elementwise', n.attr('expr'), n.dtype)}, {tmp})")
    st.line(st.module.reduce("add", tmp, axes, keep, st.out))
    return None


