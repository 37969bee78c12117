"""Property-based tests: random graphs of the shapes, ops and names users write, reduced to a scalar loss.

Each graph is compiled at every opt level and compared with the reference evaluator (values, shapes and dtypes, at
the tolerance of the graph's float dtype); ``gc.grad`` is compared with central finite differences on the graph
rebuilt in float64; a graph with params also takes one SGD step of its compiled training module; with PyTorch
installed, a float64 PyTorch mirror of the forward graph checks the loss and, by ``torch.autograd``, the gradients.

The ``Builder`` records the Python that rebuilds each graph, so a failure prints a pasteable reproduction: the
source, the dim sizes and the feeds' seed (``feeds_for``). Inputs stay in smooth, safe domains: log and sqrt only
see softplus or exp of values, kinked ops (relu, abs, max, maximum, max pooling) get a fresh random offset so no
tie or kink sits at a feed point, and comparisons compare continuous values (a tie has probability zero).

Every graph records the ``CATEGORIES`` of awkward graph it belongs to (each once gave wrong numbers or a crash), and a
test checks that the draw reaches every one. A category that reproduces an open bug goes into ``KNOWN_BROKEN``: it is
left out of the draw until fixed, and ``GRAPHC_FUZZ_BROKEN=all`` (or a comma-separated list) draws it again.
Default runs are short; ``pytest -m slow`` runs many more, and GRAPHC_HYPOTHESIS_EXAMPLES=N sets how many.
"""
from __future__ import annotations

import importlib.util
import inspect
import keyword
import os
import re

import numpy as np
import pytest
import sympy
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

import graphc as gc
from graphc.core import shapes
from graphc.transforms.gradcheck import numeric_grad, rel_error

from helpers import cupy_or_skip

DEFAULT_EXAMPLES = int(os.environ.get("GRAPHC_HYPOTHESIS_EXAMPLES", "150"))
SLOW_EXAMPLES = int(os.environ.get("GRAPHC_HYPOTHESIS_EXAMPLES", "2000"))

# Awkward graphs the draw must reach (a test checks it), each the shape of a bug once found here.
CATEGORIES = {
    "xent_int_nd": "integer-label softmax_cross_entropy (also hand-written) on logits that are not 2-d, -O2",
    "labels_out_of_range": "an integer label outside [0, k): every implementation must refuse it",
    "reduce_scaled_broadcast": "a sum of an expression in which a broadcast operand is scaled (a − b), -O2",
    "mean_of_broadcast_product": "the mean of a product whose factors are both broadcast, -O2",
    "product_of_broadcasts": "two operands multiplied in one (fused) expression both lack an axis: "
                             "a (m,1,1) * b (1,1,3), gc.broadcast_to(x, (3, 2, 5)) * w",
    "reduce_product_broadcast": "a sum of a product with a broadcast factor: the gradient multiplies the factor "
                                "by the summed-over gradient, both lacking an axis",
    "slice_step_symbolic": "a strided slice of a symbolic dim (x[::2] on (m, 3))",
    "where_computed_condition": "a comparison of computed values feeding gc.where, -O2",
    "keepdims_into_conv": "conv2d or pooling of the size-1 channel axis of a keepdims sum/mean/max/logsumexp",
    "xent_mixed_dist": "gc.log(gc.softmax(z)) beside a library cross-entropy of z with float labels, -O2",
    "mask_sum": "an input chosen by two where/maximum/minimum: its gradient is a sum of two masks, -O2",
    "name_is_argument": "an input/param/dim named B, lr (training) or like another dim or input",
    "name_numpy": "an input, param or dim named np, the generated file's NumPy",
    "name_keyword": "a Python keyword as an input, param or dim name",
    "dim_name_check_local": "a dim named like a local of the generated feed check (feeds, names, len)",
    "dim_shadowed": "an output named like a dim",
}
# Categories that reproduce an open bug: left out of the draw until it is fixed (none is open).
KNOWN_BROKEN: frozenset = frozenset()
BROKEN_SWITCH = os.environ.get("GRAPHC_FUZZ_BROKEN", "")
ENABLED_BROKEN = frozenset(KNOWN_BROKEN if BROKEN_SWITCH == "all" else filter(None, BROKEN_SWITCH.split(",")))

TOLERANCE = {"float64": 1e-9, "float32": 1e-3}  # compiled module vs the evaluator, relative to each output
FLOOR = {"float64": 1e-6, "float32": 1e-2}  # an output that is exactly zero: rounding (of terms ~1) against 0
FD_TOLERANCE = 1e-5  # gc.grad vs central finite differences, in float64
TORCH_TOLERANCE = 1e-8  # the evaluator vs the PyTorch mirror, in float64
LR = 0.1

# user names of inputs, params, dims and outputs: the generated file must survive all of them
AWKWARD_NAMES = ("B", "m", "lr", "np", "cp", "i", "x", "dims", "out", "feeds", "params", "batch", "run",
                 "train_step", "init_params", "lambda", "class", "def", "sum", "max", "len", "print")
PLAIN_NAMES = ("h", "z", "w", "y", "u", "data", "target", "hidden", "scores", "kernel", "bias", "weight", "x0",
               "x_1", "Xb", "logits2")
DIM_NAMES = ("m", "n", "T", "batch", "N", "B", "x", "lr", "np", "i", "dims", "feeds", "names", "len", "out",
             "lambda", "params", "print", "sum")
CHECK_LOCALS = {"feeds", "names", "len", "isinstance", "ValueError", "int"}  # names the generated _check reads

UNARY = {  # name -> rebuilding source; each is smooth on all of R with bounded growth
    "tanh": "gc.tanh({a})", "sigmoid": "gc.sigmoid({a})", "softplus": "gc.softplus({a})",
    "exp_tanh": "gc.exp(gc.tanh({a}))", "log_softplus": "gc.log(gc.softplus({a}) + 0.5)",
    "sqrt_exp": "gc.sqrt(gc.exp(gc.tanh({a})) + 0.1)", "square": "0.5 * gc.square(gc.tanh({a}))",
    "log1p": "gc.log1p(gc.sigmoid({a}))", "pow": "gc.sigmoid({a}) ** 1.5", "rpow": "2.0 ** gc.tanh({a})",
}
LINEAR_UNARY = {"neg": "-{a}", "scale": "0.7 * {a} - 0.2"}  # a constant factor: d/da is a scaling of the gradient
BINARY = {  # name -> (source, how the gradient reaches the operands: "1" as it comes, "scaled" b's times a constant,
    # "product" times the other operand (d/da = g·b), "quotient" d/db times a (d/db = −g·a·tanh′(b)/(1.5 + tanh b)²)
    "add": ("{a} + {b}", "1"), "sub": ("{a} - {b}", "scaled"), "scaled_sub": ("{a} - 0.5 * {b}", "scaled"),
    "product": ("{a} * {b}", "product"), "mul": ("{a} * gc.tanh({b})", "product"),
    "div": ("{a} / (1.5 + gc.tanh({b}))", "quotient"),
}
KINKED = {  # {n}: a fresh random input of the result's shape moves the kink away from the feed point
    "relu": "gc.relu({a} + {n})", "abs": "gc.abs({a} + {n})", "leaky": "gc.leaky_relu({a} + {n}, 0.1)",
    "maximum": "gc.maximum({a}, {b} + {n})", "minimum": "gc.minimum({a} + {n}, {b})",
    "where": "gc.where({n} > 0.0, {a}, {b})",
}
CONDITIONS = {  # comparisons of computed values (continuous, so a tie has probability zero)
    "twice_less": "{a} * 2 < {b}", "tanh_greater": "gc.tanh({a}) > {b}", "difference": "{a} - {b} >= 0.25",
    "exp_less_equal": "gc.exp({a}) <= {b} + 1",
}


def tuple_text(items) -> str:
    """``(a, b)``, ``(a,)`` or ``()`` from the items' source texts."""
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


class BuildError(AssertionError):
    """The DSL refused (or crashed on) a line of a drawn graph; ``categories`` are those drawn so far."""

    def __init__(self, message: str, categories):
        super().__init__(message)
        self.categories = set(categories)


class Dim:
    """A symbolic dim: its source variable, the symbol and the least size the graph's slices need."""

    def __init__(self, var: str, symbol):
        self.var, self.symbol, self.least = var, symbol, 1


def short_axes(shape, out) -> frozenset:
    """The axes (from the right) along which ``shape`` is 1 or missing in the broadcast shape ``out``, if it is
    smaller than ``out`` (the NumPy emitter then multiplies it as a broadcast operand), else none."""
    if tuple(shape) == tuple(out):
        return frozenset()
    return frozenset(-k for k in range(1, len(out) + 1) if k > len(shape) or shape[-k] == 1)


class Flow:
    """What a gradient flowing back through a tensor meets on its way to the inputs, along paths of elementwise ops
    (which -O1 and -O2 fuse into one expression). Axes count from the right.

    ``stretched``: axes along which an operand of + or − was broadcast, with only linear ops since (the gradient
    that reaches it is then the incoming one, scaled); ``scaled``: those where that operand carries a constant
    factor (−b, 0.5·b). ``factors``: for each operand smaller than its product or quotient, the axes along which it
    is 1 or missing; the gradient of the other operand is multiplied by it. ``product``: a product of two
    broadcast operands lies upstream, with only linear ops since."""

    def __init__(self, stretched=(), scaled=(), factors=(), product=False):
        self.stretched, self.scaled = set(stretched), set(scaled)
        self.factors, self.product = set(factors), product

    def __or__(self, other: Flow) -> Flow:
        return Flow(self.stretched | other.stretched, self.scaled | other.scaled, self.factors | other.factors,
                    self.product or other.product)

    def scaled_copy(self) -> Flow:
        return Flow(self.stretched, self.stretched | self.scaled, self.factors, self.product)

    def through_nonlinear(self) -> Flow:
        return Flow(factors=self.factors)

    def meets(self, axes) -> bool:
        """Whether a small operand 1 or missing along ``axes`` would multiply one of ``factors`` (an einsum of
        two operands that both lack an axis, F5)."""
        return bool(axes) and any(axes & f for f in self.factors)


class Builder:
    """Builds a random graph and the source text that rebuilds it, one recorded line at a time."""

    def __init__(self, draw, dtype: str, enabled=frozenset()):
        self.draw, self.dtype, self.enabled = draw, dtype, set(enabled)
        self.pool: list[str] = []  # float tensors a step may read
        self.flow: dict[str, Flow] = {}
        self.lines: list[str] = []
        self.env: dict = {"gc": gc, "shapes": shapes}
        self.feeds: dict[str, tuple] = {}  # input name -> (kind, detail): normal, unit, labels, dist
        self.sources: dict[str, str] = {}  # input/param name -> its variable
        self.params: list[str] = []
        self.dims: list[Dim] = []
        self.names: set[str] = {"loss"}  # input, param and output names taken
        self.grad_of: dict[str, str] = {}  # gradient output -> the input or param it is taken w.r.t.
        self.xent_forms: dict[str, set] = {}  # logits -> the cross-entropy forms (and class axes) applied to them
        self.linear_in: dict[str, set] = {}  # var -> the tensors it is a sum or difference of (itself included)
        self.masked: dict[str, int] = {}  # tensor -> how many where/maximum/minimum chose it (their first operand)
        self.categories: set[str] = set()
        self.count = 0
        self.train = draw(st.booleans())

    # -- categories ------------------------------------------------------------------------------
    def allowed(self, *categories) -> bool:
        return all(c not in KNOWN_BROKEN or c in self.enabled for c in categories)

    def uses(self, *categories) -> None:
        self.categories.update(categories)

    def choose(self, options):
        options = list(options)
        return options[self.draw(st.integers(0, len(options) - 1))]

    # -- names -----------------------------------------------------------------------------------
    def name_findings(self, role: str, name: str) -> set:
        """The categories that naming an input, param, dim or output ``name`` draws."""
        found = set()
        dims = {str(d.symbol) for d in self.dims}
        if role != "output" and keyword.iskeyword(name):
            found.add("name_keyword")
        if role != "output" and name == "np":
            found.add("name_numpy")
        taken = dims | ({"B", "lr"} if self.train else {"B"})
        if role == "dim":
            taken |= set(self.sources)
        if role != "output" and name in taken:
            found.add("name_is_argument")
        if role == "dim" and name in CHECK_LOCALS:
            found.add("dim_name_check_local")
        if role == "output" and name in dims:
            found.add("dim_shadowed")
        return found

    def fresh_name(self, role: str, fallback: str) -> str:
        """An unused name for an input, param or output: an awkward one, a plain one, or ``fallback``."""
        kind = self.draw(st.integers(0, 3))
        options = AWKWARD_NAMES if kind == 0 else PLAIN_NAMES if kind == 1 else ()
        options = [n for n in options if n not in self.names and self.allowed(*self.name_findings(role, n))]
        name = self.choose(options) if options else fallback
        while name in self.names:
            name = f"{name}_"
        self.names.add(name)
        self.uses(*self.name_findings(role, name))
        return name

    def new_dim(self) -> Dim:
        taken = {str(d.symbol) for d in self.dims}
        options = [n for n in DIM_NAMES if n not in taken and self.allowed(*self.name_findings("dim", n))]
        name = options[0] if not self.dims and self.draw(st.booleans()) else self.choose(options)
        self.uses(*self.name_findings("dim", name))
        dim = Dim(f"d{len(self.dims)}", gc.dim(name))
        self.add_line(f"{dim.var} = gc.dim({name!r})")
        self.dims.append(dim)
        return dim

    # -- source ----------------------------------------------------------------------------------
    def add_line(self, text: str) -> None:
        self.lines.append(text)
        try:
            exec(text, self.env)  # noqa: S102 - the test's own generated source
        except Exception as exc:
            raise BuildError(f"building the graph failed: {type(exc).__name__}: {exc}\n" + "\n".join(self.lines),
                             self.categories) from exc

    def emit(self, text: str, flow: Flow | None = None, pool: bool = True) -> str:
        var = f"v{self.count}"
        self.count += 1
        self.add_line(f"{var} = {text}")
        self.flow[var] = flow or Flow()
        self.linear_in[var] = {var}
        if pool:
            self.pool.append(var)
        return var

    def shape(self, var: str) -> tuple:
        return tuple(sympy.sympify(d) for d in self.env[var].shape)

    def fmt(self, shape) -> str | None:
        """Source for a shape of ints and dims, e.g. ``(d0, 4)``; None for a composite dim such as 2·m."""
        symbols = {d.symbol: d.var for d in self.dims}
        items = []
        for d in shape:
            d = sympy.sympify(d)
            if d.is_Integer:
                items.append(str(int(d)))
            elif d in symbols:
                items.append(symbols[d])
            else:
                return None
        return tuple_text(items)

    def new_input(self, shape, kind=("normal", None), like: str | None = None, pool: bool = True,
                  dtype: str | None = None) -> str:
        name = self.fresh_name("input", f"x{len(self.feeds)}")
        self.feeds[name] = kind
        text = self.fmt(shape) or like
        assert text, f"no source for the shape {shape}"
        var = self.emit(f"gc.input({name!r}, {text}, dtype={dtype or self.dtype!r})", pool=pool and dtype is None)
        self.sources[name] = var
        return var

    def noise(self, var: str, other: str | None = None) -> str:
        """A fresh input of the shape of ``var`` (broadcast with ``other``), kept out of the pool: an offset that
        moves a kink off the feed point, or the weight of a loss term."""
        if other is None or other == var:
            return self.new_input(self.shape(var), like=var + ".shape", pool=False)
        shape = shapes.broadcast(self.shape(var), self.shape(other))
        return self.new_input(shape, like=f"shapes.broadcast({var}.shape, {other}.shape)", pool=False)

    def new_param(self, shape) -> str:
        name = self.fresh_name("param", f"w{self.count}")
        init = self.choose(["glorot_uniform", "normal", ("uniform", -1.0, 1.0)])
        var = self.emit(f"gc.param({name!r}, {self.fmt(shape)}, dtype={self.dtype!r}, init={init!r})", pool=False)
        self.params.append(name)
        self.sources[name] = var
        return var

    def mask(self, var: str) -> bool:
        """Record that a where/maximum/minimum chooses ``var``: its gradient is then a mask ``[cond]``, added at -O2
        to the other masks reaching the same tensor. False (and nothing recorded) where that sum is F15's."""
        sources = self.linear_in[var]
        if any(self.masked.get(s, 0) for s in sources):
            if not self.allowed("mask_sum"):
                return False
            self.uses("mask_sum")
        for s in sources:
            self.masked[s] = self.masked.get(s, 0) + 1
        return True

    def pick(self, test=None) -> str | None:
        pool = [v for v in self.pool if test is None or test(self.shape(v))]
        return self.choose(pool) if pool else None

    # -- shapes ----------------------------------------------------------------------------------
    def batch(self):
        return self.dims[0].symbol

    def random_shape(self):
        """A fresh shape of rank 0 to 4: symbolic dims, small sizes and 1s."""
        rank = self.choose([0, 1, 1, 2, 2, 2, 2, 3, 3, 4])
        shape = []
        for axis in range(rank):
            if self.draw(st.integers(0, 2)) == 0 and (axis == 0 or self.draw(st.booleans())):
                shape.append(self.choose([d.symbol for d in self.dims]))
            else:
                shape.append(sympy.Integer(self.choose([1, 2, 3, 4] if rank < 3 else [1, 2, 3])))
        return tuple(shape)

    def partner_shape(self, shape):
        """A shape that broadcasts with ``shape``: fewer leading axes, 1s where it has sizes, sizes where it has
        1s (a broadcast on both sides), or an extra leading axis (``x (2, 5) * o (3, 2, 5)``)."""
        lead = self.draw(st.integers(0, len(shape))) if self.draw(st.booleans()) else 0
        out = []
        for d in shape[lead:]:
            if not d.is_number and d not in {x.symbol for x in self.dims}:
                out.append(sympy.Integer(1))  # 2·m: broadcast against it
                continue
            r = self.draw(st.integers(0, 5))
            out.append(sympy.Integer(1) if r == 0 else
                       self.choose([sympy.Integer(2), sympy.Integer(3), self.batch()]) if r == 1 and d == 1 else d)
        if lead == 0 and len(out) < 4 and self.draw(st.integers(0, 5)) == 0:
            out.insert(0, sympy.Integer(self.choose([2, 3])))
        return tuple(out)

    def partner(self, var: str) -> str:
        """An operand for a binary op with ``var``: another pool tensor or a new input of a partner shape."""
        shape = self.shape(var)
        others = [v for v in self.pool if v != var and shapes.broadcast(self.shape(v), shape) is not None]
        if others and self.draw(st.booleans()):
            return self.choose(others)
        return self.new_input(self.partner_shape(shape))

    def stretched(self, a: str, b: str) -> tuple[set, set]:
        """(axes along which ``a`` is broadcast, axes along which ``b`` is), counted from the right."""
        sa, sb = self.shape(a), self.shape(b)
        out = shapes.broadcast(sa, sb)

        def axes(s):
            return {-k for k in range(1, len(out) + 1) if out[-k] != 1 and (k > len(s) or s[-k] == 1)}
        return axes(sa), axes(sb)

    def short(self, a: str, b: str) -> frozenset:
        """The axes along which ``a`` is 1 or missing in ``a ∘ b`` (``short_axes``)."""
        return short_axes(self.shape(a), shapes.broadcast(self.shape(a), self.shape(b)))

    # -- steps -----------------------------------------------------------------------------------
    STEPS = ("unary", "linear", "binary", "binary", "binary", "kinked", "where", "reduce", "reduce",
             "broadcast_reduce", "softmax", "matmul", "shape", "slice", "broadcast_to", "xent", "xent", "bce", "conv",
             "constant", "input")

    def step(self):
        getattr(self, f"step_{self.choose(self.STEPS)}")()

    def step_input(self):
        self.new_input(self.random_shape())

    def step_unary(self):
        var = self.pick()
        self.emit(UNARY[self.choose(sorted(UNARY))].format(a=var), self.flow[var].through_nonlinear())

    def step_linear(self):
        var = self.pick()
        out = self.emit(LINEAR_UNARY[self.choose(sorted(LINEAR_UNARY))].format(a=var), self.flow[var].scaled_copy())
        self.linear_in[out] |= self.linear_in[var]

    def step_binary(self):
        var = self.pick()
        other = self.partner(var)
        if self.draw(st.booleans()):
            var, other = other, var
        name = self.choose(sorted(BINARY))
        text, factor = BINARY[name]
        fa, fb = self.flow[var], self.flow[other]
        short_a, short_b = self.short(var, other), self.short(other, var)
        if factor == "product":
            clash = bool(short_a & short_b) or fa.meets(short_b) or fb.meets(short_a)
        else:
            clash = factor == "quotient" and fb.meets(short_a)
        if clash:
            if self.allowed("product_of_broadcasts"):
                self.uses("product_of_broadcasts")
            else:
                text, factor = BINARY["add"]
        sa, sb = self.stretched(var, other)
        factors = fa.factors | fb.factors | {f for f in (short_a, short_b if factor == "product" else None) if f}
        if factor in ("1", "scaled"):
            flow = fa | fb | Flow(sa | sb, sb if factor == "scaled" else ())
            if factor == "scaled":
                flow |= fb.scaled_copy()
        else:  # a product, or a quotient whose gradient w.r.t. b is multiplied by a
            flow = Flow(factors=factors, product=factor == "product" and bool(sa and sb))
        if sa and sb:
            self.uses("two_sided_broadcast")
        out = self.emit(text.format(a=var, b=other), flow)
        if factor in ("1", "scaled"):
            self.linear_in[out] |= self.linear_in[var] | self.linear_in[other]

    def step_constant(self):
        """An array constant in the expression: ``x * [0.5, -1.0, 2.0]`` or ``[…] - x`` (a ``gc.const``)."""
        var = self.pick(lambda s: len(s) > 0 and s[-1].is_number)
        if var is None:
            return
        shape, flow = self.shape(var), self.flow[var]
        values = [0.5 * (i + 1) * (-1) ** i for i in range(int(shape[-1]))]
        form = self.choose(["product", "difference", "maximum"])
        if form == "maximum" and not self.mask(var):
            form = "difference"
        if form == "product":
            short = short_axes((sympy.Integer(len(values)),), shape)
            if flow.meets(short):
                if not self.allowed("product_of_broadcasts"):
                    return
                self.uses("product_of_broadcasts")
            self.emit(f"{var} * {values}", Flow(factors=flow.factors | ({short} if short else set())))
        elif form == "difference":
            out = self.emit(f"{values} - {var}", flow.scaled_copy())
            self.linear_in[out] |= self.linear_in[var]
        else:
            self.emit(f"gc.maximum({var}, gc.const({values}, dtype={self.dtype!r}) + {self.noise(var)})",
                      flow.through_nonlinear())
        self.uses("constant")

    def step_kinked(self):
        var = self.pick()
        name = self.choose(sorted(KINKED))
        if name in ("maximum", "minimum", "where") and not self.mask(var):
            name = "relu"  # d/da = [a ≥ b]: a mask
        other = self.partner(var) if "{b}" in KINKED[name] else var
        flow = (self.flow[var] | self.flow[other]).through_nonlinear()
        self.emit(KINKED[name].format(a=var, b=other, n=self.noise(var, other)), flow)

    def step_where(self):
        """``gc.where(a < b, a, b)``, or with a comparison of computed values: ``gc.where(a * 2 < b, a, b)``."""
        var = self.pick()
        other = self.partner(var)
        if not self.mask(var):
            return
        computed = self.draw(st.booleans())
        if computed and not self.allowed("where_computed_condition"):
            computed = False
        plain = ["{a} < {b}", "{a} >= {b}", "gc.greater({a}, {b})", "gc.less_equal({a}, {b})"]
        cond = CONDITIONS[self.choose(sorted(CONDITIONS))] if computed else self.choose(plain)
        self.uses("where_computed_condition" if computed else "where_compare")
        flow = (self.flow[var] | self.flow[other]).through_nonlinear()
        self.emit(f"gc.where({cond.format(a=var, b=other)}, {var}, {other})", flow)

    def step_reduce(self, var: str | None = None):
        var = var or self.pick(lambda s: len(s) > 0)
        if var is None or not self.shape(var):
            return
        shape, flow = self.shape(var), self.flow[var]
        n = len(shape)
        choices = [None, *range(n), -1]
        if n > 1:
            choices.append(tuple(sorted(self.draw(st.sets(st.integers(0, n - 1), min_size=2, max_size=n)))))
        upstream = sorted(n + a for a in flow.stretched.union(*flow.factors) if -a <= n)
        axis = self.choose(choices + upstream * 2)  # axes along which an operand was broadcast, more often
        axes = {a - n for a in shapes.normalize_axes(axis, n)}
        op = self.choose(["sum", "mean", "logsumexp", "max"])
        keep = self.draw(st.booleans())
        out_flow = Flow()
        if op in ("sum", "mean"):
            broken = {"reduce_scaled_broadcast"} if flow.scaled else set()
            ones = {k - n for k in range(n) if shape[k] == 1}  # the incoming gradient is 1 there too
            broken |= {"reduce_product_broadcast"} if flow.meets(frozenset(axes | ones)) else set()
            if not self.allowed(*broken):
                op = self.choose(["logsumexp", "max"])
            else:
                self.uses(*broken)
                out_flow = Flow(product=flow.product)
        src = f"{var} + {self.noise(var)}" if op == "max" else var
        self.emit(f"gc.{op}({src}, axis={axis!r}, keepdims={keep})", out_flow)
        self.uses("keepdims" if keep else "reduce")

    def step_broadcast_reduce(self):
        """A binary op with broadcasting, then a reduction of it (``gc.sum(a - b, axis=1, keepdims=True)``, b (m, 1)),
        most often over an axis along which an operand is broadcast."""
        self.step_binary()
        self.step_reduce(self.pool[-1])

    def step_softmax(self):
        var = self.pick(lambda s: len(s) > 0)
        if var is None:
            return
        op = self.choose(["softmax", "log_softmax"])
        self.emit(f"gc.{op}({var}, axis={self.draw(st.integers(-1, len(self.shape(var)) - 1))})")

    def step_matmul(self):
        """``v @ W`` (N-d v; a matrix or a vector W), ``W @ v``, or ``v @ o`` with batch dims that broadcast."""
        var = self.pick(lambda s: len(s) > 0 and s[-1].is_number)
        if var is None:
            return
        shape = self.shape(var)
        k = int(shape[-1])
        how = self.choose(["param", "param", "vector", "batched", "left"])
        if how == "param":
            self.emit(f"{var} @ {self.new_param((k, self.choose([1, 2, 3])))}")
        elif how == "vector":
            self.emit(f"{var} @ {self.new_param((k,))}")
        elif how == "batched" and len(shape) >= 2:
            batch = self.partner_shape(shape[:-2]) if len(shape) > 2 else self.choose([(), (2,), (1,)])
            self.emit(f"{var} @ {self.new_input((*batch, k, self.choose([1, 2])))}")
        elif how == "left" and len(shape) >= 2 and shape[-2].is_number:
            self.emit(f"{self.new_param((self.choose([1, 2, 3]), int(shape[-2])))} @ {var}")
        else:
            return
        if len(shape) != 2 or how == "vector":
            self.uses("matmul_nd")

    def step_shape(self):
        var = self.pick(lambda s: len(s) >= 1)
        if var is None:
            return
        shape = self.shape(var)
        how = self.choose(["transpose", "perm", "concat", "concat", "merge", "flat", "unit"])
        if how == "transpose" and len(shape) >= 2:
            self.emit(self.choose([f"gc.transpose({var})", f"{var}.T"]))
        elif how == "perm" and len(shape) >= 3:
            self.emit(f"gc.transpose({var}, {tuple(self.draw(st.permutations(range(len(shape)))))})")
        elif how == "concat":
            axis = self.draw(st.integers(-1, len(shape) - 1))
            a = axis % len(shape)
            if self.draw(st.booleans()) and shape[a].is_number and self.fmt(shape) is not None:
                other = self.new_input((*shape[:a], sympy.Integer(self.choose([1, 2])), *shape[a + 1:]), pool=False)
            else:
                other = self.choose([f"gc.tanh({var})", f"0.5 * {var}"])
            self.emit(f"gc.concat([{var}, {other}], axis={axis})")
        elif how == "merge" and len(shape) >= 2 and self.fmt(shape[:-2]) is not None:
            lead = [self.fmt((d,))[1:-2] for d in shape[:-2]]
            self.emit(f"gc.reshape({var}, {tuple_text([*lead, '-1'])})")
        elif how == "flat":
            self.emit(f"gc.reshape({var}, (-1,))")
        elif how == "unit" and len(shape) < 4 and self.fmt(shape) is not None:
            axis = self.draw(st.integers(0, len(shape)))
            self.emit(f"gc.reshape({var}, {self.fmt((*shape[:axis], 1, *shape[axis:]))})")

    def step_slice(self):
        """Basic slicing on any axis: ``x[::2]``, ``x[1::3]``, ``x[-2:]``, ``x[:, -1]``, ``x[1:]``, ``x[:-1]``."""
        var = self.pick(lambda s: len(s) >= 1)
        if var is None:
            return
        shape = self.shape(var)
        axis = self.draw(st.integers(0, len(shape) - 1))
        d = shape[axis]
        dim = next((x for x in self.dims if x.symbol == d), None)
        if not d.is_number and dim is None:
            return  # a composite dim (2·m): the least size its slices need is not tracked
        options = [("::2", 1), ("1::3", 2), ("-2:", 2), ("-1", 1), ("1:", 2), (":-1", 2), ("0", 1), ("1:3", 3)]
        options = [o for o in options if dim is not None or int(d) >= o[1]]
        item, least = self.choose(options)
        if dim is not None and "::" in item:
            if not self.allowed("slice_step_symbolic"):
                return
            self.uses("slice_step_symbolic")
        if dim is not None:
            dim.least = max(dim.least, least)
            self.uses("slice_symbolic")
        index = "..., " + item if axis == len(shape) - 1 and axis > 0 and self.draw(st.booleans()) else \
            ", ".join([":"] * axis + [item])
        self.emit(f"{var}[{index}]")

    def step_broadcast_to(self):
        """``gc.broadcast_to(x, (3, 2, 5)) * w`` and ``x (2, 5) * o (3, 2, 5) * w (5,)``."""
        var = self.pick(lambda s: 1 <= len(s) <= 3 and s[-1].is_number and self.fmt(s) is not None)
        if var is None:
            return
        shape = self.shape(var)
        explicit = self.draw(st.booleans())
        lead = self.choose([sympy.Integer(2), sympy.Integer(3), self.batch()])
        target = (lead, *(sympy.Integer(self.choose([2, 3])) if d == 1 and self.draw(st.booleans()) else d
                          for d in shape))
        w = self.new_param((int(shape[-1]),)) if self.draw(st.booleans()) else self.new_input((shape[-1],), pool=False)
        if explicit and self.allowed("product_of_broadcasts"):  # both factors lack the new leading axis
            self.uses("broadcast_to", "product_of_broadcasts")
            self.emit(f"gc.broadcast_to({var}, {self.fmt(target)}) * {w}", Flow(product=True))
        elif explicit:
            self.uses("broadcast_to")
            self.emit(f"gc.broadcast_to({var}, {self.fmt(target)}) + {w}")
        else:
            self.uses("rank_broadcast")
            o = self.new_input(target, pool=False)
            factors = {self.short(var, o), self.short(w, o)} - {frozenset()}
            self.emit(f"{var} * {o} * {w}", Flow(factors=factors | self.flow[var].factors, product=True))

    # -- cross-entropy ---------------------------------------------------------------------------
    def logits(self):
        """(variable, class axis): a pool tensor whose last axis has ≥ 2 classes, or a new input of a shape
        logits take: (m, C), (m, T, C), (C,), (1, 8, 2), (m, C, 2) with the classes on axis 1."""
        candidates = [v for v in self.pool if self.shape(v) and self.shape(v)[-1].is_number and self.shape(v)[-1] >= 2]
        if candidates and self.draw(st.booleans()):
            return self.choose(candidates), -1
        m = self.batch()
        shape, axis = self.choose([((m, 4), -1), ((m, 3), -1), ((m, 2, 3), -1), ((3,), -1), ((1, 8, 2), -1),
                                   ((m, 3, 2), 1), ((2, m, 3), -1), ((m, 1, 4), -1), ((m, 4, 1, 2), 1)])
        return self.new_input(tuple(sympy.sympify(d) for d in shape)), axis

    def labels(self, z: str, axis: int, integer: bool) -> str:
        shape = self.shape(z)
        a = axis % len(shape)
        if integer:
            rest = tuple(d for i, d in enumerate(shape) if i != a)
            if self.fmt(rest) is None:
                return None
            return self.new_input(rest, ("labels", int(shape[a])), dtype="int64")
        if self.draw(st.integers(0, 2)) == 0:
            return self.emit(f"gc.softmax({self.noise(z)}, axis={axis})", pool=False)
        return self.new_input(shape, ("dist", a), like=z + ".shape", pool=False)

    def step_xent(self):
        """Library, hand-written, or both on one logits; integer or distribution labels; any class axis."""
        z, axis = self.logits()
        shape = self.shape(z)
        a = axis % len(shape)
        integer = self.draw(st.booleans())
        form = self.choose(["library", "library", "hand", "mixed"]) if integer is False or a == len(shape) - 1 \
            else "library"  # one_hot puts the classes last
        of_softmax = self.draw(st.booleans())  # gc.log(gc.softmax(z)) rather than gc.log_softmax(z)
        forms = set(self.xent_forms.get(z, ()))
        if form != "hand":
            forms.add(("library_dist", a) if not integer else ("library_int", a))
        if form != "library" and of_softmax:
            forms.add(("hand_of_softmax", a))
        broken = set()
        if integer and (len(shape) != 2 or a != 1):
            broken.add("xent_int_nd")
        if {("library_dist", a), ("hand_of_softmax", a)} <= forms:
            broken.add("xent_mixed_dist")
        if integer and self.draw(st.integers(0, 7)) == 0:  # feed a label outside [0, k): it must be refused
            broken.add("labels_out_of_range")
        if not self.allowed(*broken):
            return
        t = self.labels(z, axis, integer)
        if t is None:
            return
        self.xent_forms[z] = forms
        self.uses(*broken, f"xent_{'int' if integer else 'dist'}_{form}")
        library = f"gc.softmax_cross_entropy({z}, {t}{'' if axis == -1 else f', axis={axis}'})"
        logp = f"gc.log(gc.softmax({z}, axis={axis}))" if of_softmax else f"gc.log_softmax({z}, axis={axis})"
        if integer:
            hand = f"-gc.sum(gc.one_hot({t}, {int(shape[a])}, dtype={self.dtype!r}) * {logp}, axis=-1)"
        else:
            hand = f"-gc.sum({t} * {logp}, axis={axis})"
        if form != "hand":
            self.emit(library)
        if form != "library":
            self.emit(hand)

    def step_bce(self):
        """``binary_cross_entropy_with_logits(z, t)``: targets in (0, 1) that broadcast against the logits."""
        z = self.pick()
        t = self.new_input(self.partner_shape(self.shape(z)), ("unit", None), pool=False)
        if self.draw(st.booleans()):
            z, t = t, z  # logits of a partner shape, targets from the pool (any real values)
        short_z, short_t = self.short(z, t), self.short(t, z)  # softplus(z) − z·t: d/dt = −g·z
        flow_z, flow_t = self.flow.get(z, Flow()), self.flow.get(t, Flow())
        if short_z & short_t or flow_t.meets(short_z):
            if not self.allowed("product_of_broadcasts"):
                return
            self.uses("product_of_broadcasts")
        sz, st_ = self.stretched(z, t)
        factors = flow_z.factors | flow_t.factors | ({short_z} if short_z else set())
        self.emit(f"gc.binary_cross_entropy_with_logits({z}, {t})", Flow(factors=factors, product=bool(sz and st_)))
        self.uses("bce")

    # -- convolution and pooling -----------------------------------------------------------------
    def step_conv(self):
        """conv2d / max_pool2d / avg_pool2d of an NCHW tensor, possibly after a keepdims reduction."""
        def nchw(s):
            return len(s) == 4 and all(d.is_number for d in s[1:]) and min(int(s[2]), int(s[3])) >= 2
        x = self.pick(nchw) if self.draw(st.booleans()) else None
        if x is None:
            x = self.new_input((self.batch(), *(sympy.Integer(self.choose(o)) for o in ([1, 2], [3, 4], [3, 4, 5]))))
        if self.draw(st.integers(0, 2)) == 0:
            op = self.choose(["sum", "mean", "max", "logsumexp"])
            src = f"{x} + {self.noise(x)}" if op == "max" else x
            x = self.emit(f"gc.{op}({src}, axis=1, keepdims=True)")
            self.uses("keepdims_into_conv")
        _, c, h, w = (int(d) if d.is_number else d for d in self.shape(x))
        how = self.choose(["conv", "conv", "max", "avg"])
        if how == "conv":
            k = self.choose([1, 2, 3] if min(h, w) >= 3 else [1, 2])
            weights = self.new_param((self.choose([1, 2]), c, k, k))
            stride = self.choose([1, 1, 2])
            padding = self.choose([0, 1, "same"] if stride == 1 else [0, 1])
            out = self.emit(f"gc.conv2d({x}, {weights}, stride={stride}, padding={padding!r})")
        elif how == "max":
            out = self.emit(f"gc.max_pool2d({x} + {self.noise(x)}, 2)")
        else:
            out = self.emit(f"gc.avg_pool2d({x}, 2, stride={self.choose([1, 2])})")
        self.uses(f"conv_{how}")
        if self.draw(st.integers(0, 2)) == 0:
            self.emit(f"gc.flatten({out})")

    # -- the loss --------------------------------------------------------------------------------
    def finish(self):
        """loss = Σ over unconsumed tensors t of sum(t), mean(t), sum(t · r) or mean(t · r), r a fixed random
        input: fan-in of everything. Every float input and param gets its gradient as an output."""
        rhs = " ".join(line.split(" = ", 1)[1] for line in self.lines if " = " in line)
        ends = [v for v in self.pool if not re.search(rf"\b{v}\b", rhs)] or [self.pool[-1]]
        terms = []
        for v in ends:
            weighted = self.draw(st.booleans())
            if not weighted and self.flow[v].product:
                if self.allowed("mean_of_broadcast_product"):
                    self.uses("mean_of_broadcast_product")
                else:
                    weighted = True
            reduce = self.choose(["sum", "mean"])
            if weighted:
                terms.append(f"gc.{reduce}({v} * {self.noise(v)})")
            else:
                terms.append(f"gc.{reduce}({v})")
        self.add_line("loss = " + " + ".join(terms))
        wrt = [n for n, (kind, _) in self.feeds.items() if kind != "labels"] + self.params
        self.add_line("grads = gc.grad(loss, [" + ", ".join(self.sources[n] for n in wrt) + "])")
        outputs = {"loss": "loss"}
        for i, name in enumerate(wrt):
            out = f"d_{name}"
            if out in self.names or self.draw(st.integers(0, 3)) == 0:
                out = self.fresh_name("output", out if out not in self.names else f"d{i}")
            self.names.add(out)
            self.grad_of[out] = name
            outputs[out] = f"grads[{i}]"
        for _ in range(self.draw(st.integers(0, 2))):
            outputs[self.fresh_name("output", f"y{len(outputs)}")] = self.choose(self.pool)
        self.add_line("g.output(**{" + ", ".join(f"{k!r}: {v}" for k, v in outputs.items()) + "})")


class Case:
    """A drawn graph: the builder's record of it and the dim sizes to feed."""

    def __init__(self, builder: Builder, sizes: dict, strided: bool = False, numerics_level: int | None = None):
        self.b, self.sizes, self.strided, self.numerics_level = builder, sizes, strided, numerics_level
        self.graph, self.dtype = builder.env["g"], builder.dtype

    @property
    def source(self) -> str:
        """Python that rebuilds the graph: dims first, then the graph's body inside ``with gc.Graph(...)``."""
        body = [line for line in self.b.lines if not line.startswith(("g = ", "g.__"))]
        dims = [line for line in body if " = gc.dim(" in line]
        rest = [f"    {line}" for line in body if " = gc.dim(" not in line]
        header = ["import graphc as gc", "from graphc.core import shapes", *dims, 'with gc.Graph("random") as g:']
        return "\n".join(header + rest)

    def describe(self, seed: int) -> str:
        """The reproduction a failure prints: the graph, its feeds, and what the test compares."""
        layout = "{k: strided(v) for k, v in feeds.items()}" if self.strided else "feeds"  # not C-contiguous
        out_of_range = "labels_out_of_range" in self.b.categories
        return "\n".join([self.source, feeds_source(self, seed, out_of_range=out_of_range),
                          f"# g.evaluate(feeds) vs gc.compile(g, opt_level=L)({layout}) for L in 0, 1, 2; "
                          f"categories {sorted(self.b.categories)}"])


@st.composite
def random_graphs(draw, enabled=ENABLED_BROKEN):
    """A random graph (a ``Case``) of 1 to 6 steps over a pool of tensors, reduced to one scalar loss."""
    b = Builder(draw, draw(st.sampled_from(["float64", "float32"])), enabled)
    b.add_line('g = gc.Graph("random")')
    b.add_line("g.__enter__()")
    b.new_dim()
    if draw(st.integers(0, 2)) == 0:
        b.new_dim()
    first = b.random_shape()
    b.new_input((b.batch(), *first[1:]) if first else (b.batch(),))
    for _ in range(draw(st.integers(1, 6))):
        b.step()
    b.finish()
    b.add_line("g.__exit__(None, None, None)")
    sizes = {d.symbol: draw(st.sampled_from([n for n in (3, 2, 1, 4) if n >= d.least])) for d in b.dims}
    return Case(b, sizes, draw(st.integers(0, 3)) == 0, draw(st.sampled_from([None, 0, 1, 2])))


def feeds_source(case: Case, seed: int, graph=None, dtype: str | None = None, out_of_range: bool = False) -> str:
    """Python that makes the feeds of graph ``g``: normal values, targets in (0, 1), class labels, distributions
    along an axis, and the params. ``feeds_for`` runs it, and a failure prints it beside the graph's source."""
    graph, dtype = graph or case.graph, dtype or case.dtype
    lines = ["import numpy as np", f"rng = np.random.default_rng({seed})", "feeds = {}"]
    for name, (kind, detail) in case.b.feeds.items():
        shape = shapes.evaluate(graph.nodes[graph.inputs[name]].shape, case.sizes)
        if kind == "labels":
            lines.append(f"feeds[{name!r}] = rng.integers(0, {detail}, size={shape})")
            if out_of_range and int(np.prod(shape)):
                lines.append(f"feeds[{name!r}].flat[rng.integers({int(np.prod(shape))})] = rng.choice([{detail}, -1])")
            continue
        if kind == "unit":
            value = f"rng.uniform(0.05, 0.95, size={shape})"
        elif kind == "dist":
            classes, rest = shape[detail], tuple(np.delete(shape, detail).tolist())
            rows = f"rng.dirichlet(np.ones({classes}), size={int(np.prod(rest))}).reshape({(*rest, classes)})"
            value = f"np.moveaxis({rows}, -1, {detail})"
        else:
            value = f"rng.normal(size={shape})"
        lines.append(f"feeds[{name!r}] = np.array({value}, dtype={dtype!r}, order='C')")
    lines.append(f"feeds.update({{k: v.astype({dtype!r}) for k, v in gc.init_params(g, {seed}).items()}})")
    return "\n".join(lines)


def feeds_for(case: Case, seed: int, graph=None, dtype: str | None = None, out_of_range: bool = False) -> dict:
    env = {"gc": gc, "g": graph or case.graph}
    exec(feeds_source(case, seed, graph, dtype, out_of_range), env)  # noqa: S102 - the test's own generated source
    return env["feeds"]


# -- the checks ----------------------------------------------------------------------------------
def compare(got: dict, want: dict, dtype: str, what: str) -> None:
    assert set(got) == set(want), f"{what}: outputs {sorted(got)}, the evaluator's {sorted(want)}"
    for name, expected in want.items():
        value = np.asarray(got[name])
        assert value.shape == expected.shape, f"{what} output {name}: shape {value.shape}, expected {expected.shape}"
        assert value.dtype == expected.dtype, f"{what} output {name}: dtype {value.dtype}, expected {expected.dtype}"
        err = rel_error(value, expected, floor=FLOOR[dtype])
        assert err <= TOLERANCE[dtype], f"{what} output {name}: relative error {err:.2e}"


def strided(value: np.ndarray) -> np.ndarray:
    """The same values in memory that is not C-contiguous: Fortran order, or every other element of a copy."""
    if value.ndim >= 2:
        return np.asfortranarray(value)
    return np.repeat(value, 2)[::2] if value.ndim == 1 else value


def check_levels(case: Case, feeds: dict) -> dict:
    """Every opt level's module gives the evaluator's outputs, for feeds in C or in another memory layout."""
    expected = case.graph.evaluate(feeds)
    if case.strided:
        feeds = {name: strided(value) for name, value in feeds.items()}
    for level in (0, 1, 2):
        numerics = level == case.numerics_level  # with check_numerics the values must not change
        program = gc.compile(case.graph, opt_level=level, check_numerics=numerics)
        compare(program(feeds), expected, case.dtype, f"-O{level}" + (" check_numerics" if numerics else ""))
    return expected


def float64_twin(case: Case):
    """The graph rebuilt from its recorded source, with every float32 in float64 (so the source is checked too)."""
    env = {}
    exec(case.source.replace("'float32'", "'float64'"), env)  # noqa: S102 - the test's own generated source
    twin = env["g"]
    assert len(twin.nodes) == len(case.graph.nodes) and list(twin.outputs) == list(case.graph.outputs), \
        "the recorded source does not rebuild the graph"
    return twin


def check_gradients(case: Case, seed: int, twin, feeds: dict) -> dict:
    """``gc.grad`` (on the evaluator) matches central finite differences in float64: every coordinate of a small
    input, two random directions of a larger one."""
    values = twin.evaluate(feeds)
    rng = np.random.default_rng([seed, 1])
    for out, name in case.b.grad_of.items():
        grad, base = values[out], feeds[name]

        def loss(value, name=name):
            return float(twin.evaluate({**feeds, name: value}, ["loss"])["loss"])
        if base.size <= 12:
            err = rel_error(grad, numeric_grad(loss, base), floor=1e-3)  # FD noise where the gradient is 0
        else:
            err = 0.0
            for _ in range(2):
                v = rng.normal(size=base.shape)
                fd = float(numeric_grad(lambda t, v=v, base=base, loss=loss: loss(base + t * v), np.zeros(())))
                scale = max(float(np.abs(grad).max()), 1e-3) * float(np.linalg.norm(v))
                err = max(err, abs(float(np.sum(grad * v)) - fd) / scale)
        assert err <= FD_TOLERANCE, f"gradient {out} w.r.t. {name}: relative error {err:.2e} to finite differences"
    return values


def check_train_step(case: Case, feeds: dict, expected: dict, level: int, cp=None) -> None:
    """One SGD step of the compiled training module: the outputs at the old params, then params − lr·∂loss/∂params
    (with ``cp``, the CuPy module's step on the device)."""
    device, host = (np.copy, np.array) if cp is None else (cp.asarray, cp.asnumpy)
    params = {name: device(feeds[name]) for name in case.b.params}
    batch = {name: device(value) for name, value in feeds.items() if name not in params}
    program = gc.compile(case.graph, backend="numpy" if cp is None else "cupy", opt_level=level, loss="loss",
                         optimizer=gc.SGD(LR))
    what = f"{'CuPy ' if cp is not None else ''}train_step -O{level}"
    for name, value in program.init_params(seed=3).items():
        assert np.array_equal(host(value), gc.init_params(case.graph, 3)[name]), f"init_params: {name} differs"
    out = program.train_step(params, batch)
    compare({k: host(v) for k, v in out.items()}, expected, case.dtype, what)
    grads = {name: out_name for out_name, name in case.b.grad_of.items()}
    for name in case.b.params:
        want = (feeds[name] - np.asarray(LR, dtype=case.dtype) * expected[grads[name]]).astype(case.dtype)
        err = rel_error(host(params[name]), want, floor=FLOOR[case.dtype])
        assert err <= TOLERANCE[case.dtype], f"{what}: param {name}: relative error {err:.2e}"


def check_out_of_range(case: Case, seed: int) -> None:
    """A label outside [0, k) is an error everywhere: the evaluator and the module at every opt level refuse it."""
    feeds = feeds_for(case, seed, out_of_range=True)
    with pytest.raises(gc.GraphError, match="outside 0[.][.]"):
        case.graph.evaluate(feeds)
    for level in (0, 1, 2):
        with pytest.raises(ValueError, match="outside 0[.][.]"):
            gc.compile(case.graph, opt_level=level)(feeds)


def check_case(case: Case, seed: int, train_level: int) -> None:
    """Every check of one drawn graph; a failure prints the graph's source and its feeds."""
    note(case.describe(seed))
    if "labels_out_of_range" in case.b.categories:
        return check_out_of_range(case, seed)
    feeds = feeds_for(case, seed)
    expected = check_levels(case, feeds)
    twin = float64_twin(case)
    feeds64 = feeds_for(case, seed, twin, "float64")
    values = check_gradients(case, seed, twin, feeds64)
    if case.b.params and case.b.train:
        check_train_step(case, feeds, expected, train_level)
    if HAVE_TORCH:
        check_torch(case, twin, feeds64, values)


# -- the PyTorch mirror: the forward graph in float64 PyTorch, its gradients by torch.autograd ---------------
HAVE_TORCH = importlib.util.find_spec("torch") is not None


def torch_expr(expr, values: dict):
    """A sympy elementwise expression evaluated on torch tensors (the mirror of ``interpret``)."""
    import torch
    from sympy.codegen.cfunctions import log1p

    from graphc.ops import elementwise as ew
    from graphc.ops import functions as fns
    if expr in values:
        return values[expr]
    if expr is sympy.true or expr is sympy.false:
        return bool(expr)
    if expr.is_Number:
        return float(expr)
    if isinstance(expr, sympy.floor):  # a strided slice's length, of dims only
        return int(expr.subs({s: values[s] for s in expr.free_symbols}))
    args = [torch_expr(a, values) for a in expr.args]
    if expr.is_Add:
        return sum(args[1:], args[0])
    if expr.is_Mul:
        out = args[0]
        for a in args[1:]:
            out = out * a
        return out
    if expr.is_Pow:
        return args[0] ** args[1]
    tensor = [torch.as_tensor(a, dtype=torch.float64) if isinstance(a, float) else a for a in args]
    table = {
        sympy.exp: torch.exp, sympy.log: torch.log, log1p: torch.log1p, sympy.tanh: torch.tanh, sympy.Abs: torch.abs,
        sympy.sign: torch.sign, fns.Sigmoid: torch.sigmoid, fns.Softplus: torch.nn.functional.softplus,
        fns.Relu: torch.relu, fns.Maximum: torch.maximum, fns.Minimum: torch.minimum, ew.Where: torch.where,
        fns.Positive: lambda y: (y > 0).to(y.dtype), sympy.StrictGreaterThan: torch.gt, sympy.GreaterThan: torch.ge,
        sympy.StrictLessThan: torch.lt, sympy.LessThan: torch.le, sympy.Eq: torch.eq, sympy.Ne: torch.ne,
    }
    fn = table.get(type(expr)) or table.get(expr.func)
    if fn is None:
        raise NotImplementedError(f"PyTorch mirror: no function for {expr.func.__name__}")
    return fn(*tensor)


def torch_mirror(graph, feeds: dict, grad_of: dict) -> dict:
    """The graph's loss and forward outputs in float64 PyTorch, and the gradient outputs by ``torch.autograd``."""
    import torch
    import torch.nn.functional as F

    from graphc.core.evaluate import check_feeds
    from graphc.ops.elementwise import arg
    forward = {n: i for n, i in graph.outputs.items() if n not in grad_of}
    needed = graph.needed(forward.values())
    env, _ = check_feeds(graph, feeds, needed)
    leaves, values = {}, {}

    def dims(shape):
        return shapes.evaluate(shape, env)

    def dtype(name):
        return {"float64": torch.float64, "float32": torch.float64, "int64": torch.int64, "bool": torch.bool}[name]

    def conv2d(node, x, w):
        (top, bottom), (left, right) = node.attr("padding")
        return F.conv2d(F.pad(x, (left, right, top, bottom)), w, stride=node.attr("stride"))

    def xent(node, z, t):
        axis = node.attr("axis")
        logp = torch.log_softmax(z, axis)
        if t.dtype == torch.int64:
            return -torch.gather(logp, axis, t.unsqueeze(axis)).squeeze(axis)
        return -(t * logp).sum(axis)

    def elementwise(node, *xs):
        values = {arg(i): x for i, x in enumerate(xs)}
        values.update({s: int(n) for s, n in env.items()})
        out = torch.as_tensor(torch_expr(node.attr("expr"), values))
        return torch.broadcast_to(out.to(dtype(node.dtype)), dims(node.shape))

    def const(node):
        data, shape, kind = node.attr("value")
        return torch.tensor(np.frombuffer(data, dtype=kind).reshape(shape)).to(dtype(node.dtype))

    def index(node):
        return tuple(slice(int(sympy.sympify(a).subs(env)), int(sympy.sympify(b).subs(env)), int(c))
                     for a, b, c in node.attr("index"))

    ops = {
        "ew": elementwise,
        "sum": lambda n, x: torch.sum(x, dim=n.attr("axes"), keepdim=n.attr("keepdims")),
        "max": lambda n, x: torch.amax(x, dim=n.attr("axes"), keepdim=n.attr("keepdims")),
        "logsumexp": lambda n, x: torch.logsumexp(x, dim=n.attr("axes"), keepdim=n.attr("keepdims")),
        "softmax": lambda n, x: torch.softmax(x, n.attr("axis")),
        "log_softmax": lambda n, x: torch.log_softmax(x, n.attr("axis")),
        "softmax_cross_entropy": xent,
        "one_hot": lambda n, t: F.one_hot(t, int(n.attr("k"))).to(dtype(n.dtype)),
        "matmul": lambda n, a, b: torch.matmul(a, b),
        "reshape": lambda n, x: x.reshape(dims(n.shape)),
        "transpose": lambda n, x: x.permute(n.attr("perm")),
        "broadcast_to": lambda n, x: x.expand(dims(n.shape)),
        "concat": lambda n, *xs: torch.cat(xs, dim=n.attr("axis")),
        "slice": lambda n, x: x[index(n)],
        "const": const,
        "fill": lambda n: torch.full(dims(n.shape), float(n.attr("value").subs(env)), dtype=dtype(n.dtype)),
        "conv2d": conv2d,
        "max_pool2d": lambda n, x: F.max_pool2d(x, n.attr("kernel"), n.attr("stride")),
        "avg_pool2d": lambda n, x: F.avg_pool2d(x, n.attr("kernel"), n.attr("stride")),
    }
    for nid in graph.order(needed):
        node = graph.nodes[nid]
        if node.op in ("input", "param"):
            value = torch.tensor(np.asarray(feeds[node.name]))
            if value.dtype.is_floating_point:
                value = value.to(torch.float64).requires_grad_(True)
            values[nid] = leaves[node.name] = value
        else:
            values[nid] = ops[node.op](node, *(values[i] for i in node.inputs))
    out = {name: values[nid].detach().numpy() for name, nid in forward.items()}
    wrt = [name for name in grad_of if grad_of[name] in leaves]  # the others do not reach the loss: zero
    grads = torch.autograd.grad(values[graph.outputs["loss"]], [leaves[grad_of[o]] for o in wrt], allow_unused=True)
    for name in grad_of:
        out[name] = np.zeros(np.shape(feeds[grad_of[name]]))
    for name, g in zip(wrt, grads):
        if g is not None:
            out[name] = g.numpy()
    return out


def check_torch(case: Case, twin, feeds: dict, values: dict) -> None:
    """The evaluator's values and gradients (float64) match the PyTorch mirror's."""
    for name, value in torch_mirror(twin, feeds, case.b.grad_of).items():
        err = rel_error(value, values[name], floor=1e-6)
        assert err <= TORCH_TOLERANCE, f"PyTorch mirror: {name}: relative error {err:.2e}"


SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(max_examples=DEFAULT_EXAMPLES, **SETTINGS)
@given(random_graphs(), st.integers(0, 2**16), st.integers(0, 2))
def test_random_graphs(case, seed, train_level):
    check_case(case, seed, train_level)


@pytest.mark.slow
@settings(max_examples=SLOW_EXAMPLES, **SETTINGS)
@given(random_graphs(), st.integers(0, 2**16), st.integers(0, 2))
def test_random_graphs_many(case, seed, train_level):
    check_case(case, seed, train_level)


def check_cupy(cp, case: Case, seed: int) -> None:
    """The CuPy module of every opt level gives the evaluator's outputs (the feeds on the device); a graph with
    params also takes one SGD step of its -O2 training module."""
    note(case.describe(seed))
    if "labels_out_of_range" in case.b.categories:
        return
    feeds = feeds_for(case, seed)
    expected = case.graph.evaluate(feeds)
    for level in (0, 1, 2):
        got = gc.compile(case.graph, backend="cupy", opt_level=level)({k: cp.asarray(v) for k, v in feeds.items()})
        compare({k: cp.asnumpy(v) for k, v in got.items()}, expected, case.dtype, f"CuPy -O{level}")
    if case.b.params and case.b.train:
        check_train_step(case, feeds, expected, 2, cp)
    return None


@pytest.mark.gpu
@pytest.mark.slow
@settings(max_examples=max(1, SLOW_EXAMPLES // 20), **SETTINGS)
@given(random_graphs(), st.integers(0, 2**16))
def test_random_graphs_on_the_gpu(case, seed):
    check_cupy(cupy_or_skip(), case, seed)


def test_every_category_is_one_the_builder_reports():
    """A ``CATEGORIES`` entry the builder never names would be a typo or a rename, never drawn."""
    source = inspect.getsource(Builder)
    assert not [c for c in CATEGORIES if f'"{c}"' not in source]
    assert KNOWN_BROKEN <= set(CATEGORIES)


@st.composite
def drawn_categories(draw):
    """The categories of a drawn graph, also of one whose building failed."""
    try:
        return draw(random_graphs(frozenset(CATEGORIES))).b.categories
    except BuildError as exc:
        return exc.categories


def test_every_category_is_drawn():
    """The draw reaches every awkward category (a change to the builder that stops drawing one fails here)."""
    seen = set()

    @settings(max_examples=1000, database=None, derandomize=True, phases=[Phase.generate], **SETTINGS)
    @given(drawn_categories())
    def collect(categories):
        seen.update(categories)
    collect()
    assert set(CATEGORIES) - seen == set()
