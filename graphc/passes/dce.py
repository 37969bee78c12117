"""Dead-code elimination."""
from graphc.core.ir import Rebuild


def dce(graph, notes):
    """node no output needs -> gone

    Keeps only the ancestors of the outputs and updates (inputs, params and state always stay declared).
    """
    keep = graph.needed(graph.roots()) | set(graph.fed().values())
    dead = sorted(set(graph.nodes) - keep)
    for nid in dead:
        notes.note(f"removed {graph.display_name(nid)} ({graph.nodes[nid].op})")
    return Rebuild(graph).run(keep=keep) if dead else graph
