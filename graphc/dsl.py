"""The DSL layer: the user's handle on a graph (``Tensor``), ``apply`` (add an op, shape-checked by its rule),
and the graph's sources (``input``, ``param``, ``state``, ``const``, ``fill``), and ``assign`` (a state's new value).

Tensor's operators and methods are installed by ``graphc.ops.methods``, in one place.
"""
from __future__ import annotations

import numpy as np
import sympy

from graphc.core import shapes
from graphc.core.dtypes import DTYPES
from graphc.core.errors import GraphError
from graphc.core.initializers import init_array
from graphc.core.ir import Graph, active_graph
from graphc.core.registry import OPS

INITS = ("zeros", "ones", "normal", "uniform", "glorot_uniform", "glorot_normal", "he_normal", "he_uniform")


class Tensor:
    """A node of a graph, as the DSL sees it. Immutable; operations build new nodes."""

    __slots__ = ("graph", "id")
    __array_priority__ = 1000  # NumPy scalars defer to Tensor's reflected operators

    def __init__(self, graph: Graph, nid: int):
        self.graph = graph
        self.id = nid

    @property
    def node(self):
        return self.graph.nodes[self.id]

    @property
    def shape(self) -> tuple:
        return self.node.shape

    @property
    def ndim(self) -> int:
        return len(self.node.shape)

    @property
    def dtype(self) -> str:
        return self.node.dtype

    @property
    def name(self) -> str | None:
        return self.node.name

    def named(self, name: str) -> Tensor:
        """Give this tensor a readable name (used in generated code and diagrams)."""
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
            raise GraphError(f"tensor name {name!r} must be a Python identifier not starting with '_'")
        self.graph.rename(self.id, name)
        return self

    def __bool__(self):
        raise GraphError(f"tensor {self.node.label} has no truth value while the graph is built; "
                         "use gc.where(cond, a, b) for a choice made per element")

    def __iter__(self):
        raise GraphError(f"tensor {self.node.label} cannot be iterated; slice it with t[i]")

    def __repr__(self) -> str:
        return f"Tensor({self.node.label}, {self.dtype}, op={self.node.op})"


def apply(op: str, inputs, graph: Graph | None = None, name: str | None = None, **attrs) -> Tensor:
    """Add ``op(inputs; attrs)`` to the inputs' graph, shape-checked by the op's rule."""
    stray = [type(t).__name__ for t in inputs if not isinstance(t, Tensor)]
    if stray:
        raise GraphError(f"{op}: operands must be tensors of the graph, not {', '.join(stray)} (gc.const holds a "
                         "fixed array)")
    graph = graph or same_graph(op, inputs)
    nodes = [graph.nodes[t.id] for t in inputs]
    shape, dtype = OPS[op].infer(nodes, attrs)
    return Tensor(graph, graph.add(op, [t.id for t in inputs], attrs, shape, dtype, name))


def same_graph(op: str, tensors) -> Graph:
    graphs = {id(t.graph): t.graph for t in tensors if isinstance(t, Tensor)}
    if len(graphs) > 1:
        names = ", ".join(f"{t.node.label} of graph {t.graph.name!r}" for t in tensors)
        raise GraphError(f"{op}: tensors from different graphs cannot be combined: {names}")
    if not graphs:
        raise GraphError(f"{op}: needs at least one tensor operand")
    return next(iter(graphs.values()))


def _declare(kind: str, name: str, shape, dtype: str, **attrs) -> Tensor:
    g = active_graph(f"gc.{kind}")
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
        raise GraphError(f"{kind} name {name!r} must be a Python identifier not starting with '_'")
    if name in g.fed():
        raise GraphError(f"{kind} {name!r} is declared twice in graph {g.name!r}")
    if dtype not in DTYPES:
        raise GraphError(f"{kind} {name!r}: unsupported dtype {dtype!r} (float32, float64, int64 or bool)")
    dims = shapes.as_shape(shape, f"{kind} {name!r} shape")
    t = Tensor(g, g.add(kind, (), {"name": name, **attrs}, dims, dtype, name))
    {"input": g.inputs, "param": g.params, "state": g.state}[kind][name] = t.id
    return t


def _kept(kind: str, name: str, shape, init) -> tuple:
    """The concrete shape and init spec of a param or state tensor (arrays that live between calls)."""
    spec = init if isinstance(init, tuple) else (init,)
    if not spec or spec[0] not in INITS or not all(isinstance(a, (int, float)) for a in spec[1:]):
        raise GraphError(f"{kind} {name!r}: unknown init {init!r}; use one of {', '.join(INITS)}, "
                         "or ('normal', std) / ('uniform', low, high)")
    dims = shapes.as_shape(shape, f"{kind} {name!r} shape")
    if any(not d.is_number for d in dims):
        raise GraphError(f"{kind} {name!r}: shape {shapes.fmt(dims)} must be concrete (no symbolic dims)")
    return dims, tuple(float(a) if i else a for i, a in enumerate(spec))


def input(name: str, shape, dtype: str = "float32") -> Tensor:  # noqa: A001 - the DSL's word
    """A fed input, e.g. ``gc.input("x", (m, 784))``; dims may be symbolic."""
    return _declare("input", name, shape, dtype)


def param(name: str, shape, dtype: str = "float32", init="zeros") -> Tensor:
    """A trainable parameter with a concrete shape and an initializer.

    ``init`` is a name (``zeros ones normal uniform glorot_uniform glorot_normal he_normal he_uniform``)
    or a tuple with arguments: ``("normal", std)``, ``("uniform", low, high)``.
    """
    dims, spec = _kept("param", name, shape, init)
    return _declare("param", name, dims, dtype, init=spec)


STEP_COUNTER = "step"  # the state entry counting training steps, where a schedule or an optimizer needs it


def state(name: str, shape, dtype: str = "float32", init="zeros") -> Tensor:
    """A tensor kept between training steps but not trained (running statistics, optimizer moments).

    It is given like a param, in the ``state`` dict of the generated ``train_step(params, batch, state)`` (made by
    its ``init_state(params)``), and read by ``run`` too; ``gc.assign(s, value)`` gives it its value after each
    training step. Concrete shape; ``init`` as for ``gc.param`` (usually "zeros" or "ones").
    """
    if name == STEP_COUNTER:
        raise GraphError(f"state name {name!r} is the training step counter's; choose another")
    dims, spec = _kept("state", name, shape, init)
    return _declare("state", name, dims, dtype, init=spec)


def assign(target: Tensor, value: Tensor) -> None:
    """The training step writes ``value`` into the state tensor ``target`` (in place, once every statement has read
    the old value); ``run`` leaves it as it is. ``value`` has the state's shape and dtype."""
    g = target.graph
    if target.node.op != "state" or target.id != g.state.get(target.name):
        raise GraphError(f"gc.assign: {target.node.label} is not a state tensor (declare it with gc.state)")
    if not isinstance(value, Tensor) or value.graph is not g:
        raise GraphError(f"gc.assign: the value of state {target.name!r} must be a tensor of graph {g.name!r}")
    if tuple(value.shape) != tuple(target.shape) or value.dtype != target.dtype:
        raise GraphError(f"gc.assign: state {target.name!r} {shapes.fmt(target.shape)} {target.dtype} cannot take "
                         f"{value.node.label} {value.dtype}")
    if target.name in g.updates:
        raise GraphError(f"gc.assign: state {target.name!r} is assigned twice")
    g.updates[target.name] = value.id


def const(value, dtype: str | None = None, name: str | None = None) -> Tensor:
    """A constant array baked into the graph (and into generated code)."""
    g = active_graph("gc.const")
    try:
        arr = np.asarray(value)
    except ValueError as exc:  # ragged nesting
        raise GraphError(f"gc.const: {value!r} is not an array ({exc})") from None
    if dtype is not None and dtype not in DTYPES:
        raise GraphError(f"gc.const: unsupported dtype {dtype!r} (float32, float64, int64 or bool)")
    dtype = dtype or ("float32" if arr.dtype.kind == "f" else "int64" if arr.dtype.kind in "iu" else
                      "bool" if arr.dtype.kind == "b" else None)
    if dtype is None:
        raise GraphError(f"gc.const: cannot hold an array of dtype {arr.dtype}")
    arr = np.array(arr, dtype=dtype, order="C")  # not ascontiguousarray: it makes a 0-d array 1-d
    attrs = {"value": (arr.tobytes(), arr.shape, dtype)}
    return Tensor(g, g.add("const", (), attrs, shapes.as_shape(arr.shape), dtype, name))


def fill(graph: Graph, value, shape, dtype: str) -> Tensor:
    """An array of one (possibly symbolic, e.g. ``1/m``) value: seeds, zeros of unused gradients."""
    return Tensor(graph, graph.add("fill", (), {"value": sympy.sympify(value)}, tuple(shape), dtype))


def init_params(graph: Graph, seed: int = 0) -> dict:
    """Fresh parameter arrays, name -> ndarray, from each param's declared init (deterministic)."""
    return _initial(graph, graph.params, seed)


def init_state(graph: Graph) -> dict:
    """Fresh state arrays, name -> ndarray, from each state tensor's declared init (as generated modules make them)."""
    return _initial(graph, graph.state, 0)


def _initial(graph: Graph, table: dict, seed: int) -> dict:
    out = {}
    for index, (name, nid) in enumerate(table.items()):
        node = graph.nodes[nid]
        out[name] = init_array(node.attr("init"), tuple(int(d) for d in node.shape), node.dtype, seed, index)
    return out
