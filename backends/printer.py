"""Printing sympy expressions for the backends.

``NumPyScalarPrinter`` prints scalar (array-free) parts such as ``1/m``; ``UfuncChain`` lowers an
elementwise expression into the shortest chain of in-place NumPy ufunc calls into one buffer, with
``sympy.cse`` for shared subexpressions and numerically stable forms (sigmoid via tanh, softplus via
logaddexp, relu' as a comparison mask — never ``Heaviside`` or ``select``). ``CudaPrinter`` prints the same
expressions as CUDA C kernel bodies.
"""
from __future__ import annotations

import sympy
from sympy.codegen.cfunctions import log1p
from sympy.core.relational import Relational
from sympy.printing.c import C99CodePrinter
from sympy.printing.numpy import NumPyPrinter

from graphc.errors import GraphError
from graphc.ops.elementwise import Maximum, Minimum, Positive, Relu, Sigmoid, Softplus, Where


class NumPyScalarPrinter(NumPyPrinter):
    """Python/NumPy text for scalar expressions: ``np.`` prefix, exact rationals as divisions."""

    def __init__(self, names=None):
        super().__init__({"fully_qualified_modules": False, "inline": True, "allow_unknown_functions": False})
        self.module_imports.clear()
        self.names = names or {}

    def _module_format(self, fqn, register=True):  # numpy.exp -> np.exp
        return "np." + fqn.split(".", 1)[1] if fqn.startswith("numpy.") else fqn

    def _print_Symbol(self, expr):
        return self.names.get(expr, expr.name)

    def _print_Rational(self, expr):
        return f"{expr.p}/{expr.q}"

    def _print_Integer(self, expr):
        return str(expr.p)

    def _print_Float(self, expr):
        return repr(float(expr))

    def _print_Pow(self, expr, rational=False):
        if expr.exp == -1:
            return f"1/{self.parenthesize(expr.base, 100)}"
        return super()._print_Pow(expr, rational)

    def _print_Sigmoid(self, expr):
        return f"(0.5 + 0.5*np.tanh(0.5*{self.parenthesize(expr.args[0], 50)}))"

    def _print_Softplus(self, expr):
        return f"np.logaddexp(0, {self._print(expr.args[0])})"

    def _print_Relu(self, expr):
        return f"np.maximum({self._print(expr.args[0])}, 0)"

    def _print_Positive(self, expr):
        return f"np.sign({self._print(expr.args[0])})"

    def _print_Maximum(self, expr):
        return f"np.maximum({self._print(expr.args[0])}, {self._print(expr.args[1])})"

    def _print_Minimum(self, expr):
        return f"np.minimum({self._print(expr.args[0])}, {self._print(expr.args[1])})"

    def _print_Where(self, expr):
        return f"np.where({', '.join(self._print(a) for a in expr.args)})"

    def _print_log1p(self, expr):
        return f"np.log1p({self._print(expr.args[0])})"


UNARY = {sympy.exp: "exp", sympy.log: "log", log1p: "log1p", sympy.tanh: "tanh", sympy.Abs: "absolute",
         sympy.sign: "sign"}
COMPARE = {sympy.StrictGreaterThan: "greater", sympy.GreaterThan: "greater_equal", sympy.StrictLessThan: "less",
           sympy.LessThan: "less_equal", sympy.Eq: "equal", sympy.Ne: "not_equal"}


BLAS_ROW = 10_000  # elements per example from which np.dot per row beats einsum (measured, float32)


def is_scalar(expr) -> bool:
    """No arrays in it (inputs ``_i`` or common subexpressions): a number, or made of symbolic dims and
    hyper-parameters (the learning rate), the only symbols declared positive."""
    return all(s.is_positive for s in expr.free_symbols)


class UfuncChain:
    """Lower one elementwise expression into in-place ufunc statements writing ``target``.

    ``names`` maps input symbols to variable names; ``scratch(dtype)`` hands out a temporary buffer
    variable of the node's shape. Only one subexpression at a time is computed into ``target`` itself;
    others go to scratch. If ``target`` is also read by the expression (an in-place update), every
    subexpression goes to scratch, so it is read before it is written.
    """

    def __init__(self, names: dict, scratch, dtype: str, printer: NumPyScalarPrinter, op_label: str,
                 small: dict | None = None, full_shape: tuple = ()):
        self.names, self.scratch, self.dtype, self.printer = names, scratch, dtype, printer
        self.lines: list[str] = []
        self.op_label = op_label
        self.small = small or {}  # variable -> (dtype, shape), for inputs smaller than the result (broadcast)
        self.full_shape = tuple(full_shape)
        self.dtypes: dict[str, str] = {}  # temporary -> dtype, where it is not the result's

    def run(self, expr, target: str) -> list[str]:
        replacements, (reduced,) = sympy.cse(expr, symbols=sympy.numbered_symbols("_cse"), optimizations=None)
        scalars = {}  # scalar subexpressions go back inline: a product printed as a scalar must not name them
        self.protected = False  # common subexpressions go into fresh temporaries, free to overwrite
        for sym, sub in replacements:
            sub = sub.xreplace(scalars)
            if is_scalar(sub):
                scalars[sym] = sub
                continue
            self.names[sym] = self._materialize(sub, bool_result(sub))
        reduced = reduced.xreplace(scalars)
        self.protected = target in self.names.values()
        if self.protected and not _one_step(reduced):  # an in-place update that reads its target twice
            tmp, self.protected = self.temp(self.dtype), False
            self.into(reduced, tmp)
            self.lines.append(f"np.copyto({target}, {tmp})")
            return self.lines
        self.into(reduced, target)
        return self.lines

    # -- operands --------------------------------------------------------------------------------
    def operand(self, expr) -> str:
        if expr in self.names:
            return self.names[expr]
        if _is_mask(expr):
            return self.operand(expr.args[0])  # a boolean mask multiplies as 0/1: no float copy
        if is_scalar(expr):
            return self.printer.doprint(expr)
        return self._materialize(expr, bool_result(expr))

    def _materialize(self, expr, boolean: bool) -> str:
        tmp = self.temp("bool" if boolean else self.dtype)
        self.into(expr, tmp)
        return tmp

    def emit(self, ufunc: str, *args: str, out: str) -> None:
        args = list(args)
        if ufunc == "multiply" and len(args) == 2 and all(a in self.small for a in args):
            return self._outer(args, out)
        if any(a in self.small for a in args):
            self._stage(args, out)
        self.lines.append(f"np.{ufunc}({', '.join(args)}, out={out})")

    def _stage(self, args: list, out: str) -> None:
        """Copy broadcast operands to full size first: a broadcasting ufunc call makes NumPy allocate an
        iteration buffer on every call, while ``np.copyto`` broadcasts without one."""
        out_free = out not in args
        for i, a in enumerate(args):
            if a not in self.small:
                continue
            dtype = self.small[a][0]
            target = out if out_free and dtype == self.out_dtype(out) else self.temp(dtype)
            self.lines.append(f"np.copyto({target}, {a})")
            args[i] = target
            out_free = out_free and target != out

    def _outer(self, args: list, out: str) -> None:
        """A product of two broadcast operands (an outer product, e.g. per-example x·dz) as one einsum pass:
        staging both at full size would write the big result three times."""
        if self._outer_rows(args, out):
            return
        ndim = len(self.full_shape)
        views, subscripts = [], []
        for a in args:
            shape = (1,) * (ndim - len(self.small[a][1])) + tuple(self.small[a][1])
            axes = [i for i, d in enumerate(shape) if d != 1]
            subscripts.append("".join(chr(97 + i) for i in axes))
            dims = ", ".join(self.printer.doprint(shape[i]) for i in axes)
            views.append(f"{a}.reshape(({dims}{',' if len(axes) == 1 else ''}))" if len(axes) < len(shape) else a)
        spec = f"{','.join(subscripts)}->{''.join(chr(97 + i) for i in range(ndim))}"
        self.lines.append(f"np.einsum({spec!r}, {', '.join(views)}, out={out})")

    def _outer_rows(self, args: list, out: str) -> bool:
        """``(m, k, 1)·(m, 1, c)`` with rows of at least ``BLAS_ROW`` elements as one BLAS product per example:
        once the result outgrows the caches, einsum's inner loop runs at about half the speed of writing memory
        (``bench/per_example.py``)."""
        shapes = [tuple(self.small[a][1]) for a in args]
        if len(self.full_shape) != 3 or any(len(s) != 3 for s in shapes):
            return False
        if shapes[0][2] != 1:  # the (m, 1, c) operand came first
            args, shapes = args[::-1], shapes[::-1]
        (m, k, one), (m_b, one_b, c) = shapes
        dtype = self.out_dtype(out)
        if (one, one_b) != (1, 1) or m != m_b or not (m.is_Symbol and k.is_Integer and c.is_Integer) \
                or k * c < BLAS_ROW or dtype not in ("float32", "float64") \
                or any(self.small[a][0] != dtype for a in args):
            return False
        self.lines.append(f"for i in range({self.printer.doprint(m)}):  # one BLAS outer product per example\n"
                          f"    np.dot({args[0]}[i], {args[1]}[i], out={out}[i])")
        return True

    def out_dtype(self, out: str) -> str:
        return self.dtypes.get(out, self.dtype)

    def temp(self, dtype: str) -> str:
        tmp = self.scratch(dtype)
        self.dtypes[tmp] = dtype
        return tmp

    def into(self, expr, out: str) -> None:
        """Statements that leave the value of ``expr`` in ``out``."""
        if expr in self.names or is_scalar(expr):
            src = self.operand(expr)
            self.lines.append(f"np.copyto({out}, {src})" if src != out else "")
            return
        if expr.is_Add:
            return self._fold(expr.args, out, "add", "subtract", _negated)
        if expr.is_Mul:
            masks = [a for a in expr.args if _is_mask(a)]
            if masks and len(masks) < len(expr.args):  # x·[c]: compute x, then zero where not c
                self.into(sympy.Mul(*(a for a in expr.args if not _is_mask(a))), out)
                for mask in masks:
                    self.zero_unless(mask.args[0], out)
                return None
            return self._fold(expr.args, out, "multiply", "divide", _inverted)
        if expr.is_Pow:
            return self._pow(expr, out)
        if isinstance(expr, Relational):  # operands are numbers: never computed into the boolean ``out``
            return self.emit(COMPARE[type(expr)], *(self.operand(a) for a in expr.args), out=out)
        if expr.func in UNARY:
            return self._call(UNARY[expr.func], expr.args, out)
        if isinstance(expr, Relu):
            return self._call("maximum", (expr.args[0], sympy.S.Zero), out)
        if isinstance(expr, Positive):  # its argument is ≥ 0, so sign() is the 0/1 step, in floats
            return self._call("sign", expr.args, out)
        if isinstance(expr, Maximum):
            return self._call("maximum", expr.args, out)
        if isinstance(expr, Minimum):
            return self._call("minimum", expr.args, out)
        if isinstance(expr, Softplus):
            return self._call("logaddexp", (expr.args[0], sympy.S.Zero), out)
        if isinstance(expr, Sigmoid):  # σ(x) = ½ + ½·tanh(x/2): no overflow for large |x|
            self._call("multiply", (expr.args[0], sympy.Rational(1, 2)), out)
            self.emit("tanh", out, out=out)
            self.emit("multiply", out, "0.5", out=out)
            self.emit("add", out, "0.5", out=out)
            return None
        if isinstance(expr, Where):
            return self._where(expr, out)
        raise GraphError(f"numpy backend: cannot emit {expr.func.__name__} in {self.op_label}")

    def zero_unless(self, cond, out: str) -> None:
        """``out`` set to 0 where ``cond`` fails; a masked copy, so no bool→float cast buffers."""
        negated = cond.negated if isinstance(cond, Relational) else sympy.Not(cond)
        mask = self.temp("bool")
        if isinstance(negated, Relational):
            self.emit(COMPARE[type(negated)], *(self.operand(a) for a in negated.args), out=mask)
        else:
            self.emit("logical_not", self.operand(cond), out=mask)
        self.lines.append(f"np.copyto({out}, 0, where={mask})")

    def _call(self, ufunc: str, args, out: str) -> None:
        ops = self._operands(args, out)
        self.emit(ufunc, *ops, out=out)

    def _operands(self, args, out: str) -> list[str]:
        """Operand texts; the first non-trivial one (unless ``out`` is protected) is computed into ``out``."""
        ops, used_out = [], self.protected
        for a in args:
            if a in self.names or is_scalar(a) or used_out or _is_mask(a):
                ops.append(self.operand(a))
            else:
                self.into(a, out)
                ops.append(out)
                used_out = True
        return ops

    def _fold(self, args, out: str, op: str, inverse: str, split) -> None:
        """a ∘ b ∘ c… as a chain of binary ufuncs; negated/inverted terms use the inverse op."""
        scalars = [a for a in args if is_scalar(a)]
        arrays = sorted((a for a in args if not is_scalar(a)), key=lambda a: split(a) is not None)
        const = sympy.Add(*scalars) if op == "add" else sympy.Mul(*scalars)
        if const == (0 if op == "add" else 1):
            const = None
        terms = [(split(a) if split(a) is not None else a, split(a) is not None) for a in arrays]
        first, first_inverse = terms[0]
        rest = terms[1:]
        if first_inverse:  # every term inverted: start from the constant (0 - x, 1 / x)
            start = const if const is not None else (sympy.S.Zero if op == "add" else sympy.S.One)
            [b] = self._operands([first], out)
            self.emit(inverse, self.printer.doprint(start), b, out=out)
            const = None
        elif not rest and const is not None:
            [a] = self._operands([first], out)
            self.emit(op, a, self.printer.doprint(const), out=out)
            const = None
        else:
            second, second_inverse = rest.pop(0) if rest else (const, False)
            if rest == [] and second is const:
                const = None
            a, b = self._operands([first, second], out)
            self.emit(inverse if second_inverse else op, a, b, out=out)
        for term, inverted in rest:  # ``out`` holds the running result: later terms go to scratch
            self.emit(inverse if inverted else op, out, self.operand(term), out=out)
        if const is not None:
            self.emit(op, out, self.printer.doprint(const), out=out)

    def _pow(self, expr, out: str) -> None:
        base, power = expr.args
        if power == 2:
            return self._call("square", (base,), out)
        if power == sympy.Rational(1, 2):
            return self._call("sqrt", (base,), out)
        if power == -1:
            return self._div_one(base, out)
        return self._call("power", (base, power), out)

    def _div_one(self, base, out: str) -> None:
        [b] = self._operands([base], out)
        self.emit("divide", "1.0", b, out=out)

    def _where(self, expr, out: str) -> None:
        cond, a, b = expr.args
        if b == 0 or a == 0:  # a mask times a value: relu', max' and friends
            value, keep_if = (a, True) if b == 0 else (b, False)
            c = self.operand(cond)
            if not keep_if:
                mask = self.temp("bool")
                self.emit("logical_not", c, out=mask)
                c = mask
            if value == 1:
                self.lines.append(f"np.copyto({out}, {c})")
                return None
            [v] = self._operands([value], out)
            self.emit("multiply", v, c, out=out)
            return None
        c = self.operand(cond)
        [vb] = self._operands([b], out)
        if vb != out:
            self.lines.append(f"np.copyto({out}, {vb})")
        self.lines.append(f"np.copyto({out}, {self.operand(a)}, where={c})")
        return None


def bool_result(expr) -> bool:
    return isinstance(expr, (Relational, sympy.logic.boolalg.BooleanFunction))


def _negated(term):
    """``x`` where ``term`` is ``-x`` (so a − x can be a subtract), else None."""
    coeff, rest = term.as_coeff_Mul()
    if coeff == -1:
        return rest
    return None


def _inverted(term):
    """``x`` where ``term`` is ``1/x``, else None."""
    if term.is_Pow and term.exp == -1:
        return term.base
    return None


def _is_mask(expr) -> bool:
    """``Where(c, 1, 0)``: the boolean array ``c`` itself serves as a 0/1 factor."""
    return isinstance(expr, Where) and expr.args[1] == 1 and expr.args[2] == 0


class CudaPrinter(C99CodePrinter):
    """CUDA C for elementwise kernel bodies, with the same numerically stable forms as the NumPy printer.

    ``names`` maps symbols (inputs, dims) to kernel parameter names. Sigmoid goes through tanh (no overflow),
    softplus through log1p of a non-positive exponent, relu through fmax; ``Where`` is a C conditional.
    """

    def __init__(self, names=None, ctype: str = "double"):
        super().__init__({"allow_unknown_functions": False})
        self.names, self.ctype = names or {}, ctype

    def _print_Symbol(self, expr):
        return self.names.get(expr, expr.name)

    def _typed(self, expr) -> str:
        """``expr`` cast to the kernel's type: fmax(float, double) would resolve to a host-only overload."""
        return f"({self.ctype})({self._print(expr)})"

    def _print_Pow(self, expr):
        base, power = expr.args
        b = self.parenthesize(base, 100)
        if power == -1:
            return f"(1.0/{b})"
        if power == 2:
            return f"({b}*{b})"
        if power == sympy.Rational(1, 2):
            return f"sqrt({self._print(base)})"
        return f"pow({self._print(base)}, {self._print(power)})"

    def _print_Relational(self, expr):
        return f"({super()._print_Relational(expr)})"

    def _print_Sigmoid(self, expr):
        return f"(0.5 + 0.5*tanh(0.5*{self.parenthesize(expr.args[0], 50)}))"

    def _print_Softplus(self, expr):
        x = self.parenthesize(expr.args[0], 50)
        return f"({x} > 0 ? {x} + log1p(exp(-{x})) : log1p(exp({x})))"

    def _print_Relu(self, expr):
        return f"fmax({self._typed(expr.args[0])}, ({self.ctype})0)"

    def _print_Positive(self, expr):
        return f"({self._print(expr.args[0])} > 0 ? ({self.ctype})1 : ({self.ctype})0)"

    def _print_Maximum(self, expr):
        return f"fmax({self._typed(expr.args[0])}, {self._typed(expr.args[1])})"

    def _print_Minimum(self, expr):
        return f"fmin({self._typed(expr.args[0])}, {self._typed(expr.args[1])})"

    def _print_Where(self, expr):
        cond, a, b = (self._print(x) for x in expr.args)
        return f"({cond} ? {a} : {b})"

    def statements(self, expr, out: str, ctype: str) -> list[str]:
        """C statements assigning ``expr`` to ``out``; shared subexpressions become typed locals."""
        replacements, (reduced,) = sympy.cse(expr, symbols=sympy.numbered_symbols("t"), optimizations=None)
        lines, self.ctype = [], ctype
        for sym, sub in replacements:
            local = f"_{sym.name}"
            self.names[sym] = local
            lines.append(f"const {'bool' if bool_result(sub) else ctype} {local} = {self._print(sub)};")
        lines.append(f"{out} = {self._print(reduced)};")
        return lines


def _one_step(expr) -> bool:
    """A sum or product of two terms: one ufunc call writes the result, after both operands are computed
    elsewhere, so the result may go straight into an array the expression reads (p − lr·g into p)."""
    return (expr.is_Add or expr.is_Mul) and len(expr.args) == 2 and not any(_is_mask(a) for a in expr.args)
