"""Elementwise ops: one node kind, ``ew``, holding a sympy expression over its inputs ``_0, _1, ...``.

Its VJP is derived with ``sympy.diff``; where a derivative mentions the node's own expression it is
rewritten in terms of the forward output (sigmoid' = s(1-s), tanh' = 1-t², exp' = exp), so the backward
pass reuses forward values. ``f'`` multiplies the incoming gradient elementwise: never a diagonal matrix.

The functions an expression may call (exp, sigmoid, gelu, …) are records in ``FUNCTIONS``, filled by
``graphc.ops.functions``: each says how it is computed for reference, lowered by every backend, and typed.
"""
from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from functools import reduce

import numpy as np
import sympy
from sympy.core.relational import Relational

from graphc.core import shapes
from graphc.core.describe import expression, function_name
from graphc.core.dtypes import DTYPES, is_float, promote
from graphc.core.errors import GraphError
from graphc.core.naming import slug
from graphc.core.registry import defop, fail
from graphc.dsl import Tensor, apply, const, same_graph
from graphc.ops.batching import by_vjp, keep_batch, mixes


def arg(i: int) -> sympy.Symbol:
    """The symbol standing for input ``i`` of an elementwise node."""
    return sympy.Symbol(f"_{i}", real=True)


def arg_index(sym) -> int | None:
    name = getattr(sym, "name", "")
    return int(name[1:]) if name.startswith("_") and name[1:].isdigit() else None


# -- the functions an expression may call: one record each -----------------------------------------------
@dataclass(frozen=True)
class Fn:
    """Everything about one elementwise function, beside its sympy class (which holds its derivative).

    ``reference``: NumPy semantics for the evaluator (the oracle, independent of every backend's lowering).
    Lowering, for every backend, is one of: ``numpy`` (a ufunc name, then constant arguments after the
    function's own: ``("logaddexp", 0)`` is ``logaddexp(x, 0)``) with ``c`` (C text, ``{0}``… the arguments,
    ``{T}`` the kernel's float type); or ``expand`` (an equivalent expression over simpler functions, lowered in
    its place); or ``helper`` (a NumPy function ``helper(x, out=)`` copied into generated modules) with ``c``.
    ``integral``: maps integers to integers, so an expression of int64 inputs stays int64.
    """
    sym: type
    name: str
    reference: Callable
    numpy: tuple | None = None
    c: str | None = None
    expand: Callable | None = None
    helper: Callable | None = None
    integral: bool = False


FUNCTIONS: dict[type, Fn] = {}


def register(fn: Fn) -> Fn:
    if fn.sym in FUNCTIONS:
        raise RuntimeError(f"elementwise function {fn.name!r} registered twice")
    FUNCTIONS[fn.sym] = fn
    return fn


def record(expr) -> Fn | None:
    """The record of the function ``expr`` applies, if it is one."""
    return FUNCTIONS.get(type(expr)) or FUNCTIONS.get(getattr(expr, "func", None))


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


register(Fn(Where, "where", np.where, numpy=("where",), c="({0} ? {1} : {2})", integral=True))


# -- the ew op ----------------------------------------------------------------------------------------
def boolean(expr, dtypes) -> bool:
    """Whether ``expr`` is true or false: a comparison (also one sympy decided already: x > x is False), a bool
    input, or a choice between such values."""
    if isinstance(expr, (Relational, sympy.logic.boolalg.BooleanFunction, sympy.logic.boolalg.BooleanAtom)):
        return True
    if arg_index(expr) is not None:
        return dtypes[arg_index(expr)] == "bool"
    return isinstance(expr, Where) and boolean(expr.args[1], dtypes) and boolean(expr.args[2], dtypes)


def result_dtype(expr, dtypes) -> str:
    if boolean(expr, dtypes):
        return "bool"
    numeric = [d for d in dtypes if d != "bool"] or list(dtypes)
    dtype = promote(*numeric) if numeric else "float32"
    if is_float(dtype):
        return dtype
    integral = all(a.is_Add or a.is_Mul or a.is_Symbol or a.is_Integer or a.is_Relational
                   or (a.is_Pow and a.exp.is_Integer and a.exp >= 0)
                   or (record(a) is not None and record(a).integral)
                   for a in sympy.preorder_traversal(expr) if isinstance(a, sympy.Basic))
    return "int64" if integral else "float64"


def work_dtype(expr, dtypes) -> str:
    """The dtype an expression computes in: its result's, or where that is a comparison (bool), the widest of what
    is compared (``a*2`` in ``a*2 < b``)."""
    result = result_dtype(expr, dtypes)
    if result != "bool":
        return result
    compared = [result_dtype(a, dtypes) for rel in expr.atoms(Relational) for a in rel.args if not a.is_number]
    return max(compared, key=DTYPES.index, default="float32")


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


def _ew_batch_axis(node, ins, axes):
    placed = {len(node.shape) - len(i.shape) + a for i, a in zip(ins, axes) if a is not None}
    if len(placed) > 1:
        raise mixes(node, ins, "combines examples from different axes")
    return placed.pop() if placed else None


def _ew_shared_grad(out, P, ins, batch, expr):
    grads = _ew_vjp(out, P, *ins, expr=expr)  # broadcasting puts P's batch axis in front
    return [None if G is None else keep_batch(G, 0, x.shape, batch) for G, x in zip(grads, ins)]


def _describe_ew(node, names) -> str:
    return expression(node.attr("expr"), [names[i] for i in node.inputs])


POWERS = {sympy.S.Half: "sqrt", -sympy.S.Half: "rsqrt", 2: "square", -1: "recip"}
COMPARISONS = {">": "gt", ">=": "ge", "<": "lt", "<=": "le", "==": "eq", "!=": "ne"}


def _reads_input(expr) -> bool:
    return any(arg_index(s) is not None for s in expr.free_symbols)


def expr_stem(expr) -> str:
    """A name for what an expression computes at its top: ``sqrt``, ``div``, ``sub``, ``relu_grad``, ``exp``."""
    if isinstance(expr, Relational):
        return COMPARISONS.get(expr.rel_op, "compare")
    if expr.is_Symbol:
        return "copy"
    if expr.is_Number or not _reads_input(expr):
        return "const"
    if expr.is_Pow:
        return POWERS.get(expr.exp, "pow")
    if expr.is_Add:
        return "sub" if any(t.could_extract_minus_sign() for t in expr.args) else "add"
    if expr.is_Mul:
        return _mul_stem([a for a in expr.args if _reads_input(a)])
    return slug(function_name(expr.func))


def _mul_stem(factors) -> str:
    """A division, a derivative applied to a gradient (``relu_grad``), a scaling by a constant, or a product."""
    if any(f.is_Pow and f.exp.is_negative for f in factors):
        return "div"
    primes = [function_name(f.func) for f in factors if f.is_Function and "′" in function_name(f.func)]
    if primes:
        return slug(primes[0])
    return "scale" if len(factors) == 1 else "mul"


defop("ew", infer=_ew_infer, impl=_ew_impl, vjp=_ew_vjp, batch_axis=_ew_batch_axis, shared_grad=_ew_shared_grad,
      example_grad=by_vjp, describe=_describe_ew, in_place=True,
      var=lambda node, ins, names: expr_stem(node.attr("expr")))


# -- fused_update: several elementwise expressions over the same elements, run in one loop ------------------------
# ``exprs`` read the node's inputs ``_0 … _{n-1}`` and the values of the expressions before them (``_{n+j}`` is
# expression j's); ``targets[k]`` is the input slot of the param or state expression k overwrites in place, or -1
# for a value only later expressions read (``names[k]``: its name, or None). An expression never reads the old value
# of a target written before it.
# The fuse_updates pass makes them from a param's update and its optimizer state's (one CUDA kernel per param).
def _fused_update_infer(nodes, attrs):
    return _ew_infer(nodes, {"expr": attrs["exprs"][-1]})


def _fused_update_impl(node, env, *args):
    """The new values of the targets, in order (the reference; generated code writes them in place)."""
    values = []
    for expr in node.attr("exprs"):
        known = {**env, **{arg(i): a for i, a in enumerate([*args, *values])}}
        with np.errstate(all="ignore"):
            values.append(np.asarray(interpret(expr, known)).astype(node.dtype))
    return tuple(v for v, slot in zip(values, node.attr("targets")) if slot >= 0)


def _describe_fused_update(node, names) -> str:
    written = [names[node.inputs[slot]] for slot in node.attr("targets") if slot >= 0]
    return f"{', '.join(written)} updated in one loop"


defop("fused_update", infer=_fused_update_infer, impl=_fused_update_impl, describe=_describe_fused_update,
      in_place=True)


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


def add_all(parts: list[Tensor]) -> Tensor:
    """The sum of tensors (one elementwise node; the tensor itself when there is one)."""
    if len(parts) == 1:
        return parts[0]
    return ew(sympy.Add(*(arg(i) for i in range(len(parts)))), parts, "add")


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
    """``fn`` (a function of sympy stand-ins) applied to tensors and scalars, as one elementwise node."""
    tensors, symbols = operands(op, *values)
    return ew(fn(*symbols), tensors, op)


def comparison(op: str, relation):
    def compare(a, b):
        return elementwise(op, relation, a, b)
    compare.__name__ = op
    compare.__doc__ = f"Elementwise ``{op}`` of two tensors or a tensor and a scalar: a bool tensor."
    return compare


greater = comparison("greater", sympy.StrictGreaterThan)
greater_equal = comparison("greater_equal", sympy.GreaterThan)
less = comparison("less", sympy.StrictLessThan)
less_equal = comparison("less_equal", sympy.LessThan)
equal = comparison("equal", sympy.Eq)
not_equal = comparison("not_equal", sympy.Ne)


# -- the reference interpretation of an expression (independent of every backend's printer) --------
def interpret(expr, values: dict):
    """Evaluate a sympy expression on NumPy arrays, node by node (the oracle for the printers)."""
    if expr in values:
        return values[expr]
    if expr.is_Integer:
        return int(expr)
    if expr.is_number:  # 0.5, pi, sqrt(2/pi)
        return float(expr)
    if expr is sympy.true or expr is sympy.false:
        return bool(expr)
    if isinstance(expr, sympy.floor):  # a length of a strided slice, floor((m + 1)/2): exact, in integers
        return int(expr.subs({s: values[s] for s in expr.free_symbols}))
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
    if isinstance(expr, Relational):
        return COMPARE[type(expr)](*parts)
    fn = record(expr)
    if fn is None:
        raise GraphError(f"elementwise: no reference implementation for {expr.func.__name__}")
    return fn.reference(*parts)


COMPARE = {sympy.StrictGreaterThan: np.greater, sympy.GreaterThan: np.greater_equal,
           sympy.StrictLessThan: np.less, sympy.LessThan: np.less_equal, sympy.Eq: np.equal, sympy.Ne: np.not_equal}


# -- cast: a dtype conversion, its own op (an expression's dtype follows its inputs) -------------------------------
def _cast_infer(nodes, attrs):
    (x,) = nodes
    if attrs["dtype"] not in DTYPES:
        raise fail("cast", f"unsupported dtype {attrs['dtype']!r} (float32, float64, int64 or bool)", x)
    return x.shape, attrs["dtype"]


def _cast_vjp(out, g, x, dtype):
    return [cast(g, x.dtype) if is_float(x.dtype) else None]  # float to float: the gradient cast back


defop("cast", infer=_cast_infer, vjp=_cast_vjp, var=lambda node, ins, names: f"{names[node.inputs[0]]}_{node.dtype}",
      impl=lambda node, env, x: x.astype(node.dtype),
      batch_axis=lambda node, ins, axes: axes[0],
      shared_grad=lambda out, P, ins, batch, dtype: [cast(P, ins[0].dtype) if is_float(ins[0].dtype) else None],
      describe=lambda node, names: f"{names[node.inputs[0]]} as {node.dtype}")


def cast(x: Tensor, dtype: str) -> Tensor:
    """``x`` converted to ``dtype``, as NumPy's ``astype``: an explicit conversion, so none is refused. float64→float32
    rounds, float→int64 truncates toward zero (NaN, inf and values beyond int64 are undefined, as in NumPy),
    anything→bool is ``x != 0``. The gradient flows between float dtypes (cast back), not through integers."""
    if not isinstance(x, Tensor):
        raise GraphError(f"cast: needs a tensor, not {type(x).__name__}")
    return x if x.dtype == dtype else apply("cast", [x], dtype=dtype)
