"""The passes' toolkit: building blocks for rewriting elementwise nodes.

With ``Graph.single_use`` (may a node be folded into its only reader?) and ``Rebuild`` (copy a graph node by
node, with rules dispatched by op), these are all a pass needs.
"""
from __future__ import annotations

import sympy

from graphc.ops.elementwise import Where, arg, canonical


def add_ew(rb, like, expr, inputs: list[int], shape=None) -> int:
    """Elementwise node ``expr(inputs)`` with the shape of ``like``; an identity is elided, constants become fills."""
    shape = like.shape if shape is None else shape
    expr, inputs = canonical(sympy.sympify(expr), list(inputs))
    if expr == arg(0) and rb.node(inputs[0]).shape == tuple(shape) and rb.node(inputs[0]).dtype == like.dtype:
        return inputs[0]
    if not inputs:
        return rb.add(like, "fill", [], {"value": expr}, shape=shape)
    return rb.add(like, "ew", inputs, {"expr": expr}, shape=shape)


def inline(expr, inputs: list[int], position: int, inner_expr, inner_inputs: list[int]):
    """Substitute the expression of input ``position`` (``inner_expr`` over ``inner_inputs``) into ``expr``."""
    base = len(inputs)
    shifted = inner_expr.xreplace({arg(j): arg(base + j) for j in range(len(inner_inputs))})
    if isinstance(shifted, BOOLEAN):  # a truth value: itself where one is read, its 0/1 number in arithmetic
        return _put_truth(expr, arg(position), shifted, expr == arg(position)), [*inputs, *inner_inputs]
    return expr.xreplace({arg(position): shifted}), [*inputs, *inner_inputs]


BOOLEAN = (sympy.core.relational.Relational, sympy.logic.boolalg.BooleanFunction)


def _put_truth(expr, target, truth, read_as_truth: bool):
    """``expr`` with ``target`` replaced by ``truth`` where a truth value is read (a choice's condition, a logical
    operand) and by ``where(truth, 1, 0)`` elsewhere: ``(x > 0)·y`` is a product of numbers, as NumPy computes it."""
    if expr == target:
        return truth if read_as_truth else Where(truth, 1, 0)
    if not expr.args or not expr.has(target):
        return expr
    if isinstance(expr, Where):
        reads = (True, False, False)
    else:
        reads = (isinstance(expr, sympy.logic.boolalg.BooleanFunction),) * len(expr.args)
    return expr.func(*(_put_truth(a, target, truth, r) for a, r in zip(expr.args, reads)))


def fill_value(node):
    return node.attr("value") if node.op == "fill" else None
