"""Reductions: ``sum``, ``max``, ``logsumexp`` (primitives) and ``mean`` (``sum · 1/N``)."""
from __future__ import annotations

import numpy as np
import sympy

from graphc.core import shapes
from graphc.core.describe import axes_text, expression, value
from graphc.core.dtypes import is_float
from graphc.core.naming import over
from graphc.core.registry import check_axes, defop, fail, reduced_shape
from graphc.dsl import Tensor, apply
from graphc.ops.batching import mixes
from graphc.ops.elementwise import Where, arg, ew, interpret
from graphc.ops.shape import broadcast_to, reshape


def _reduce_infer(op):
    def infer(nodes, attrs):
        (x,) = nodes
        if op != "sum" and not is_float(x.dtype):
            raise fail(op, f"needs a float tensor, not {x.dtype}", x)
        return reduced_shape(x.shape, attrs["axes"], attrs["keepdims"]), (
            x.dtype if is_float(x.dtype) else "int64")
    return infer


def keep_dims(g: Tensor, axes, keepdims: bool, like_shape) -> Tensor:
    """``g`` with the reduced ``axes`` back as size-1 dims, so it broadcasts against the input."""
    return g if keepdims else reshape(g, reduced_shape(like_shape, axes, True))


def _sum_vjp(out, g, x, axes, keepdims):
    return [broadcast_to(keep_dims(g, axes, keepdims, x.shape), x.shape)]


def _max_vjp(out, g, x, axes, keepdims):
    # the gradient goes to the maxima, split evenly between ties
    o = keep_dims(out, axes, keepdims, x.shape)
    mask = ew(Where(sympy.Eq(arg(0), arg(1)), 1, 0), [x, o])
    count = reduce_sum(mask, axes, keepdims=True)
    g_k = keep_dims(g, axes, keepdims, x.shape)
    return [ew(Where(sympy.Eq(arg(0), arg(1)), arg(2) / arg(3), 0), [x, o, g_k, count])]


def _logsumexp_vjp(out, g, x, axes, keepdims):
    o = keep_dims(out, axes, keepdims, x.shape)
    return [ew(sympy.exp(arg(0) - arg(1)) * arg(2), [x, o, keep_dims(g, axes, keepdims, x.shape)])]


def _logsumexp_impl(node, env, x):
    axes, keepdims = node.attr("axes"), node.attr("keepdims")
    peak = np.max(x, axis=axes, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0)
    out = np.log(np.sum(np.exp(x - peak), axis=axes, keepdims=True)) + peak
    return out if keepdims else np.squeeze(out, axis=axes)


def _batch_axis(node, ins, axes):
    (a,) = axes
    if a in node.attr("axes"):
        raise mixes(node, ins, f"reduces over the batch axis (axis {a})")
    return a if node.attr("keepdims") else a - sum(1 for r in node.attr("axes") if r < a)


def _sum_shared_grad(out, P, ins, batch, axes, keepdims):
    (x,) = ins
    kept = reshape(P, (batch, *reduced_shape(x.shape, axes, True)))
    return [broadcast_to(kept, (batch, *x.shape))]


defop("sum", infer=_reduce_infer("sum"), vjp=_sum_vjp, linear=True, batch_axis=_batch_axis, var=over("sum"),
      shared_grad=_sum_shared_grad,
      impl=lambda node, env, x: np.sum(x, axis=node.attr("axes"), keepdims=node.attr("keepdims")))
defop("max", infer=_reduce_infer("max"), vjp=_max_vjp, batch_axis=_batch_axis, var=over("max"),
      impl=lambda node, env, x: np.max(x, axis=node.attr("axes"), keepdims=node.attr("keepdims")))
defop("logsumexp", infer=_reduce_infer("logsumexp"), vjp=_logsumexp_vjp, impl=_logsumexp_impl,
      batch_axis=_batch_axis, var=over("lse"))


def _reduce(op: str, x: Tensor, axis, keepdims: bool) -> Tensor:
    axes = check_axes(op, axis, x.node)
    if not axes and op == "sum":
        return x
    return apply(op, [x], axes=axes, keepdims=bool(keepdims))


def reduce_sum(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    """Sum over ``axis`` (None: all axes; an int; a tuple)."""
    return _reduce("sum", x, axis, keepdims)


def reduce_max(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    """Maximum over ``axis`` (None: all axes; an int; a tuple); the gradient is split between ties."""
    return _reduce("max", x, axis, keepdims)


def logsumexp(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    """``log(sum(exp(x)))`` over ``axis``, computed stably."""
    return _reduce("logsumexp", x, axis, keepdims)


def mean(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    """``sum(x, axis) · (1/N)`` with ``N`` the product of the reduced (symbolic) dims, e.g. ``1/m``."""
    axes = check_axes("mean", axis, x.node)
    count = shapes.numel([x.shape[a] for a in axes])
    return ew(arg(0) / count, [reduce_sum(x, axes, keepdims)], "mean")


# -- scale·sum of an elementwise expression: made by the fuse_reductions pass, after differentiation --------
def _sum_ew_infer(nodes, attrs):
    return reduced_shape(attrs["ew_shape"], attrs["axes"], attrs["keepdims"]), nodes[0].dtype


def _sum_ew_impl(node, env, *args):
    values = {arg(i): a for i, a in enumerate(args)}
    values.update(env)
    with np.errstate(all="ignore"):
        full = np.broadcast_to(interpret(node.attr("expr"), values), shapes.evaluate(node.attr("ew_shape"), env))
    total = np.sum(full, axis=node.attr("axes"), keepdims=node.attr("keepdims"))
    return (total * float(node.attr("scale").subs(env))).astype(node.dtype)


def _describe_sum_ew(node, names) -> str:
    keep = ", keepdims" if node.attr("keepdims") else ""
    total = f"sum({expression(node.attr('expr'), [names[i] for i in node.inputs])}, {axes_text(node.attr('axes'))}" \
            f"{keep})"
    return total if node.attr("scale") == 1 else f"{total}·{value(node.attr('scale'))}"


defop("sum_ew", infer=_sum_ew_infer, impl=_sum_ew_impl, describe=_describe_sum_ew,
      var=over("sum", lambda node, ins: node.attr("ew_shape")))


# -- composites ---------------------------------------------------------------------------------------------------
def reduce_min(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    """Minimum over ``axis`` (None: all axes; an int; a tuple): ``-max(-x)``; the gradient is split between ties."""
    return ew(-arg(0), [reduce_max(ew(-arg(0), [x], "min"), axis, keepdims)], "min")


def var(x: Tensor, axis=None, keepdims: bool = False, ddof: int = 0) -> Tensor:
    """Variance over ``axis``: ``Σ(x − mean)² / (N − ddof)``. ``ddof=0`` (the default) is NumPy's population
    variance; PyTorch's ``var`` defaults to the unbiased ``ddof=1``."""
    axes = check_axes("var", axis, x.node)
    count = shapes.numel([x.shape[a] for a in axes])
    if not shapes.is_index(ddof) or ddof < 0:
        raise fail("var", f"ddof must be a non-negative int, not {ddof!r}", x.node)
    if count.is_number and ddof >= count:
        raise fail("var", f"ddof={ddof} is not below the {count} elements it reduces (N − ddof must be positive)",
                   x.node)
    centered = ew(arg(0) - arg(1), [x, mean(x, axes, keepdims=True)], "var")
    return ew(arg(0) / (count - ddof), [reduce_sum(ew(arg(0) ** 2, [centered]), axes, keepdims)], "var")


def std(x: Tensor, axis=None, keepdims: bool = False, ddof: int = 0) -> Tensor:
    """Standard deviation over ``axis``: ``sqrt(var(x, axis, keepdims, ddof))`` (NumPy's ``ddof=0`` by default)."""
    return ew(sympy.sqrt(arg(0)), [var(x, axis, keepdims, ddof)], "std")
