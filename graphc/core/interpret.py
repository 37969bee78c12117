"""The one forward walker over a graph: the reference evaluator and the per-example batch-axis analysis are both
interpreters, differing only in what they compute for a node from its inputs' values."""
from __future__ import annotations


class Interpreter:
    """Computes a value per node, in topological order, for the ancestors of some roots.

    A subclass defines ``value(node, inputs)``; values known beforehand (fed arrays) are passed to ``run``.
    """

    def __init__(self, graph):
        self.graph = graph

    def value(self, node, inputs: list):
        raise NotImplementedError

    def run(self, roots, known: dict | None = None) -> dict:
        values = dict(known or {})
        for nid in self.graph.order(self.graph.needed(roots)):
            if nid not in values:
                node = self.graph.nodes[nid]
                values[nid] = self.value(node, [values[i] for i in node.inputs])
        return values
