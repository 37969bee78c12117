"""The reference evaluator: a plain NumPy interpretation of a graph, unoptimized — the oracle."""
from __future__ import annotations

import numpy as np
import sympy

from graphc.core import shapes
from graphc.core.errors import GraphError
from graphc.core.interpret import Interpreter
from graphc.core.registry import OPS

CALL = sympy.Symbol("_call")  # the call number random sources draw for, in the evaluator's env


def check_feeds(graph, feeds: dict, needed: set) -> tuple[dict, dict]:
    """Validate ``feeds`` against the declared inputs, params and state; returns (dim bindings, id -> array)."""
    if not isinstance(feeds, dict):
        raise GraphError(f"feeds must be a dict of name -> array, not {type(feeds).__name__}")
    declared = graph.fed()
    extra = sorted(set(feeds) - set(declared))
    if extra:
        raise GraphError(f"feeds {extra} are not inputs, params or state of graph {graph.name!r} "
                         f"(it declares {sorted(declared)})")
    missing = [name for name, nid in declared.items() if nid in needed and name not in feeds]
    if missing:
        raise GraphError(f"graph {graph.name!r} needs feeds for {missing}: " + ", ".join(
            f"{graph.nodes[declared[n]].op} {n!r} {shapes.fmt(graph.nodes[declared[n]].shape)}" for n in missing))
    env, values = {}, {}
    for name, nid in declared.items():
        if name not in feeds:
            continue
        node = graph.nodes[nid]
        arr = np.asarray(feeds[name])
        if arr.dtype != np.dtype(node.dtype):  # as strict as the generated modules: no silent conversion
            raise GraphError(f"{node.op} {name!r} expects {node.dtype}, got {arr.dtype}")
        if not shapes.bind(node.shape, arr.shape, env):
            bound = ", ".join(f"{k}={v}" for k, v in env.items())
            raise GraphError(f"{node.op} {name!r} expects shape {shapes.fmt(node.shape)}, got {arr.shape}"
                             + (f" (with {bound})" if bound else ""))
        values[nid] = arr
    empty = [str(d) for d, n in env.items() if n == 0]
    if empty:
        raise GraphError(f"graph {graph.name!r}: empty feeds ({', '.join(empty)} = 0); each dim needs a size of at "
                         "least 1")
    return env, values


def evaluate(graph, feeds: dict, outputs=None, call: int = 0) -> dict:
    names = list(graph.outputs) if outputs is None else list(outputs)
    if not names:
        raise GraphError(f"graph {graph.name!r} has no outputs: declare them with g.output(name=tensor)")
    unknown = [n for n in names if n not in graph.outputs]
    if unknown:
        raise GraphError(f"graph {graph.name!r} has no outputs {unknown} (it has {list(graph.outputs)})")
    needed = graph.needed(graph.outputs[n] for n in names)
    graph.check_dims()
    env, values = check_feeds(graph, feeds, needed)
    env.update({sympy.Symbol(name, positive=True): value for name, value in graph.hypers.items()
                if isinstance(value, (int, float))})  # a schedule's value needs a step: outputs never read it
    env[CALL] = call
    values = Evaluator(graph, env).run([graph.outputs[n] for n in names], values)
    return {n: values[graph.outputs[n]] for n in names}


class Evaluator(Interpreter):
    """Each node's value by its op's reference implementation, with the dims bound in ``env``."""

    def __init__(self, graph, env: dict):
        super().__init__(graph)
        self.env = env

    def value(self, node, inputs):
        op = OPS[node.op]
        for condition in op.requires(node, [self.graph.nodes[i] for i in node.inputs]) if op.requires else ():
            if not bool(condition.subs(self.env)):
                bound = ", ".join(f"{d} = {self.env[d]}" for d in sorted(condition.free_symbols, key=str))
                raise GraphError(f"{node.op} {node.label}: needs {condition}, but the feeds give {bound}")
        ins = [self.graph.nodes[i] for i in node.inputs]
        for slot, classes in op.class_ids(node, ins) if op.class_ids else ():
            check_classes(node, ins[slot], inputs[slot], int(sympy.sympify(classes).subs(self.env)))
        return op.impl(node, self.env, *inputs)


def check_classes(node, labels_node, labels, classes: int) -> None:
    """The evaluator's twin of the generated modules' check: class ids index existing classes."""
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        bad = int(labels.min()) if labels.min() < 0 else int(labels.max())
        who = labels_node.name or labels_node.label
        raise GraphError(f"{node.op}: {who} holds the id {bad}, outside 0..{classes - 1}")
