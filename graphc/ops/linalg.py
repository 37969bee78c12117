"""``matmul`` with NumPy's semantics: 1-d operands promoted, leading batch dims broadcast."""
from __future__ import annotations

import numpy as np

from graphc import shapes
from graphc.dsl import Tensor, apply
from graphc.errors import GraphError
from graphc.ops import defop, fail, is_float, promote
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
    # work on ≥2-d views (a 1-d a is a row, a 1-d b a column); the driver sums broadcast batch dims away
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


defop("matmul", "linalg", infer=_matmul_infer, vjp=_matmul_vjp, impl=lambda node, env, a, b: np.matmul(a, b))


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """Matrix product with NumPy semantics (``a @ b``)."""
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise GraphError("matmul: both operands must be tensors (use gc.const for arrays)")
    return apply("matmul", [a, b])


Tensor.__matmul__ = matmul
Tensor.__rmatmul__ = lambda self, other: matmul(other, self)

