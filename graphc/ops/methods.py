"""Tensor's operators and methods, installed in one place: ``x + y``, ``x @ W``, ``x[:, 1:3]``, ``x.sum(0)``, …"""
from __future__ import annotations

import operator

from graphc.core.errors import GraphError
from graphc.dsl import Tensor
from graphc.ops.elementwise import elementwise, equal, greater, greater_equal, less, less_equal, not_equal
from graphc.ops.functions import abs_, neg
from graphc.ops.indexing import take
from graphc.ops.linalg import matmul
from graphc.ops.reduce import logsumexp, mean, reduce_max, reduce_min, reduce_sum
from graphc.ops.shape import getitem, reshape, transpose


def _binary(op: str, fn, reflected: bool = False):
    if reflected:
        return lambda self, other: elementwise(op, fn, other, self)
    return lambda self, other: elementwise(op, fn, self, other)


Tensor.__add__ = _binary("add", operator.add)
Tensor.__radd__ = _binary("add", operator.add, True)
Tensor.__sub__ = _binary("sub", operator.sub)
Tensor.__rsub__ = _binary("sub", operator.sub, True)
Tensor.__mul__ = _binary("mul", operator.mul)
Tensor.__rmul__ = _binary("mul", operator.mul, True)
Tensor.__truediv__ = _binary("div", operator.truediv)
Tensor.__rtruediv__ = _binary("div", operator.truediv, True)
Tensor.__pow__ = _binary("pow", operator.pow)
Tensor.__rpow__ = _binary("pow", operator.pow, True)
Tensor.__neg__ = neg
Tensor.__pos__ = lambda self: self
Tensor.__abs__ = abs_
Tensor.__gt__ = greater
Tensor.__ge__ = greater_equal
Tensor.__lt__ = less
Tensor.__le__ = less_equal
Tensor.__eq__ = equal  # x == 1 is elementwise, as in NumPy (else Python compares the handles: False)
Tensor.__ne__ = not_equal
Tensor.__hash__ = object.__hash__  # handles stay usable as dict keys

Tensor.__matmul__ = matmul
Tensor.__rmatmul__ = lambda self, other: matmul(other, self)


def _index(self, key):
    """``x[1:3, ::-1, None]`` (basic indexing), or ``table[ids]``, ``x[:, ids]``: a tensor of ids on one axis."""
    keys = key if isinstance(key, tuple) else (key,)
    where = [i for i, k in enumerate(keys) if isinstance(k, Tensor)]
    if not where:
        return getitem(self, key)
    others = [k for k in keys if not isinstance(k, Tensor)]
    if len(where) > 1 or any(k is None or not (k is Ellipsis or isinstance(k, slice)) for k in others):
        raise GraphError(f"indexing {self.node.label}: a tensor of ids goes with slices and '...' only, one tensor "
                         "per index; use gc.take for the rest")
    i = where[0]
    axis = i if Ellipsis not in keys[:i] else i - len(keys) + self.ndim  # counted from the end after a '...'
    rest = getitem(self, tuple(slice(None) if j == i else k for j, k in enumerate(keys)))
    return take(rest, keys[i], axis)


Tensor.__getitem__ = _index
Tensor.T = property(lambda self: transpose(self))


def _shape_args(shape):
    return shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape


Tensor.sum = lambda self, axis=None, keepdims=False: reduce_sum(self, axis, keepdims)
Tensor.mean = lambda self, axis=None, keepdims=False: mean(self, axis, keepdims)
Tensor.max = lambda self, axis=None, keepdims=False: reduce_max(self, axis, keepdims)
Tensor.min = lambda self, axis=None, keepdims=False: reduce_min(self, axis, keepdims)
Tensor.logsumexp = lambda self, axis=None, keepdims=False: logsumexp(self, axis, keepdims)
Tensor.reshape = lambda self, *shape: reshape(self, _shape_args(shape))
Tensor.transpose = lambda self, *axes: transpose(self, _shape_args(axes) if axes else None)
