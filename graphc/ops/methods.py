"""Tensor's operators and methods, installed in one place: ``x + y``, ``x @ W``, ``x[:, 1:3]``, ``x.sum(0)``, …"""
from __future__ import annotations

import operator

from graphc.dsl import Tensor
from graphc.ops.elementwise import elementwise, greater, greater_equal, less, less_equal
from graphc.ops.functions import abs_, neg
from graphc.ops.linalg import matmul
from graphc.ops.reduce import logsumexp, mean, reduce_max, reduce_sum
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
Tensor.__matmul__ = matmul
Tensor.__rmatmul__ = lambda self, other: matmul(other, self)
Tensor.__getitem__ = getitem
Tensor.T = property(lambda self: transpose(self))


def _shape_args(shape):
    return shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape


Tensor.sum = lambda self, axis=None, keepdims=False: reduce_sum(self, axis, keepdims)
Tensor.mean = lambda self, axis=None, keepdims=False: mean(self, axis, keepdims)
Tensor.max = lambda self, axis=None, keepdims=False: reduce_max(self, axis, keepdims)
Tensor.logsumexp = lambda self, axis=None, keepdims=False: logsumexp(self, axis, keepdims)
Tensor.reshape = lambda self, *shape: reshape(self, _shape_args(shape))
Tensor.transpose = lambda self, *axes: transpose(self, _shape_args(axes) if axes else None)
