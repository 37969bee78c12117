"""The NumPy lowering of convolution and pooling: windowed views, one GEMM per conv, one ufunc per kernel offset
for pooling (written against the array module's API, ``st.xp``).

A stride-1 convolution reads its windows along whole padded rows: with the image framed by zeros and flattened,
the window at kernel offset (a, b) of every output position is one contiguous run ``a·Wp + b : … + OH·Wp`` (the
outputs in the frame's margin are computed and dropped; a row keeps one margin, the right one being the next row's
left). Copying runs of OH·Wp elements instead of rows of OW is what makes im2col cheap on small images; the input
gradient is then the same convolution of the gradient against the flipped kernel, so no overlapping adds are
needed."""
from __future__ import annotations

import sympy

from graphc.backends.numpy.lowering import LOWERINGS


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
    windows = f"{st.xp}.lib.stride_tricks.sliding_window_view({xp}, {tuple(kernel)}, axis=(2, 3))"
    st.line(f"{st.xp}.copyto({cols}, {windows}{step}.transpose{perm})")
    return cols


def _row_windows(st, x: str, shape, kernel, padding):
    """Every stride-1 window of ``x`` (of ``shape``, NCHW) framed by ``padding``, as runs along the padded rows:
    a scratch (C, kh, kw, m, OH·Wp); returns it with the frame's width Wp and the output's (OH, OW)."""
    m, c, h, w = shape
    kh, kw = kernel
    (top, bottom), (left, right) = padding
    # a row holds one margin: a window reaching past a row's end reads the next row's left margin, zeros as well
    hp, ow = h + top + bottom, w + left + right - kw + 1
    wp = w + max(left, right, ow - w)  # and every output of a row fits in it
    oh, run = hp - kh + 1, (hp - kh + 1) * wp
    # a convolution and its weight gradient read the same windows of x: the first of them gathers them
    cols, first = st.shared(("row_windows", x, shape, kernel, padding), st.node.dtype, (c, kh, kw, m, run))
    if not first:
        return cols, wp, (oh, ow)
    frame = st.scratch(st.node.dtype, (c, m, hp + 1, wp))  # one more row of zeros: the last runs stay inside
    st.line(f"{frame}.fill(0)")
    st.line(f"{frame}[:, :, {top}:{top + h}, {left}:{left + w}] = {x}.transpose(1, 0, 2, 3)")
    runs = f"{st.xp}.lib.stride_tricks.sliding_window_view({frame}.reshape({c}, -1, {(hp + 1) * wp}), {run}, axis=2)"
    st.line(f"{st.xp}.copyto({cols}, {runs}[:, :, :{kh * wp}].reshape({c}, -1, {kh}, {wp}, {run})[:, :, :, :{kw}]"
            f".transpose(0, 2, 3, 1, 4))  # window (a, b) of every output: the run from a·{wp} + b")
    return cols, wp, (oh, ow)


def _row_conv(st, x: str, shape, kernel, padding, weights: str, out_channels: int) -> None:
    """The node's output (m, O, OH, OW): the stride-1 convolution of ``x`` with ``weights`` (O, C·kh·kw), one GEMM
    over the windows along padded rows and one copy of the outputs outside the frame's margin."""
    cols, wp, (oh, ow) = _row_windows(st, x, shape, kernel, padding)
    rows = st.scratch(st.node.dtype, (out_channels, shape[0], oh, wp))
    k = shape[1] * kernel[0] * kernel[1]
    st.line(f"{st.xp}.matmul({weights}, {cols}.reshape({k}, -1), out={rows}.reshape({out_channels}, -1))")
    st.line(f"{st.xp}.copyto({st.out}, {rows}[:, :, :, :{ow}].transpose(1, 0, 2, 3))")


def _stride_one(st) -> bool:
    return tuple(st.node.attr("stride")) == (1, 1)


@LOWERINGS.register("conv2d")
def _conv2d(st):
    x, w = st.args
    n = st.node
    shape = _shape(st, 0)
    kernel = _shape(st, 1)[2:]
    m, o, oh, ow = _shape(st)
    k, p = shape[1] * kernel[0] * kernel[1], oh * ow
    if _stride_one(st):
        return _row_conv(st, x, shape, kernel, n.attr("padding"), f"{w}.reshape({o}, {k})", o)
    cols = _im2col(st, x, shape, kernel, n.attr("stride"), n.attr("padding"), (oh, ow))
    st.line(f"{st.xp}.matmul({w}.reshape({o}, {k}), {cols}.reshape({st.dims((m, k, p))}), "
            f"out={st.out}.reshape({st.dims((m, o, p))}))")


@LOWERINGS.register("conv2d_weight_grad")
def _conv2d_weight_grad(st):
    # Σ over batch and positions as the inner dim of one GEMM: (O, m·OH·OW) @ (m·OH·OW, C·kh·kw)
    x, g = st.args
    n = st.node
    shape, kernel = _shape(st, 0), n.attr("kernel")
    m, o, oh, ow = _shape(st, 1)
    k = shape[1] * kernel[0] * kernel[1]
    if _stride_one(st):  # windows along padded rows; the gradient is 0 at the outputs in the frame's margin
        cols, wp, _ = _row_windows(st, x, shape, kernel, n.attr("padding"))
        g_t = st.scratch(n.dtype, (o, m, oh, wp))
        st.line(f"{g_t}[:, :, :, {ow}:] = 0")
        st.line(f"{st.xp}.copyto({g_t}[:, :, :, :{ow}], {g}.transpose(1, 0, 2, 3))")
    else:
        cols = _im2col(st, x, shape, kernel, n.attr("stride"), n.attr("padding"), (oh, ow), batch_major=False)
        g_t = st.scratch(n.dtype, (o, m, oh, ow))
        st.line(f"{st.xp}.copyto({g_t}, {g}.transpose(1, 0, 2, 3))")
    st.line(f"{st.xp}.matmul({g_t}.reshape({o}, -1), {cols}.reshape({k}, -1).T, out={st.out}.reshape({o}, {k}))")


@LOWERINGS.register("conv2d_input_grad")
def _conv2d_input_grad(st):
    g, w = st.args
    n = st.node
    m, c, h, wd = _shape(st)
    o, _, kh, kw = _shape(st, 1)
    oh, ow = _shape(st, 0)[2:]
    stride, ((top, bottom), (left, right)) = n.attr("stride"), n.attr("padding")
    k, p = c * kh * kw, oh * ow
    full = ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right))  # the frame of the transposed conv
    if _stride_one(st) and min(min(full[0]), min(full[1])) >= 0:
        # the convolution of the gradient, framed by kernel − 1 − padding, with the kernel flipped and transposed
        flipped = st.scratch(n.dtype, (c, o, kh, kw))
        st.line(f"{st.xp}.copyto({flipped}, {w}.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])")
        return _row_conv(st, g, (m, o, oh, ow), (kh, kw), full, f"{flipped}.reshape({c}, {o * kh * kw})", c)
    # each kernel offset's share of the gradient lands on the inputs that offset met: one GEMM, then one add per offset
    shares = st.scratch(n.dtype, (m, c, kh, kw, oh, ow))
    st.line(f"{st.xp}.matmul({w}.reshape({o}, {k}).T, {g}.reshape({st.dims((m, o, p))}), "
            f"out={shares}.reshape({st.dims((m, k, p))}))")
    padded = any((top, bottom, left, right))
    dxp = st.scratch(n.dtype, (m, c, h + top + bottom, wd + left + right)) if padded else st.out
    st.line(f"{dxp}.fill(0)")
    for a, b in _offsets((kh, kw)):
        view = f"{dxp}{_offset(a, b, stride, (oh, ow))}"
        st.line(f"{st.xp}.add({view}, {shares}[:, :, {a}, {b}], out={view})")
    if padded:
        st.line(f"{st.xp}.copyto({st.out}, {dxp}[:, :, {top}:{top + h}, {left}:{left + wd}])")


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
        st.line(f"{st.xp}.copyto({into}, {view})" if i == 0 else f"{st.xp}.maximum({into}, {view}, out={into})")


@LOWERINGS.register("max_pool2d")
def _max_pool2d(st):
    _window_max(st, st.args[0], st.out)


@LOWERINGS.register("avg_pool2d")
def _avg_pool2d(st):
    kernel, stride, _, _ = _geometry(st)
    x, out_hw = st.args[0], _pool_out_hw(st)
    for i, (a, b) in enumerate(_offsets(kernel)):
        view = f"{x}{_offset(a, b, stride, out_hw)}"
        st.line(f"{st.xp}.copyto({st.out}, {view})" if i == 0 else f"{st.xp}.add({st.out}, {view}, out={st.out})")
    st.line(f"{st.xp}.multiply({st.out}, {st.value(sympy.Rational(1, kernel[0] * kernel[1]))}, out={st.out})")


@LOWERINGS.register("avg_pool2d_grad")
def _avg_pool2d_grad(st):
    kernel, stride, _, _ = _geometry(st)
    g, out_hw, scale = st.args[0], _pool_out_hw(st), st.value(sympy.Rational(1, kernel[0] * kernel[1]))
    st.line(f"{st.out}.fill(0)")
    if not _overlapping(kernel, stride):  # each input is in one window at most: write the shares directly
        for a, b in _offsets(kernel):
            st.line(f"{st.xp}.multiply({g}, {scale}, out={st.out}{_offset(a, b, stride, out_hw)})")
        return
    share = st.scratch(st.node.dtype, st.fn.graph.nodes[st.node.inputs[0]].shape)
    st.line(f"{st.xp}.multiply({g}, {scale}, out={share})")
    for a, b in _offsets(kernel):
        view = f"{st.out}{_offset(a, b, stride, out_hw)}"
        st.line(f"{st.xp}.add({view}, {share}, out={view})")


def _first_maxima(st, x: str, y: str, act) -> None:
    """For each kernel offset in window order, ``act(offset view, hit)`` where ``hit`` marks the windows whose
    first maximum (``y``) sits at that offset; ``free`` marks the windows whose maximum no earlier offset held."""
    kernel, stride, _, _ = _geometry(st)
    out_hw = _pool_out_hw(st)
    pooled = (st.node.shape[0], st.fn.graph.nodes[st.node.inputs[0]].shape[1], *out_hw)
    offsets = _offsets(kernel)
    hit = st.scratch("bool", pooled)
    free = st.scratch("bool", pooled) if len(offsets) > 1 else None
    for i, (a, b) in enumerate(offsets):
        index = _offset(a, b, stride, out_hw)
        st.line(f"{st.xp}.equal({x}{index}, {y}, out={hit})")
        if i == 0 and free:
            st.line(f"{st.xp}.logical_not({hit}, out={free})")
        elif i > 0:
            st.line(f"{st.xp}.logical_and({hit}, {free}, out={hit})")
            if i < len(offsets) - 1:
                st.line(f"{st.xp}.logical_xor({free}, {hit}, out={free})")
        act(index, hit)


@LOWERINGS.register("max_pool2d_grad")
def _max_pool2d_grad(st):
    x, y, g = st.args
    kernel, stride, _, (_, h, w) = _geometry(st)
    out_hw = _pool_out_hw(st)
    tiled = tuple(stride) == tuple(kernel) and (h, w) == (out_hw[0] * kernel[0], out_hw[1] * kernel[1])
    if not tiled:  # inputs in no window (or in several) start from zero
        st.line(f"{st.out}.fill(0)")
    if _overlapping(kernel, stride):  # a ufunc's where= is NumPy-only: mask the gradient, then add
        share = st.scratch(st.node.dtype, st.fn.graph.nodes[st.node.inputs[2]].shape)

        def add(index, hit):
            st.line(f"{st.xp}.multiply({g}, {hit}, out={share})")
            st.line(f"{st.xp}.add({st.out}{index}, {share}, out={st.out}{index})")
        _first_maxima(st, x, y, add)
    else:  # each input is in one window at most: the gradient where it is the first maximum, else 0
        _first_maxima(st, x, y, lambda index, hit: st.line(f"{st.xp}.multiply({g}, {hit}, out={st.out}{index})"))


@LOWERINGS.register("max_pool2d_gather")
def _max_pool2d_gather(st):
    x, u = st.args
    y = st.scratch(st.node.dtype)
    _window_max(st, x, y)
    _first_maxima(st, x, y, lambda index, hit: st.line(f"{st.xp}.copyto({st.out}, {u}{index}, where={hit})"))

