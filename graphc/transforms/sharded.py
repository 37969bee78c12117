"""A loss as a sum over the examples of its batch, so that shards of one batch can be differentiated apart.

A loss ``c · Σ v`` — a scale ``c`` (the ``1/m`` of ``gc.mean``, a ``0.5``, the ``1/k`` of a mean over features)
times the sum over every axis of a tensor ``v`` whose first axis holds the examples, its rows never mixed — is
the sum over the shards of ``c(M) · Σ_shard v``, with ``M`` the number of examples of the whole batch in place of
the batch dim ``m``. Each shard's gradient of that share can then be taken on its own and the gradients added:
their sum is the gradient of the whole batch's loss, exactly, whatever the shards' sizes. Averaging each
shard's own mean instead would weigh an example of a small shard more than one of a large shard.
"""
from __future__ import annotations

import sympy

from graphc.core.errors import GraphError
from graphc.dsl import Tensor
from graphc.ops.batching import WHO, same_dim
from graphc.ops.elementwise import arg, ew
from graphc.ops.reduce import reduce_sum
from graphc.transforms.per_example import batch_axes

M_TOTAL = sympy.Symbol("m_total", positive=True)  # the whole batch's number of examples: grad_step's argument
WHY = "grad_step needs a loss that is a sum over the examples of the batch (c·Σ v, e.g. gc.mean(losses))"


def _pure_scale(graph, node):
    """``c`` where ``node`` is ``c·x`` of its one input of the same shape, else None."""
    if node.op != "ew" or len(node.inputs) != 1 or node.shape != graph.nodes[node.inputs[0]].shape:
        return None
    c, rest = node.attr("expr").as_independent(arg(0), as_Add=False)
    return c if rest == arg(0) else None


def examples_sum(loss: Tensor) -> tuple[Tensor, sympy.Expr, sympy.Expr]:
    """``(v, c, m)`` with ``loss = c·Σ v`` over every axis of ``v``, whose axis 0 (the batch dim ``m``) holds the
    examples and no op mixes them; a GraphError saying why where the loss is not such a sum."""
    graph, node, c = loss.graph, loss.node, sympy.S.One
    while True:  # through the sums and scalings above the per-example terms; they commute
        factor = _pure_scale(graph, node)
        if node.op != "sum" and factor is None:
            break
        c *= 1 if factor is None else factor
        node = graph.nodes[node.inputs[0]]
    if node.id == loss.id:
        if node.op == "ew" and len(node.inputs) > 1:
            raise GraphError(f"{WHY}; loss {loss.node.label} is {node.attr('expr')} of {len(node.inputs)} terms, not "
                             "one scaled sum (a penalty on the params is not a sum over examples: use the "
                             "optimizer's weight_decay)")
        raise GraphError(f"{WHY}; loss {loss.node.label} is a {node.op}, not a scaled sum")
    v = Tensor(graph, node.id)
    batch = v.shape[0] if v.shape else None
    firsts = [graph.nodes[i].shape[0] for i in graph.needed([v.id])
              if graph.nodes[i].op == "input" and graph.nodes[i].shape]
    if batch is None or batch.is_number or not any(same_dim(batch, d) for d in firsts):
        raise GraphError(f"{WHY}; the loss sums {v.node.label}, whose first axis is not the batch dim of the inputs")
    try:
        axes = batch_axes(graph, v.id, batch)
    except GraphError as exc:  # an op mixes examples: the loss couples them
        raise GraphError(f"{WHY}; {str(exc).removeprefix(f'{WHO}: ')}") from None
    if axes[v.id] != 0:
        raise GraphError(f"{WHY}; the loss sums {v.node.label}, which does not vary per example")
    return v, c, batch


def shard_share(loss: Tensor) -> Tensor:
    """This shard's share of the whole batch's loss: ``c(M)·Σ v``, the batch dim in ``c`` replaced by ``M_TOTAL``
    (a mean over the batch divides by ``M``; a mean over features keeps its own size)."""
    v, c, batch = examples_sum(loss)
    total = reduce_sum(v, tuple(range(v.ndim)))
    return ew(c.subs(batch, M_TOTAL) * arg(0), [total], "share")
