"""What a node computes, in words: one describer for generated-code comments, diagram labels and ``graphc explain``.

``describe(node, names)`` reads the op's own ``describe`` rule (``x @ W1``, ``sum(dh, axis=0)``) or writes the
op as a call with its attributes; ``names`` maps node ids to the names the reader sees (variables in code,
titles in a diagram), so a comment and a diagram of the same graph say the same thing.
"""
from __future__ import annotations

from fractions import Fraction

import sympy
from sympy.printing.str import StrPrinter

from graphc.core.registry import OPS

_FUNCTION_NAMES: dict = {}  # sympy function class -> the name it reads as (filled by the function records)


def name_function(sym, name: str) -> None:
    """Say how the sympy function ``sym`` reads in descriptions (``Positive`` → ``step``)."""
    _FUNCTION_NAMES[sym] = name


def function_name(sym) -> str:
    """How the sympy function ``sym`` reads: its given name, else its class name in lower case."""
    return _FUNCTION_NAMES.get(sym) or sym.__name__.lower()


class _Printer(StrPrinter):
    """sympy's str form with an ew node's ``_0, _1, …`` written as its inputs' names, functions by their names,
    and numbers as a user would write them (``1e-05``, ``1/m``)."""

    def __init__(self, names: dict[str, str]):
        super().__init__()
        self.names = names

    def _print_Symbol(self, expr):
        return self.names.get(expr.name, expr.name)

    def _print_Function(self, expr):
        return f"{function_name(expr.func)}({self.stringify(expr.args, ', ')})"

    def _print_Abs(self, expr):
        return f"abs({self._print(expr.args[0])})"

    def _print_Float(self, expr):
        return repr(float(expr))

    def _print_Rational(self, expr):
        return number(expr)


def number(value) -> str:
    """A rational as ``1/3``, or as a decimal where that is exact and reads better (``1e-05``, ``0.001``)."""
    value = sympy.Rational(value)
    if value.q == 1:
        return str(value.p)
    decimal = repr(float(value))
    if value.q >= 100 and Fraction(decimal) == Fraction(value.p, value.q):
        return decimal
    return f"{value.p}/{value.q}"


def expression(expr, names: list[str]) -> str:
    """``expr`` over an elementwise node's ``_i`` symbols, each written as ``names[i]``."""
    return _Printer({f"_{i}": n for i, n in enumerate(names)}).doprint(expr)


def value(expr) -> str:
    """A scalar (possibly symbolic, ``1/m``) as descriptions show it."""
    return _Printer({}).doprint(expr) if isinstance(expr, sympy.Basic) else str(expr)


def _seq(v) -> str:
    return "(" + ", ".join(value(a) for a in v) + ")" if isinstance(v, (tuple, list)) else value(v)


def axes_text(axes) -> str:
    return f"axis={axes[0]}" if len(axes) == 1 else f"axis={_seq(axes)}"


def call(node, names, *extra: str) -> str:
    """``op(a, b, key=value)``: the generic form, with the attributes that say how (not names or shapes)."""
    words = [names[i] for i in node.inputs]
    for key, v in node.attrs:
        if key in ("name", "value", "expr", "init", "shape", "ew_shape", "dtype"):
            continue
        if key == "keepdims":
            words += ["keepdims"] if v else []
        elif key == "axes":
            words.append(axes_text(v))
        else:
            words.append(f"{key}={_seq(v)}")
    return f"{node.op}({', '.join([*words, *extra])})"


def describe(node, names) -> str:
    """What ``node`` computes, its inputs written by ``names`` (node id -> name)."""
    rule = OPS[node.op].describe
    return rule(node, names) if rule else call(node, names)
