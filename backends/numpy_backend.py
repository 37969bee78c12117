"""The NumPy emitter: a graph becomes a standalone, readable Python module that needs only NumPy.

One commented statement (or short in-place chain) per node; buffers planned from liveness, allocated once
per value of the symbolic dims and cached, so a steady-state call allocates no full-size arrays.
"""
from __future__ import annotations

import inspect
import re

import numpy as np
import sympy

from graphc import shapes
from graphc.backends.codewriter import CodeWriter, Names
from graphc.backends.printer import NumPyScalarPrinter, UfuncChain
from graphc.errors import GraphError
from graphc.initializers import init_array
from graphc.ops import reduced_shape
from graphc.schedule import FED, VIEWS, deferred_updates, plan

BACKEND = "numpy"


class Statement:
    """The emission context of one node: its input variables, its output variable, scratch, lines."""

    def __init__(self, fn, node, out: str | None, scratch: list[str] | None):
        self.fn, self.node, self.out = fn, node, out
        self.args = [fn.var[i] for i in node.inputs]
        self.lines: list[str] = []
        self._scratch = list(scratch or [])
        self.requests: list[tuple] = []

    def scratch(self, dtype: str, shape=None) -> str:
        """A temporary of ``shape`` (default: the node's) planned by the scheduler."""
        self.requests.append((tuple(self.node.shape if shape is None else shape), dtype))
        return self._scratch.pop(0) if self._scratch else f"_scratch{len(self.requests)}"

    def line(self, text: str) -> None:
        if text:
            self.lines.append(text)

    def dims(self, shape) -> str:
        return self.fn.shape_text(shape)

    def value(self, expr) -> str:
        return self.fn.printer.doprint(sympy.sympify(expr))


# -- per-op emitters: emit(st) appends lines computing st.node into st.out -------------------------
def _chain(st, expr, out: str, full_shape) -> None:
    """Statements computing the elementwise ``expr`` of the node's inputs into ``out`` (shape ``full_shape``)."""
    names = {sympy.Symbol(f"_{i}", real=True): a for i, a in enumerate(st.args)}
    names.update(st.fn.dim_names)
    ins = [st.fn.graph.nodes[i] for i in st.node.inputs]
    small = {a: (n.dtype, n.shape) for a, n in zip(st.args, ins) if tuple(n.shape) != tuple(full_shape)}
    chain = UfuncChain(names, lambda dtype: st.scratch(dtype, full_shape), st.node.dtype, st.fn.printer,
                       f"node {st.node.label}", small, full_shape)
    for text in chain.run(expr, out):
        st.line(text)


def _ew(st):
    _chain(st, st.node.attr("expr"), st.out, st.node.shape)


def _axes(node):
    axes = node.attr("axes")
    return axes[0] if len(axes) == 1 else axes


def _sum(st):
    n = st.node
    st.line(f"np.add.reduce({st.args[0]}, axis={_axes(n)!r}, keepdims={n.attr('keepdims')}, out={st.out})")


def _max(st):
    n = st.node
    st.line(f"np.maximum.reduce({st.args[0]}, axis={_axes(n)!r}, keepdims={n.attr('keepdims')}, out={st.out})")


def _sum_ew(st):
    n = st.node
    full = n.attr("ew_shape")
    expr = n.attr("expr")
    a0, a1 = sympy.Symbol("_0", real=True), sympy.Symbol("_1", real=True)
    ins = [st.fn.graph.nodes[i] for i in n.inputs]
    pair = [st.args[0], st.args[1]] if expr == a0 * a1 else [st.args[0]] * 2 if expr == a0**2 else None
    if pair and not n.attr("keepdims") and all(tuple(i.shape) == tuple(full) for i in ins):
        letters = "abcdefghijklmnopqrstuvwxyz"[:len(full)]  # Σ a·b without the full-size product
        kept = "".join(c for i, c in enumerate(letters) if i not in n.attr("axes"))
        return st.line(f"np.einsum('{letters},{letters}->{kept}', {pair[0]}, {pair[1]}, out={st.out})")
    tmp = st.scratch(n.dtype, full)
    _chain(st, expr, tmp, full)
    st.line(f"np.add.reduce({tmp}, axis={_axes(n)!r}, keepdims={n.attr('keepdims')}, out={st.out})")


def _rows(st, ufunc: str, a: str, row: str, out: str, shape=None) -> None:
    """``ufunc(a, row)`` with ``row`` broadcast (a per-row statistic), staged at full size with ``np.copyto``:
    a broadcasting ufunc call makes NumPy allocate an iteration buffer on every call."""
    stage = out if out != a else st.scratch(st.node.dtype, shape)
    st.line(f"np.copyto({stage}, {row})")
    st.line(f"np.{ufunc}({a}, {stage}, out={out})")


def _logsumexp(st):
    n, x = st.node, st.args[0]
    xs = st.fn.graph.nodes[n.inputs[0]].shape
    axes = n.attr("axes")
    kshape = reduced_shape(xs, axes, True)
    peak, full = st.scratch(n.dtype, kshape), st.scratch(n.dtype, xs)
    ax = _axes(n)
    result = st.out if n.attr("keepdims") else f"{st.out}.reshape({st.dims(kshape)})"
    st.line(f"np.maximum.reduce({x}, axis={ax!r}, keepdims=True, out={peak})")
    _rows(st, "subtract", x, peak, full)
    st.line(f"np.exp({full}, out={full})")
    st.line(f"np.add.reduce({full}, axis={ax!r}, keepdims=True, out={result})")
    st.line(f"np.log({result}, out={result})")
    st.line(f"np.add({result}, {peak}, out={result})")


def _softmax_common(st, log: bool):
    n, x = st.node, st.args[0]
    axis = n.attr("axis")
    kshape = reduced_shape(n.shape, (axis,), True)
    peak = st.scratch(n.dtype, kshape)
    st.line(f"np.maximum.reduce({x}, axis={axis}, keepdims=True, out={peak})")
    _rows(st, "subtract", x, peak, st.out)
    full = st.scratch(n.dtype)
    if log:
        st.line(f"np.exp({st.out}, out={full})")
        st.line(f"np.add.reduce({full}, axis={axis}, keepdims=True, out={peak})")
        st.line(f"np.log({peak}, out={peak})")
    else:
        st.line(f"np.exp({st.out}, out={st.out})")
        st.line(f"np.add.reduce({st.out}, axis={axis}, keepdims=True, out={peak})")
    st.line(f"np.copyto({full}, {peak})")
    st.line(f"np.{'subtract' if log else 'divide'}({st.out}, {full}, out={st.out})")


def _label_index(st, z_shape, labels: str) -> str:
    """Flat indices ``row·k + label`` into the logits, in an int64 scratch (no per-call allocation)."""
    rows = st.fn.rows(z_shape[0])
    idx = st.scratch("int64", z_shape[:-1])
    st.line(f"np.multiply({rows}, {st.value(z_shape[-1])}, out={idx})")
    st.line(f"np.add({idx}, {labels}, out={idx})")
    return idx


def _softmax_cross_entropy(st):
    n = st.node
    z, t = st.args
    zs = st.fn.graph.nodes[n.inputs[0]].shape
    axis = n.attr("axis")
    labels_int = st.fn.graph.nodes[n.inputs[1]].dtype == "int64"
    kshape = reduced_shape(zs, (axis,), True)
    peak, lse, full = st.scratch(n.dtype, kshape), st.scratch(n.dtype, kshape), st.scratch(n.dtype, zs)
    st.line(f"np.maximum.reduce({z}, axis={axis}, keepdims=True, out={peak})")
    _rows(st, "subtract", z, peak, full, zs)
    if labels_int and axis == len(zs) - 1 and len(zs) == 2:
        st.line(f"np.exp({full}, out={full})")
        st.line(f"np.add.reduce({full}, axis={axis}, keepdims=True, out={lse})")
        st.line(f"np.log({lse}, out={lse})")
        st.line(f"np.add({lse}, {peak}, out={lse})  # log-sum-exp of each row")
        idx = _label_index(st, zs, t)
        st.line(f"np.take({z}.reshape(-1), {idx}, out={st.out}, mode='clip')  # the true class's logit")
        st.line(f"np.subtract({lse}.reshape({st.dims(n.shape)}), {st.out}, out={st.out})")
        return
    # general labels: -Σ t·log_softmax(z)
    st.line(f"np.exp({full}, out={full})")
    st.line(f"np.add.reduce({full}, axis={axis}, keepdims=True, out={lse})")
    st.line(f"np.log({lse}, out={lse})")
    st.line(f"np.add({lse}, {peak}, out={lse})")
    _rows(st, "subtract", z, lse, full, zs)  # log_softmax
    if labels_int:
        mask = st.scratch("bool", zs)
        classes = st.dims(tuple(d if i == axis else 1 for i, d in enumerate(zs)))
        st.line(f"np.equal(np.expand_dims({t}, {axis}), {st.fn.arange(zs[axis])}.reshape({classes}), out={mask})")
        st.line(f"np.copyto({full}, 0, where=~{mask})")
    else:
        st.line(f"np.multiply({full}, {t}, out={full})")
    st.line(f"np.add.reduce({full}, axis={axis}, out={st.out})")
    st.line(f"np.negative({st.out}, out={st.out})")


def _softmax_xent_grad(st):
    """(softmax(z) − onehot(t))·c without a one-hot array: scale folded into the (m, 1) row sums."""
    n = st.node
    z, t, *rest = st.args
    zs = n.shape
    c = n.attr("scale")
    names = {sympy.Symbol(f"_{i}", real=True): a for i, a in enumerate(rest)}
    names.update(st.fn.dim_names)
    scale = NumPyScalarPrinter(names).doprint(c)
    kshape = reduced_shape(zs, (len(zs) - 1,), True)
    peak = st.scratch(n.dtype, kshape)
    st.line(f"np.maximum.reduce({z}, axis=-1, keepdims=True, out={peak})")
    _rows(st, "subtract", z, peak, st.out)
    st.line(f"np.exp({st.out}, out={st.out})")
    st.line(f"np.add.reduce({st.out}, axis=-1, keepdims=True, out={peak})")
    st.line(f"np.divide({scale}, {peak}, out={peak})  # the scale rides on the row sums")
    _rows(st, "multiply", st.out, peak, st.out)  # softmax(z)·scale
    idx = _label_index(st, zs, t)
    picked = st.scratch(n.dtype, zs[:-1])
    flat = f"{st.out}.reshape(-1)"
    st.line(f"np.take({flat}, {idx}, out={picked}, mode='clip')")
    row_scale = scale if not rest else f"np.reshape({scale}, {picked}.shape)"
    st.line(f"np.subtract({picked}, {row_scale}, out={picked})")
    st.line(f"np.put({flat}, {idx}, {picked}, mode='clip')  # − scale at the true class")


def _one_hot(st):
    n = st.node
    k = st.fn.arange(n.attr("k"))
    st.line(f"np.equal(np.expand_dims({st.args[0]}, -1), {k}, out={st.out})")


def _matmul(st):
    st.line(f"np.matmul({st.args[0]}, {st.args[1]}, out={st.out})")


def _fill(st):
    st.line(f"{st.out}.fill({st.value(st.node.attr('value'))})")


def _random_normal(st):
    rng = st.fn.module.generator(st.node)
    st.line(f"{rng}.standard_normal(dtype=np.{st.node.dtype}, out={st.out})")


def _concat(st):
    st.line(f"np.concatenate([{', '.join(st.args)}], axis={st.node.attr('axis')}, out={st.out})")


def _index_text(st, index):
    return ", ".join(f"{st.value(a)}:{st.value(b)}" + (f":{c}" if c != 1 else "") for a, b, c in index)


def _unslice(st):
    st.line(f"{st.out}.fill(0)")
    st.line(f"{st.out}[{_index_text(st, st.node.attr('index'))}] = {st.args[0]}")


# views: bound to a new name, no buffer
def _reshape(st):
    return f"{st.args[0]}.reshape({st.dims(st.node.shape)})"


def _transpose(st):
    return f"{st.args[0]}.transpose({st.node.attr('perm')!r})"


def _broadcast_to(st):
    return f"np.broadcast_to({st.args[0]}, {st.dims(st.node.shape)})"


def _slice(st):
    return f"{st.args[0]}[{_index_text(st, st.node.attr('index'))}]"


# -- convolution and pooling: windowed views, one batched GEMM per conv, one ufunc per kernel offset ------------
WINDOWS = "np.lib.stride_tricks.sliding_window_view"


def _shape(st, operand=None) -> tuple:
    """The node's shape (or its ``operand``'s), concrete dims as ints and the batch dim symbolic."""
    node = st.node if operand is None else st.fn.graph.nodes[st.node.inputs[operand]]
    return tuple(int(d) if d.is_number else d for d in node.shape)


def _geometry(st):
    """Kernel, stride, padding and the input's (C, H, W) of a conv2d / conv2d_weight_grad / pooling node."""
    n = st.node
    x = st.fn.graph.nodes[n.inputs[0]]
    return n.attr("kernel"), n.attr("stride"), n.attr("padding", ((0, 0), (0, 0))), tuple(int(d) for d in x.shape[1:])


def _offset(a, b, stride, out_hw) -> str:
    """Index of the inputs that kernel offset ``(a, b)`` meets across all windows: an (m, C, OH, OW) view."""
    def axis(start, s, n):
        return f"{start}:{start + s * (n - 1) + 1}" + (f":{s}" if s != 1 else "")
    return f"[:, :, {axis(a, stride[0], out_hw[0])}, {axis(b, stride[1], out_hw[1])}]"


def _offsets(kernel):
    return [(a, b) for a in range(kernel[0]) for b in range(kernel[1])]


def _overlapping(kernel, stride) -> bool:
    return stride[0] < kernel[0] or stride[1] < kernel[1]


def _padded(st, x: str, shape, padding) -> str:
    """``x`` (of ``shape``) framed by zeros in a scratch buffer, or ``x`` itself without padding."""
    if not any(map(any, padding)):
        return x
    (top, bottom), (left, right) = padding
    m, c, h, w = shape
    xp = st.scratch(st.node.dtype, (m, c, h + top + bottom, w + left + right))
    st.line(f"{xp}.fill(0)")
    st.line(f"{xp}[:, :, {top}:{top + h}, {left}:{left + w}] = {x}")
    return xp


def _im2col(st, x: str, shape, kernel, stride, padding, out_hw, batch_major: bool = True) -> str:
    """Every window of ``x`` as a column of a scratch: (m, C, kh, kw, OH, OW), so ``w (O, C·kh·kw) @ cols[n]`` is
    a GEMM per example that writes NCHW directly; or (C, kh, kw, m, OH, OW) for one GEMM over the whole batch."""
    xp = _padded(st, x, shape, padding)
    m, c = shape[:2]
    if batch_major:
        cols, perm = st.scratch(st.node.dtype, (m, c, *kernel, *out_hw)), (0, 1, 4, 5, 2, 3)
    else:
        cols, perm = st.scratch(st.node.dtype, (c, *kernel, m, *out_hw)), (1, 4, 5, 0, 2, 3)
    step = "" if tuple(stride) == (1, 1) else f"[:, :, ::{stride[0]}, ::{stride[1]}]"
    st.line(f"np.copyto({cols}, {WINDOWS}({xp}, {tuple(kernel)}, axis=(2, 3)){step}.transpose{perm})")
    return cols


def _conv2d(st):
    x, w = st.args
    n = st.node
    shape = _shape(st, 0)
    kernel = _shape(st, 1)[2:]
    m, o, oh, ow = _shape(st)
    k, p = shape[1] * kernel[0] * kernel[1], oh * ow
    cols = _im2col(st, x, shape, kernel, n.attr("stride"), n.attr("padding"), (oh, ow))
    st.line(f"np.matmul({w}.reshape({o}, {k}), {cols}.reshape({st.dims((m, k, p))}), "
            f"out={st.out}.reshape({st.dims((m, o, p))}))")


def _conv2d_weight_grad(st):
    # Σ over batch and positions as the inner dim of one GEMM: (O, m·OH·OW) @ (m·OH·OW, C·kh·kw)
    x, g = st.args
    n = st.node
    shape, kernel = _shape(st, 0), n.attr("kernel")
    m, o, oh, ow = _shape(st, 1)
    k = shape[1] * kernel[0] * kernel[1]
    cols = _im2col(st, x, shape, kernel, n.attr("stride"), n.attr("padding"), (oh, ow), batch_major=False)
    g_t = st.scratch(st.node.dtype, (o, m, oh, ow))
    st.line(f"np.copyto({g_t}, {g}.transpose(1, 0, 2, 3))")
    st.line(f"np.matmul({g_t}.reshape({o}, -1), {cols}.reshape({k}, -1).T, out={st.out}.reshape({o}, {k}))")


def _conv2d_input_grad(st):
    # each kernel offset's share of the gradient lands on the inputs that offset met: one GEMM, then one add per offset
    g, w = st.args
    n = st.node
    m, c, h, wd = _shape(st)
    o, _, kh, kw = _shape(st, 1)
    oh, ow = _shape(st, 0)[2:]
    stride, ((top, bottom), (left, right)) = n.attr("stride"), n.attr("padding")
    k, p = c * kh * kw, oh * ow
    shares = st.scratch(n.dtype, (m, c, kh, kw, oh, ow))
    st.line(f"np.matmul({w}.reshape({o}, {k}).T, {g}.reshape({st.dims((m, o, p))}), "
            f"out={shares}.reshape({st.dims((m, k, p))}))")
    padded = any((top, bottom, left, right))
    dxp = st.scratch(n.dtype, (m, c, h + top + bottom, wd + left + right)) if padded else st.out
    st.line(f"{dxp}.fill(0)")
    for a, b in _offsets((kh, kw)):
        view = f"{dxp}{_offset(a, b, stride, (oh, ow))}"
        st.line(f"np.add({view}, {shares}[:, :, {a}, {b}], out={view})")
    if padded:
        st.line(f"np.copyto({st.out}, {dxp}[:, :, {top}:{top + h}, {left}:{left + wd}])")


def _pool_out_hw(st):
    """The pooled (OH, OW): the node's own, or that of its pooled-shaped operand for a gradient."""
    operand = {"max_pool2d_grad": 1, "avg_pool2d_grad": 0}.get(st.node.op)
    node = st.node if operand is None else st.fn.graph.nodes[st.node.inputs[operand]]
    return tuple(int(d) for d in node.shape[2:])


def _window_max(st, x: str, into: str) -> None:
    kernel, stride, _, _ = _geometry(st)
    out_hw = _pool_out_hw(st)
    for i, (a, b) in enumerate(_offsets(kernel)):
        view = f"{x}{_offset(a, b, stride, out_hw)}"
        st.line(f"np.copyto({into}, {view})" if i == 0 else f"np.maximum({into}, {view}, out={into})")


def _max_pool2d(st):
    _window_max(st, st.args[0], st.out)


def _avg_pool2d(st):
    kernel, stride, _, _ = _geometry(st)
    x, out_hw = st.args[0], _pool_out_hw(st)
    for i, (a, b) in enumerate(_offsets(kernel)):
        view = f"{x}{_offset(a, b, stride, out_hw)}"
        st.line(f"np.copyto({st.out}, {view})" if i == 0 else f"np.add({st.out}, {view}, out={st.out})")
    st.line(f"np.multiply({st.out}, {st.value(sympy.Rational(1, kernel[0] * kernel[1]))}, out={st.out})")


def _avg_pool2d_grad(st):
    kernel, stride, _, _ = _geometry(st)
    g, out_hw, scale = st.args[0], _pool_out_hw(st), st.value(sympy.Rational(1, kernel[0] * kernel[1]))
    st.line(f"{st.out}.fill(0)")
    if not _overlapping(kernel, stride):  # each input is in one window at most: write the shares directly
        for a, b in _offsets(kernel):
            st.line(f"np.multiply({g}, {scale}, out={st.out}{_offset(a, b, stride, out_hw)})")
        return
    share = st.scratch(st.node.dtype, st.fn.graph.nodes[st.node.inputs[0]].shape)
    st.line(f"np.multiply({g}, {scale}, out={share})")
    for a, b in _offsets(kernel):
        view = f"{st.out}{_offset(a, b, stride, out_hw)}"
        st.line(f"np.add({view}, {share}, out={view})")


def _first_maxima(st, x: str, y: str, act) -> None:
    """For each kernel offset in window order, ``act(offset view, hit)`` where ``hit`` marks the windows whose
    first maximum (``y``) sits at that offset; later ties are masked out by ``free``."""
    kernel, stride, _, _ = _geometry(st)
    out_hw = _pool_out_hw(st)
    pooled = (st.node.shape[0], st.fn.graph.nodes[st.node.inputs[0]].shape[1], *out_hw)
    hit, free = st.scratch("bool", pooled), st.scratch("bool", pooled)
    st.line(f"{free}.fill(True)")
    offsets = _offsets(kernel)
    for i, (a, b) in enumerate(offsets):
        index = _offset(a, b, stride, out_hw)
        st.line(f"np.equal({x}{index}, {y}, out={hit})")
        st.line(f"np.logical_and({hit}, {free}, out={hit})")
        if i < len(offsets) - 1:
            st.line(f"np.logical_xor({free}, {hit}, out={free})")
        act(index, hit)


def _max_pool2d_grad(st):
    x, y, g = st.args
    kernel, stride, _, _ = _geometry(st)
    st.line(f"{st.out}.fill(0)")
    if _overlapping(kernel, stride):  # a ufunc's where= is NumPy-only: mask the gradient, then add
        share = st.scratch(st.node.dtype, st.fn.graph.nodes[st.node.inputs[2]].shape)

        def add(index, hit):
            st.line(f"np.multiply({g}, {hit}, out={share})")
            st.line(f"np.add({st.out}{index}, {share}, out={st.out}{index})")
        _first_maxima(st, x, y, add)
    else:
        _first_maxima(st, x, y, lambda index, hit: st.line(f"np.copyto({st.out}{index}, {g}, where={hit})"))


def _max_pool2d_gather(st):
    x, u = st.args
    y = st.scratch(st.node.dtype)
    _window_max(st, x, y)
    _first_maxima(st, x, y, lambda index, hit: st.line(f"np.copyto({st.out}, {u}{index}, where={hit})"))


EMIT = {
    "ew": _ew, "sum": _sum, "max": _max, "sum_ew": _sum_ew, "logsumexp": _logsumexp,
    "softmax": lambda st: _softmax_common(st, False), "log_softmax": lambda st: _softmax_common(st, True),
    "softmax_cross_entropy": _softmax_cross_entropy, "softmax_xent_grad": _softmax_xent_grad,
    "one_hot": _one_hot, "matmul": _matmul, "fill": _fill, "concat": _concat, "unslice": _unslice,
    "random_normal": _random_normal,
    "conv2d": _conv2d, "conv2d_input_grad": _conv2d_input_grad, "conv2d_weight_grad": _conv2d_weight_grad,
    "max_pool2d": _max_pool2d, "max_pool2d_grad": _max_pool2d_grad, "max_pool2d_gather": _max_pool2d_gather,
    "avg_pool2d": _avg_pool2d, "avg_pool2d_grad": _avg_pool2d_grad,
}
VIEW_EMIT = {"reshape": _reshape, "transpose": _transpose, "broadcast_to": _broadcast_to, "slice": _slice}
SOURCES = ("input", "param", "const")
PLACEHOLDER = re.compile(r"\b_scratch(\d+)\b")  # temporaries in a draft, before the buffer plan names them


def name_temporaries(lines: list[str], temps: list[str]) -> list[str]:
    """A node's draft statements with the planned buffers in place of their placeholder temporaries."""
    return [PLACEHOLDER.sub(lambda hit: temps[int(hit.group(1)) - 1], text) for text in lines]


class FunctionEmitter:
    """Emits one function computing ``roots`` (and applying ``updates`` in place) of a graph.

    A backend subclass swaps the op tables, the array module prefix and ``translate`` (array-module text).
    """

    EMIT, VIEW_EMIT, BACKEND, XP = EMIT, VIEW_EMIT, BACKEND, "np"

    def __init__(self, graph, module, fname: str):
        self.graph, self.module, self.fname = graph, module, fname
        self.dim_names = {d: d.name for d in module.dims}
        self.printer = NumPyScalarPrinter(self.dim_names)
        self.var: dict[int, str] = {}
        self.helpers: dict[str, tuple] = {}
        needed = graph.needed(graph.roots())
        updates = {nid: name for name, nid in graph.updates.items()}
        late = deferred_updates(graph, needed, {nid: graph.params[name] for nid, name in updates.items()})
        self.updates = {nid: name for nid, name in updates.items() if nid not in late}  # written in place
        self.deferred = {nid: updates[nid] for nid in sorted(late)}  # computed aside, copied in at the end
        for name, nid in {**graph.inputs, **graph.params}.items():
            self.var[nid] = name
        names = Names(self.var.values())
        for nid in sorted(needed):
            if nid not in self.var:
                wanted = f"new_{self.deferred[nid]}" if nid in self.deferred else self._wanted(graph.nodes[nid])
                self.var[nid] = names.fresh(wanted)
        self.names = names
        keep = set(graph.outputs.values()) | set(self.deferred)
        self.drafts: dict[int, list[str]] = {}
        self.plan = plan(graph, needed, keep_alive=keep, needs_buffer=self._needs_buffer,
                         scratch_for=self._scratch_needs)

    def _wanted(self, node) -> str:
        if node.name:
            return node.name
        if node.op == "ew":
            return _expr_label(node.attr("expr"))
        return {"matmul": "mm", "softmax_cross_entropy": "xent", "softmax_xent_grad": "dlogits"}.get(node.op, node.op)

    def _needs_buffer(self, node) -> bool:
        return node.op not in VIEWS and node.op not in SOURCES and node.id not in self.updates

    def _scratch_needs(self, node):
        """Emit the node once with placeholder temporaries (kept as its draft); report what they need."""
        if node.op in VIEWS or node.op in SOURCES:
            return []
        st = Statement(self, node, self.updates.get(node.id) or self.var[node.id], None)
        self._run(st)
        self.drafts[node.id] = st.lines
        return st.requests

    def _run(self, st):
        node = st.node
        if node.id in self.updates:
            _update(st)
        else:
            self._emit(st)
        st.lines = [self.translate(text) for text in st.lines]

    def _emit(self, st):
        node = st.node
        emit = self.EMIT.get(node.op)
        if emit is None:
            raise GraphError(f"{self.BACKEND} backend: cannot emit op {node.op!r} (node {node.label})")
        emit(st)

    def translate(self, text: str) -> str:
        """Statement text for this backend's array module (NumPy text as written)."""
        return text

    def shape_text(self, shape) -> str:
        items = [self.printer.doprint(sympy.sympify(d)) for d in shape]
        return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"

    def rows(self, n) -> str:
        """A cached ``arange(n)`` of row numbers (int64), allocated with the buffers."""
        return self._helper("rows", n)

    def arange(self, n) -> str:
        return self._helper("arange", n)

    def _helper(self, kind, n) -> str:
        key = f"{kind}:{n}"
        if key not in self.helpers:
            self.helpers[key] = (f"_{kind}{len(self.helpers)}", n)
        return f"B[{self.helpers[key][0]!r}]"

    def body(self, w: CodeWriter) -> None:
        p = self.plan
        for nid in p.order:
            node = self.graph.nodes[nid]
            if node.op in FED:
                continue
            comment = f"# {self.describe(node)}  {shapes.fmt_x(node.shape)}"
            name = self.var[nid]
            if node.op == "const":
                w.line(f"{name} = {self.module.constant(node)}  {comment}")
                continue
            st = Statement(self, node, None, [f"B[{b}]" for b in p.scratch.get(nid, [])])
            if node.op in VIEWS:
                w.line(f"{name} = {self.translate(self.VIEW_EMIT[node.op](st))}  {comment}")
                continue
            st.out = self.updates.get(nid) or name
            st.lines = name_temporaries(self.drafts[nid], [f"B[{b}]" for b in p.scratch.get(nid, [])])
            if nid in self.updates:
                w.line(f"{comment} (update of {st.out}, in place)")
                for text in st.lines:
                    w.line(text)
                self._check_numerics(w, node, st.out)
                continue
            buf = f"B[{p.buffer_of[nid]}]"
            if len(st.lines) == 1 and st.lines[0].endswith(f"out={name})"):
                w.line(f"{name} = {st.lines[0][:-len(name) - 1]}{buf})  {comment}")
            else:
                w.line(f"{name} = {buf}  {comment}")
                for text in st.lines:
                    w.line(text)
            self._check_numerics(w, node, name)
        for nid, param in self.deferred.items():
            w.line(f"np.copyto({param}, {self.var[nid]})  # update of {param}, last: statements above read it")

    def describe(self, node) -> str:
        """The comment of a node's statement: its op, with an elementwise expression in terms of variables."""
        if node.op not in ("ew", "sum_ew", "softmax_xent_grad"):
            return _describe(node)
        expr = node.attr("expr") if node.op != "softmax_xent_grad" else node.attr("scale")
        offset = 2 if node.op == "softmax_xent_grad" else 0
        names = {sympy.Symbol(f"_{i}", real=True): sympy.Symbol(self.var[src])
                 for i, src in enumerate(node.inputs[offset:])}
        text = _readable(expr.xreplace(names))
        if node.op == "softmax_xent_grad":
            z, t = (self.var[i] for i in node.inputs[:2])
            return f"softmax_xent_grad: (softmax({z}) - onehot({t}))·{text}"
        if node.op == "sum_ew":
            return f"sum_ew: sum({text}, axis={_axes(node)!r})"
        return f"{_expr_label(expr)}: {text}"

    def _check_numerics(self, w: CodeWriter, node, value: str) -> None:
        """With check_numerics, stop at the first float node whose value holds a NaN or an Inf."""
        if self.module.check_numerics and node.dtype.startswith("float"):
            who = node.name or self.graph.display_name(node.id)
            w.line(f"_check_finite({who!r}, {node.op!r}, {value})")

    def allocation(self) -> list[str]:
        lines = []
        for b in self.plan.buffers:
            users = ", ".join(self.var[u] for u in b.users) or "scratch"
            lines.append(f"{self.XP}.empty({self.shape_text(b.shape)}, {self.XP}.{b.dtype}),  # {users}")
        return lines


def _update(st):
    """The new value of a parameter, computed into the parameter's own array."""
    node = st.node
    if node.op != "ew":
        st.line(f"np.copyto({st.out}, {st.args[0]})")
        return
    _ew(st)


def _expr_label(expr) -> str:
    if expr.is_Add:
        return "add" if all(not (a.as_coeff_Mul()[0] < 0) for a in expr.args) else "sub"
    if expr.is_Mul:
        return "mul"
    if expr.is_Pow:
        return "pow"
    return type(expr).__name__.lower()


def _describe(node) -> str:
    if node.op == "ew":
        return f"{_expr_label(node.attr('expr'))}: {_readable(node.attr('expr'))}"
    details = [f"{k}={v}" for k, v in node.attrs if k in ("axes", "axis", "keepdims", "perm", "k")]
    return node.op + (f" ({', '.join(details)})" if details else "")


def _readable(expr) -> str:
    text = str(expr)
    return text if len(text) <= 60 else text[:57] + "..."


class ModuleEmitter:
    """The whole generated module: docstring, checks, buffers, run / init_params / train_step.

    Backend subclasses override the class attributes and the ``_definitions`` / ``_to_device`` hooks.
    """

    FUNCTION = FunctionEmitter
    TITLE, XP, IMPORTS = "NumPy", "np", ("import numpy as np",)
    ARRAY = "np.ndarray"  # what the checks accept as an array

    def __init__(self, graph, train_graph=None, opt_level: int = 2, check_numerics: bool = False):
        self.runtime = {"feeds", "numerics"} if check_numerics else {"feeds"}  # RUNTIME helpers the module needs
        self.graph, self.train_graph, self.opt_level = graph, train_graph, opt_level
        self.dims = graph.dims()
        self.constants: dict[int, tuple[str, str]] = {}
        self.check_numerics = check_numerics

    def constant(self, node) -> str:
        if node.id not in self.constants:
            data, shape, dtype = node.attr("value")
            arr = np.frombuffer(data, dtype=dtype).reshape(shape)
            name = f"_CONST{len(self.constants)}"
            self.constants[node.id] = (name, self._array_text(f"np.array({arr.tolist()!r}, dtype=np.{dtype})"))
        return self.constants[node.id][0]

    def generator(self, node) -> str:
        """A module-level generator for a ``random_normal`` stream: it advances with every call."""
        seed, stream = node.attr("seed"), node.attr("stream")
        key = ("rng", seed, stream)
        if key not in self.constants:
            self.constants[key] = (f"_RNG{len(self.constants)}", f"{self.XP}.random.default_rng([{seed}, {stream}])")
        return self.constants[key][0]

    def _array_text(self, host: str) -> str:
        """Module-level text for a host (NumPy) array as this backend's array."""
        return host

    RUNTIME = {"feeds": '''
def _explain(feeds, names):
    """The error for feeds that are not a dict of exactly the expected names."""
    if not isinstance(feeds, dict):
        raise ValueError(f"feeds must be a dict of name -> array, not {type(feeds).__name__}")
    extra = sorted(set(feeds) - set(names))
    if extra:
        raise ValueError(f"unknown feeds {extra}; expected {sorted(names)}")
    missing = [n for n in names if n not in feeds]
    raise ValueError(f"missing feeds {missing}: " + ", ".join(f"{n} {_SPEC[n][0]}" for n in missing))


def _shape_of(feeds, name, axis):
    """The size of one axis of a feed: how a symbolic dim is bound."""
    value = feeds[name]
    if not isinstance(value, ARRAY_TYPES) or value.ndim <= axis:
        got = getattr(value, "shape", type(value).__name__)
        raise ValueError(f"{name} expects shape {_SPEC[name][0]}, got {got}")
    return value.shape[axis]


class _Buffers(list):
    """Planned buffers by index, plus named helper arrays (row numbers) by key."""

    def __init__(self, arrays, named):
        super().__init__(arrays)
        self.named = named

    def __getitem__(self, key):
        return self.named[key] if isinstance(key, str) else list.__getitem__(self, key)
''', "numerics": '''
def _check_finite(name, op, value):
    """Raise FloatingPointError naming the node whose value is not finite (check_numerics)."""
    if not XP.all(XP.isfinite(value)):
        bad = "NaN" if XP.any(XP.isnan(value)) else "Inf"
        raise FloatingPointError(f"node {name!r} (op {op}) produced {bad}")
'''}

    def _definitions(self, w: CodeWriter) -> None:
        """Module-level definitions the functions use: runtime helpers (the kernels, for CuPy)."""
        for key, text in self.RUNTIME.items():
            if key in self.runtime:
                text = text.replace("ARRAY_TYPES", self.ARRAY).replace("XP.", f"{self.XP}.")
                w.lines.extend(text.strip().splitlines())
                w.line("")
                w.line("")

    def _to_device(self, w: CodeWriter, *tables: str) -> None:
        """Statements converting the arrays of the named dicts for the functions; none for NumPy."""

    def _train_return(self, w: CodeWriter, call: str) -> None:
        w.line(f"return {call}")

    def source(self) -> str:
        w = CodeWriter()
        g = self.graph
        fns = [("_compute", self.FUNCTION(g, self, "_compute"))]
        if self.train_graph is not None:
            fns.append(("_train", self.FUNCTION(self.train_graph, self, "_train")))
        w.line(f'"""{g.name}: generated by graphc from graph {g.name!r} '
               f'({self.TITLE} backend, opt level {self.opt_level}).')
        w.line("")
        w.line(f"Standalone: needs only {self.TITLE}. Call run(feeds) for the outputs"
               + (", train_step(params, batch) for one SGD step." if self.train_graph is not None else "."))
        w.line("Arrays returned by train_step live in reused buffers: copy them to keep them past the next call.")
        w.line("")
        for title, table in (("Inputs", g.inputs), ("Params", g.params), ("Outputs", g.outputs)):
            w.line(f"{title}:")
            for name, nid in table.items():
                node = g.nodes[nid]
                extra = f", init {node.attr('init')[0]}" if node.op == "param" else ""
                w.line(f"    {name}: {shapes.fmt(node.shape)} {node.dtype}{extra}")
        w.line('"""')
        for text in self.IMPORTS:
            w.line(text)
        w.line("")
        body = {}
        for fname, fe in fns:
            cw = CodeWriter()
            cw.depth = 1
            fe.body(cw)
            body[fname] = cw
        w.line("")
        w.line(f"DIMS = {tuple(d.name for d in self.dims)!r}")
        w.line("INPUTS = {" + ", ".join(f"{n!r}: ({shapes.fmt(g.nodes[i].shape)!r}, {g.nodes[i].dtype!r})"
                                        for n, i in g.inputs.items()) + "}")
        w.line("PARAMS = {" + ", ".join(f"{n!r}: ({shapes.fmt(g.nodes[i].shape)!r}, {g.nodes[i].dtype!r}, "
                                        f"{g.nodes[i].attr('init')!r})" for n, i in g.params.items()) + "}")
        w.line(f"OUTPUTS = {tuple(g.outputs)!r}")
        for name, text in self.constants.values():
            w.line(f"{name} = {text}")
        w.line("")
        w.line("")
        self._definitions(w)
        self._checks(w)
        for fname, fe in fns:
            self._buffers(w, fname, fe)
            args = ", ".join(["B", *(d.name for d in self.dims), *fe.graph.inputs, *fe.graph.params, *fe.graph.hypers])
            w.line("")
            with w.block(f"def {fname}({args}):"):
                w.lines.extend(body[fname].lines)
                outs = ", ".join(f"{n!r}: {fe.var[i]}" for n, i in fe.graph.outputs.items())
                w.line(f"return {{{outs}}}")
            w.line("")
        self._api(w, fns)
        w.line("")
        w.line("")
        w.lines.extend(inspect.getsource(init_array).rstrip().splitlines())
        return w.text()

    def _checks(self, w: CodeWriter) -> None:
        w.line("")
        with w.block("def _check(feeds, names, dims=None):"):
            w.line('"""Check feeds against the declared shapes and dtypes; returns the bound dims, in DIMS order."""')
            with w.block("if not isinstance(feeds, dict) or len(feeds) != len(names):"):
                w.line("_explain(feeds, names)")
            with w.block("for name in names:"):
                with w.block("if name not in feeds:"):
                    w.line("_explain(feeds, names)")
            with w.block("if dims is None:"):
                for d in self.dims:
                    w.line(f"{d.name} = {self._binding(d)}")
                w.line(f"dims = ({''.join(d.name + ', ' for d in self.dims)})")
            with w.block("for name in names:"):
                w.line("value = feeds[name]")
                w.line("shape, dtype = _SPEC[name]")
                with w.block(f"if not isinstance(value, {self.ARRAY}) or value.dtype != dtype:"):
                    w.line(f'got = value.dtype if isinstance(value, {self.ARRAY}) else type(value).__name__')
                    w.line('raise ValueError(f"{name} expects {dtype} with shape {shape}, got {got}")')
                with w.block("if value.shape != _SHAPES[name](*dims):"):
                    w.line('raise ValueError(f"{name} expects shape {shape} = {_SHAPES[name](*dims)}, "')
                    w.line('                 f"got {value.shape}")')
            w.line("return dims")
        w.line("")
        g = self.graph
        spec = {**g.inputs, **g.params}
        w.line("_SPEC = {" + ", ".join(f"{n!r}: ({shapes.fmt(g.nodes[i].shape)!r}, {g.nodes[i].dtype!r})"
                                       for n, i in spec.items()) + "}")
        dims = ", ".join(d.name for d in self.dims)
        printer = NumPyScalarPrinter()
        w.line("_SHAPES = {")
        for n, i in spec.items():
            dims_text = ", ".join(printer.doprint(d) for d in g.nodes[i].shape)
            tup = f"({dims_text},)" if len(g.nodes[i].shape) == 1 else f"({dims_text})"
            w.line(f"    {n!r}: lambda {dims}: {tup},".replace("lambda :", "lambda:"))  # shape at the bound dims
        w.line("}")

    def _binding(self, d) -> str:
        """How a symbolic dim is read off the feeds: the first axis that is exactly that dim."""
        g = self.graph
        for name, nid in g.inputs.items():
            for axis, e in enumerate(g.nodes[nid].shape):
                if e == d:
                    return f'_shape_of(feeds, {name!r}, {axis})'
        for name, nid in g.inputs.items():
            for axis, e in enumerate(g.nodes[nid].shape):
                if d in e.free_symbols:
                    n = sympy.Symbol("_n")
                    (solution,) = sympy.solve(sympy.Eq(e, n), d)
                    text = NumPyScalarPrinter({n: f"_shape_of(feeds, {name!r}, {axis})"}).doprint(solution)
                    return f"int({text})"
        raise GraphError(f"dim {d} cannot be bound from the inputs of graph {g.name!r}")

    def _buffers(self, w: CodeWriter, fname: str, fe: FunctionEmitter) -> None:
        dims = ", ".join(d.name for d in self.dims)
        w.line("")
        with w.block(f"def {fname}_allocate({dims}):"):
            w.line('"""The buffers of one call, planned from liveness and reused across nodes."""')
            w.line("B = [")
            for text in fe.allocation():
                w.line("    " + text)
            w.line("]")
            w.line("return _Buffers(B, {" + ", ".join(
                f"{hname!r}: {self.XP}.arange({fe.printer.doprint(sympy.sympify(n))}, dtype=np.int64)"
                for hname, n in fe.helpers.values()) + "})")
        w.line("")
        w.line(f"{fname}_cache = {{}}")

    def _api(self, w: CodeWriter, fns) -> None:
        g = self.graph
        dims = ", ".join(d.name for d in self.dims)
        inputs = list(g.inputs)
        params = list(g.params)
        with w.block("def run(feeds, copy=True):"):
            w.line('"""The graph\'s outputs for feeds (every input and param by name): fresh arrays, or with')
            w.line('copy=False the module\'s reused buffers themselves, valid until the next call."""')
            w.line(f"dims = _check(feeds, {tuple(inputs + params)!r})")
            self._to_device(w, "feeds")
            w.line("B = _compute_cache.get(dims)")
            with w.block("if B is None:"):
                w.line("B = _compute_cache[dims] = _compute_allocate(*dims)")
            args = ", ".join(f"feeds[{n!r}]" for n in inputs + params)
            w.line(f"out = _compute(B, *dims, {args})")
            fresh = f"{{name: {self.XP}.array(value, copy=True) for name, value in out.items()}}"
            w.line(f"return {fresh} if copy else out")
        w.line("")
        w.line("")
        with w.block("def init_params(seed=0):"):
            w.line('"""Fresh parameters from their declared initializers (same values as gc.init_params)."""')
            ones = ", ".join("1" for _ in self.dims)
            fresh = self._array_text(f"init_array(spec[2], _SHAPES[name]({ones}), spec[1], seed, index)")
            w.line(f"return {{name: {fresh} for index, (name, spec) in enumerate(PARAMS.items())}}")
        if len(fns) > 1:
            w.line("")
            w.line("")
            hypers = self.train_graph.hypers
            signature = "".join(f", {k}={v!r}" for k, v in hypers.items())
            with w.block(f"def train_step(params, batch{signature}):"):
                w.line('"""One SGD step: updates the param arrays in place; returns the outputs (reused buffers)."""')
                w.line(f"dims = _check(batch, {tuple(inputs)!r})")
                w.line(f"_check(params, {tuple(params)!r}, dims)")
                self._to_device(w, "batch", "params")
                w.line("B = _train_cache.get(dims)")
                with w.block("if B is None:"):
                    w.line("B = _train_cache[dims] = _train_allocate(*dims)")
                args = ", ".join([*(f"batch[{n!r}]" for n in inputs), *(f"params[{n!r}]" for n in params), *hypers])
                self._train_return(w, f"_train(B, *dims, {args})")
        del dims
