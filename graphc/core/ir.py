"""The IR: immutable ``Node`` records held in a ``Graph`` that mirrors them in a networkx MultiDiGraph.

Invariant: a node's inputs always have smaller ids, so ascending id order is a topological order
(deterministic, and cheap for 1000-layer graphs). Nodes are hash-consed on ``(op, inputs, attrs, shape, dtype)``:
an identical subexpression is one node, so CSE is mostly free.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace

import networkx as nx
import sympy

from graphc.core import shapes
from graphc.core.errors import GraphError
from graphc.core.evaluate import evaluate
from graphc.core.naming import node_names
from graphc.core.registry import OPS

PHASES = ("forward", "backward", "update")
STEP = sympy.Symbol("step", integer=True, nonnegative=True)  # the training steps taken before this one
_ACTIVE: list[Graph] = []


@dataclass(frozen=True)
class Node:
    id: int
    op: str
    inputs: tuple[int, ...]
    attrs: tuple  # sorted (key, value) pairs, hashable
    shape: tuple
    dtype: str
    phase: str = "forward"
    name: str | None = None

    def attr(self, key, default=None):
        return dict(self.attrs).get(key, default)

    @property
    def label(self) -> str:
        """A short description for messages: ``'h' (m, 128)``."""
        who = repr(self.name) if self.name else f"{self.op}#{self.id}"
        return f"{who} {shapes.fmt(self.shape)}"


@dataclass
class GradRequest:
    """One ``gc.grad`` call: re-derived by the ``differentiate`` pass after forward rewrites."""
    loss: int
    wrt: tuple[int, ...]
    seed: int | None
    results: tuple[int, ...]
    nodes: frozenset = field(default_factory=frozenset)  # the backward nodes it built


def freeze_attrs(attrs: dict) -> tuple:
    return tuple(sorted(attrs.items()))


class Graph:
    """A static computation graph; also the ``with gc.Graph("name") as g:`` context of the DSL."""

    def __init__(self, name: str = "graph"):
        if not isinstance(name, str) or not name.isidentifier():
            raise GraphError(f"graph name {name!r} must be a Python identifier")
        self.name = name
        self.nx = nx.MultiDiGraph()
        self.nodes: dict[int, Node] = {}
        self.inputs: dict[str, int] = {}
        self.params: dict[str, int] = {}
        self.outputs: dict[str, int] = {}
        self.grads: list[GradRequest] = []
        self.state: dict[str, int] = {}  # tensors kept between training steps, not trained (moments, statistics)
        self.updates: dict[str, int] = {}  # param or state name -> node computing its new value (training step)
        # Scalars of the training step, computed on the host once per step. ``hypers`` are its arguments (the
        # learning rate): name -> default, a number or an expression of ``STEP`` (a schedule); ``scalars`` follow
        # from them and ``STEP`` (Adam's bias corrections): name -> expression. Both are positive symbols in nodes.
        self.hypers: dict[str, object] = {}
        self.scalars: dict[str, sympy.Expr] = {}
        self.update_rule = ""  # what the updates do, in words ("SGD(lr=0.1)"), for the generated file's docstrings
        self.phase = "forward"
        self._by_key: dict[tuple, int] = {}
        self._next_id = 0
        self._dims_checked = -1
        self.absorbed: dict[int, tuple[str, ...]] = {}  # node id -> user names of nodes a pass fused into it
        self._renames = 0
        self._names: tuple = ((), {})  # (what the graph looked like, node_names of it)

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> Graph:
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.remove(self)

    @contextlib.contextmanager
    def in_phase(self, phase: str):
        before, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = before

    # -- building --------------------------------------------------------------------------
    def add(self, op: str, inputs, attrs: dict, shape, dtype: str, name: str | None = None) -> int:
        """The id of the node ``op(inputs; attrs)``: an existing identical node, or a new one."""
        inputs = tuple(inputs)
        frozen = freeze_attrs(attrs)
        key = (op, inputs, frozen, tuple(shape), dtype)  # shape: a fill's only difference may be its shape
        if key in self._by_key:
            nid = self._by_key[key]
            if name and not self.nodes[nid].name:
                self.rename(nid, name)
            return nid
        nid = self._next_id
        self._next_id += 1
        node = Node(nid, op, inputs, frozen, tuple(shape), dtype, self.phase, name)
        self.nodes[nid] = node
        self._by_key[key] = nid
        self.nx.add_node(nid)
        for pos, src in enumerate(inputs):
            self.nx.add_edge(src, nid, key=pos)
        return nid

    def remove(self, ids) -> None:
        """Drop nodes nothing refers to (the caller guarantees it), e.g. unused VJP branches."""
        for nid in ids:
            node = self.nodes.pop(nid)
            del self._by_key[(node.op, node.inputs, node.attrs, node.shape, node.dtype)]
            self.nx.remove_node(nid)

    def rename(self, nid: int, name: str) -> None:
        self.nodes[nid] = replace(self.nodes[nid], name=name)
        self._renames += 1

    def output(self, **named) -> None:
        """Declare the graph's named outputs: ``g.output(loss=loss, dW1=dW1)`` (tensors of this graph)."""
        for name, t in named.items():
            if getattr(t, "graph", None) is not self or not isinstance(getattr(t, "id", None), int):
                raise GraphError(f"output {name!r} is not a tensor of graph {self.name!r}")
            if name in self.fed():
                raise GraphError(f"output {name!r} has the name of an input, param or state of graph {self.name!r}")
            self.outputs[name] = t.id
            if not OPS[self.nodes[t.id].op].fed:
                self.rename(t.id, name)

    def mark(self) -> int:
        """A mark to find the nodes added after it (``added_since``)."""
        return self._next_id

    def added_since(self, mark: int) -> set[int]:
        """Ids of the nodes added since ``mark`` that are still in the graph."""
        return {i for i in range(mark, self._next_id) if i in self.nodes}

    # -- queries ---------------------------------------------------------------------------
    def fed(self) -> dict[str, int]:
        """What the caller gives, by name: inputs, params and state."""
        return {**self.inputs, **self.params, **self.state}

    def counts_steps(self) -> bool:
        """Whether a scalar of the training step depends on the step counter (a schedule, a bias correction)."""
        exprs = [*self.scalars.values(), *self.hypers.values()]
        return any(STEP in sympy.sympify(e).free_symbols for e in exprs)

    def order(self, ids=None) -> list[int]:
        """Topological order (ascending ids) of ``ids``, or of every node."""
        return sorted(self.nodes if ids is None else ids)

    def roots(self) -> list[int]:
        """What the graph exists to compute: its outputs and the updates of its params and state."""
        return [*self.outputs.values(), *self.updates.values()]

    def needed(self, roots) -> set[int]:
        """``roots`` and all their ancestors."""
        seen, stack = set(), list(roots)
        while stack:
            nid = stack.pop()
            if nid not in seen:
                seen.add(nid)
                stack.extend(self.nodes[nid].inputs)
        return seen

    def consumers(self, nid: int) -> list[int]:
        return sorted(set(self.nx.successors(nid)))

    def single_use(self, nid: int) -> bool:
        """Read by exactly one node and not a root: a rewrite may fold it into its reader."""
        return len(self.consumers(nid)) == 1 and nid not in self.roots()

    def names(self) -> dict[int, str]:
        """Every node's name, as code, diagrams and ``graphc explain`` call it (``graphc.core.naming``)."""
        state = (self._next_id, len(self.nodes), self._renames, tuple(self.updates.items()), len(self.inputs),
                 len(self.params))
        if self._names[0] != state:
            self._names = (state, node_names(self))
        return self._names[1]

    def display_name(self, nid: int) -> str:
        return self.names()[nid]

    def dims(self) -> list:
        """Symbolic dims of the inputs, in order of first appearance."""
        seen = []
        for nid in self.inputs.values():
            for d in self.nodes[nid].shape:
                for s in sorted(d.free_symbols, key=str):
                    if s not in seen:
                        seen.append(s)
        return seen

    def check_dims(self) -> None:
        """Every symbolic dim in a shape is bound by the inputs (the size of one of their axes), and no two
        different dims share a name; raises GraphError naming the op and the tensor otherwise."""
        if self._dims_checked == self._next_id:  # nothing added since the last check
            return
        bound = set(self.dims())
        by_name: dict[str, object] = {}
        for nid in self.order():
            node = self.nodes[nid]
            for s in sorted(set().union(*(sympy.sympify(d).free_symbols for d in node.shape)), key=str):
                if by_name.setdefault(s.name, s) != s:
                    raise GraphError(f"graph {self.name!r}: two different dims are named {s.name!r} "
                                     f"({node.op} {node.label}); make each with gc.dim once and reuse it")
                if s not in bound:
                    raise GraphError(f"{node.op} {node.label}: dim {s} is not the size of any input's axis, so "
                                     f"no feed can bind it; declare an input with it, e.g. gc.input(..., ({s}, …))")
        self._dims_checked = self._next_id

    def validate(self) -> None:
        """Check the structural invariants; raises GraphError naming what is broken."""
        for nid, node in self.nodes.items():
            for src in node.inputs:
                if src not in self.nodes or src >= nid:
                    raise GraphError(f"node {node.label} ({node.op}) has a bad input id {src}")
            if node.phase not in PHASES:
                raise GraphError(f"node {node.label} has unknown phase {node.phase!r}")
        tables = (("input", self.inputs), ("param", self.params), ("state", self.state), ("output", self.outputs),
                  ("update", self.updates))
        for what, table in tables:
            for name, nid in table.items():
                if nid not in self.nodes:
                    raise GraphError(f"{what} {name!r} points at a missing node")
        if self.nx.number_of_nodes() != len(self.nodes):
            raise GraphError("the networkx mirror is out of step with the nodes")

    def evaluate(self, feeds: dict, outputs=None, call: int = 0) -> dict:
        """Reference NumPy interpretation of the graph: the oracle for every backend. Random sources draw what a
        generated NumPy module draws at its call number ``call`` (0: a fresh module's first call)."""
        return evaluate(self, feeds, outputs, call)

    def __repr__(self) -> str:
        return f"<graphc.Graph {self.name!r}: {len(self.nodes)} nodes, outputs {list(self.outputs)}>"


def active_graph(what: str) -> Graph:
    if not _ACTIVE:
        raise GraphError(f"{what} must be called inside `with gc.Graph(name) as g:`")
    return _ACTIVE[-1]


class Rebuild:
    """Copy a graph node by node into a fresh one (ascending id order), letting a pass rewrite nodes.

    ``rule(rb, node) -> new id | None``, or a dict of such rules by op name; None copies the node.
    ``rb.arg(old_id)`` maps an input, ``rb.add(...)`` adds to the new graph. Hash-consing in the new graph
    merges duplicates (CSE). The new graph is of the old one's class.
    """

    def __init__(self, old: Graph):
        self.old = old
        self.new = type(old)(old.name)
        self.map: dict[int, int] = {}

    def arg(self, old_id: int) -> int:
        return self.map[old_id]

    def absorb(self, new_id: int, old_id: int) -> None:
        """The node ``new_id`` took in the old node ``old_id`` (a fusion): the user names of ``old_id`` and of
        what it had absorbed are kept on ``new_id``, for diagrams and ``graphc explain``."""
        node, image = self.old.nodes[old_id], self.map.get(old_id)
        earlier = self.new.absorbed.get(image, ()) if image != new_id else ()  # what its copy took in already
        self._absorb(new_id, ((node.name,) if node.name else ()) + self.old.absorbed.get(old_id, ()) + earlier)

    def _absorb(self, new_id: int, names) -> None:
        own = self.new.nodes[new_id].name
        kept = self.new.absorbed.get(new_id, ())
        kept += tuple(n for n in dict.fromkeys(names) if n != own and n not in kept)
        if kept:
            self.new.absorbed[new_id] = kept

    def node(self, new_id: int) -> Node:
        return self.new.nodes[new_id]

    def add(self, like: Node, op: str, inputs, attrs: dict, shape=None, dtype=None) -> int:
        """Add a node to the new graph in the phase of ``like`` (the node being rewritten)."""
        with self.new.in_phase(like.phase):
            return self.new.add(op, inputs, attrs, like.shape if shape is None else shape,
                                like.dtype if dtype is None else dtype)

    def copy(self, node: Node) -> int:
        with self.new.in_phase(node.phase):
            return self.new.add(node.op, [self.map[i] for i in node.inputs], dict(node.attrs),
                                node.shape, node.dtype, node.name)

    def run(self, rule=None, keep=None) -> Graph:
        old = self.old
        ids = old.order(keep) if keep is not None else old.order()
        if isinstance(rule, dict):
            rules = rule
            rule = lambda rb, node: rules[node.op](rb, node) if node.op in rules else None  # noqa: E731
        for nid in ids:
            node = old.nodes[nid]
            new_id = rule(self, node) if rule else None
            self.map[nid] = self.copy(node) if new_id is None else new_id
            if node.name and not self.new.nodes[self.map[nid]].name:
                self.new.rename(self.map[nid], node.name)
        return self.finish()

    def finish(self) -> Graph:
        old, new, m = self.old, self.new, self.map
        new.inputs = {k: m[v] for k, v in old.inputs.items() if v in m}
        new.params = {k: m[v] for k, v in old.params.items() if v in m}
        new.state = {k: m[v] for k, v in old.state.items() if v in m}
        new.outputs = {k: m[v] for k, v in old.outputs.items() if v in m}  # a run with keep= drops the others
        new.updates = {k: m[v] for k, v in old.updates.items() if v in m}
        new.hypers, new.scalars, new.update_rule = dict(old.hypers), dict(old.scalars), old.update_rule
        for name, nid in new.outputs.items():
            if not OPS[new.nodes[nid].op].fed:
                new.rename(nid, name)
        new.grads = [GradRequest(m[r.loss], tuple(m[w] for w in r.wrt),
                                 None if r.seed is None else m[r.seed],
                                 tuple(m[x] for x in r.results),
                                 frozenset(m[x] for x in r.nodes if x in m))
                     for r in old.grads
                     if all(x in m for x in (r.loss, *r.wrt, *r.results)) and (r.seed is None or r.seed in m)]
        for nid, new_id in m.items():  # a node rewritten into another keeps its user names on it
            if new_id in new.nodes:
                self.absorb(new_id, nid)
        return new
