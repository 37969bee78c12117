"""Python text for scalar (array-free) expressions such as ``1/m``, by sympy's NumPy printer."""
from __future__ import annotations

from sympy.printing.numpy import NumPyPrinter

from graphc.ops.elementwise import record


class NumPyScalarPrinter(NumPyPrinter):
    """Python/NumPy text for scalar expressions: the array module's prefix, exact rationals as divisions.

    ``xp`` names the array module in the generated file (``np``; CuPy modules print ``cp``). A function prints
    through its record: its ufunc, or its expansion.
    """

    def __init__(self, names=None, xp: str = "np"):
        super().__init__({"fully_qualified_modules": False, "inline": True, "allow_unknown_functions": False})
        self.module_imports.clear()
        self.names = names or {}
        self.xp = xp

    def _module_format(self, fqn, register=True):  # numpy.exp -> np.exp
        return f"{self.xp}." + fqn.split(".", 1)[1] if fqn.startswith("numpy.") else fqn

    def _print_Symbol(self, expr):
        return self.names.get(expr, expr.name)

    def _print_Rational(self, expr):
        return f"{expr.p}/{expr.q}"

    def _print_Integer(self, expr):
        return str(expr.p)

    def _print_Float(self, expr):
        value = float(expr)  # beyond float64's range (1/1e-310 folded) it is inf, which Python cannot name
        if value != value:
            return f"{self.xp}.nan"
        return repr(value) if abs(value) != float("inf") else f"{'-' if value < 0 else ''}{self.xp}.inf"

    def _print_Pow(self, expr, rational=False):
        if expr.exp == -1:
            return f"1/{self.parenthesize(expr.base, 100)}"
        return super()._print_Pow(expr, rational)

    def _print_floor(self, expr):  # sizes of strided slices: integer division, not np.floor's float
        numerator, denominator = expr.args[0].as_numer_denom()
        return f"(({self._print(numerator)})//{self.parenthesize(denominator, 100)})"

    def _print_Function(self, expr):
        fn = record(expr)
        if fn is None:
            return super()._print_Function(expr)
        if fn.expand is not None:
            return f"({self._print(fn.expand(*expr.args))})"
        if fn.numpy is None:
            raise NotImplementedError(f"no scalar form for {fn.name}")
        ufunc, *extra = fn.numpy
        return f"{self.xp}.{ufunc}({', '.join([*(self._print(a) for a in expr.args), *map(str, extra)])})"

    _print_Where = _print_exp = _print_log = _print_tanh = _print_Abs = _print_sign = _print_log1p = _print_Function
    _print_sin = _print_cos = _print_Function
