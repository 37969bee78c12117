"""Elementwise ops: one node kind, ``ew``, holding a sympy expression over its inputs ``_0, _1, ...``.

Its VJP is derived with ``sympy.diff``; where a derivative mentions the node's own expression it is
rewritten in terms of the forward output (sigmoid' = s(1-s), tanh' = 1-t², exp' = exp), so the backward
pass reuses forward values. ``f'`` multiplies the incoming gradient elementwise: never a diagonal matrix.
"""
from __future__ import annotations

import operator
from fractions import Fraction
from functools import reduce

import numpy as np
import sympy
from sympy.codegen.cfunctions import log1p
from sympy.core.relational import Relational

from graphc import shapes
from graphc.dsl import Tensor, apply, const, same_graph
from graphc.errors import GraphError
from graphc.ops import defop, fail, is_float, promote


def arg(i: int) -> sympy.Symbol:
    """The symbol standing for input ``i`` of an elementwise node."""
    return sympy.Symbol(f"_{i}", real=True)


def arg_index(sym) -> int | None:
    name = getattr(sym, "name", "")
    return int(name[1:]) if name.startswith("_") and name[1:].isdigit() else None


# -- activations as sympy functions, derivatives through their own output -----------------------------
class Sigmoid(sympy.Function):
    def fdiff(self, argindex=1):
        s = Sigmoid(self.args[0])
        return s * (1 - s)


class Softplus(sympy.Function):
    def fdiff(self, argindex=1):
        return Sigmoid(self.args[0])


class Where(sympy.Function):
    """``cond ? a : b`` elementwise; the condition is a boolean input or a comparison."""

    @classmethod
    def eval(cls, cond, a, b):
        if cond is sympy.true or cond is sympy.false:
            return a if cond is sympy.true else b
        if a == b:
            return a
        return None

    def _eval_derivative(self, s):
        cond, a, b = self.args
        return Where(cond, sympy.diff(a, s), sympy.diff(b, s))


class Positive(sympy.Function):
    """1 where ``y > 0``, else 0, for ``y ≥ 0`` (a relu's output): relu' read off the forward value.

    Knowing ``y ≥ 0`` lets NumPy compute it as ``sign(y)``, a float op, where a comparison would need a
    bool→float cast (and NumPy's per-call cast buffer) before it can multiply a gradient.
    """

    @classmethod
    def eval(cls, y):
        return sympy.Integer(1 if y > 0 else 0) if y.is_number else None

    def fdiff(self, argindex=1):
        return sympy.S.Zero


class Relu(sympy.Function):
    @classmethod
    def eval(cls, x):
        return sympy.Max(x, 0) if x.is_number else None

    def fdiff(self, argindex=1):  # relu(x) > 0 exactly where x > 0: the backward pass reads the output
        return Positive(Relu(self.args[0]))


class Maximum(sympy.Function):
    def fdiff(self, argindex=1):
        a, b = self.args  # ties send the gradient to the first operand
        return Where(a >= b, 1, 0) if argindex == 1 else Where(a >= b, 0, 1)


class Minimum(sympy.Function):
    def fdiff(self, argindex=1):
        a, b = self.args
        return Where(a <= b, 1, 0) if argindex == 1 else Where(a <= b, 0, 1)


# -- the ew op ----------------------------------------------------------------------------------------
def result_dtype(expr, dtypes) -> str:
    if isinstance(expr, (Relational, sympy.logic.boolalg.BooleanFunction, sympy.logic.boolalg.BooleanAtom)):
        return "bool"  # a comparison, also one sympy decided already (x > x is False)
    numeric = [d for d in dtypes if d != "bool"] or list(dtypes)
    dtype = promote(*numeric) if numeric else "float32"
    if is_float(dtype):
        return dtype
    integral = all(a.is_Add or a.is_Mul or a.is_Symbol or a.is_Integer or a.is_Relational
                   or (a.is_Pow and a.exp.is_Integer and a.exp >= 0)
                   or isinstance(a, (Where, Maximum, Minimum, Positive))
                   for a in sympy.preorder_traversal(expr) if isinstance(a, sympy.Basic))
    return "int64" if integral else "float64"


def _ew_infer(nodes, attrs):
    shape = shapes.broadcast(*(n.shape for n in nodes))
    if shape is None:
        raise fail("elementwise", "operand shapes do not broadcast", *nodes)
    return shape, result_dtype(attrs["expr"], [n.dtype for n in nodes])


def _ew_impl(node, env, *args):
    values = {arg(i): a for i, a in enumerate(args)}
    values.update(env)
    with np.errstate(all="ignore"):
        out = interpret(node.attr("expr"), values)
    return np.broadcast_to(np.asarray(out), shapes.evaluate(node.shape, env)).astype(node.dtype)


OUT = sympy.Symbol("_out", real=True)


def _ew_vjp(out, g, *xs, expr):
    grads = []
    reuse = not (expr.is_Add or expr.is_Mul or expr.is_Symbol)
    for i, x in enumerate(xs):
        d = sympy.diff(expr, arg(i)) if is_float(x.dtype) else sympy.S.Zero
        if d == 0:
            grads.append(None)
            continue
        if reuse:
            d = d.subs(expr, OUT)
        n = len(xs)
        body = (d * arg(n)).subs(OUT, arg(n + 1))
        grads.append(ew(body, [*xs, g, out]))
    return grads


defop("ew", "elementwise", infer=_ew_infer, impl=_ew_impl, vjp=_ew_vjp)


def canonical(expr, inputs: list) -> tuple:
    """``expr`` over ``inputs`` (ids or tensors) with duplicates merged and unused inputs dropped, renumbered."""
    keyed = [getattr(t, "id", t) for t in inputs]
    order, subs = [], {}
    for i in sorted({arg_index(s) for s in expr.free_symbols if arg_index(s) is not None}):
        if keyed[i] not in order:
            order.append(keyed[i])
        subs[arg(i)] = arg(order.index(keyed[i]))
    kept = [inputs[keyed.index(k)] for k in order]
    return expr.xreplace(subs), kept


def ew(expr, inputs, op: str = "elementwise", name: str | None = None) -> Tensor:
    """The elementwise node ``expr(inputs)``: inputs deduplicated, unused ones dropped, identity elided."""
    graph = same_graph(op, inputs)
    shape = shapes.broadcast(*(t.shape for t in inputs))
    if shape is None:
        raise GraphError(f"{op}: cannot broadcast " + " and ".join(t.node.label for t in inputs))
    expr, keep = canonical(sympy.sympify(expr), list(inputs))
    for t in inputs:  # an unused operand still shapes the result
        if shapes.broadcast(*(u.shape for u in keep)) == shape:
            break
        if all(t.id != u.id for u in keep):
            keep.append(t)
    if expr == arg(0) and len(keep) == 1 and keep[0].shape == shape:
        return keep[0]
    return apply("ew", keep, graph=graph, name=name, expr=expr)


def scalar(value):
    """A Python/NumPy scalar or sympy expression as an exact sympy number where that is exact."""
    if isinstance(value, (bool, np.bool_)):
        return sympy.Integer(int(value))
    if isinstance(value, (int, np.integer)):
        return sympy.Integer(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if not np.isfinite(value):
            return sympy.Float(value)
        exact = Fraction(value).limit_denominator(10**6)  # 0.1 -> 1/10: exact factors fold (0.5·2 = 1)
        return sympy.Rational(exact.numerator, exact.denominator) if float(exact) == value else sympy.Float(value)
    if isinstance(value, sympy.Expr):
        return value
    return None


def operands(op: str, *values):
    """Tensors and scalars of a user expression -> (list of tensors, list of sympy stand-ins)."""
    tensors, symbols = [], []
    for v in values:
        if isinstance(v, Tensor):
            symbols.append(arg(len(tensors)))
            tensors.append(v)
        elif isinstance(v, (np.ndarray, list)):
            tensors_graph = same_graph(op, [t for t in values if isinstance(t, Tensor)])
            with tensors_graph:
                c = const(np.asarray(v), dtype=_like_dtype(values, np.asarray(v)))
            symbols.append(arg(len(tensors)))
            tensors.append(c)
        else:
            s = scalar(v)
            if s is None:
                raise GraphError(f"{op}: cannot use {v!r} of type {type(v).__name__} as an operand")
            symbols.append(s)
    return tensors, symbols


def _like_dtype(values, arr):
    floats = [t.dtype for t in values if isinstance(t, Tensor) and is_float(t.dtype)]
    return floats[0] if floats and arr.dtype.kind == "f" else None


def elementwise(op: str, fn, *values) -> Tensor:
    tensors, symbols = operands(op, *values)
    return ew(fn(*symbols), tensors, op)


def _unary(op: str, fn):
    def apply_fn(x):
        return elementwise(op, fn, x)
    apply_fn.__name__ = op
    apply_fn.__doc__ = f"Elementwise {op}."
    return apply_fn


exp = _unary("exp", sympy.exp)
log = _unary("log", sympy.log)
log1p_ = _unary("log1p", log1p)
sqrt = _unary("sqrt", sympy.sqrt)
abs_ = _unary("abs", sympy.Abs)
square = _unary("square", lambda a: a**2)
tanh = _unary("tanh", sympy.tanh)
sigmoid = _unary("sigmoid", Sigmoid)
relu = _unary("relu", Relu)
softplus = _unary("softplus", Softplus)
neg = _unary("neg", operator.neg)


def leaky_relu(x, alpha: float = 0.01) -> Tensor:
    """``x`` where positive, ``alpha*x`` elsewhere."""
    return elementwise("leaky_relu", lambda a: Relu(a) - scalar(alpha) * Relu(-a), x)


def maximum(a, b) -> Tensor:
    return elementwise("maximum", Maximum, a, b)


def minimum(a, b) -> Tensor:
    return elementwise("minimum", Minimum, a, b)


def where(cond, a, b) -> Tensor:
    """``a`` where ``cond`` (a boolean tensor) holds, else ``b``."""
    if isinstance(cond, Tensor) and cond.dtype != "bool":
        raise GraphError(f"where: condition {cond.node.label} must be boolean, not {cond.dtype}")
    return elementwise("where", Where, cond, a, b)


def binary_cross_entropy_with_logits(z, t) -> Tensor:
    """Elementwise ``-t·log σ(z) - (1-t)·log(1-σ(z))``, written stably as ``softplus(z) - z·t``."""
    return elementwise("binary_cross_entropy_with_logits", lambda a, b: Softplus(a) - a * b, z, t)


def greater(a, b):
    return elementwise("greater", sympy.StrictGreaterThan, a, b)


def greater_equal(a, b):
    return elementwise("greater_equal", sympy.GreaterThan, a, b)


def less(a, b):
    return elementwise("less", sympy.StrictLessThan, a, b)


def less_equal(a, b):
    return elementwise("less_equal", sympy.LessThan, a, b)


def equal(a, b):
    return elementwise("equal", sympy.Eq, a, b)


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
Tensor.__gt__ = greater
Tensor.__ge__ = greater_equal
Tensor.__lt__ = less
Tensor.__le__ = less_equal


# -- the reference interpretation of an expression (independent of every backend's printer) --------
def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


REFERENCE = {
    sympy.exp: np.exp, sympy.log: np.log, log1p: np.log1p, sympy.tanh: np.tanh, sympy.Abs: np.abs,
    sympy.sign: np.sign, Sigmoid: _sigmoid, Softplus: lambda x: np.logaddexp(0.0, x),
    Relu: lambda x: np.maximum(x, 0), Positive: lambda y: (y > 0).astype(np.result_type(y, np.float32)),
    Maximum: np.maximum, Minimum: np.minimum, Where: np.where,
    sympy.StrictGreaterThan: np.greater, sympy.GreaterThan: np.greater_equal,
    sympy.StrictLessThan: np.less, sympy.LessThan: np.less_equal, sympy.Eq: np.equal, sympy.Ne: np.not_equal,
}


def interpret(expr, values: dict):
    """Evaluate a sympy expression on NumPy arrays, node by node (the oracle for the printers)."""
    if expr in values:
        return values[expr]
    if expr.is_Integer:
        return int(expr)
    if expr.is_Number:
        return float(expr)
    if expr is sympy.true or expr is sympy.false:
        return bool(expr)
    parts = [interpret(a, values) for a in expr.args]
    if expr.is_Add:
        return reduce(operator.add, parts)
    if expr.is_Mul:
        return reduce(operator.mul, parts)
    if expr.is_Pow:
        base, power = parts
        if isinstance(power, int) and power < 0:
            return 1.0 / np.power(base, -power) if not isinstance(base, int) else 1.0 / base ** -power
        return np.power(base, power) if not isinstance(base, (int, float)) else base ** power
    fn = REFERENCE.get(type(expr)) or REFERENCE.get(expr.func)
    if fn is None:
        raise GraphError(f"elementwise: no reference implementation for {expr.func.__name__}")
    return fn(*parts)
