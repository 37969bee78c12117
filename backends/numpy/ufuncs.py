"""NumPy instruction selection for elementwise expressions.

``UfuncChain`` lowers an elementwise expression into the shortest chain of in-place NumPy ufunc calls into one
buffer, with ``sympy.cse`` for shared subexpressions. Functions lower through their records (a ufunc, an
expansion into simpler functions, or a helper the module carries), which hold their numerically stable forms
(sigmoid with its exponent capped, softplus via logaddexp, relu' as a comparison cast by ``copyto``, never
``Heaviside`` or ``select``).
"""
from __future__ import annotations

import numpy as np
import sympy
from sympy.core.relational import Relational

from graphc.backends.numpy.printer import NumPyScalarPrinter
from graphc.core.errors import GraphError
from graphc.ops.elementwise import COMPARE as REFERENCE_COMPARE
from graphc.ops.elementwise import Where, record

COMPARE = {relation: ufunc.__name__ for relation, ufunc in REFERENCE_COMPARE.items()}  # the same NumPy ufuncs
BLAS_ROW = 10_000  # elements per example from which np.dot per row beats einsum (measured, float32)


def is_scalar(expr) -> bool:
    """No arrays in it (inputs ``_i`` or common subexpressions): a number, or made of symbolic dims and
    hyper-parameters (the learning rate), the only symbols declared positive."""
    return all(s.is_positive for s in expr.free_symbols)


class UfuncChain:
    """Lower one elementwise expression into in-place ufunc statements writing ``target``.

    ``names`` maps input symbols to variable names; ``scratch(dtype)`` hands out a temporary buffer
    variable of the node's shape. Only one subexpression at a time is computed into ``target`` itself;
    others go to scratch. If ``target`` is also read by the expression (an in-place update), only the operand
    that reads it, once, goes into ``target``, after every other operand is computed: so the old value is read
    before it is written (``m ← 0.9·m + 0.1·g`` is ``t = 0.1·g; m *= 0.9; m += t``).
    """

    def __init__(self, names: dict, scratch, dtype: str, printer: NumPyScalarPrinter, op_label: str,
                 small: dict | None = None, full_shape: tuple = (), use=None, work: str | None = None):
        self.names, self.scratch, self.dtype, self.printer = names, scratch, dtype, printer
        self.work = work or dtype  # the dtype of numeric intermediates (not the result's when that is bool)
        self.use = use  # use(function) -> its name: a helper the module then carries
        self.lines: list[str] = []
        self.op_label = op_label
        self.small = small or {}  # variable -> (dtype, shape), for inputs smaller than the result (broadcast)
        self.full_shape = tuple(full_shape)
        self.dtypes: dict[str, str] = {}  # temporary -> dtype, where it is not the result's

    def run(self, expr, target: str) -> list[str]:
        replacements, (reduced,) = sympy.cse(expr, symbols=sympy.numbered_symbols("_cse"), optimizations=None)
        scalars = {}  # scalar subexpressions go back inline: a product printed as a scalar must not name them
        self.target = None  # common subexpressions go into fresh temporaries, free to overwrite
        for sym, sub in replacements:
            sub = sub.xreplace(scalars)
            if is_scalar(sub):
                scalars[sym] = sub
                continue
            self.names[sym] = self._materialize(sub, bool_result(sub))
        reduced = reduced.xreplace(scalars)
        self.target = target if target in self.names.values() else None  # an in-place update
        if self.target and not _one_step(reduced):  # it reads its target more than once at the top
            tmp, self.target = self.temp(self.dtype), None
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
        tmp = self.temp("bool" if boolean else self.work)
        self.into(expr, tmp)
        return tmp

    def emit(self, ufunc: str, *args: str, out: str) -> None:
        args = list(args)
        if ufunc == "multiply" and len(args) == 2 and all(a in self.small for a in args) and self._covers(args):
            return self._outer(args, out)
        if any(a in self.small for a in args):
            self._stage(args, out)
        self.lines.append(f"np.{ufunc}({', '.join(args)}, out={out})")

    def _stage(self, args: list, out: str) -> None:
        """Copy broadcast operands to full size first: a broadcasting ufunc call makes NumPy allocate an
        iteration buffer on every call, while ``np.copyto`` broadcasts without one."""
        out_free = out not in args
        for i, a in enumerate(args):
            if a not in self.small or self.small[a] == (self.out_dtype(out), ()):
                continue  # a 0-d operand of the result's dtype broadcasts without NumPy allocating anything
            dtype = self.small[a][0]
            target = out if out_free and dtype == self.out_dtype(out) else self.temp(dtype)
            self.lines.append(f"np.copyto({target}, {a})")
            args[i] = target
            out_free = out_free and target != out

    def _covers(self, args: list) -> bool:
        """Whether the broadcast operands span every axis of the result (else one axis comes from nowhere)."""
        ndim = len(self.full_shape)
        spanned = {ndim - len(self.small[a][1]) + i for a in args for i, d in enumerate(self.small[a][1]) if d != 1}
        return spanned == {i for i, d in enumerate(self.full_shape) if d != 1}

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
        # the result without its axes of size 1 (each output subscript must be an operand's): indexed, a view
        kept = [i for i, d in enumerate(self.full_shape) if d != 1]
        target = out if len(kept) == ndim else f"{out}[{', '.join(':' if i in kept else '0' for i in range(ndim))}]"
        spec = f"{','.join(subscripts)}->{''.join(chr(97 + i) for i in kept)}"
        self.lines.append(f"np.einsum({spec!r}, {', '.join(views)}, out={target})")

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
        if isinstance(expr, Where):
            return self._where(expr, out)
        fn = record(expr)
        if fn is not None and fn.expand is not None:
            return self.into(fn.expand(*expr.args), out)
        if fn is not None and fn.numpy is not None:
            ufunc, *extra = fn.numpy
            args = (*expr.args, *map(sympy.sympify, extra))
            if ufunc in COMPARE.values() and self.out_dtype(out) != "bool":  # a 0/1 value: compared, then cast
                ops = [self.operand(a) for a in args]  # computed as numbers, never into the bool mask
                mask = self.temp("bool")
                self.emit(ufunc, *ops, out=mask)
                self.lines.append(f"np.copyto({out}, {mask}.view(np.uint8))")  # 0/1 bytes: NumPy's fast cast
                return None
            return self._call(ufunc, args, out)
        if fn is not None and fn.helper is not None and self.use is not None:
            [x] = self._operands(expr.args, out)
            self.lines.append(f"{self.use(fn.helper)}({x}, out={out})")
            return None
        raise GraphError(f"numpy backend: cannot emit {expr.func.__name__} in {self.op_label}")

    def zero_unless(self, cond, out: str) -> None:
        """``out`` set to 0 where ``cond`` fails, exactly: also where it holds inf or NaN (a multiply by the mask
        would make those NaN; ``where(x > 0, log(x), 0)`` is 0 at 0)."""
        self.keep_where(self.operand(cond), out)

    def keep_where(self, mask: str, out: str) -> None:
        """``out`` kept where the bool array ``mask`` is true, 0 elsewhere: its bits and-ed with the mask widened to
        all ones or all zeros (0.42 ms on 1024×512 float32, a masked ``copyto`` 2.9 ms); no cast buffers."""
        dtype = self.out_dtype(out)
        if dtype == "bool":
            self.lines.append(f"np.logical_and({out}, {mask}, out={out})")
            return
        bits = f"np.int{8 * np.dtype(dtype).itemsize}"
        wide = self.temp(bits[3:])
        self.lines.append(f"np.copyto({wide}, {mask}.view(np.uint8))")
        self.lines.append(f"np.negative({wide}, out={wide})  # 1 → all bits set")
        self.lines.append(f"np.bitwise_and({out}.view({bits}), {wide}, out={out}.view({bits}))")

    def _call(self, ufunc: str, args, out: str) -> None:
        ops = self._operands(args, out)
        self.emit(ufunc, *ops, out=out)

    def _operands(self, args, out: str, masks: bool = False) -> list[str]:
        """Operand texts; the first non-trivial one is computed into ``out``, or where ``out`` is the in-place
        target, the one that reads it once, after the others. ``masks``: a mask may be its boolean array (as a
        factor; a sum of two boolean arrays would be their logical or, and a function of one picks NumPy's float16
        loop: exp of a bool array is 2.71875)."""
        if out == self.target:
            return self._target_operands(args, out, masks)
        ops, used_out = [], False
        for a in args:
            if a in self.names or is_scalar(a) or used_out or (masks and _is_mask(a)):
                ops.append(self.operand(a))
            else:
                self.into(a, out)
                ops.append(out)
                used_out = True
        return ops

    def _target_operands(self, args, out: str, masks: bool) -> list[str]:
        reading = [k for k, a in enumerate(args) if self._reads_target(a)]
        chosen = reading[0] if len(reading) == 1 and self._reads_target(args[reading[0]]) == 1 else None
        if chosen is not None and (args[chosen] in self.names or _is_mask(args[chosen])):
            chosen = None  # the target itself: read as it is
        ops = {k: self._number(a) if _is_mask(a) and not masks else self.operand(a)
               for k, a in enumerate(args) if k != chosen}
        if chosen is not None:
            self.into(args[chosen], out)
            ops[chosen] = out
        return [ops[k] for k in range(len(args))]

    def _number(self, mask) -> str:
        """A mask's 0/1 values as numbers of the work dtype, in a temporary."""
        tmp = self.temp(self.work)
        self.into(mask, tmp)
        return tmp

    def _reads_target(self, expr) -> int:
        """How many times ``expr`` reads the in-place target."""
        return sum(expr.count(sym) for sym, name in self.names.items() if name == self.target)

    def _fold(self, args, out: str, op: str, inverse: str, split) -> None:
        """a ∘ b ∘ c… as a chain of binary ufuncs; negated/inverted terms use the inverse op."""
        scalars = [a for a in args if is_scalar(a)]
        arrays = sorted((a for a in args if not is_scalar(a)), key=lambda a: split(a) is not None)
        const = sympy.Add(*scalars) if op == "add" else sympy.Mul(*scalars)
        if const == (0 if op == "add" else 1):
            const = None
        terms = [(split(a) if split(a) is not None else a, split(a) is not None) for a in arrays]
        if out == self.target and any(self._reads_target(t) for t, _ in terms[2:]):
            return self._aside(args, out, op, inverse, split)  # a later term reads what the first two overwrite
        first, first_inverse = terms[0]
        rest = terms[1:]
        masks = op != "add"  # the first term of a sum is a number, so masks added to it count as 0/1
        if first_inverse:  # every term inverted: start from the constant (0 - x, 1 / x)
            start = const if const is not None else (sympy.S.Zero if op == "add" else sympy.S.One)
            [b] = self._operands([first], out, masks)
            self.emit(inverse, self.printer.doprint(start), b, out=out)
            const = None
        elif not rest and const is not None:
            [a] = self._operands([first], out, masks)
            self.emit(op, a, self.printer.doprint(const), out=out)
            const = None
        else:
            second, second_inverse = rest.pop(0) if rest else (const, False)
            if rest == [] and second is const:
                const = None
            a, b = self._operands([first, second], out, masks)
            self.emit(inverse if second_inverse else op, a, b, out=out)
        for term, inverted in rest:  # ``out`` holds the running result: later terms go to scratch
            self.emit(inverse if inverted else op, out, self.operand(term), out=out)
        if const is not None:
            self.emit(op, out, self.printer.doprint(const), out=out)

    def _aside(self, args, out: str, op: str, inverse: str, split) -> None:
        """The fold computed into a temporary, then copied into the in-place target it reads."""
        tmp, target, self.target = self.temp(self.out_dtype(out)), self.target, None
        self._fold(args, tmp, op, inverse, split)
        self.target = target
        self.lines.append(f"np.copyto({out}, {tmp})")

    def _pow(self, expr, out: str) -> None:
        base, power = expr.args
        if power == 2:
            return self._call("square", (base,), out)
        if power == sympy.Rational(1, 2):
            return self._call("sqrt", (base,), out)
        if power == -1:
            return self._div_one(base, out)
        if power in (3, 4):  # np.power calls pow() per element: products run about 50× faster
            [b] = self._operands([base], out)
            square = self.temp(self.out_dtype(out)) if b == out and power == 3 else out
            self.emit("square", b, out=square)
            return self.emit("multiply" if power == 3 else "square", square, *([b] if power == 3 else []), out=out)
        if power.is_integer and power.is_negative:  # NumPy refuses integers to negative integer powers
            power = sympy.Float(power)
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
                cast = "" if self.out_dtype(out) == "bool" else ".view(np.uint8)"  # 0/1 bytes: the fast conversion
                self.lines.append(f"np.copyto({out}, {c}{cast})")
                return None
            self.into(value, out)
            self.keep_where(c, out)
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


def _one_step(expr) -> bool:
    """Whether an expression may be computed straight into an array it reads (p − lr·g into p): a sum, product,
    power or ufunc, whose operands are all computed before the array is written, or read there once, in place.
    A masked product or a choice writes the array before computing all it reads."""
    if expr.is_Add or expr.is_Mul:
        return not any(_is_mask(a) for a in expr.args)
    fn = record(expr)
    return expr.is_Pow or (fn is not None and fn.expand is None and not isinstance(expr, Where))
