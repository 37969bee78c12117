"""Sources and shape ops: input/param/state/const/fill, reshape, transpose, broadcast_to, concat,
slicing and its gradient, one_hot."""
from __future__ import annotations

import operator

import numpy as np
import sympy

from graphc.core import shapes
from graphc.core.describe import value
from graphc.core.dtypes import is_float
from graphc.core.errors import GraphError
from graphc.core.naming import after_input
from graphc.core.registry import check_axes, defop, fail
from graphc.dsl import Tensor, apply
from graphc.ops.batching import by_vjp, keep_batch, mixes, same_dim


# -- sources ------------------------------------------------------------------------------------------
def _source_infer(nodes, attrs):  # sources are added directly with their shape; never inferred
    raise RuntimeError("source nodes are declared, not inferred")


def _const_impl(node, env):
    data, shape, dtype = node.attr("value")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def _fill_impl(node, env):
    return np.full(shapes.evaluate(node.shape, env), float(node.attr("value").subs(env)), dtype=node.dtype)


def _fed(node, env):
    raise GraphError(f"{node.op} {node.name!r} must be fed")


def _describe_const(node, names) -> str:
    data, shape, dtype = node.attr("value")
    arr = np.frombuffer(data, dtype=dtype).reshape(shape)
    if arr.size > 4:
        return f"const {shapes.fmt_x(shape)} array"
    return "const " + (" ".join(np.array2string(arr, separator=", ").split()) if arr.ndim else str(arr.item()))


defop("input", infer=_source_infer, impl=_fed, source="input", describe=lambda node, names: "input")
defop("param", infer=_source_infer, impl=_fed, source="param", describe=lambda node, names: "param")
defop("state", infer=_source_infer, impl=_fed, source="state", describe=lambda node, names: "state")
defop("const", infer=_source_infer, impl=_const_impl, source="const", describe=_describe_const)
defop("fill", infer=_source_infer, impl=_fill_impl, source="fill",
      var=lambda node, ins, names: {0: "zeros", 1: "ones"}.get(node.attr("value"), "full"),
      describe=lambda node, names: f"fill {value(node.attr('value'))}")


# -- reshape ------------------------------------------------------------------------------------------
def _reshape_infer(nodes, attrs):
    (x,) = nodes
    shape = attrs["shape"]
    if sympy.simplify(shapes.numel(shape) - shapes.numel(x.shape)) != 0:
        raise fail("reshape", f"cannot reshape {shapes.fmt(x.shape)} to {shapes.fmt(shape)}: "
                   f"{shapes.numel(x.shape)} elements vs {shapes.numel(shape)}", x)
    return shape, x.dtype


def _reshape_batch_axis(node, ins, axes):
    (a,), (x,) = axes, ins
    before = shapes.numel(x.shape[:a])
    for b, d in enumerate(node.shape):
        if same_dim(shapes.numel(node.shape[:b]), before) and same_dim(d, x.shape[a]):
            return b
    raise mixes(node, ins, f"reshapes {shapes.fmt(x.shape)} to {shapes.fmt(node.shape)}, merging the batch axis")


defop("reshape", infer=_reshape_infer, view=True, linear=True,
      var=lambda node, ins, names: f"{names[node.inputs[0]]}_{len(node.shape)}d",
      impl=lambda node, env, x: np.reshape(x, shapes.evaluate(node.shape, env)),
      vjp=lambda out, g, x, shape: [reshape(g, x.shape)],
      batch_axis=_reshape_batch_axis,
      shared_grad=lambda out, P, ins, batch, shape: [reshape(P, (batch, *ins[0].shape))],
      describe=lambda node, names: f"reshape({names[node.inputs[0]]}, {shapes.fmt(node.shape)})")


def reshape(x: Tensor, shape) -> Tensor:
    """Reshape; dims may be symbolic (``(m, 28*28)``) and one may be -1."""
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    if sum(1 for d in shape if isinstance(d, int) and d == -1) > 1:
        raise fail("reshape", f"at most one -1 in {shape}", x.node)
    if any(isinstance(d, int) and d == -1 for d in shape):
        known = shapes.numel([d for d in shape if not (isinstance(d, int) and d == -1)])
        rest = sympy.simplify(shapes.numel(x.shape) / known)
        if rest.is_integer is not True:
            raise fail("reshape", f"cannot infer -1 in {shape} from {shapes.fmt(x.shape)}", x.node)
        shape = tuple(rest if isinstance(d, int) and d == -1 else d for d in shape)
    shape = shapes.as_shape(shape, "reshape target")
    if shapes.same(shape, x.shape) and len(shape) == x.ndim:
        return x
    return apply("reshape", [x], shape=shape)


# -- transpose ----------------------------------------------------------------------------------------
def _transpose_infer(nodes, attrs):
    (x,) = nodes
    perm = attrs["perm"]
    if sorted(perm) != list(range(len(x.shape))):
        raise fail("transpose", f"axes {perm} are not a permutation of {len(x.shape)} axes", x)
    return tuple(x.shape[p] for p in perm), x.dtype


def _describe_transpose(node, names) -> str:
    x, perm = names[node.inputs[0]], node.attr("perm")
    return f"{x}ᵀ" if perm == (1, 0) else f"transpose({x}, {perm})"


defop("transpose", infer=_transpose_infer, view=True, linear=True, var=after_input("T"),
      impl=lambda node, env, x: np.transpose(x, node.attr("perm")),
      vjp=lambda out, g, x, perm: [transpose(g, tuple(int(i) for i in np.argsort(perm)))],
      batch_axis=lambda node, ins, axes: node.attr("perm").index(axes[0]),
      shared_grad=lambda out, P, ins, batch, perm: [
          transpose(P, (0, *(int(i) + 1 for i in np.argsort(perm))))],
      describe=_describe_transpose)


def transpose(x: Tensor, axes=None) -> Tensor:
    """Permute the axes (``axes=None`` reverses them, as ``x.T``)."""
    perm = tuple(reversed(range(x.ndim))) if axes is None else tuple(int(a) % max(x.ndim, 1) for a in axes)
    if perm == tuple(range(x.ndim)):
        return x
    return apply("transpose", [x], perm=perm)


def swap_last(x: Tensor) -> Tensor:
    """Transpose of the last two axes (the matrix transpose of a batch)."""
    perm = list(range(x.ndim))
    perm[-2:] = perm[-1], perm[-2]
    return transpose(x, perm)


# -- broadcast_to -------------------------------------------------------------------------------------
def _broadcast_infer(nodes, attrs):
    (x,) = nodes
    shape = attrs["shape"]
    if shapes.broadcast(x.shape, shape) != shape:
        raise fail("broadcast_to", f"cannot broadcast {shapes.fmt(x.shape)} to {shapes.fmt(shape)}", x)
    return shape, x.dtype


def _broadcast_copies(node, ins, batch):
    """0 where a shared tensor is broadcast to one copy per example (a class token), else None."""
    (x,) = ins
    stretched = len(x.shape) < len(node.shape) or x.shape[0] == 1
    return 0 if node.shape and same_dim(node.shape[0], batch) and stretched else None


defop("broadcast_to", infer=_broadcast_infer, view=True, linear=True, var=after_input("_bc"),
      impl=lambda node, env, x: np.broadcast_to(x, shapes.evaluate(node.shape, env)).copy(),
      vjp=lambda out, g, x, shape: [g],  # the autodiff driver sums the broadcast axes away
      batch_axis=lambda node, ins, axes: axes[0] + len(node.shape) - len(ins[0].shape),
      batch_copies=_broadcast_copies, example_grad=by_vjp,
      shared_grad=lambda out, P, ins, batch, shape: [keep_batch(P, 0, ins[0].shape, batch)],
      describe=lambda node, names: f"broadcast_to({names[node.inputs[0]]}, {shapes.fmt(node.shape)})")


def broadcast_to(x: Tensor, shape) -> Tensor:
    """``x`` repeated along new or size-1 axes to ``shape`` (NumPy's broadcasting)."""
    shape = shapes.as_shape(shape, "broadcast_to target")
    if tuple(x.shape) == shape:
        return x
    return apply("broadcast_to", [x], shape=shape)


# -- concat -------------------------------------------------------------------------------------------
def _concat_infer(nodes, attrs):
    axis = attrs["axis"]
    first = nodes[0]
    for n in nodes[1:]:
        if n.dtype != first.dtype:
            raise fail("concat", f"dtypes differ: {first.dtype} vs {n.dtype}", first, n)
        if len(n.shape) != len(first.shape) or any(
                a != b for i, (a, b) in enumerate(zip(n.shape, first.shape)) if i != axis):
            raise fail("concat", f"shapes differ off axis {axis}", first, n)
    total = sum((n.shape[axis] for n in nodes), sympy.Integer(0))
    return tuple(total if i == axis else d for i, d in enumerate(first.shape)), first.dtype


def _concat_vjp(out, g, *xs, axis):
    grads, start = [], sympy.Integer(0)
    for x in xs:
        stop = start + x.shape[axis]
        index = tuple((start, stop, 1) if i == axis else (0, d, 1) for i, d in enumerate(out.shape))
        grads.append(apply("slice", [g], index=index))
        start = stop
    return grads


def _concat_batch_axis(node, ins, axes):
    placed = {a for a in axes if a is not None}
    if node.attr("axis") in placed:
        raise mixes(node, ins, f"concatenates along the batch axis (axis {node.attr('axis')})")
    if len(placed) > 1:
        raise mixes(node, ins, "combines examples from different axes")
    return placed.pop()


defop("concat", infer=_concat_infer, vjp=_concat_vjp, batch_axis=_concat_batch_axis, var="cat",
      impl=lambda node, env, *xs: np.concatenate(xs, axis=node.attr("axis")))


def concat(tensors, axis: int = 0) -> Tensor:
    """Join tensors along ``axis`` (their other dims must agree)."""
    tensors = list(tensors)
    if not tensors:
        raise GraphError("concat: needs at least one tensor")
    (axis,) = check_axes("concat", axis, tensors[0].node)
    return tensors[0] if len(tensors) == 1 else apply("concat", tensors, axis=axis)


# -- slicing ------------------------------------------------------------------------------------------
# An index is (start, stop, step) per axis; with a negative step, stop -1 stands for "past index 0" (None in
# Python's own spelling, since -1 there means the last element).
def _length(start, stop, step):
    if step < 0:
        return sympy.floor((start - stop - step - 1) / -step)
    return sympy.floor((stop - start + step - 1) / step) if step != 1 else stop - start


def _slice_infer(nodes, attrs):
    (x,) = nodes
    out = []
    for (start, stop, step), d in zip(attrs["index"], x.shape):
        n = sympy.simplify(_length(start, stop, step))
        last = start if step < 0 else stop - 1
        if n.is_negative or (n.is_number and n < 0) or sympy.simplify(d - 1 - last).is_negative:
            raise fail("slice", f"slice {start}:{stop}:{step} is out of bounds for a dim of size {d}", x)
        out.append(n)
    return tuple(out), x.dtype


def _stop(stop, step):
    """``stop`` as Python slicing reads it: None for "past index 0" of a negative step."""
    return None if step < 0 and stop == -1 else stop


def _np_index(index, env):
    def ints(v):
        return None if v is None else int(sympy.sympify(v).subs(env))
    return tuple(slice(ints(a), ints(_stop(b, c)), int(c)) for a, b, c in index)


def _unslice_impl(node, env, g):
    out = np.zeros(shapes.evaluate(node.shape, env), dtype=node.dtype)
    out[_np_index(node.attr("index"), env)] = g
    return out


def slice_text(index, text) -> str:
    """``1:3, ::2, ::-1``: a slice index as Python writes it, each bound written by ``text``."""
    parts = []
    for start, stop, step in index:
        stop = _stop(stop, step)
        part = f"{text(start) if start != 0 else ''}:{'' if stop is None else text(stop)}"
        parts.append(part + (f":{step}" if step != 1 else ""))
    return ", ".join(parts)


def index_text(index) -> str:
    """``[1:3, ::2]``: a slice index as Python writes it."""
    return f"[{slice_text(index, value)}]"


def _slice_batch_axis(node, ins, axes):
    (a,), (x,) = axes, ins
    start, stop, step = node.attr("index")[a]
    if not (same_dim(start, 0) and same_dim(stop, x.shape[a]) and step == 1):
        raise mixes(node, ins, "slices the batch axis")
    return a


def _unslice_batch_axis(node, ins, axes):
    (a,), (x,) = axes, ins
    start, stop, step = node.attr("index")[a]
    if not (same_dim(start, 0) and same_dim(stop, node.shape[a]) and same_dim(stop, x.shape[a]) and step == 1):
        raise mixes(node, ins, "pads the batch axis")
    return a


def _slice_requires(node, ins):
    """Each bound inside its dim: ``x[-2:]`` on ``(m, 3)`` reads rows ``m − 2 … m − 1``, so it needs ``m ≥ 2``.
    A reversed slice runs from ``start ≤ d − 1`` down to ``stop ≥ −1`` (−1: through row 0)."""
    conditions = []
    for (start, stop, step), d in zip(node.attr("index"), ins[0].shape):
        start, stop = sympy.sympify(start), sympy.sympify(stop)
        if step > 0:
            conditions += [start >= 0, stop <= d, start <= stop]
        else:
            conditions += [stop >= -1, start <= d - 1, stop <= start]
    return [c for c in conditions if c is not sympy.true]


defop("slice", infer=_slice_infer, view=True, batch_axis=_slice_batch_axis, requires=_slice_requires,
      var=after_input("_part"),
      impl=lambda node, env, x: x[_np_index(node.attr("index"), env)].copy(),
      vjp=lambda out, g, x, index: [apply("unslice", [g], index=index, shape=x.shape)],
      describe=lambda node, names: names[node.inputs[0]] + index_text(node.attr("index")))
defop("unslice", infer=lambda nodes, attrs: (attrs["shape"], nodes[0].dtype), impl=_unslice_impl,
      var=after_input("_placed"),
      vjp=lambda out, g, x, index, shape: [apply("slice", [g], index=index)], batch_axis=_unslice_batch_axis,
      describe=lambda node, names: f"zeros{shapes.fmt(node.shape)} with {index_text(node.attr('index'))} = "
                                   f"{names[node.inputs[0]]}")


def _bound(value, d, default, step=1):
    """A slice bound as a non-negative position (Python's rules: negative counts from the end, then clipped);
    -1 is "past index 0" for a negative step."""
    if value is None:
        return sympy.sympify(default)
    if isinstance(value, sympy.Expr):
        return value
    value = operator.index(value)
    if value < 0:
        value = d + value
        if value.is_number and value < 0:
            value = sympy.Integer(-1 if step < 0 else 0)
    elif d.is_number:
        value = min(value, int(d) - (step < 0))
    return sympy.sympify(value)


def _axis_index(axis, k, d, x):
    """(start, stop, step) of one axis for an int or a slice ``k``."""
    if isinstance(k, (int, np.integer)):
        k = int(k)
        if d.is_number and not -int(d) <= k < int(d):
            raise fail("slice", f"index {k} is out of bounds for axis {axis} of size {d}", x.node)
        start = _bound(k, d, 0)
        return start, start + 1, 1
    if isinstance(k, slice):
        for part, v in (("start", k.start), ("stop", k.stop)):
            if not (v is None or shapes.is_index(v) or isinstance(v, sympy.Expr) and v.is_integer):
                raise fail("slice", f"{part} {v!r} on axis {axis} is not an int or a dim", x.node)
        if not (k.step is None or shapes.is_index(k.step)):
            raise fail("slice", f"step {k.step!r} on axis {axis} is not an int", x.node)
        step = 1 if k.step is None else operator.index(k.step)
        if step == 0:
            raise fail("slice", f"step 0 on axis {axis}", x.node)
        if step < 0:
            return _bound(k.start, d, d - 1, step), _bound(k.stop, d, -1, step), step
        return _bound(k.start, d, 0), _bound(k.stop, d, d), step
    raise fail("slice", f"unsupported index {k!r} on axis {axis}", x.node)


def getitem(x: Tensor, key) -> Tensor:
    """Basic indexing on any axis: ints, slices (negative steps too), ``...``, ``None`` (a new axis of size 1)."""
    key = key if isinstance(key, tuple) else (key,)
    count = sum(1 for k in key if k is not None and k is not Ellipsis)
    if count > x.ndim:
        raise fail("slice", f"too many indices ({count}) for a {x.ndim}-d tensor", x.node)
    ellipses = [i for i, k in enumerate(key) if k is Ellipsis]
    if len(ellipses) > 1:
        raise fail("slice", "an index can only have a single ellipsis ('...')", x.node)
    at = ellipses[0] if ellipses else len(key)
    key = key[:at] + (slice(None),) * (x.ndim - count) + key[at + 1:]
    index, kept, axis = [], [], 0  # kept: per result axis, the sliced axis it comes from, or None (new)
    for k in key:
        if k is None:
            kept.append(None)
            continue
        index.append(_axis_index(axis, k, x.shape[axis], x))
        if isinstance(k, slice):
            kept.append(axis)
        axis += 1
    out = x
    if any((a != 0 or b != d or c != 1) for (a, b, c), d in zip(index, x.shape)):
        out = apply("slice", [x], index=tuple(index))
    shape = tuple(1 if a is None else out.shape[a] for a in kept)
    return out if shape == tuple(out.shape) else reshape(out, shape)


# -- one_hot ------------------------------------------------------------------------------------------
def _one_hot_infer(nodes, attrs):
    (t,) = nodes
    if t.dtype != "int64":
        raise fail("one_hot", f"labels must be int64 class ids, not {t.dtype}", t)
    return (*t.shape, attrs["k"]), attrs["dtype"]


def _one_hot_impl(node, env, t):
    k = int(node.attr("k").subs(env))
    return (t[..., None] == np.arange(k)).astype(node.attr("dtype"))


defop("one_hot", infer=_one_hot_infer, impl=_one_hot_impl, batch_axis=lambda node, ins, axes: axes[0], var="onehot",
      class_ids=lambda node, ins: [(0, node.attr("k"))])


def one_hot(labels: Tensor, k: int, dtype: str = "float32") -> Tensor:
    """``(…, k)`` array with a 1 at each label's class."""
    if not is_float(dtype):
        raise GraphError(f"one_hot: dtype must be float32 or float64, not {dtype}")
    classes = k if isinstance(k, sympy.Expr) else sympy.Integer(operator.index(k)) if shapes.is_index(k) else None
    if classes is None or not (classes.is_integer and classes.is_positive):
        raise GraphError(f"one_hot: k (the number of classes) must be a positive int or dim, not {k!r}")
    return apply("one_hot", [labels], k=classes, dtype=dtype)
