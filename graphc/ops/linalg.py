"""``matmul`` with NumPy semantics: 1-d operands promoted, leading batch dims broadcast."""
from __future__ import annotations

import numpy as np

from graphc.core import shapes
from graphc.core.dtypes import is_float, promote
from graphc.core.errors import GraphError
from graphc.core.registry import defop, fail
from graphc.dsl import Tensor, apply
from graphc.ops.batching import Term, keep_batch, mixes
from graphc.ops.elementwise import arg, ew
from graphc.ops.shape import reshape, swap_last


def _matmul_infer(nodes, attrs):
    a, b = nodes
    if not a.shape or not b.shape:
        raise fail("matmul", "operands must have at least one dim (use * for scalars)", a, b)
    if not (is_float(a.dtype) and is_float(b.dtype)):
        raise fail("matmul", f"operands must be float tensors, not {a.dtype} and {b.dtype}", a, b)
    ka = a.shape[-1]
    kb = b.shape[-2] if len(b.shape) > 1 else b.shape[0]
    if ka != kb:
        raise fail("matmul", f"inner dims differ: {ka} (last dim of {a.label}) vs {kb} "
                   f"({'first' if len(b.shape) == 1 else 'second to last'} dim of {b.label})", a, b)
    batch = shapes.broadcast(a.shape[:-2], b.shape[:-2])
    if batch is None:
        raise fail("matmul", f"batch dims {shapes.fmt(a.shape[:-2])} and {shapes.fmt(b.shape[:-2])} "
                   "do not broadcast", a, b)
    rows = a.shape[-2:-1] if len(a.shape) > 1 else ()
    cols = b.shape[-1:] if len(b.shape) > 1 else ()
    return (*batch, *rows, *cols), promote(a.dtype, b.dtype)


def _matmul_vjp(out, g, a, b):
    da, db = _batched_vjp(out, g, a, b)
    if a.ndim > 2 and b.ndim == 2:  # rows of a batch times one matrix: one GEMM over all rows, not one per entry
        rows = shapes.numel(a.shape[:-1])
        db = matmul(swap_last(reshape(a, (rows, a.shape[-1]))), reshape(g, (rows, g.shape[-1])))
    return [da, db]


def _batched_vjp(out, g, a, b):
    """The VJP with every batch entry's product kept apart (the driver sums the broadcast batch dims away)."""
    # work on ≥2-d views (a 1-d a is a row, a 1-d b a column)
    a2 = a if a.ndim > 1 else reshape(a, (1, a.shape[0]))
    b2 = b if b.ndim > 1 else reshape(b, (b.shape[0], 1))
    g_shape = list(out.shape)
    if a.ndim == 1:
        g_shape.insert(len(g_shape) - (1 if b.ndim > 1 else 0), 1)
    if b.ndim == 1:
        g_shape.append(1)
    g2 = reshape(g, tuple(g_shape))
    da, db = matmul(g2, swap_last(b2)), matmul(swap_last(a2), g2)
    if a.ndim == 1:
        da = reshape(da, (*da.shape[:-2], da.shape[-1]))
    if b.ndim == 1:
        db = reshape(db, db.shape[:-1])
    return [da, db]


# -- per-example rules ---------------------------------------------------------------------------------
def _batch_axis(node, ins, axes):
    (a, b), (aa, ab) = ins, axes
    rows, cols = int(len(a.shape) > 1), int(len(b.shape) > 1)
    lead = len(node.shape) - rows - cols
    placed = set()
    if aa is not None:
        if aa == len(a.shape) - 1:
            raise mixes(node, ins, f"contracts the batch axis of {a.label}")
        placed.add(len(node.shape) - 1 - cols if aa == len(a.shape) - 2 else lead - (len(a.shape) - 2) + aa)
    if ab is not None:
        if ab == len(b.shape) - 1 - cols:
            raise mixes(node, ins, f"contracts the batch axis of {b.label}")
        placed.add(len(node.shape) - 1 if ab == len(b.shape) - 1 else lead - (len(b.shape) - 2) + ab)
    if len(placed) > 1:
        raise mixes(node, ins, "multiplies examples of one operand with examples of the other")
    return placed.pop()


def _example_grad(node, slot, g, ins, axes, batch):
    """A shared operand whose partner has the examples on its rows (or columns): outer products per example."""
    a, b = ins
    shared = ins[slot]
    if slot == 1 and a.ndim >= 2 and axes[a.id] == a.ndim - 2:  # x @ W: W's share is x[i] ⊗ dz[i]
        if a.ndim == 2 and b.ndim == 2:
            return Term(a=a, g=g)
        if b.ndim == 1:
            G = ew(arg(0) * arg(1), [a, reshape(g, (*g.shape, 1))])
            return Term(full=keep_batch(G, G.ndim - 2, shared.shape, batch))
        G = ew(arg(0) * arg(1), [reshape(a, (*a.shape, 1)), reshape(g, (*g.shape[:-1], 1, g.shape[-1]))])
        return Term(full=keep_batch(G, G.ndim - 3, shared.shape, batch))
    if slot == 0 and b.ndim >= 2 and axes[b.id] == b.ndim - 1:  # W @ x with examples as columns
        if a.ndim == 2 and b.ndim == 2:
            return Term(a=swap_last(g), g=swap_last(b))
        if a.ndim == 1:
            G = ew(arg(0) * arg(1), [b, reshape(g, (*g.shape[:-1], 1, g.shape[-1]))])
        else:
            G = ew(arg(0) * arg(1), [reshape(b, (*b.shape[:-2], 1, *b.shape[-2:])),
                                     reshape(g, (*g.shape[:-1], 1, g.shape[-1]))])
        return Term(full=keep_batch(G, G.ndim - 1, shared.shape, batch))
    G = _batched_vjp(Tensor(g.graph, node.id), g, a, b)[slot]  # by_vjp's rule, before the batch entries are summed
    return Term(full=keep_batch(G, axes[node.id], shared.shape, batch, aligned=True))


def _shared_grad(out, P, ins, batch):
    a, b = ins
    if a.ndim < 2 or b.ndim < 2:
        raise GraphError(f"per_example_grads: per-example gradients through a matrix-vector product of shared "
                         f"tensors ({out.node.label}) are not supported")
    return [keep_batch(matmul(P, swap_last(b)), 0, a.shape, batch),
            keep_batch(matmul(swap_last(a), P), 0, b.shape, batch)]


def _stem(node, ins, names) -> str:
    """``xW1`` for ``x @ W1`` where both names are short, else ``mm``."""
    a, b = (names[i] for i in node.inputs)
    return a + b if len(a) + len(b) <= 8 else "mm"


defop("matmul", infer=_matmul_infer, vjp=_matmul_vjp, impl=lambda node, env, a, b: np.matmul(a, b),
      linear=True, var=_stem, batch_axis=_batch_axis, example_grad=_example_grad, shared_grad=_shared_grad,
      describe=lambda node, names: " @ ".join(names[i] for i in node.inputs))


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """Matrix product with NumPy semantics (``a @ b``)."""
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise GraphError("matmul: both operands must be tensors (use gc.const for arrays)")
    return apply("matmul", [a, b])
