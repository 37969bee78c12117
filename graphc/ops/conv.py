"""Convolution and pooling over NCHW tensors: conv2d, max/avg pooling, flatten.

Layout follows PyTorch/ONNX: input ``(m, C_in, H, W)``, weights ``(C_out, C_in, kh, kw)``. The batch dim may be
symbolic; channels and spatial sizes are concrete ints, so every window geometry is checked when the graph is
built. Geometry attrs are plain int tuples: ``stride=(sh, sw)``, ``padding=((top, bottom), (left, right))``,
``kernel=(kh, kw)``.

The gradient ops are primitives too, and each pair is closed under differentiation (the VJP of a gradient op is
built from the forward op and the other gradient op), so gradients of gradients work.
"""
from __future__ import annotations

import numpy as np
import sympy
from numpy.lib.stride_tricks import sliding_window_view

from graphc.core import shapes
from graphc.core.dtypes import is_float, promote
from graphc.core.errors import GraphError
from graphc.core.registry import defop, fail
from graphc.dsl import Tensor, apply
from graphc.ops.batching import mixes
from graphc.ops.shape import reshape


# -- geometry -----------------------------------------------------------------------------------------
def _check_nchw(op: str, node, role: str, layout: str, *operands):
    """The concrete ``(C, H, W)`` of a 4-d float tensor (the batch dim may be symbolic)."""
    if len(node.shape) != 4:
        raise fail(op, f"{role} must be 4-d {layout}, not {shapes.fmt(node.shape)}", *operands)
    if not is_float(node.dtype):
        raise fail(op, f"{role} must be a float tensor, not {node.dtype}", *operands)
    rest = node.shape[1:]
    if any(not d.is_number for d in rest):
        raise fail(op, f"{role} {shapes.fmt(node.shape)}: all dims but the first must be concrete ints "
                   f"{layout}", *operands)
    return tuple(int(d) for d in rest)


def _check_weights(op: str, w, *operands):
    """The concrete ``(C_out, C_in, kh, kw)`` of a float weight tensor."""
    if len(w.shape) != 4 or any(not d.is_number for d in w.shape):
        raise fail(op, f"weights must be 4-d (C_out, C_in, kh, kw) with concrete dims, not {shapes.fmt(w.shape)}",
                   *operands)
    if not is_float(w.dtype):
        raise fail(op, f"weights must be a float tensor, not {w.dtype}", *operands)
    return tuple(int(d) for d in w.shape)


def _out_hw(op: str, hw, kernel, stride, padding, *operands):
    """Output spatial size ``floor((n + lo + hi − k) / s) + 1`` per axis; GraphError where a window cannot fit."""
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(hw, padding))
    if any(k > p for k, p in zip(kernel, padded)):
        pad = "" if not any(map(any, padding)) else f" (input {hw[0]}×{hw[1]}, padding {padding})"
        raise fail(op, f"kernel {kernel[0]}×{kernel[1]} is larger than the padded input "
                   f"{padded[0]}×{padded[1]}{pad}", *operands)
    return tuple((p - k) // s + 1 for p, k, s in zip(padded, kernel, stride))


def _nchw(*dims) -> tuple:
    return tuple(sympy.sympify(d) for d in dims)


def _check_spatial(op: str, node, role: str, expected, *operands):
    if tuple(int(d) for d in node.shape[2:]) != tuple(expected):
        raise fail(op, f"{role} has spatial size {shapes.fmt(node.shape[2:])}, the geometry gives "
                   f"{shapes.fmt(expected)}", *operands)


def _pair(op: str, value, what: str, node, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints, each ≥ ``minimum``, as a pair."""
    def ok(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= minimum
    if ok(value):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(map(ok, value)):
        return int(value[0]), int(value[1])
    raise fail(op, f"{what} must be an int ≥ {minimum} or a pair of them, not {value!r}", node)


def _padding(op: str, padding, hw, kernel, stride, node) -> tuple:
    """``((top, bottom), (left, right))`` from an int, a pair, a pair of pairs, ``"valid"`` or ``"same"``.

    ``"same"`` gives ``ceil(n / s)`` outputs per axis, the odd pixel of padding going after (TensorFlow,
    ONNX ``SAME_UPPER``); with stride 1 the output has the input's size.
    """
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding == "same":
        total = [max((-(-n // s) - 1) * s + k - n, 0) for n, k, s in zip(hw, kernel, stride)]
        return tuple((t // 2, t - t // 2) for t in total)
    if isinstance(padding, (tuple, list)) and len(padding) == 2 and all(
            isinstance(p, (tuple, list)) for p in padding):
        return tuple(_pair(op, p, "padding", node, 0) for p in padding)
    if isinstance(padding, str):
        raise fail(op, f"padding must be an int, a pair, 'same' or 'valid', not {padding!r}", node)
    ph, pw = _pair(op, padding, "padding", node, 0)
    return (ph, ph), (pw, pw)


# -- NumPy reference: windowed views and tensordot, no loops over pixels -------------------------------
def _windows(x, kernel, stride):
    """``(m, C, OH, OW, kh, kw)`` view of the ``kernel`` windows of ``x`` taken every ``stride``."""
    return sliding_window_view(x, tuple(kernel), axis=(2, 3))[:, :, ::stride[0], ::stride[1]]


def _pad(x, padding):
    return np.pad(x, ((0, 0), (0, 0), *padding)) if any(map(any, padding)) else x


def _spread(g, kernel, span, stride):
    """``g`` placed every ``stride`` inside zeros framed by ``kernel − 1``: the stride-1 ``kernel`` windows of
    the result, one per position of ``span``, hold the outputs whose windows covered that position."""
    (kh, kw), (sh, sw) = kernel, stride
    m, c, oh, ow = g.shape
    out = np.zeros((m, c, span[0] + kh - 1, span[1] + kw - 1), dtype=g.dtype)
    out[:, :, kh - 1:kh + (oh - 1) * sh:sh, kw - 1:kw + (ow - 1) * sw:sw] = g
    return out


def conv2d_ref(x, w, stride, padding):
    win = _windows(_pad(x, padding), w.shape[2:], stride)
    return np.tensordot(win, w, axes=((1, 4, 5), (1, 2, 3))).transpose(0, 3, 1, 2)


def conv2d_input_grad_ref(g, w, stride, padding, input_hw):
    # a transposed convolution: stride-1 windows over the spread gradient against the flipped kernel
    (top, bottom), (left, right) = padding
    span = (input_hw[0] + top + bottom, input_hw[1] + left + right)
    win = _windows(_spread(g, w.shape[2:], span, stride), w.shape[2:], (1, 1))
    dx = np.tensordot(win, w[:, :, ::-1, ::-1], axes=((1, 4, 5), (0, 2, 3))).transpose(0, 3, 1, 2)
    return dx[:, :, top:top + input_hw[0], left:left + input_hw[1]]


def conv2d_weight_grad_ref(x, g, stride, padding, kernel):
    win = _windows(_pad(x, padding), kernel, stride)
    return np.tensordot(g, win, axes=((0, 2, 3), (0, 2, 3)))


def avg_pool2d_grad_ref(g, kernel, stride, input_hw):
    box = _windows(_spread(g, kernel, input_hw, stride), kernel, (1, 1)).sum(axis=(4, 5))
    return box / (kernel[0] * kernel[1])


def _argmax(x, kernel, stride):
    """Index (row-major within the window) of the first maximum of each window."""
    win = _windows(x, kernel, stride)
    return win.reshape(*win.shape[:4], -1).argmax(axis=-1)


def max_pool2d_grad_ref(x, g, kernel, stride):
    # each output's gradient goes to its window's first maximum; overlapping windows accumulate (bincount)
    m, c, h, w = x.shape
    at = _argmax(x, kernel, stride)
    oh, ow = at.shape[2:]
    rows = np.arange(oh)[:, None] * stride[0] + at // kernel[1]
    cols = np.arange(ow) * stride[1] + at % kernel[1]
    flat = (np.arange(m * c).reshape(m, c, 1, 1) * h + rows) * w + cols
    return np.bincount(flat.ravel(), weights=g.ravel(), minlength=x.size).reshape(x.shape)


def max_pool2d_gather_ref(x, u, kernel, stride):
    win = _windows(u, kernel, stride)
    return np.take_along_axis(win.reshape(*win.shape[:4], -1), _argmax(x, kernel, stride)[..., None], -1)[..., 0]


def _impl(ref, *attr_names):
    """``impl(node, env, *arrays)`` calling ``ref(*arrays, *attrs)`` and returning the node's dtype."""
    def impl(node, env, *arrays):
        out = ref(*arrays, *(node.attr(a) for a in attr_names))
        return np.ascontiguousarray(out, dtype=node.dtype)
    return impl


# -- conv2d and its two gradients ---------------------------------------------------------------------
def _conv_infer(nodes, attrs):
    x, w = nodes
    c_in, h, wd = _check_nchw("conv2d", x, "input", "(m, C_in, H, W)", x, w)
    c_out, c_w, kh, kw = _check_weights("conv2d", w, x, w)
    if c_in != c_w:
        raise fail("conv2d", f"channel mismatch: input has {c_in} channels (dim 1 of {x.label}), "
                   f"weights expect {c_w} (dim 1 of {w.label})", x, w)
    oh, ow = _out_hw("conv2d", (h, wd), (kh, kw), attrs["stride"], attrs["padding"], x, w)
    return _nchw(x.shape[0], c_out, oh, ow), promote(x.dtype, w.dtype)


def _conv_input_grad_infer(nodes, attrs):
    g, w = nodes
    op = "conv2d_input_grad"
    c_out, _, _ = _check_nchw(op, g, "output gradient", "(m, C_out, OH, OW)", g, w)
    c_w_out, c_in, kh, kw = _check_weights(op, w, g, w)
    if c_out != c_w_out:
        raise fail(op, f"channel mismatch: gradient has {c_out} channels, weights {c_w_out}", g, w)
    h, wd = attrs["input_hw"]
    _check_spatial(op, g, "output gradient", _out_hw(op, (h, wd), (kh, kw), attrs["stride"], attrs["padding"], g, w),
                   g, w)
    return _nchw(g.shape[0], c_in, h, wd), promote(g.dtype, w.dtype)


def _conv_weight_grad_infer(nodes, attrs):
    x, g = nodes
    op = "conv2d_weight_grad"
    c_in, h, wd = _check_nchw(op, x, "input", "(m, C_in, H, W)", x, g)
    c_out, _, _ = _check_nchw(op, g, "output gradient", "(m, C_out, OH, OW)", x, g)
    if x.shape[0] != g.shape[0]:
        raise fail(op, "input and output gradient have different batch dims", x, g)
    kh, kw = attrs["kernel"]
    _check_spatial(op, g, "output gradient", _out_hw(op, (h, wd), (kh, kw), attrs["stride"], attrs["padding"], x, g),
                   x, g)
    return _nchw(c_out, c_in, kh, kw), promote(x.dtype, g.dtype)


def _hw(t: Tensor) -> tuple[int, int]:
    return int(t.shape[2]), int(t.shape[3])


def _kernel(w: Tensor) -> tuple[int, int]:
    return int(w.shape[2]), int(w.shape[3])


def _conv(x: Tensor, w: Tensor, stride, padding) -> Tensor:
    return apply("conv2d", [x, w], stride=stride, padding=padding)


def conv2d_input_grad(g: Tensor, w: Tensor, stride, padding, input_hw) -> Tensor:
    """∂/∂x of ``conv2d(x, w)`` seeded with ``g``: the transposed convolution, cropped to ``input_hw``."""
    return apply("conv2d_input_grad", [g, w], stride=stride, padding=padding, input_hw=tuple(input_hw))


def conv2d_weight_grad(x: Tensor, g: Tensor, stride, padding, kernel) -> Tensor:
    """∂/∂w of ``conv2d(x, w)`` seeded with ``g``: windows of ``x`` weighted by ``g``, summed over batch and space."""
    return apply("conv2d_weight_grad", [x, g], stride=stride, padding=padding, kernel=tuple(kernel))


# the three ops are the partial derivatives of one trilinear form Σ x_win·g·w, so each one's VJP is the other two
def _conv_vjp(out, g, x, w, stride, padding):
    return [conv2d_input_grad(g, w, stride, padding, _hw(x)), conv2d_weight_grad(x, g, stride, padding, _kernel(w))]


def _conv_input_grad_vjp(out, u, g, w, stride, padding, input_hw):
    return [_conv(u, w, stride, padding),
            conv2d_weight_grad(u, g, stride, padding, _kernel(w))]


def _conv_weight_grad_vjp(out, u, x, g, stride, padding, kernel):
    return [conv2d_input_grad(g, u, stride, padding, _hw(x)), _conv(x, u, stride, padding)]


# batch rules: the examples stay apart where they sit on axis 0 of the input and the weights are shared (the
# per-example gradients of the weights are not built: no example_grad rule, so per_example_grads refuses them)
def _conv_batch_axis(node, ins, axes):
    x_axis, w_axis = axes
    if w_axis is not None or x_axis != 0:
        raise mixes(node, ins, "convolves across the batch axis" if w_axis is None else "has per-example weights")
    return 0


def _pool_batch_axis(node, ins, axes):
    (a,) = axes
    if a >= 2:
        raise mixes(node, ins, f"pools along the batch axis (axis {a})")
    return a


defop("conv2d", infer=_conv_infer, vjp=_conv_vjp, impl=_impl(conv2d_ref, "stride", "padding"), var="conv",
      batch_axis=_conv_batch_axis)
defop("conv2d_input_grad", infer=_conv_input_grad_infer, vjp=_conv_input_grad_vjp, var="conv_dx",
      impl=_impl(conv2d_input_grad_ref, "stride", "padding", "input_hw"))
defop("conv2d_weight_grad", infer=_conv_weight_grad_infer, vjp=_conv_weight_grad_vjp, var="conv_dw",
      impl=_impl(conv2d_weight_grad_ref, "stride", "padding", "kernel"))


def _need_tensor(op: str, *values):
    for v in values:
        if not isinstance(v, Tensor):
            raise GraphError(f"{op}: operands must be tensors (use gc.const for arrays), got {type(v).__name__}")


def conv2d(x: Tensor, w: Tensor, stride=1, padding=0, bias: Tensor | None = None) -> Tensor:
    """2-d cross-correlation of ``x (m, C_in, H, W)`` with ``w (C_out, C_in, kh, kw)`` → ``(m, C_out, OH, OW)``.

    ``stride``: an int or ``(sh, sw)``. ``padding``: an int, ``(ph, pw)``, ``((top, bottom), (left, right))``,
    ``"valid"`` (none) or ``"same"`` (``ceil(H / sh)`` outputs). ``bias``: optional ``(C_out,)`` added per channel.
    """
    _need_tensor("conv2d", x, w)
    _, h, wd = _check_nchw("conv2d", x.node, "input", "(m, C_in, H, W)", x.node, w.node)
    _, _, kh, kw = _check_weights("conv2d", w.node, x.node, w.node)
    stride = _pair("conv2d", stride, "stride", x.node, 1)
    pads = _padding("conv2d", padding, (h, wd), (kh, kw), stride, x.node)
    y = _conv(x, w, stride, pads)
    if bias is None:
        return y
    _need_tensor("conv2d", bias)
    if tuple(bias.shape) != (y.shape[1],):
        raise fail("conv2d", f"bias must have shape ({y.shape[1]},) (one per output channel), "
                   f"not {shapes.fmt(bias.shape)}", bias.node, w.node)
    return y + reshape(bias, (y.shape[1], 1, 1))


# -- pooling ------------------------------------------------------------------------------------------
NO_PAD = ((0, 0), (0, 0))


def _pool_geometry(op: str, x, attrs, *operands):
    """Input and output spatial sizes of a pooling over ``x``."""
    _, h, wd = _check_nchw(op, x, "input", "(m, C, H, W)", *operands)
    return (h, wd), _out_hw(op, (h, wd), attrs["kernel"], attrs["stride"], NO_PAD, *operands)


def _with_hw(like, hw) -> tuple:
    return _nchw(*like.shape[:2], *hw)


def _pool_infer(op):
    def infer(nodes, attrs):
        (x,) = nodes
        return _with_hw(x, _pool_geometry(op, x, attrs, x)[1]), x.dtype
    return infer


def _routed_infer(op: str, to_input: bool):
    """``max_pool2d_grad(x, y, g)``: ``y`` (the pooled ``x``) and ``g`` are pooled-shaped, the result input-shaped;
    ``max_pool2d_gather(x, u)``: ``u`` is input-shaped, the result pooled-shaped."""
    def infer(nodes, attrs):
        x, *others = nodes
        hw, out_hw = _pool_geometry(op, x, attrs, *nodes)
        for other in others:
            _check_nchw(op, other, "operand", "(m, C, ·, ·)", *nodes)
            if tuple(other.shape[:2]) != tuple(x.shape[:2]):
                raise fail(op, "operands must have the batch and channel dims of the input", *nodes)
            _check_spatial(op, other, "operand", out_hw if to_input else hw, *nodes)
        return _with_hw(x, hw if to_input else out_hw), promote(*(n.dtype for n in nodes))
    return infer


def _avg_pool_grad_infer(nodes, attrs):
    (g,) = nodes
    op = "avg_pool2d_grad"
    _check_nchw(op, g, "output gradient", "(m, C, OH, OW)", g)
    hw = attrs["input_hw"]
    _check_spatial(op, g, "output gradient", _out_hw(op, hw, attrs["kernel"], attrs["stride"], NO_PAD, g), g)
    return _with_hw(g, hw), g.dtype


def max_pool2d_grad(x: Tensor, g: Tensor, kernel, stride) -> Tensor:
    """``g`` routed to the first maximum of each window of ``x``; reads the pooled ``x`` to find the maxima."""
    y = apply("max_pool2d", [x], kernel=kernel, stride=stride)  # hash-consing reuses the forward node
    return apply("max_pool2d_grad", [x, y, g], kernel=kernel, stride=stride)


def max_pool2d_gather(x: Tensor, u: Tensor, kernel, stride) -> Tensor:
    """``u`` at the first maximum of each window of ``x``: the adjoint of routing a gradient to the maxima."""
    return apply("max_pool2d_gather", [x, u], kernel=kernel, stride=stride)


# x only selects where the gradient goes: the derivative w.r.t. it is zero wherever it is defined.
# max_pool2d_grad also reads y = max_pool2d(x) so emitters find the maxima by comparison; the reference uses argmax.
defop("max_pool2d", infer=_pool_infer("max_pool2d"), var="pool", batch_axis=_pool_batch_axis,
      impl=lambda node, env, x: _windows(x, node.attr("kernel"), node.attr("stride")).max(axis=(4, 5)),
      vjp=lambda out, g, x, kernel, stride: [max_pool2d_grad(x, g, kernel, stride)])
defop("max_pool2d_grad", infer=_routed_infer("max_pool2d_grad", True), var="pool_grad",
      impl=lambda node, env, x, y, g: _impl(max_pool2d_grad_ref, "kernel", "stride")(node, env, x, g),
      vjp=lambda out, u, x, y, g, kernel, stride: [None, None, max_pool2d_gather(x, u, kernel, stride)])
defop("max_pool2d_gather", infer=_routed_infer("max_pool2d_gather", False), var="pool_gather",
      impl=_impl(max_pool2d_gather_ref, "kernel", "stride"),
      vjp=lambda out, g, x, u, kernel, stride: [None, max_pool2d_grad(x, g, kernel, stride)])

defop("avg_pool2d", infer=_pool_infer("avg_pool2d"), var="avgpool", batch_axis=_pool_batch_axis,
      impl=lambda node, env, x: _windows(x, node.attr("kernel"), node.attr("stride")).mean(axis=(4, 5)),
      vjp=lambda out, g, x, kernel, stride: [
          apply("avg_pool2d_grad", [g], kernel=kernel, stride=stride, input_hw=_hw(x))])
defop("avg_pool2d_grad", infer=_avg_pool_grad_infer, var="avgpool_grad",
      impl=_impl(avg_pool2d_grad_ref, "kernel", "stride", "input_hw"),
      vjp=lambda out, u, g, kernel, stride, input_hw: [apply("avg_pool2d", [u], kernel=kernel, stride=stride)])


def _pool(op: str, x: Tensor, kernel, stride) -> Tensor:
    _need_tensor(op, x)
    _check_nchw(op, x.node, "input", "(m, C, H, W)", x.node)
    kernel = _pair(op, kernel, "kernel", x.node, 1)
    stride = kernel if stride is None else _pair(op, stride, "stride", x.node, 1)
    return apply(op, [x], kernel=kernel, stride=stride)


def max_pool2d(x: Tensor, kernel, stride=None) -> Tensor:
    """Maximum of each ``kernel`` window (stride defaults to the kernel); the gradient goes to the first maximum."""
    return _pool("max_pool2d", x, kernel, stride)


def avg_pool2d(x: Tensor, kernel, stride=None) -> Tensor:
    """Mean of each ``kernel`` window (stride defaults to the kernel); the gradient is spread evenly over it."""
    return _pool("avg_pool2d", x, kernel, stride)


def flatten(x: Tensor, start_axis: int = 1) -> Tensor:
    """Merge the axes from ``start_axis`` on into one: ``(m, C, H, W) -> (m, C·H·W)`` (a reshape)."""
    _need_tensor("flatten", x)
    if not isinstance(start_axis, int) or not -x.ndim <= start_axis < max(x.ndim, 1):
        raise fail("flatten", f"start_axis {start_axis!r} is out of range for a {x.ndim}-d tensor", x.node)
    start = start_axis % x.ndim
    return reshape(x, (*x.shape[:start], shapes.numel(x.shape[start:])))
