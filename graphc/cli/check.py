"""``graphc check``: every parameter gradient against central finite differences, on a float64 copy of the graph.

Finite differences in float32 are too noisy to judge a gradient by, so the graph is first rebuilt with every
float32 tensor in float64. Both ``gc.grad`` on the reference evaluator and the compiled NumPy module are compared.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphc.cli.explain import random_feeds
from graphc.core import shapes
from graphc.core.errors import GraphError
from graphc.core.ir import Graph, Rebuild
from graphc.dsl import Tensor
from graphc.program import compile as compile_graph
from graphc.transforms.autodiff import grad
from graphc.transforms.gradcheck import numeric_grad

TOLERANCE = {"float32": 1e-4, "float64": 1e-6}
GRAD_PREFIX = "check_grad_"


def as_float64(graph: Graph) -> Graph:
    """A copy of ``graph`` in which every float32 tensor (inputs, params, consts, fills, one_hot…) is float64."""
    def widen(rb: Rebuild, node):
        if node.dtype != "float32":
            return None
        attrs = dict(node.attrs)
        if node.op == "const":
            data, shape, _ = attrs["value"]
            attrs["value"] = (np.frombuffer(data, dtype="float32").astype("float64").tobytes(), shape, "float64")
        if attrs.get("dtype") == "float32":
            attrs["dtype"] = "float64"
        return rb.add(node, node.op, [rb.arg(i) for i in node.inputs], attrs, dtype="float64")
    return Rebuild(graph).run(widen)


def graph_dtype(graph: Graph) -> str:
    """float32 when any tensor of the graph is float32 (its tolerance is then the looser one)."""
    return "float32" if any(n.dtype == "float32" for n in graph.nodes.values()) else "float64"


def bind_dims(graph: Graph, given: dict[str, int], default: int = 3) -> dict:
    """Symbol -> size for every symbolic dim of the graph's inputs; ``given`` maps dim names to sizes."""
    dims = graph.dims()
    unknown = sorted(set(given) - {str(d) for d in dims})
    if unknown:
        raise GraphError(f"graph {graph.name!r} has no dims {unknown} (its dims: {[str(d) for d in dims]})")
    return {d: given.get(str(d), default) for d in dims}


def gradient_graph(graph: Graph, loss: str, wrt: list[str]) -> Graph:
    """The float64 twin with outputs ``loss`` and ``check_grad_<name>`` = ∂loss/∂name for each name in ``wrt``."""
    if loss not in graph.outputs:
        raise GraphError(f"graph {graph.name!r} has no output {loss!r} (outputs: {list(graph.outputs)}); "
                         "choose one with --loss")
    twin = as_float64(graph)
    sources = {**twin.inputs, **twin.params}
    loss_t = Tensor(twin, twin.outputs[loss])
    grads = grad(loss_t, [Tensor(twin, sources[name]) for name in wrt])
    twin.outputs = {loss: loss_t.id}
    twin.output(**{GRAD_PREFIX + name: g for name, g in zip(wrt, grads)})
    return twin


def differentiable(graph: Graph, inputs: bool = False) -> list[str]:
    """The params (and with ``inputs`` the float inputs) a gradient is checked for."""
    tables = (graph.params, graph.inputs) if inputs else (graph.params,)
    return [n for table in tables for n, nid in table.items() if graph.nodes[nid].dtype.startswith("float")]


def perturb_constant_params(graph: Graph, feeds: dict, seed: int) -> dict:
    """Params initialized to one value (zeros, ones) get small noise: a relu or max of all-equal values sits
    exactly on its kink, where finite differences and the one-sided derivative disagree legitimately."""
    rng = np.random.default_rng([seed, 1])
    out = dict(feeds)
    for name in graph.params:
        p = feeds[name]
        if p.size and np.all(p == p.flat[0]):
            out[name] = p + 0.1 * rng.normal(size=p.shape).astype(p.dtype)
    return out


def fd_sampled(graph: Graph, loss: str, feeds: dict, name: str, entries: np.ndarray, eps: float = 1e-6):
    """Central differences of output ``loss`` w.r.t. the flat ``entries`` of feed ``name`` only."""
    base = feeds[name]

    def f(values):
        x = base.copy()
        x.reshape(-1)[entries] = values
        return float(graph.evaluate({**feeds, name: x}, [loss])[loss])
    return numeric_grad(f, base.reshape(-1)[entries], eps)


def sample_entries(size: int, limit: int, rng) -> np.ndarray:
    return np.arange(size) if size <= limit else np.sort(rng.choice(size, limit, replace=False))


def sampled_error(analytic: np.ndarray, fd: np.ndarray, entries: np.ndarray) -> float:
    """max |analytic − fd| over the sampled entries, relative to the gradient's size (at least 1e-8)."""
    if not entries.size:
        return 0.0
    a = analytic.reshape(-1)[entries]
    scale = max(float(np.max(np.abs(fd))), float(np.max(np.abs(analytic))), 1e-8)
    return float(np.max(np.abs(a - fd)) / scale)


@dataclass
class Row:
    name: str
    shape: tuple
    max_grad: float
    error_graph: float  # gc.grad on the reference evaluator vs finite differences
    error_compiled: float  # the compiled NumPy module vs finite differences
    checked: int  # entries compared (all, or a random sample of large params)
    tol: float

    @property
    def error(self) -> float:
        return max(self.error_graph, self.error_compiled)

    @property
    def ok(self) -> bool:
        return bool(self.error <= self.tol)  # NaN fails


def check_graph(graph: Graph, loss: str = "loss", dims: dict | None = None, tol: float | None = None,
                opt_level: int = 2, max_entries: int = 100, inputs: bool = False, seed: int = 0) -> list[Row]:
    """One row per param (and float input with ``inputs``): its gradient against finite differences.

    ``dims`` maps dim names to sizes (others are 3); params larger than ``max_entries`` are sampled."""
    if max_entries < 1:
        raise GraphError(f"--max-entries must be at least 1, not {max_entries}")
    wrt = differentiable(graph, inputs)
    if not wrt:
        raise GraphError(f"graph {graph.name!r} has no params to check (pass --inputs to check its float inputs)")
    tol = TOLERANCE[graph_dtype(graph)] if tol is None else tol
    twin = gradient_graph(graph, loss, wrt)
    sizes = bind_dims(twin, dims or {})
    feeds = perturb_constant_params(twin, random_feeds(twin, sizes, seed), seed)
    evaluated = twin.evaluate(feeds)
    compiled = compile_graph(twin, opt_level=opt_level)(feeds)
    rng = np.random.default_rng([seed, 2])
    rows = []
    for name in wrt:
        analytic = np.asarray(evaluated[GRAD_PREFIX + name])
        entries = sample_entries(analytic.size, max_entries, rng)
        fd = fd_sampled(twin, loss, feeds, name, entries)
        rows.append(Row(name, analytic.shape, float(np.max(np.abs(analytic), initial=0.0)),
                        sampled_error(analytic, fd, entries),
                        sampled_error(np.asarray(compiled[GRAD_PREFIX + name]), fd, entries),
                        int(entries.size), tol))
    return rows


def table(rows: list[Row]) -> str:
    """``param | shape | max |grad| | max rel error | ok``, one line per row."""
    head = ("param", "shape", "max |grad|", "max rel error", "ok")
    body = [(r.name, shapes.fmt(r.shape) + ("" if r.checked == int(np.prod(r.shape)) else f" ({r.checked} sampled)"),
             f"{r.max_grad:.3e}", f"{r.error:.2e}", "ok" if r.ok else "FAIL") for r in rows]
    widths = [max(len(line[i]) for line in (head, *body)) for i in range(len(head))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in (head, *body)]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_dims(specs) -> dict[str, int]:
    """``["m=4", "n=2"]`` -> ``{"m": 4, "n": 2}``."""
    out = {}
    for spec in specs or ():
        name, sep, value = spec.partition("=")
        if not sep or not name.isidentifier() or not value.isdigit() or int(value) < 1:
            raise GraphError(f"--dims {spec!r}: expected NAME=SIZE with a positive size, e.g. m=4")
        out[name] = int(value)
    return out
