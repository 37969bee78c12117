"""Property-based tests: random DAGs over the op set, reduced to a scalar float64 loss.

For each graph the compiled NumPy module at every opt level matches the reference evaluator, and ``gc.grad``
matches central finite differences. Inputs stay in smooth, safe domains: log and sqrt only see softplus or exp
of values, kinked ops (relu, abs, max, maximum) get a fresh random offset so no tie or kink sits at a feed point.
The builder records the Python that rebuilds each graph, so a failure can be pasted into a regression test.
Default runs are short; ``pytest -m slow`` or GRAPHC_HYPOTHESIS_EXAMPLES=N runs many more.
"""
import os
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import graphc as gc
from graphc.transforms.gradcheck import fd_grads, rel_error

from helpers import concrete, m

DEFAULT_EXAMPLES = int(os.environ.get("GRAPHC_HYPOTHESIS_EXAMPLES", "8"))
SLOW_EXAMPLES = int(os.environ.get("GRAPHC_HYPOTHESIS_EXAMPLES", "2000"))
K = 4  # classes of integer labels

UNARY = {  # name -> rebuilding source; each is smooth on all of R with bounded growth
    "tanh": "gc.tanh({a})", "sigmoid": "gc.sigmoid({a})", "softplus": "gc.softplus({a})",
    "exp_tanh": "gc.exp(gc.tanh({a}))", "log_softplus": "gc.log(gc.softplus({a}) + 0.5)",
    "sqrt_exp": "gc.sqrt(gc.exp(gc.tanh({a})) + 0.1)", "square": "0.5 * gc.square(gc.tanh({a}))",
    "neg": "-{a}", "scale": "0.7 * {a} - 0.2", "log1p": "gc.log1p(gc.sigmoid({a}))",
    "pow": "gc.sigmoid({a}) ** 1.5",
}
BINARY = {
    "add": "{a} + {b}", "sub": "{a} - {b}", "mul": "{a} * gc.tanh({b})", "div": "{a} / (1.5 + gc.tanh({b}))",
}
KINKED = {  # {n}: a fresh random input of the result's shape moves the kink away from the feed point
    "relu": "gc.relu({a} + {n})", "abs": "gc.abs({a} + {n})", "leaky": "gc.leaky_relu({a} + {n}, 0.1)",
    "maximum": "gc.maximum({a}, {b} + {n})", "minimum": "gc.minimum({a} + {n}, {b})",
    "where": "gc.where({n} > 0.0, {a}, {b})",
}


def _fmt(shape):
    return "(" + "".join(("m" if d == m else str(d)) + ", " for d in shape).rstrip(" ") + ")"


def _broadcast_ok(s, t):
    return all(x == y or x == 1 or y == 1 for x, y in zip(reversed(s), reversed(t)))


class Builder:
    """Builds a random graph inside ``with gc.Graph(...)`` and the source text that rebuilds it."""

    def __init__(self, draw):
        self.draw = draw
        self.pool: list[tuple[str, tuple]] = []  # (variable, shape) of float tensors
        self.lines: list[str] = []
        self.env: dict = {"gc": gc, "m": m}
        self.feeds: dict[str, str] = {}  # input name -> "normal" | "labels"
        self.count = 0

    def emit(self, shape, text) -> str:
        var = f"v{self.count}"
        self.count += 1
        self.lines.append(f"{var} = {text}")
        exec(self.lines[-1], self.env)  # noqa: S102 - the test's own generated source
        self.pool.append((var, tuple(shape)))
        return var

    def new_input(self, shape) -> str:
        name = f"x{len(self.feeds)}"
        self.feeds[name] = "normal"
        return self.emit(shape, f'gc.input("{name}", {_fmt(shape)}, dtype="float64")')

    def noise(self, shape) -> str:
        """A fresh input that is not added to the pool (an offset for a kinked op)."""
        name = f"x{len(self.feeds)}"
        self.feeds[name] = "normal"
        var = f"n{self.count}"
        self.count += 1
        self.lines.append(f'{var} = gc.input("{name}", {_fmt(shape)}, dtype="float64")')
        exec(self.lines[-1], self.env)  # noqa: S102
        return var

    def shape_of(self, var):
        return dict(self.pool)[var]

    def pick(self, rank=None):
        pool = [p for p in self.pool if rank is None or len(p[1]) == rank]
        if not pool:
            return None
        return pool[self.draw(st.integers(0, len(pool) - 1))]

    def random_shape(self, like=None):
        """A shape broadcast-compatible with ``like`` (leading dims dropped, some set to 1) or a fresh one."""
        if like is None:
            return self.draw(st.sampled_from([(m, 4), (m, 3), (2, m, 4), (m, 1), (4,), (1, 4)]))
        shape = list(like)[self.draw(st.integers(0, min(1, len(like)))):]
        return tuple(1 if self.draw(st.booleans()) and self.draw(st.booleans()) else d for d in shape)

    def step(self):
        kind = self.draw(st.sampled_from(["unary", "binary", "binary", "kinked", "reduce", "softmax",
                                          "matmul", "shape", "xent", "input"]))
        var, shape = self.pick()
        if kind == "unary":
            self.emit(shape, UNARY[self.draw(st.sampled_from(sorted(UNARY)))].format(a=var))
        elif kind in ("binary", "kinked"):
            partners = [p for p in self.pool if _broadcast_ok(p[1], shape) and p[0] != var]
            if partners and self.draw(st.booleans()):
                other, oshape = partners[self.draw(st.integers(0, len(partners) - 1))]
            else:
                oshape = self.random_shape(shape)
                other = self.new_input(oshape)
            rshape = self._bshape(shape, oshape)
            if kind == "binary":
                self.emit(rshape, BINARY[self.draw(st.sampled_from(sorted(BINARY)))].format(a=var, b=other))
            else:
                name = self.draw(st.sampled_from(sorted(KINKED)))
                self.emit(rshape, KINKED[name].format(a=var, b=other, n=self.noise(rshape)))
        elif kind == "reduce" and shape:
            op = self.draw(st.sampled_from(["sum", "mean", "logsumexp", "max"]))
            axis = self.draw(st.sampled_from([None, *range(len(shape)), -1]))
            keep = self.draw(st.booleans())
            src = f"{var} + {self.noise(shape)}" if op == "max" else var
            self.emit(self._reduced(shape, axis, keep), f"gc.{op}({src}, axis={axis}, keepdims={keep})")
        elif kind == "softmax" and shape:
            op = self.draw(st.sampled_from(["softmax", "log_softmax"]))
            axis = self.draw(st.integers(-1, len(shape) - 1))
            self.emit(shape, f"gc.{op}({var}, axis={axis})")
        elif kind == "matmul" and shape and isinstance(shape[-1], int):  # params are concrete: not m, 4*m, m-1
            j = self.draw(st.integers(1, 3))
            w = f"w{self.count}"
            self.lines.append(f'{w} = gc.param("{w}", ({shape[-1]}, {j}), dtype="float64", init="glorot_uniform")')
            exec(self.lines[-1], self.env)  # noqa: S102
            self.emit((*shape[:-1], j), f"{var} @ {w}")
        elif kind == "shape" and len(shape) >= 2:
            how = self.draw(st.sampled_from(["T", "concat", "slice", "reshape"]))
            if how == "T":
                self.emit(shape[::-1], f"gc.transpose({var})")
            elif how == "concat":
                self.emit((*shape[:-1], 2 * shape[-1]), f"gc.concat([{var}, gc.tanh({var})], axis=-1)")
            elif how == "slice" and shape[-1] != 1:
                self.emit((*shape[:-1], shape[-1] - 1), f"{var}[..., 1:]")
            elif how == "reshape":
                self.emit((*shape[:-2], shape[-2] * shape[-1]), f"gc.reshape({var}, {_fmt((*shape[:-2], -1))})")
        elif kind == "xent" and shape == (m, K):
            labels = f"x{len(self.feeds)}"
            self.feeds[labels] = "labels"
            hand = self.draw(st.booleans())
            text = (f'-gc.sum(gc.one_hot(gc.input("{labels}", (m,), dtype="int64"), {K}, dtype="float64") '
                    f"* gc.log(gc.softmax({var})), axis=-1)" if hand else
                    f'gc.softmax_cross_entropy({var}, gc.input("{labels}", (m,), dtype="int64"))')
            self.emit((m,), text)
        elif kind == "input":
            self.new_input(self.random_shape())

    def _bshape(self, s, t):
        n = max(len(s), len(t))
        s, t = (1,) * (n - len(s)) + tuple(s), (1,) * (n - len(t)) + tuple(t)
        return tuple(b if a == 1 else a for a, b in zip(s, t))

    @staticmethod
    def _reduced(shape, axis, keep):
        axes = range(len(shape)) if axis is None else [axis % len(shape)]
        return tuple(1 if i in axes else d for i, d in enumerate(shape) if keep or i not in axes)

    def finish(self):
        """loss = Σ over unconsumed tensors of mean(t · r) with a fixed random r: fan-in of everything."""
        rhs = " ".join(line.split(" = ", 1)[1] for line in self.lines)
        used = {v for v, _ in self.pool if re.search(rf"\b{v}\b", rhs)}
        ends = [v for v, _ in self.pool if v not in used] or [self.pool[-1][0]]
        terms = []
        for v in ends:
            r = self.new_input(self.shape_of(v))
            terms.append(f"gc.sum({v} * {r})" if self.draw(st.booleans()) else f"gc.mean({v} * {r})")
        self.lines.append("loss = " + " + ".join(terms))
        self.lines.append("wrt = [" + ", ".join(self._float_sources()) + "]")
        self.lines.append('g.output(loss=loss, **{f"d_{t.name}": d for t, d in zip(wrt, gc.grad(loss, wrt))})')

    def _float_sources(self):
        names = [n for n, kind in self.feeds.items() if kind == "normal"]
        params = [line.split(" = ")[0] for line in self.lines if "gc.param(" in line]
        return [self._var_of(n) for n in names] + params

    def _var_of(self, name):
        return next(line.split(" = ")[0] for line in self.lines if f'gc.input("{name}"' in line)


@st.composite
def random_graphs(draw):
    """(source text, graph, feed kinds): a random DAG as the Python that rebuilds it."""
    b = Builder(draw)
    with gc.Graph("random") as g:
        b.env["g"] = g
        b.new_input(b.random_shape())
        for _ in range(draw(st.integers(1, 8))):
            b.step()
        b.finish()
        exec("\n".join(b.lines[-3:]), b.env)  # noqa: S102
    return "\n".join(b.lines), g, b.feeds


def feeds_for(g, kinds, seed):
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, kind in kinds.items():
        node = g.nodes[g.inputs[name]]
        shape = concrete(node.shape)
        feeds[name] = rng.integers(0, K, size=shape) if kind == "labels" else rng.normal(size=shape)
    feeds.update(gc.init_params(g, seed))
    return feeds


def check_graph(g, feeds, source=""):
    """Every opt level matches the evaluator (≤1e-10) and every gradient matches finite differences (≤1e-6)."""
    expected = g.evaluate(feeds)
    for level in (0, 1, 2):
        got = gc.compile(g, opt_level=level)(feeds)
        for name, want in expected.items():
            assert got[name].shape == want.shape, f"opt {level} {name}: shape\n{source}"
            err = rel_error(got[name], want, floor=1e-6)  # an exactly-zero output: rounding against 0
            assert err <= 1e-10, f"opt {level} output {name}: relative error {err:.2e}\n{source}"
    wrt = [n[2:] for n in g.outputs if n.startswith("d_")]
    fd = fd_grads(g, "loss", feeds, wrt)
    for name in wrt:
        err = rel_error(expected[f"d_{name}"], fd[name], floor=1e-3)  # FD noise where the gradient is 0
        assert err <= 1e-6, f"gradient w.r.t. {name}: relative error {err:.2e}\n{source}"


def _property(case, seed):
    source, g, kinds = case
    note(source)
    check_graph(g, feeds_for(g, kinds, seed), source)


SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(max_examples=DEFAULT_EXAMPLES, **SETTINGS)
@given(random_graphs(), st.integers(0, 2**16))
def test_random_graphs(case, seed):
    _property(case, seed)


@pytest.mark.slow
@settings(max_examples=SLOW_EXAMPLES, **SETTINGS)
@given(random_graphs(), st.integers(0, 2**16))
def test_random_graphs_many(case, seed):
    _property(case, seed)
