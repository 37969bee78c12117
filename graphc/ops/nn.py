"""Neural-network ops: softmax, log_softmax and softmax cross-entropy (stable forms, fused VJPs), layer and batch
normalization."""
from __future__ import annotations

import numpy as np
import sympy

from graphc.core import shapes
from graphc.core.describe import expression
from graphc.core.dtypes import is_float
from graphc.core.errors import GraphError
from graphc.core.naming import after_input
from graphc.core.registry import check_axes, defop, fail
from graphc.dsl import Tensor, apply, assign
from graphc.ops.batching import mixes
from graphc.ops.elementwise import arg, ew, interpret, scalar
from graphc.ops.reduce import mean, reduce_sum, var
from graphc.ops.shape import one_hot, reshape, transpose


def _stable_log_softmax(z, axis):
    peak = np.max(z, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0)
    shifted = z - peak
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def _softmax_infer(op):
    def infer(nodes, attrs):
        (x,) = nodes
        if not is_float(x.dtype):
            raise fail(op, f"needs a float tensor, not {x.dtype}", x)
        return x.shape, x.dtype
    return infer


def _softmax_vjp(s, g, x, axis):
    # s·(g − Σ g·s): the Jacobian-vector product, without the Jacobian
    dot = reduce_sum(ew(arg(0) * arg(1), [g, s]), axis, keepdims=True)
    return [ew(arg(0) * (arg(1) - arg(2)), [s, g, dot])]


def _log_softmax_vjp(out, g, x, axis):
    total = reduce_sum(g, axis, keepdims=True)
    return [ew(arg(0) - sympy.exp(arg(1)) * arg(2), [g, out, total])]


def _along_batch_axis(node, ins, axes):
    (a,) = axes
    if a == node.attr("axis"):
        raise mixes(node, ins, "normalizes along the batch axis")
    return a


defop("softmax", infer=_softmax_infer("softmax"), vjp=_softmax_vjp, batch_axis=_along_batch_axis,
      impl=lambda node, env, x: np.exp(_stable_log_softmax(x, node.attr("axis"))))
defop("log_softmax", infer=_softmax_infer("log_softmax"), vjp=_log_softmax_vjp, batch_axis=_along_batch_axis,
      impl=lambda node, env, x: _stable_log_softmax(x, node.attr("axis")))


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """``exp(x) / sum(exp(x))`` along ``axis``, computed stably."""
    (axis,) = check_axes("softmax", axis, x.node)
    return apply("softmax", [x], axis=axis)


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """``x - logsumexp(x)`` along ``axis``: the log of the softmax, computed stably."""
    (axis,) = check_axes("log_softmax", axis, x.node)
    return apply("log_softmax", [x], axis=axis)


# -- softmax cross-entropy: per-example losses, stable forward, fused gradient (softmax(z) − t)·g -------
def _xent_infer(nodes, attrs):
    z, t = nodes
    axis = attrs["axis"]
    if not is_float(z.dtype):
        raise fail("softmax_cross_entropy", f"logits must be float, not {z.dtype}", z, t)
    rest = tuple(d for i, d in enumerate(z.shape) if i != axis)
    if t.dtype == "int64":
        if tuple(t.shape) != rest:
            raise fail("softmax_cross_entropy", f"integer labels must have shape {shapes.fmt(rest)} "
                       f"(the logits' shape without axis {axis}), not {shapes.fmt(t.shape)}", z, t)
    elif is_float(t.dtype):
        if tuple(t.shape) != tuple(z.shape):
            raise fail("softmax_cross_entropy", f"label distributions must have the logits' shape "
                       f"{shapes.fmt(z.shape)}, not {shapes.fmt(t.shape)}", z, t)
    else:
        raise fail("softmax_cross_entropy", f"labels must be int64 class ids or floats, not {t.dtype}", z, t)
    return rest, z.dtype


def _xent_impl(node, env, z, t):
    axis = node.attr("axis")
    logp = _stable_log_softmax(z, axis)
    if t.dtype.kind in "iu":
        return -np.squeeze(np.take_along_axis(logp, np.expand_dims(t, axis), axis), axis)
    return -np.sum(t * logp, axis=axis)


def _xent_vjp(out, g, z, t, axis):
    g_b = reshape(g, tuple(1 if i == axis else d for i, d in enumerate(z.shape)))
    s = softmax(z, axis)
    if t.dtype == "int64":
        target = one_hot(t, z.shape[axis], z.dtype)
        if axis != z.ndim - 1:
            perm = list(range(z.ndim - 1))
            perm.insert(axis, z.ndim - 1)
            target = transpose(target, perm)
        return [ew((arg(0) - arg(1)) * arg(2), [s, target, g_b]), None]
    # for any weights t: d/dz = softmax(z)·Σt − t (Σt = 1 for a distribution)
    total = reduce_sum(t, axis, keepdims=True)
    dz = ew((arg(0) * arg(3) - arg(1)) * arg(2), [s, t, g_b, total])
    return [dz, ew(-arg(0) * arg(1), [log_softmax(z, axis), g_b])]


def _xent_batch_axis(node, ins, axes):
    axis = node.attr("axis")
    t, (az, at) = ins[1], axes
    placed = set()
    if az is not None:
        if az == axis:
            raise mixes(node, ins, "normalizes along the batch axis")
        placed.add(az - (az > axis))
    if at is not None:
        if is_float(t.dtype):
            if at == axis:
                raise mixes(node, ins, "normalizes along the batch axis")
            at -= at > axis
        placed.add(at)
    if len(placed) > 1:
        raise mixes(node, ins, "pairs logits and labels of different examples")
    return placed.pop()


def _xent_class_ids(node, ins):
    z, t = ins
    return [(1, z.shape[node.attr("axis")])] if t.dtype == "int64" else []


defop("softmax_cross_entropy", infer=_xent_infer, impl=_xent_impl, vjp=_xent_vjp, var="xent",
      batch_axis=_xent_batch_axis, class_ids=_xent_class_ids)


def softmax_cross_entropy(logits: Tensor, labels: Tensor, axis: int = -1) -> Tensor:
    """Per-example losses ``-Σ t·log softmax(z)``; labels are int class ids or distributions.

    Reduce them with ``gc.mean`` for a scalar loss: its gradient w.r.t. the logits is ``(softmax(z) − t)/m``.
    """
    if not isinstance(labels, Tensor):
        raise GraphError("softmax_cross_entropy: labels must be a tensor (gc.input(..., dtype='int64'))")
    (axis,) = check_axes("softmax_cross_entropy", axis, logits.node)
    return apply("softmax_cross_entropy", [logits, labels], axis=axis)


# -- the fused gradient and the true-class logit: made by the passes, after differentiation -------------------
def _xent_grad_infer(nodes, attrs):
    return nodes[0].shape, nodes[0].dtype


def _xent_grad_impl(node, env, a, b, t, *rest):
    values = {arg(i): r for i, r in enumerate(rest)}
    values.update(env)
    onehot = (t[..., None] == np.arange(a.shape[-1])).astype(a.dtype)
    softmax = np.exp(a - b) if node.attr("log") else a / b
    return ((softmax - onehot) * interpret(node.attr("scale"), values)).astype(node.dtype)


def _describe_xent_grad(node, names) -> str:
    a, b, t, *rest = (names[i] for i in node.inputs)
    softmax = f"exp({a} - {b})" if node.attr("log") else f"{a}/{b}"
    return f"({softmax} - onehot({t}))·{expression(node.attr('scale'), rest)}"


# (softmax(z) − onehot(t))·scale, with softmax(z) given as e/s (e = exp(z − max z) and its row sums s: the forward
# pass computes both, so the gradient costs no exponential of its own) or, with ``log``, as exp(z − lse) (a GPU
# recomputes the exponentials in the gradient's own pass rather than keep them in memory).
defop("softmax_xent_grad", infer=_xent_grad_infer, impl=_xent_grad_impl, var="dlogits",
      class_ids=lambda node, ins: [(2, ins[0].shape[-1])], describe=_describe_xent_grad)


def _pick_infer(nodes, attrs):
    z, t = nodes
    if t.dtype != "int64" or tuple(t.shape) != tuple(z.shape[:-1]):
        raise fail("pick", f"labels must be int64 of shape {shapes.fmt(z.shape[:-1])}", z, t)
    return (*t.shape, 1), z.dtype


def _pick_impl(node, env, z, t):
    return np.take_along_axis(z, t[..., None], axis=-1)


# z[..., t]: each row's value at its label (the true class's logit), kept as a size-1 last axis
def _pick_batch_axis(node, ins, axes):
    placed = {a for a in axes if a is not None}
    if len(placed) > 1 or len(node.shape) - 1 in placed:
        raise mixes(node, ins, "pairs logits and labels of different examples")
    return placed.pop()


defop("pick", infer=_pick_infer, impl=_pick_impl, class_ids=lambda node, ins: [(1, ins[0].shape[-1])],
      batch_axis=_pick_batch_axis,
      describe=lambda node, names: f"{names[node.inputs[0]]}[{names[node.inputs[1]]}]")


# -- layer normalization: a composite ----------------------------------------------------------------------------
def layer_norm(x: Tensor, gamma: Tensor | None = None, beta: Tensor | None = None, axis=-1,
               eps: float = 1e-5) -> Tensor:
    """``(x − mean) / sqrt(var + eps) · gamma + beta`` over ``axis`` (an int or a tuple; the variance with
    ``ddof=0``, as PyTorch's ``layer_norm``); ``gamma`` and ``beta`` broadcast against ``x``, None leaves them out."""
    axes = check_axes("layer_norm", axis, x.node)
    centered = ew(arg(0) - arg(1), [x, mean(x, axes, keepdims=True)], "layer_norm")
    inv = ew(1 / sympy.sqrt(arg(0) + scalar(eps)), [var(x, axes, keepdims=True)], "layer_norm")
    out = ew(arg(0) * arg(1), [centered, inv], "layer_norm")
    if gamma is not None:
        out = ew(arg(0) * arg(1), [out, gamma], "layer_norm")
    return out if beta is None else ew(arg(0) + arg(1), [out, beta], "layer_norm")


# -- batch normalization: a composite, with the statistics of its mode ------------------------------------------
def _in_training_infer(nodes, attrs):
    a, b = nodes
    if not shapes.same(a.shape, b.shape) or a.dtype != b.dtype:
        raise fail("in_training", "the training and the inference value need one shape and dtype", a, b)
    return a.shape, a.dtype


def _in_training_batch_axis(node, ins, axes):
    if axes[1] is not None:
        raise mixes(node, ins, "reads batched values in inference mode")
    return axes[0]


def _in_training_requires(node, ins):
    """A batch statistic of ``count`` values needs two: the running variance divides by count − 1 (PyTorch, too,
    refuses one value per channel in training)."""
    condition = sympy.sympify(node.attr("count")) >= 2
    return [] if condition is sympy.true else [condition]


# The training-mode value (a batch statistic), or in inference mode (predict) the other input (the running one);
# the gradient flows to the training value, as only training mode is differentiated.
defop("in_training", infer=_in_training_infer, impl=lambda node, env, a, b: a, view=True, inference_input=1,
      vjp=lambda out, g, a, b, count: [g, None], requires=_in_training_requires,
      batch_axis=_in_training_batch_axis, var=after_input("_used"),
      describe=lambda node, names: f"{names[node.inputs[0]]} in training, {names[node.inputs[1]]} in inference")


def _channel_operand(what: str, t, x: Tensor, channels, dtype: bool = False) -> None:
    if t is None:
        return
    if not isinstance(t, Tensor) or t.graph is not x.graph:
        raise GraphError(f"batch_norm: {what} must be a tensor of graph {x.graph.name!r}, not {type(t).__name__}")
    if not shapes.same(t.shape, (channels,)) or (dtype and t.dtype != x.dtype):
        need = f"{shapes.fmt((channels,))}" + (f" {x.dtype}" if dtype else "")
        raise fail("batch_norm", f"{what} must have shape {need}: one value per channel of axis 1", x.node, t.node)


def batch_norm(x: Tensor, gamma: Tensor | None = None, beta: Tensor | None = None,
               running_mean: Tensor | None = None, running_var: Tensor | None = None, momentum: float = 0.1,
               eps: float = 1e-5) -> Tensor:
    """Batch normalization over axis 1 of ``x`` ((m, C), (m, C, H, W) or any rank ≥ 2), as PyTorch's
    ``batch_norm`` in training mode: each channel normalized by the mean and the variance (``ddof=0``) of its values
    over the batch and the other axes, times ``gamma``, plus ``beta`` (shape (C,); None leaves them out).

    With ``running_mean`` and ``running_var`` (``gc.state`` tensors of shape (C,)) the training step updates them
    as PyTorch does, ``(1 − momentum)·running + momentum·batch`` with the unbiased batch variance, and inference
    mode (``predict``) normalizes by them instead of the batch's. ``run`` and ``train_step`` use batch statistics.
    """
    if not isinstance(x, Tensor) or x.ndim < 2 or not is_float(x.dtype):
        raise GraphError("batch_norm: x must be a float tensor of rank ≥ 2 with channels on axis 1, not "
                         + (x.node.label if isinstance(x, Tensor) else type(x).__name__))
    if not 0 <= momentum <= 1 or not eps > 0:
        raise fail("batch_norm", f"needs 0 ≤ momentum ≤ 1 and eps > 0, not momentum={momentum}, eps={eps}", x.node)
    if (running_mean is None) != (running_var is None):
        raise fail("batch_norm", "running_mean and running_var come together (or neither)", x.node)
    channels, axes = x.shape[1], (0, *range(2, x.ndim))
    for what, t in (("gamma", gamma), ("beta", beta)):
        _channel_operand(what, t, x, channels)
    for what, t in (("running_mean", running_mean), ("running_var", running_var)):
        _channel_operand(what, t, x, channels, dtype=True)
        if t is not None and t.node.op != "state":
            raise fail("batch_norm", f"{what} must be a gc.state tensor (it is updated by the training step)",
                       t.node)
    stat = (1, channels, *[1] * (x.ndim - 2))  # a statistic, lined up with x
    mu, sigma2 = mean(x, axes, keepdims=True), var(x, axes, keepdims=True)
    if running_mean is not None:
        count = shapes.numel([x.shape[a] for a in axes])
        keep, take = scalar(1 - momentum), scalar(momentum)
        assign(running_mean, ew(keep * arg(0) + take * arg(1), [running_mean, reshape(mu, (channels,))],
                                "batch_norm"))
        assign(running_var, ew(keep * arg(0) + take * arg(1) * count / (count - 1),
                               [running_var, reshape(sigma2, (channels,))], "batch_norm"))
        mu = apply("in_training", [mu, reshape(running_mean, stat)], count=count)
        sigma2 = apply("in_training", [sigma2, reshape(running_var, stat)], count=count)
    out = ew((arg(0) - arg(1)) / sympy.sqrt(arg(2) + scalar(eps)), [x, mu, sigma2], "batch_norm")
    if gamma is not None:
        out = ew(arg(0) * arg(1), [out, reshape(gamma, stat)], "batch_norm")
    return out if beta is None else ew(arg(0) + arg(1), [out, reshape(beta, stat)], "batch_norm")
