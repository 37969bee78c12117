"""What the ops' per-example rules share: the error for an op that mixes the examples of a batch, the
per-example gradient of a shared tensor kept apart along the batch axis, and the outer-product form of a term.

Built from ``apply`` alone, so every op family may use it.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy

from graphc.core import shapes
from graphc.core.errors import GraphError
from graphc.core.registry import OPS
from graphc.dsl import Tensor, apply

WHO = "per_example_grads"


def mixes(node, ins, what: str) -> GraphError:
    """The error for ``node`` (with operands ``ins``) that makes one example's loss depend on another's."""
    who = f"{node.op} {node.name!r} {shapes.fmt(node.shape)}" if node.name else node.label
    operands = ", ".join(i.label for i in ins)
    return GraphError(f"{WHO}: {who} {what} [operands: {operands}], so one example's loss would depend on the "
                      "other examples of the batch (batch statistics?); per-example gradients and grad_step need "
                      "every op between the inputs and the losses to keep the examples apart")


def same_dim(a, b) -> bool:
    return sympy.simplify(sympy.sympify(a) - sympy.sympify(b)) == 0


@dataclass(frozen=True)
class Term:
    """One use's per-example gradient: ``full`` (m, *shape), or the rows' outer products ``a[i] ⊗ g[i]``.

    Dense layers give outer terms, so clipping can take their norms as ``|a[i]|·|g[i]|`` and their weighted
    sum as one matmul, without the (m, k, c) array.
    """
    full: Tensor | None = None
    a: Tensor | None = None
    g: Tensor | None = None


def _reshape(x: Tensor, shape) -> Tensor:
    shape = tuple(shape)
    return x if tuple(x.shape) == shape else apply("reshape", [x], shape=shape)


def keep_batch(G: Tensor, axis: int, shape, batch, aligned: bool = False) -> Tensor:
    """``(batch, *shape)``: ``G`` summed over the axes a tensor of ``shape`` was broadcast along, but not ``axis``.

    ``shape`` lines up with ``G`` without its batch axis, or with all of ``G`` where ``aligned`` (then its
    dim on the batch axis must be 1: the tensor is shared by the examples).
    """
    target = tuple(shape)
    if aligned and axis >= G.ndim - len(shape):
        k = axis - (G.ndim - len(shape))
        if shape[k] != 1:
            raise GraphError(f"{WHO}: the shared tensor of shape {shapes.fmt(shape)} spans the batch axis of "
                             f"{G.node.label}; its per-example gradient is not supported")
        shape = shape[:k] + shape[k + 1:]
    rest = [i for i in range(G.ndim) if i != axis]
    lead = len(rest) - len(shape)
    sum_axes = tuple(rest[:lead]) + tuple(rest[lead + i] for i, d in enumerate(shape)
                                          if d == 1 and G.shape[rest[lead + i]] != 1)
    if sum_axes:
        G = apply("sum", [G], axes=tuple(sorted(sum_axes)), keepdims=True)
    if any(d != 1 for d in G.shape[:axis]):
        G = apply("transpose", [G], perm=(axis, *rest))
    return _reshape(G, (batch, *target))


def by_vjp(node, slot: int, g: Tensor, ins: list[Tensor], axes: dict, batch) -> Term | None:
    """The per-example gradient of the shared input ``slot`` of the batched ``node``: its VJP, summed over every
    axis but the batch axis (the generic ``example_grad`` rule)."""
    G = OPS[node.op].vjp(Tensor(g.graph, node.id), g, *ins, **dict(node.attrs))[slot]
    if G is None:
        return None
    return Term(full=keep_batch(G, axes[node.id], ins[slot].shape, batch, aligned=True))
