"""The NumPy lowering of the core ops: ``lower(st)`` appends the statements computing ``st.node`` into ``st.out``.

Written against the array module's API (``st.xp``), so a backend whose module follows NumPy's (CuPy) starts from
this table and overrides what it does differently. Broadcast operands are staged at full size with ``copyto``:
a broadcasting ufunc call makes NumPy allocate an iteration buffer on every call, and a steady-state step
should allocate nothing.
"""
from __future__ import annotations

import sympy

from graphc.backends.emitter import Lowerings, expr_label
from graphc.backends.numpy.printer import NumPyScalarPrinter
from graphc.backends.numpy.ufuncs import UfuncChain
from graphc.core import shapes
from graphc.core.describe import expression
from graphc.core.registry import OPS, reduced_shape
from graphc.ops.elementwise import work_dtype
from graphc.ops.random import keep_scale
from graphc.ops.shape import slice_text

LOWERINGS = Lowerings()


def _chain(st, expr, out: str, full_shape, values=(), scratch=None) -> dict:
    """Statements computing the elementwise ``expr`` of the node's inputs into ``out`` (shape ``full_shape``);
    ``values`` name the full-size arrays standing for the symbols after the inputs' (a fused update's earlier
    results), ``scratch(dtype)`` hands out temporaries (default: new ones). Returns the temporaries it used."""
    operands = [*st.args, *values]
    names = {sympy.Symbol(f"_{i}", real=True): a for i, a in enumerate(operands)}
    names.update(st.fn.dim_names)
    ins = [st.fn.graph.nodes[i] for i in st.node.inputs]
    small = {a: (n.dtype, n.shape) for a, n in zip(st.args, ins) if tuple(n.shape) != tuple(full_shape)}
    work = work_dtype(expr, [n.dtype for n in ins] + [st.node.dtype] * len(values))
    chain = UfuncChain(names, scratch or (lambda dtype: st.scratch(dtype, full_shape)), st.node.dtype, st.fn.printer,
                       f"node {st.node.label}", small, full_shape, use=st.module.use, work=work)
    for text in chain.run(expr, out):
        st.line(text)
    return chain.dtypes


@LOWERINGS.register("ew")
def _ew(st):
    _chain(st, st.node.attr("expr"), st.out, st.node.shape)


def _axes(node):
    axes = node.attr("axes")
    return axes[0] if len(axes) == 1 else axes


@LOWERINGS.register("fused_update")
def _fused_update(st):
    """Each expression in turn as an in-place chain into the param or state it updates (a value only later
    expressions read goes to a scratch buffer), under a comment saying what it computes."""
    values, free = [], []  # temporaries of one chain serve the next: the update's working set stays small

    def scratch(dtype):
        spare = next((t for t, d in free if d == dtype), None)
        if spare is None:
            return st.scratch(dtype)
        free.remove((spare, dtype))
        return spare

    for expr, slot, name in zip(*(st.node.attr(k) for k in ("exprs", "targets", "names"))):
        text = expression(expr, [*st.args, *values])
        if slot >= 0:
            out = st.args[slot]
            st.line(f"# {out} = {text}")
        else:  # a value only the later expressions read, in a buffer of its own
            out = st.fn.names.fresh(name or expr_label(expr))
            st.line(f"{out} = {st.scratch(st.node.dtype)}  # {text}")
        free += _chain(st, expr, out, st.node.shape, values, scratch).items()
        values.append(out)


@LOWERINGS.register("sum")
def _sum(st):
    _sum_of_input(st)


def _sum_of_input(st) -> None:
    """``sum`` of input 0 over the node's axes into ``st.out``. Over leading axes of a float array (a bias
    gradient), the product of a vector of ones with the array seen as a matrix, where the module allows: BLAS reads
    the rows once, on every thread, while NumPy's reduction adds one row after another on one (half the time for a
    1024×512 gradient), and both accumulate in the array's dtype. Leading axes and others (a convolution's bias
    gradient, axes 0, 2, 3): the product first, into a scratch, then NumPy's reduction of that (5 against 51 µs on
    64×32×4×4, where NumPy's own reduction over the three axes walks the array in its strides)."""
    n, x, xs = st.node, st.args[0], st.input(0).shape
    axes = tuple(sorted(a % len(xs) for a in n.attr("axes")))
    lead = next((k for k, a in enumerate(axes) if a != k), len(axes))  # how many of the first axes are summed
    if not (st.module.GEMV_SUMS and 0 < lead < len(xs) and n.dtype in ("float32", "float64")
            and st.input(0).dtype == n.dtype and n.id not in st.fn.updates):
        return st.line(st.module.reduce("add", x, _axes(n), n.attr('keepdims'), st.out))
    rows, rest, rest_axes = shapes.numel(xs[:lead]), xs[lead:], tuple(a - lead for a in axes[lead:])
    into = st.out if not rest_axes else st.scratch(n.dtype, rest)  # planned buffers: contiguous, so views
    flat = into if len(rest) == 1 and (rest_axes or len(n.shape) == 1) else f"{into}.reshape(-1)"
    matrix = x if len(xs) == 2 else f"{x}.reshape({st.value(rows)}, -1)"
    st.line(f"{st.xp}.matmul({st.fn.ones(rows, n.dtype)}, {matrix}, out={flat})")
    if rest_axes:
        keep = n.attr("keepdims")
        out = st.out if not keep else f"{st.out}.reshape({st.dims(reduced_shape(rest, rest_axes, True))})"
        axis = rest_axes[0] if len(rest_axes) == 1 else rest_axes
        st.line(st.module.reduce("add", into, axis, keep, out))


@LOWERINGS.register("max")
def _max(st):
    n = st.node
    st.line(st.module.reduce("maximum", st.args[0], _axes(n), n.attr('keepdims'), st.out))


@LOWERINGS.register("sum_ew")
def _sum_ew(st):
    n = st.node
    full = n.attr("ew_shape")
    expr = n.attr("expr")
    a0, a1 = sympy.Symbol("_0", real=True), sympy.Symbol("_1", real=True)
    ins = [st.fn.graph.nodes[i] for i in n.inputs]
    pair = [st.args[0], st.args[1]] if expr == a0 * a1 else [st.args[0]] * 2 if expr == a0**2 else None
    spans = all(tuple(i.shape) == tuple(full) for i in ins)
    if pair and not n.attr("keepdims") and spans:
        letters = "abcdefghijklmnopqrstuvwxyz"[:len(full)]  # Σ a·b without the full-size product
        kept = "".join(c for i, c in enumerate(letters) if i not in n.attr("axes"))
        if not kept:  # a dot product: BLAS, and no per-call allocation (einsum allocates ~1.4 kB into a 0-d out)
            flat = [f"{a}.reshape(-1)" for a in pair]
            st.line(f"{st.xp}.dot({flat[0]}, {flat[1]}, out={st.out})")
        else:
            st.line(f"{st.xp}.einsum('{letters},{letters}->{kept}', {pair[0]}, {pair[1]}, out={st.out})")
    elif expr == a0 and spans:  # a plain sum
        _sum_of_input(st)
    else:
        tmp = st.scratch(n.dtype, full)
        _chain(st, expr, tmp, full)
        st.line(st.module.reduce("add", tmp, _axes(n), n.attr('keepdims'), st.out))
    if n.attr("scale") != 1:
        st.line(f"{st.xp}.multiply({st.out}, {st.value(n.attr('scale'))}, out={st.out})  # the scale, on the result")


def _rows(st, ufunc: str, a: str, row: str, out: str, shape=None) -> None:
    """``ufunc(a, row)`` with ``row`` broadcast (a per-row statistic), staged at full size with ``np.copyto``:
    a broadcasting ufunc call makes NumPy allocate an iteration buffer on every call."""
    stage = out if out != a else st.scratch(st.node.dtype, shape)
    st.line(f"{st.xp}.copyto({stage}, {row})")
    st.line(f"{st.xp}.{ufunc}({a}, {stage}, out={out})")


def _finite_peak(st, peak: str, shape) -> None:
    """A row's maximum, 0 where it is ±inf or NaN: subtracting an infinite maximum would make every element NaN,
    where a row of −inf has log-sum-exp −inf and a row holding +inf has +inf (a NaN stays NaN through the sum)."""
    bad = st.scratch("bool", shape)
    st.line(f"{st.xp}.isfinite({peak}, out={bad})")
    st.line(f"{st.xp}.logical_not({bad}, out={bad})")
    st.line(f"{st.xp}.copyto({peak}, 0, where={bad})  # a row's maximum, 0 where it is not finite")


@LOWERINGS.register("logsumexp")
def _logsumexp(st):
    n, x = st.node, st.args[0]
    xs = st.fn.graph.nodes[n.inputs[0]].shape
    axes = n.attr("axes")
    kshape = reduced_shape(xs, axes, True)
    peak, full = st.scratch(n.dtype, kshape), st.scratch(n.dtype, xs)
    ax = _axes(n)
    result = st.out if n.attr("keepdims") else f"{st.out}.reshape({st.dims(kshape)})"
    st.line(st.module.reduce("maximum", x, ax, True, peak))
    _finite_peak(st, peak, kshape)
    _rows(st, "subtract", x, peak, full)
    st.line(f"{st.xp}.exp({full}, out={full})")
    st.line(st.module.reduce("add", full, ax, True, result))
    st.line(f"{st.xp}.log({result}, out={result})")
    st.line(f"{st.xp}.add({result}, {peak}, out={result})")


@LOWERINGS.register("softmax")
def _softmax(st):
    _softmax_common(st, False)


@LOWERINGS.register("log_softmax")
def _log_softmax(st):
    _softmax_common(st, True)


def _softmax_common(st, log: bool):
    n, x = st.node, st.args[0]
    axis = n.attr("axis")
    kshape = reduced_shape(n.shape, (axis,), True)
    peak = st.scratch(n.dtype, kshape)
    st.line(st.module.reduce("maximum", x, axis, True, peak))
    _finite_peak(st, peak, kshape)
    _rows(st, "subtract", x, peak, st.out)
    full = st.scratch(n.dtype)
    if log:
        st.line(f"{st.xp}.exp({st.out}, out={full})")
        st.line(st.module.reduce("add", full, axis, True, peak))
        st.line(f"{st.xp}.log({peak}, out={peak})")
    else:
        st.line(f"{st.xp}.exp({st.out}, out={st.out})")
        st.line(st.module.reduce("add", st.out, axis, True, peak))
    st.line(f"{st.xp}.copyto({full}, {peak})")
    st.line(f"{st.xp}.{'subtract' if log else 'divide'}({st.out}, {full}, out={st.out})")


def _label_index(st, z_shape, labels: str) -> str:
    """Flat indices ``row·k + label`` into the logits (classes on the last axis, any leading axes), in an int64
    scratch (no per-call allocation). The labels were checked to lie in 0 … k − 1."""
    idx = st.scratch("int64", z_shape[:-1])
    st.line(f"{st.xp}.add({st.fn.rows(z_shape[:-1], step=z_shape[-1])}, {labels}, out={idx})")
    return idx


@LOWERINGS.register("softmax_cross_entropy")
def _softmax_cross_entropy(st):
    n = st.node
    z, t = st.args
    zs = st.fn.graph.nodes[n.inputs[0]].shape
    axis = n.attr("axis")
    labels_int = st.fn.graph.nodes[n.inputs[1]].dtype == "int64"
    kshape = reduced_shape(zs, (axis,), True)
    peak, lse, full = st.scratch(n.dtype, kshape), st.scratch(n.dtype, kshape), st.scratch(n.dtype, zs)
    st.line(st.module.reduce("maximum", z, axis, True, peak))
    _finite_peak(st, peak, kshape)
    _rows(st, "subtract", z, peak, full, zs)
    if labels_int and axis == len(zs) - 1:
        st.line(f"{st.xp}.exp({full}, out={full})")
        st.line(st.module.reduce("add", full, axis, True, lse))
        st.line(f"{st.xp}.log({lse}, out={lse})")
        st.line(f"{st.xp}.add({lse}, {peak}, out={lse})  # log-sum-exp of each row")
        idx = _label_index(st, zs, t)
        st.line(st.module.take(f"{z}.reshape(-1)", idx, st.out) + "  # the true class's logit")
        st.line(f"{st.xp}.subtract({lse}.reshape({st.dims(n.shape)}), {st.out}, out={st.out})")
        return
    # general labels: -Σ t·log_softmax(z)
    st.line(f"{st.xp}.exp({full}, out={full})")
    st.line(st.module.reduce("add", full, axis, True, lse))
    st.line(f"{st.xp}.log({lse}, out={lse})")
    st.line(f"{st.xp}.add({lse}, {peak}, out={lse})")
    _rows(st, "subtract", z, lse, full, zs)  # log_softmax
    if labels_int:
        mask = st.scratch("bool", zs)
        classes = st.dims(tuple(d if i == axis else 1 for i, d in enumerate(zs)))
        labels = f"{st.xp}.expand_dims({t}, {axis})"
        st.line(f"{st.xp}.equal({labels}, {st.fn.arange(zs[axis])}.reshape({classes}), out={mask})")
        st.line(f"{st.xp}.copyto({full}, 0, where=~{mask})")
    else:
        st.line(f"{st.xp}.multiply({full}, {t}, out={full})")
    st.line(st.module.reduce("add", full, axis, None, st.out))
    st.line(f"{st.xp}.negative({st.out}, out={st.out})")


@LOWERINGS.register("softmax_xent_grad")
def _softmax_xent_grad(st):
    """(e/s − onehot(t))·c without a one-hot array: the scale folded into the (…, 1) row sums, then subtracted at
    each row's true class."""
    n = st.node
    e, s, t, *rest = st.args
    names = {sympy.Symbol(f"_{i}", real=True): a for i, a in enumerate(rest)}
    names.update(st.fn.dim_names)
    scale = NumPyScalarPrinter(names, st.xp).doprint(n.attr("scale"))
    per_row = st.scratch(n.dtype, st.input(1).shape)
    st.line(f"{st.xp}.divide({scale}, {s}, out={per_row})  # the scale rides on the row sums")
    _rows(st, "multiply", e, per_row, st.out)  # softmax(z)·scale
    idx = _label_index(st, n.shape, t)
    picked = st.scratch(n.dtype, n.shape[:-1])
    flat = f"{st.out}.reshape(-1)"
    st.line(st.module.take(flat, idx, picked))
    if rest:  # the scale of each row, back from scale/s
        st.line(f"{st.xp}.multiply({per_row}, {s}, out={per_row})")
    row_scale = scale if not rest else f"{per_row}.reshape({picked}.shape)"
    st.line(f"{st.xp}.subtract({picked}, {row_scale}, out={picked})")
    st.line(st.module.put(flat, idx, picked) + "  # − scale at the true class")


@LOWERINGS.register("pick")
def _pick(st):
    z, t = st.args
    idx = _label_index(st, st.input(0).shape, t)
    st.line(st.module.take(f"{z}.reshape(-1)", idx, f"{st.out}.reshape({idx}.shape)") + "  # each row's label")


@LOWERINGS.register("one_hot")
def _one_hot(st):
    n = st.node
    k = st.fn.arange(n.attr("k"))
    st.line(f"{st.xp}.equal({st.xp}.expand_dims({st.args[0]}, -1), {k}, out={st.out})")


@LOWERINGS.register("matmul")
def _matmul(st):
    st.line(f"{st.xp}.matmul({st.args[0]}, {st.args[1]}, out={st.out})")


@LOWERINGS.register("fill")
def _fill(st):
    st.line(f"{st.out}.fill({st.value(st.node.attr('value'))})")


@LOWERINGS.register("cast")
def _cast(st):
    st.line(f"{st.xp}.copyto({st.out}, {st.args[0]}, casting='unsafe')  # as astype: rounds, truncates")


@LOWERINGS.register("take")
def _take(st):
    st.line(st.module.take(st.args[0], st.args[1], st.out, axis=0) + "  # the ids were checked")


@LOWERINGS.register("scatter_add")
def _scatter_add(st):
    """g's rows added at their ids by one ``np.add.at`` over flat element positions ``id·J + j`` (J elements a
    row): ufunc.at on a 1-d index runs NumPy's fast loop, 2–4× faster than on rows and faster than bincount or
    sorting (``bench/scatter.py``). The positions are built without a broadcasting ufunc call (which allocates)."""
    n = st.node
    g, ids = st.args
    ids_shape = st.input(1).shape
    count, per_example = shapes.numel(ids_shape), n.attr("per_example")
    width = shapes.numel(n.shape[2 if per_example else 1:])
    st.line(f"{st.out}.fill(0)")
    col = st.scratch("int64", (count,))
    position = f"{ids}.reshape(-1)"
    if per_example:  # example i's rows go to table i: its ids shifted by i·size
        examples = (ids_shape[0], shapes.numel(ids_shape[1:]))
        st.line(f"{st.xp}.copyto({col}.reshape({st.dims(examples)}), {st.fn.rows((ids_shape[0], 1))})")
        st.line(f"{st.xp}.multiply({col}, {st.value(n.attr('size'))}, out={col})")
        st.line(f"{st.xp}.add({col}, {position}, out={col})")
        position = col
    if width != 1:  # id·J + j = k·J + j + (id − k)·J, with k·J + j the element's own position
        st.line(f"{st.xp}.subtract({position}, {st.fn.arange(count)}, out={col})")
        st.line(f"{st.xp}.multiply({col}, {st.value(width)}, out={col})")
        index = st.scratch("int64", (count, width))
        st.line(f"{st.xp}.copyto({index}, {col}.reshape({st.dims((count, 1))}))")
        st.line(f"{st.xp}.add({index}, {st.fn.rows((count, width))}, out={index})")
        position = f"{index}.reshape(-1)"
    if OPS[st.input(0).op].view:  # a strided or broadcast g (a mean's gradient) makes add.at several times slower
        dense = st.scratch(n.dtype, st.input(0).shape)
        st.line(f"{st.xp}.copyto({dense}, {g})")
        g = dense
    st.line(f"{st.xp}.add.at({st.out}.reshape(-1), {position}, {g}.reshape(-1))")


@LOWERINGS.register("random_normal")
def _random_normal(st):
    rng = st.fn.module.generator(st.node)
    st.line(f"{rng}.standard_normal(dtype={st.module.dtype(st.node.dtype)}, out={st.out})")


@LOWERINGS.register("random_uniform")
def _random_uniform(st):
    n = st.node
    st.line(f"{st.fn.module.generator(n)}.random(dtype={st.module.dtype(n.dtype)}, out={st.out})")
    low, high = n.attr("low"), n.attr("high")
    if (low, high) != (0, 1):
        st.line(f"{st.xp}.multiply({st.out}, {high - low!r}, out={st.out})")
        st.line(f"{st.xp}.add({st.out}, {low!r}, out={st.out})")


@LOWERINGS.register("dropout_mask")
def _dropout_mask(st):
    n = st.node
    kept = st.scratch("bool")  # a comparison written into floats would cast through a buffer allocated per call
    st.line(f"{st.fn.module.generator(n)}.random(dtype={st.module.dtype(n.dtype)}, out={st.out})")
    st.line(f"{st.xp}.greater_equal({st.out}, {n.attr('p')!r}, out={kept})  # kept with probability 1 - p")
    st.line(f"{st.xp}.copyto({st.out}, {kept})")
    st.line(f"{st.xp}.multiply({st.out}, {keep_scale(n.attr('p'))!r}, out={st.out})")


@LOWERINGS.register("concat")
def _concat(st):
    st.line(f"{st.xp}.concatenate([{', '.join(st.args)}], axis={st.node.attr('axis')}, out={st.out})")


def _index_text(st, index):
    return slice_text(index, st.value)


@LOWERINGS.register("unslice")
def _unslice(st):
    st.line(f"{st.out}.fill(0)")
    st.line(f"{st.out}[{_index_text(st, st.node.attr('index'))}] = {st.args[0]}")


# views: the expression of the view, bound to a new name (no statement, no buffer)
@LOWERINGS.register("reshape")
def _reshape(st):
    return f"{st.args[0]}.reshape({st.dims(st.node.shape)})"


@LOWERINGS.register("in_training")
def _in_training(st):
    return st.args[0]  # run and train_step are training mode; predict's graph holds the inference value instead


@LOWERINGS.register("transpose")
def _transpose(st):
    return f"{st.args[0]}.transpose({st.node.attr('perm')!r})"


@LOWERINGS.register("broadcast_to")
def _broadcast_to(st):
    return f"{st.xp}.broadcast_to({st.args[0]}, {st.dims(st.node.shape)})"


@LOWERINGS.register("slice")
def _slice(st):
    return f"{st.args[0]}[{_index_text(st, st.node.attr('index'))}]"


