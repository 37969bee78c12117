"""The CuPy lowering: NumPy's table (written against the array module's API), with CuPy's own lowerings where the
GPU differs: each fused elementwise group is one ``ElementwiseKernel``, each elementwise-then-reduce group one
``ReductionKernel``, random draws come from a device generator."""
from __future__ import annotations

import sympy

from graphc.backends.cupy.kernels import Fixed, kernel_for, kernel_label, update_kernel
from graphc.backends.emitter import Lowerings
from graphc.backends.numpy.lowering import LOWERINGS as NUMPY_LOWERINGS
from graphc.core import shapes
from graphc.ops.elementwise import Where, arg, scalar
from graphc.ops.random import keep_scale

LOWERINGS = Lowerings(NUMPY_LOWERINGS)


def _launch(st, kind: str, expr, out_dtype: str, args=None, dtypes=None, post=1) -> str:
    """Registers the kernel for ``expr`` (over the node's inputs, or ``args`` of ``dtypes``; a reduction's result
    times ``post``) with the module; returns the call's argument list text."""
    gathers = {}
    if args is None:
        args, dtypes = list(st.args), [st.fn.graph.nodes[i].dtype for i in st.node.inputs]
        for k, nid in enumerate(st.node.inputs):
            if nid in st.fn.inlined:  # a pick: the logits go in raw, read at the row's start + label
                gathers[k] = _gather(st, k, args, dtypes)
    kernel, scalars = kernel_for(kind, expr, dtypes, out_dtype, post, gathers)
    name = st.module.kernel(kernel, kernel_label(expr, st.node.phase))
    return f"{name}({', '.join([*args, *(st.fn.dim_names.get(s, s.name) for s in scalars)])}"


def gathered_picks(graph, candidates) -> set:
    """The picks (a row's label logit) read inside the kernels that use them, at their index in the logits: no
    launch or buffer of their own. Where each reader is a kernel."""
    def gathered(node):
        readers = [graph.nodes[r].op for r in graph.consumers(node.id)]
        return bool(readers) and all(op in ("ew", "sum_ew") for op in readers)
    return {nid for nid in candidates if graph.nodes[nid].op == "pick" and gathered(graph.nodes[nid])}


def _gather(st, k: int, args: list, dtypes: list) -> str:
    """Puts the logits of input ``k`` (a pick) in its place and where each row starts in them and its label (laid
    out in the pick's shape) after the inputs; returns the C index of the label's logit."""
    pick = st.input(k)
    z, t = (st.fn.graph.nodes[i] for i in pick.inputs)
    args[k], dtypes[k] = st.fn.var[z.id], z.dtype
    args += [st.fn.rows(pick.shape, step=z.shape[-1]), f"{st.fn.var[t.id]}.reshape({st.dims(pick.shape)})"]
    dtypes += ["int64", "int64"]
    return f"x{len(args) - 2} + x{len(args) - 1}"


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
        call = _launch(st, "reduction", n.attr("expr"), n.dtype, post=n.attr("scale"))
        return st.line(f"{call}, axis={axes!r}, keepdims={keep}, out={st.out})")
    tmp = st.scratch(n.dtype, full)  # broadcast beyond every input: materialize, then reduce
    st.line(f"{_launch(st, 'elementwise', n.attr('expr'), n.dtype)}, {tmp})")
    st.line(st.module.reduce("add", tmp, axes, keep, st.out))
    if n.attr("scale") != 1:
        st.line(f"{_launch(st, 'elementwise', n.attr('scale') * arg(0), n.dtype, [st.out], [n.dtype])}, {st.out})")
    return None



@LOWERINGS.register("pick")
def _pick(st):
    """Each row's value at its label: the thread of the label's class writes it (no index arithmetic on the host)."""
    z, t = st.args
    classes = st.input(0).shape[-1]
    kernel = Fixed("{name} = cp.ElementwiseKernel(\n    'T z, int64 t, int64 c, int64 k', 'raw T y',\n"
                   "    'if (c == t) y[i / k] = z;', '{name}')")
    name = st.module.kernel(kernel, "_pick")
    rows = st.dims((*st.input(1).shape, 1))
    st.line(f"{name}({z}, {t}.reshape({rows}), {st.fn.arange(classes)}, {st.value(classes)}, {st.out})")


# log Σ exp(x) in one pass: each thread keeps a running maximum and the sum of exp(x − maximum), rescaled when the
# maximum grows (equal maxima, infinite ones too, add their sums; a NaN spreads)
LOGSUMEXP = Fixed(
    "{name} = cp.ReductionKernel(\n"
    "    'T x', 'T y', '_lse_of(x)', '_lse_join(a, b)', 'y = a.peak + log(a.total)', '', '{name}',\n"
    "    reduce_type='_lse_acc<T>', preamble=(\n"
    "        'template <typename U> struct _lse_acc {{ U peak; U total; }};\\n'\n"
    "        'template <typename U> __device__ _lse_acc<U> _lse_of(U x) {{ _lse_acc<U> r = {{x, 1}}; return r; }}\\n'\n"
    "        'template <typename U> __device__ _lse_acc<U> _lse_join(_lse_acc<U> a, _lse_acc<U> b) {{\\n'\n"
    "        '  if (a.total == 0) return b;\\n'\n"
    "        '  if (b.total == 0) return a;\\n'\n"
    "        '  if (a.peak == b.peak) {{ a.total += b.total; return a; }}\\n'\n"
    "        '  if (a.peak < b.peak) {{ _lse_acc<U> c = a; a = b; b = c; }}\\n'\n"
    "        '  a.total += b.total * exp(b.peak - a.peak);\\n'\n"
    "        '  return a;\\n'\n"
    "        '}}\\n'))")


@LOWERINGS.register("logsumexp")
def _logsumexp(st):
    """One ReductionKernel (NumPy's lowering takes six passes)."""
    n = st.node
    axes = n.attr("axes")
    name = st.module.kernel(LOGSUMEXP, "_logsumexp")
    axis = axes[0] if len(axes) == 1 else axes
    st.line(f"{name}({st.args[0]}, axis={axis!r}, keepdims={n.attr('keepdims')}, out={st.out})")


@LOWERINGS.register("softmax_xent_grad")
def _softmax_xent_grad(st):
    """(e/s − onehot(t))·scale, or (exp(z − lse) − onehot(t))·scale, in one kernel over the logits' shape."""
    n = st.node
    e, s, t, *rest = st.args
    shift = {arg(i): arg(i + 4) for i in range(len(rest))}  # the scale reads the inputs after t
    softmax = sympy.exp(arg(0) - arg(1)) if n.attr("log") else arg(0) / arg(1)
    expr = (softmax - Where(sympy.Eq(arg(2), arg(3)), 1, 0)) * n.attr("scale").xreplace(shift)
    rows = st.dims((*st.input(2).shape, 1))
    args = [e, s, f"{t}.reshape({rows})", st.fn.arange(n.shape[-1]), *rest]
    dtypes = [st.input(0).dtype, st.input(1).dtype, "int64", "int64", *(st.input(3 + k).dtype
                                                                        for k in range(len(rest)))]
    st.line(f"{_launch(st, 'elementwise', expr, n.dtype, args, dtypes)}, {st.out})")


@LOWERINGS.register("dropout_mask")
def _dropout_mask(st):
    """Uniform draws, then 1/(1 − p) where kept and 0 elsewhere, in place, in one kernel."""
    n = st.node
    st.line(f"{st.fn.module.generator(n)}.random(dtype={st.module.dtype(n.dtype)}, out={st.out})")
    expr = Where(sympy.GreaterThan(arg(0), scalar(n.attr("p"))), scalar(keep_scale(n.attr("p"))), 0)
    call = _launch(st, "elementwise", expr, n.dtype, [st.out], [n.dtype])
    st.line(f"{call}, {st.out})  # kept with probability 1 - p")


# take's gradient: each thread adds one element of g into its row of the table (rows hit twice add atomically)
SCATTER = Fixed("{name} = cp.ElementwiseKernel(\n"
                "    'T g, raw int64 ids, int64 width, int64 rows, int64 per', 'raw T out',\n"
                "    'ptrdiff_t k = i / width; atomicAdd(&out[((k / per) * rows + ids[k]) * width + i % width], g);',\n"
                "    '{name}')")


@LOWERINGS.register("scatter_add")
def _scatter_add(st):
    """Zeros, then one atomic add per element of g: row ``ids[k]`` of table ``k / per`` (one table per example, or
    ``per`` = every id: one table)."""
    n = st.node
    g, ids = st.args
    ids_shape = st.input(1).shape
    per = shapes.numel(ids_shape[1:] if n.attr("per_example") else ids_shape)
    width = shapes.numel(n.shape[2 if n.attr("per_example") else 1:])
    name = st.module.kernel(SCATTER, "_scatter_add")
    st.line(f"{st.out}.fill(0)")
    st.line(f"{name}({g}, {ids}, {st.value(width)}, {st.value(n.attr('size'))}, {st.value(per)}, {st.out})")
