"""Common-subexpression elimination."""
from graphc.core.ir import Rebuild


def cse(graph, notes):
    """identical (op, inputs, attrs) twice -> one node

    Hash-consing merges structurally identical nodes as the graph is rebuilt; elementwise nodes whose
    inputs differ only in order of a symmetric expression are put in one canonical order first.
    """
    before = len(graph.nodes)
    new = Rebuild(graph).run()
    if len(new.nodes) < before:
        notes.note(f"merged {before - len(new.nodes)} duplicate nodes")
    return new
