"""Symbolic shapes: dims are sympy expressions (``m``, ``m*28``, integers); NumPy broadcasting on them."""
from __future__ import annotations

import operator

import sympy

from graphc.core.errors import GraphError

Shape = tuple  # of sympy expressions


def dim(name: str) -> sympy.Symbol:
    """A symbolic dimension (a positive-integer sympy Symbol), e.g. the batch size ``m``."""
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
        raise GraphError(f"dim name {name!r} must be a Python identifier not starting with '_'")
    return sympy.Symbol(name, integer=True, positive=True)


def as_shape(shape, what: str = "shape") -> Shape:
    """Normalize ``shape`` (ints, sympy dims, or one int) to a tuple of sympy expressions."""
    if isinstance(shape, (int, sympy.Expr)):
        shape = (shape,)
    try:
        if any(d is None or isinstance(d, (str, float)) for d in shape):
            raise TypeError
        dims = tuple(sympy.sympify(d) for d in shape)
    except (TypeError, sympy.SympifyError) as exc:
        raise GraphError(f"{what} {shape!r} is not a tuple of ints and dims (gc.dim(\"m\") for a size known only "
                         "when the graph runs)") from exc
    for d in dims:
        if d.is_integer is not True or d.is_negative:
            raise GraphError(f"{what} {fmt(dims)}: dim {d} is not a non-negative integer expression")
    return dims


def fmt(shape) -> str:
    """``(m, 784)`` — how shapes appear in messages and comments."""
    inner = ", ".join(str(d) for d in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def fmt_x(shape) -> str:
    """``m×784`` — the compact form used in diagrams and code comments."""
    return "×".join(str(d) for d in shape) if shape else "scalar"


def numel(shape) -> sympy.Expr:
    return sympy.Mul(*shape) if shape else sympy.Integer(1)


def same(a, b) -> bool:
    return len(a) == len(b) and all(sympy.simplify(x - y) == 0 for x, y in zip(a, b))


def broadcast(*shapes) -> Shape | None:
    """NumPy broadcasting on symbolic shapes; None where the shapes do not broadcast."""
    ndim = max((len(s) for s in shapes), default=0)
    out = []
    for axis in range(ndim):
        dims = {s[axis - ndim + len(s)] for s in shapes if axis - ndim + len(s) >= 0}
        dims.discard(sympy.Integer(1))
        if len(dims) > 1:
            return None
        out.append(dims.pop() if dims else sympy.Integer(1))
    return tuple(out)


def unbroadcast_axes(src: Shape, target: Shape) -> tuple[tuple[int, ...], bool]:
    """Axes of ``src`` to sum so it reduces to ``target``, and whether a reshape is left to do."""
    lead = len(src) - len(target)
    axes = list(range(lead))
    for i, d in enumerate(target):
        if d == 1 and src[lead + i] != 1:
            axes.append(lead + i)
    return tuple(axes), lead > 0 or len(axes) > lead


def is_index(v) -> bool:
    """An int or a NumPy int: what may stand for an axis, a count or a slice bound (a bool or a float may not)."""
    return not isinstance(v, bool) and hasattr(v, "__index__")


def normalize_axes(axis, ndim: int) -> tuple[int, ...] | None:
    """``axis`` (None, an int, a NumPy int or a tuple of them) as sorted non-negative ints; None where one is out
    of range, repeated or not an integer (a float, a bool)."""
    if axis is None:
        return tuple(range(ndim))
    axes = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    out = []
    for a in axes:
        if not is_index(a):
            return None
        a = operator.index(a)
        if not -ndim <= a < ndim:
            return None
        out.append(a % ndim)
    if len(set(out)) != len(out):
        return None
    return tuple(sorted(out))


def evaluate(shape, env: dict) -> tuple[int, ...]:
    """Concrete shape for bound dims ``env`` (symbol -> int)."""
    return tuple(int(sympy.sympify(d).subs(env)) for d in shape)


def bind(shape: Shape, actual: tuple[int, ...], env: dict) -> bool:
    """Bind the free dims of ``shape`` from ``actual`` into ``env``; False on any mismatch."""
    if len(shape) != len(actual):
        return False
    pending = []
    for d, n in zip(shape, actual):
        if d.is_Symbol and d not in env:
            env[d] = n
        else:
            pending.append((d, n))
    for d, n in pending:
        free = [s for s in d.free_symbols if s not in env]
        if len(free) == 1:
            solutions = [v for v in sympy.solve(sympy.Eq(d.subs(env), n), free[0])
                         if v.is_integer and v > 0]
            if len(solutions) != 1:
                return False
            env[free[0]] = int(solutions[0])
        elif free:
            return False
        if int(d.subs(env)) != n:
            return False
    return True
