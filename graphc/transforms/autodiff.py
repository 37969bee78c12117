"""Reverse mode: walk the graph backwards from a scalar, ask each op for its VJP, add backward nodes.

Fan-out gradients are summed; broadcasting is undone here, in one place, for every op.
"""
from __future__ import annotations

from graphc.core import shapes
from graphc.core.dtypes import is_float
from graphc.core.errors import GraphError
from graphc.core.ir import GradRequest, Graph
from graphc.core.registry import OPS
from graphc.dsl import Tensor, fill
from graphc.ops.elementwise import add_all
from graphc.ops.reduce import reduce_sum
from graphc.ops.shape import reshape


def unbroadcast(g: Tensor, shape) -> Tensor:
    """Sum ``g`` over the axes that broadcasting added or stretched, back to ``shape``."""
    if tuple(g.shape) == tuple(shape):
        return g
    axes, _ = shapes.unbroadcast_axes(g.shape, shape)
    return reshape(reduce_sum(g, axes, keepdims=False), shape)


def backprop(graph: Graph, loss: int, wrt: list[int], seed: Tensor) -> list[Tensor]:
    """Gradients of ``loss`` (seeded with ``seed``) w.r.t. each id in ``wrt``, built into ``graph``."""
    reach = set(wrt)  # descendants of any wrt: one sweep in id order (topological), not one search per wrt
    for nid in sorted(i for i in graph.nodes if i > min(wrt, default=0)):
        if any(i in reach for i in graph.nodes[nid].inputs):
            reach.add(nid)
    relevant = reach & graph.needed([loss])
    pending: dict[int, list[Tensor]] = {loss: [seed]}
    grads: dict[int, Tensor] = {}
    for nid in sorted(relevant, reverse=True):  # ascending ids are topological
        parts = pending.pop(nid, None)
        if not parts:
            continue
        g = grads[nid] = add_all(parts)
        node = graph.nodes[nid]
        if node.name and not g.name and g.node.phase == "backward":
            g.named(f"d{node.name}")  # dh, dlogits: readable names in code and diagrams
        rule = OPS[node.op].vjp
        if rule is None or not is_float(node.dtype):
            continue
        ins = [Tensor(graph, i) for i in node.inputs]
        for src, gi in zip(node.inputs, rule(Tensor(graph, nid), g, *ins, **dict(node.attrs))):
            if gi is not None and src in relevant:
                pending.setdefault(src, []).append(unbroadcast(gi, graph.nodes[src].shape))
    out = []
    for w in wrt:
        node = graph.nodes[w]
        out.append(grads[w] if w in grads else fill(graph, 0, node.shape, node.dtype))
    return out


def check_scalar(y: Tensor, who: str) -> None:
    """Refuse a loss that is not a scalar, saying why a gradient needs one and what to do instead."""
    if y.shape:
        name = repr(y.name) if y.name else f"{y.node.op}#{y.id}"
        raise GraphError(
            f"{who}: output {name} has shape {shapes.fmt(y.shape)}, not a scalar. A gradient needs a scalar "
            f"loss: its derivative w.r.t. each parameter is then an array of the parameter's shape. "
            f"Reduce it first, e.g. gc.mean({y.name or 'losses'}) or gc.sum(...) (a mean over the batch puts "
            f"1/m into the backward pass)" + (f", or pass seed= (a tensor of shape {shapes.fmt(y.shape)}) to get "
                                              "the vector-Jacobian product seedᵀ·J." if who == "grad" else "."))


def grad(y: Tensor, wrt, seed: Tensor | None = None):
    """Gradient of the scalar ``y`` w.r.t. ``wrt`` (a tensor or a list), as new graph tensors.

    With ``seed=`` (a tensor of ``y``'s shape) it returns the vector-Jacobian product ``seedᵀ·∂y/∂wrt``.
    """
    single = isinstance(wrt, Tensor)
    targets = [wrt] if single else list(wrt)
    graph = y.graph
    for w in targets:
        if not isinstance(w, Tensor):
            raise GraphError(f"grad: wrt must be tensors, got {type(w).__name__}")
        if w.graph is not graph:
            raise GraphError(f"grad: {w.node.label} belongs to graph {w.graph.name!r}, "
                             f"not to {graph.name!r} of {y.node.label}")
        if not is_float(w.dtype):
            raise GraphError(f"grad: cannot differentiate w.r.t. {w.node.label} of dtype {w.dtype}")
    if not is_float(y.dtype):
        raise GraphError(f"grad: {y.node.label} has dtype {y.dtype}; only float outputs have gradients")
    if seed is None:
        check_scalar(y, "grad")
        seed_t = None
    else:
        if not isinstance(seed, Tensor) or seed.graph is not graph:
            raise GraphError(f"grad: seed must be a tensor of graph {graph.name!r}")
        if not shapes.same(seed.shape, y.shape):
            raise GraphError(f"grad: seed {seed.node.label} must have the shape of {y.node.label}")
        seed_t = seed
    first = graph.mark()
    with graph.in_phase("backward"):
        start = fill(graph, 1, (), y.dtype) if seed_t is None else seed_t
        results = backprop(graph, y.id, [w.id for w in targets], start)
    for w, r in zip(targets, results):
        if w.name and not r.name and not OPS[r.node.op].fed:
            r.named(f"d{w.name}")
    made = graph.added_since(first)
    used = graph.needed(r.id for r in results) | set(graph.outputs.values())
    graph.remove(sorted(made - used, reverse=True))  # VJP branches towards inputs nobody asked about
    built = frozenset(made & used)
    graph.grads.append(GradRequest(y.id, tuple(w.id for w in targets), None if seed_t is None else seed_t.id,
                                   tuple(r.id for r in results), built))
    return results[0] if single else results
