"""The op registry: each op is defined once, its shape rule, VJP and reference implementation side by side.

``infer(nodes, attrs) -> (shape, dtype)`` raises GraphError naming the op and its operands;
``vjp(out, g, *inputs, **attrs) -> grads`` builds backward nodes from ordinary ops (Tensors in, Tensors out);
``impl(node, env, *arrays) -> array`` is the reference NumPy semantics used by ``Graph.evaluate``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from graphc import shapes
from graphc.errors import GraphError


@dataclass(frozen=True)
class Op:
    name: str
    family: str
    infer: Callable
    impl: Callable
    vjp: Callable | None = None  # None: not differentiable (labels, masks, sources)


OPS: dict[str, Op] = {}


def defop(name: str, family: str, *, infer, impl, vjp=None) -> Op:
    if name in OPS:
        raise RuntimeError(f"op {name!r} defined twice")
    OPS[name] = op = Op(name, family, infer, impl, vjp)
    return op


def fail(op: str, message: str, *nodes) -> GraphError:
    operands = ", ".join(n.label for n in nodes)  # 'x' (m, 784) or matmul#7 (m, 128)
    return GraphError(f"{op}: {message}" + (f" [operands: {operands}]" if operands else ""))


FLOATS = ("float32", "float64")
DTYPES = ("bool", "int64", "float32", "float64")


def is_float(dtype: str) -> bool:
    return dtype in FLOATS


def promote(*dtypes: str) -> str:
    """The widest of ``dtypes`` in bool < int64 < float32 < float64."""
    return max(dtypes, key=DTYPES.index) if dtypes else "float32"


def reduced_shape(dims, axes, keepdims: bool):
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(dims))
    return tuple(d for i, d in enumerate(dims) if i not in axes)


def check_axes(op: str, axis, node):
    axes = shapes.normalize_axes(axis, len(node.shape))
    if axes is None:
        raise fail(op, f"axis {axis!r} is out of range for a {len(node.shape)}-d tensor", node)
    return axes


# Registration happens on import; the order only affects the registry's listing.
from graphc.ops import conv, elementwise, linalg, nn, reduce, shape  # noqa: E402,F401
