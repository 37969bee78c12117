"""Indexing by integer tensors: ``take`` (rows of a table, an embedding lookup, ``table[ids]``) and its VJP
``scatter_add`` (the gradient rows added back at their ids).

Both work on the table's first axis; ``gc.take(x, ids, axis)`` reaches another axis through transposes (views).
The ids are checked against the table's rows where they are read, like class ids (the ``class_ids`` rule):
negative ids are refused, as PyTorch's embedding refuses them, rather than counted from the end.
"""
from __future__ import annotations

import numpy as np
import sympy

from graphc.core import shapes
from graphc.core.errors import GraphError
from graphc.core.registry import check_axes, defop, fail
from graphc.dsl import Tensor, apply
from graphc.ops.batching import Term, keep_batch, mixes
from graphc.ops.shape import transpose


def _ids_checked(op: str, ids, *nodes):
    if ids.dtype != "int64":
        raise fail(op, f"ids must be int64, not {ids.dtype}", *nodes)


# -- take: table[ids] ---------------------------------------------------------------------------------------
def _take_infer(nodes, attrs):
    table, ids = nodes
    _ids_checked("take", ids, table, ids)
    if not table.shape:
        raise fail("take", "the table needs at least one axis", table, ids)
    return (*ids.shape, *table.shape[1:]), table.dtype


def _take_batch_axis(node, ins, axes):
    (_, ids), (at, ai) = ins, axes
    if at is not None and ai is not None:
        raise mixes(node, ins, "picks rows of one example's table with another example's ids")
    if ai is not None:
        return ai
    if at == 0:
        raise mixes(node, ins, "picks examples by id (the batch axis is the one it indexes)")
    return at - 1 + len(ids.shape)


def _take_example_grad(node, slot, g, ins, axes, batch):
    """The table's share for each example: its gradient rows added at its own ids, into a table of its own."""
    table, ids = ins
    a = axes[ids.id]
    if a:  # examples first, in the ids and in the gradient alike
        order = (a, *(i for i in range(ids.ndim) if i != a))
        ids, g = transpose(ids, order), transpose(g, (*order, *range(ids.ndim, g.ndim)))
    return Term(full=apply("scatter_add", [g, ids], size=table.shape[0], per_example=True))


def _take_shared_grad(out, P, ins, batch):
    """Shared ids (a learned position table read at fixed positions): each example's gradient scattered alone."""
    table, ids = ins
    order = (*range(1, ids.ndim + 1), 0, *range(ids.ndim + 1, P.ndim))  # the batch axis after the ids' axes
    G = apply("scatter_add", [transpose(P, order), ids], size=table.shape[0], per_example=False)
    return [keep_batch(G, 1, table.shape, batch), None]


defop("take", infer=_take_infer, var="rows",
      impl=lambda node, env, table, ids: np.take(table, ids, axis=0),
      vjp=lambda out, g, table, ids: [scatter_add(g, ids, table.shape[0]), None],
      class_ids=lambda node, ins: [(1, ins[0].shape[0])],
      batch_axis=_take_batch_axis, example_grad=_take_example_grad, shared_grad=_take_shared_grad,
      describe=lambda node, names: f"{names[node.inputs[0]]}[{names[node.inputs[1]]}]")


def take(table: Tensor, ids: Tensor, axis: int = 0) -> Tensor:
    """``table``'s entries along ``axis`` at the int64 ``ids`` (any shape): ``np.take``; an embedding lookup.

    The result has the ids' shape in place of ``axis``. Ids must lie in ``0 … n − 1`` (n the size of ``axis``):
    the generated module and ``g.evaluate`` raise ``ValueError``/``GraphError`` otherwise, negative ids included.
    The gradient adds each picked row's gradient back at its id (a scatter-add, no one-hot matrix).
    """
    if not isinstance(table, Tensor) or not isinstance(ids, Tensor):
        raise GraphError("take: table and ids must be tensors (use gc.const for fixed ids)")
    (axis,) = check_axes("take", axis, table.node)
    if axis == 0:
        return apply("take", [table, ids])
    front = (axis, *(i for i in range(table.ndim) if i != axis))  # the indexed axis first: a view
    rows = apply("take", [transpose(table, front), ids])
    k = ids.ndim
    back = (*range(k, k + axis), *range(k), *range(k + axis, rows.ndim))  # the ids' axes back in place of axis
    return transpose(rows, back)


# -- scatter_add: take's VJP ----------------------------------------------------------------------------------
def _scatter_infer(nodes, attrs):
    g, ids = nodes
    _ids_checked("scatter_add", ids, g, ids)
    k = len(ids.shape)
    if not shapes.same(g.shape[:k], ids.shape):
        raise fail("scatter_add", f"the gradient {shapes.fmt(g.shape)} must start with the ids' shape "
                   f"{shapes.fmt(ids.shape)}", g, ids)
    rows = (ids.shape[0], attrs["size"]) if attrs["per_example"] else (attrs["size"],)
    return (*rows, *g.shape[k:]), g.dtype


def _scatter_impl(node, env, g, ids):
    """Rows of ``g`` added at their ids (``np.add.at``); per example: example ``i``'s rows into table ``i``."""
    out = np.zeros(shapes.evaluate(node.shape, env), dtype=node.dtype)
    if node.attr("per_example"):
        for i in range(len(ids)):
            np.add.at(out[i], ids[i], g[i])
    else:
        np.add.at(out, ids, g)
    return out


def _scatter_batch_axis(node, ins, axes):
    (_, ids), (ag, ai) = ins, axes
    if ai is not None or ag < len(ids.shape) or node.attr("per_example"):
        raise mixes(node, ins, "adds the rows of different examples into one table")
    return ag - len(ids.shape) + 1


def _describe_scatter(node, names) -> str:
    g, ids = (names[i] for i in node.inputs)
    where = " per example" if node.attr("per_example") else ""
    return f"zeros{shapes.fmt(node.shape)} with {g} added at rows {ids}{where}"


def _scatter_vjp(out, g, rows, ids, size, per_example):
    if per_example:
        raise GraphError(f"grad: differentiating per-example gradients of a take ({out.node.label}) is not supported")
    return [apply("take", [g, ids]), None]


defop("scatter_add", infer=_scatter_infer, impl=_scatter_impl, vjp=_scatter_vjp, var="d_rows",
      class_ids=lambda node, ins: [(1, node.attr("size"))],
      batch_axis=_scatter_batch_axis, describe=_describe_scatter)


def scatter_add(g: Tensor, ids: Tensor, size) -> Tensor:
    """A table of ``size`` rows (zeros) with ``g``'s rows added at ``ids``: the gradient of ``take``."""
    return apply("scatter_add", [g, ids], size=sympy.sympify(size), per_example=False)
