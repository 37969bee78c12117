"""CUDA C for elementwise kernel bodies, by a small subclass of sympy's C printer."""
from __future__ import annotations

import sympy
from sympy.core.relational import Relational
from sympy.printing.c import C99CodePrinter
from sympy.printing.precedence import PRECEDENCE

from graphc.core.errors import GraphError
from graphc.ops.elementwise import record


def bool_result(expr) -> bool:
    return isinstance(expr, (Relational, sympy.logic.boolalg.BooleanFunction))


class CudaPrinter(C99CodePrinter):
    """CUDA C for elementwise kernel bodies, with the same numerically stable forms as the NumPy backend.

    ``names`` maps symbols (inputs, dims) to kernel parameter names. A function prints through its record: its
    C text (``{T}`` the kernel's type), or its expansion into simpler functions.
    """

    def __init__(self, names=None, ctype: str = "double"):
        super().__init__({"allow_unknown_functions": False})
        self.names, self.ctype = names or {}, ctype

    def _print_Symbol(self, expr):
        return self.names.get(expr, expr.name)

    def literal(self, value) -> str:
        """A number in the kernel's type: ``0.5f`` in a float kernel (a double literal would make it compute in
        double, at 1/64 of the speed on many GPUs)."""
        f = "f" if self.ctype == "float" else ""
        number = float(value)
        if number != number or abs(number) == float("inf"):  # C has no literal for them: a constant quotient
            return f"({'-' if number < 0 else ''}{'0' if number != number else '1'}.0{f}/0.0{f})"
        return repr(number) + f

    def _print_Float(self, expr):
        return self.literal(expr)

    def _print_Rational(self, expr):
        return self.literal(expr)

    def _print_NumberSymbol(self, expr):  # pi, E: a literal, as kernels need no math-constant macros
        return self.literal(expr)

    def _print_Pow(self, expr):
        if expr.is_number:  # sqrt(2/pi): folded here, not computed per element
            return self.literal(expr)
        base, power = expr.args
        b = self.parenthesize(base, 100)
        if power == -1:
            return f"({self.literal(1)}/{b})"
        if power == 2:
            return f"({b}*{b})"
        if power == sympy.Rational(1, 2):
            return f"sqrt({self._print(base)})"
        return f"pow({self._print(base)}, {self._print(power)})"

    def _print_Mul(self, expr):
        """A quotient divides in the kernel's type: ``3/x0`` of an int64 ``x0`` would be C's integer division."""
        over = [f for f in expr.args if f.is_Pow and f.exp.is_number and f.exp.is_negative and f.base.free_symbols]
        if not over:
            return super()._print_Mul(expr)
        numerator = sympy.Mul(*(f for f in expr.args if f not in over))
        denominator = sympy.Mul(*(sympy.Pow(f.base, -f.exp) for f in over))
        return f"({self.parenthesize(numerator, PRECEDENCE['Mul'])}/(({self.ctype})({self._print(denominator)})))"

    def _print_Relational(self, expr):
        return f"({super()._print_Relational(expr)})"

    def _print_Function(self, expr):
        fn = record(expr)
        if fn is None:
            raise GraphError(f"cupy backend: cannot print {expr.func.__name__} as C")
        if fn.c is not None:
            return fn.c.format(*(self._print(a) for a in expr.args), T=self.ctype)
        return f"({self._print(fn.expand(*expr.args))})"  # a sum in a product's place: parenthesized

    _print_exp = _print_log = _print_tanh = _print_sin = _print_cos = _print_Abs = _print_sign = _print_Function
    _print_log1p = _print_Function

    def statements(self, expr, out: str, out_ctype: str, prefix: str = "t") -> list[str]:
        """C statements assigning ``expr`` to ``out``; shared subexpressions become locals of the kernel's type
        (named ``_<prefix>0``…)."""
        replacements, (reduced,) = sympy.cse(expr, symbols=sympy.numbered_symbols(prefix), optimizations=None)
        lines = []
        for sym, sub in replacements:
            local = f"_{sym.name}"
            self.names[sym] = local
            lines.append(f"const {'bool' if bool_result(sub) else self.ctype} {local} = {self._print(sub)};")
        lines.append(f"{out} = {self._print(reduced)};")
        return lines
