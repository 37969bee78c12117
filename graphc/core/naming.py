"""The one naming of a graph's nodes, shared by generated code, diagrams, ``graphc explain`` and the explorer.

A node's name is the user's name if it has one, else a stem derived from what it computes (the op's ``var``
rule: ``xW1`` for ``x @ W1``, ``xT`` for ``xᵀ``, ``sqrt``, ``div``, ``relu_grad``, ``sum_m``), made unique in
the graph with a ``_2``, ``_3`` suffix in id order. Every name is a Python identifier that is no keyword, builtin
or name a generated module uses for itself, so a variable of the generated file has exactly the name a diagram
shows.
"""
from __future__ import annotations

import builtins
import keyword
import re

from graphc.core.registry import OPS

RESERVED = {"np", "cp", "os", "math", "B", "i", "feeds", "params", "batch", "state", "step", "run", "train_step",
            "init_params", "init_state", "save", "load", "out", "lr", "dims", "call", "predict", "itertools",
            "threading",
            "value", "name", "names", "shape", "dtype", "expected", "extra", "missing", *dir(builtins)}


class Names:
    """Readable, unique Python names: ``fresh(wanted)`` returns ``wanted``, or ``wanted_2``, … where it is taken."""

    def __init__(self, taken=()):
        self.used = set(RESERVED) | set(taken)
        self.suffix: dict[str, int] = {}  # base -> the suffix last given: every smaller one is taken

    def fresh(self, wanted: str) -> str:
        base = re.sub(r"\W", "_", wanted) or "v"
        if base[0].isdigit():
            base = "v" + base
        k = self.suffix.get(base, 1)
        name = base if k == 1 else f"{base}_{k}"
        while name in self.used or keyword.iskeyword(name):
            k += 1
            name = f"{base}_{k}"
        self.suffix[base] = k
        self.used.add(name)
        return name


def dim_names(dims) -> dict:
    """The variable of each symbolic dim in generated functions (``m``), named before any node."""
    names = Names()
    return {d: names.fresh(d.name) for d in dims}


def stem(graph, node, names: dict, updated: dict) -> str:
    """What an unnamed node is called, from what it computes; ``names`` holds its inputs' names, ``updated`` maps
    the new value of a param to the param's name."""
    if node.id in updated:
        return f"new_{updated[node.id]}"
    var = OPS[node.op].var
    if callable(var):
        return var(node, [graph.nodes[i] for i in node.inputs], names)
    return var or node.op


def node_names(graph, taken=()) -> dict[int, str]:
    """Every node's name (node id -> identifier): inputs and params first, then the rest in id order; none is one
    of ``taken`` (the names of dims that a function reads beside those of the graph's inputs)."""
    names = Names([*dim_names(graph.dims()).values(), *getattr(graph, "hypers", ()), *getattr(graph, "scalars", ()),
                   *taken])
    out: dict[int, str] = {}
    for name, nid in graph.fed().items():
        out[nid] = names.fresh(name)
    updated = {nid: param for param, nid in getattr(graph, "updates", {}).items()}
    for nid in graph.order():
        if nid not in out:
            node = graph.nodes[nid]
            out[nid] = names.fresh(node.name or stem(graph, node, out, updated))
    return out


def slug(word: str) -> str:
    """A word as a name: ``relu′`` -> ``relu_grad``."""
    return word.replace("′", "_grad").replace("ᵀ", "T")


# -- rules for an op's ``var`` slot: ``rule(node, input nodes, names) -> stem`` --------------------------------
def after_input(suffix: str):
    """Named after its input: ``xT`` (a transpose of x), ``h2_bc``."""
    return lambda node, ins, names: f"{names[node.inputs[0]]}{suffix}"


def over(prefix: str, shape_of=lambda node, ins: ins[0].shape):
    """A reduction named after the dims it reduces: ``sum_m``, ``max_10``, ``sum_mxn``; ``sum_all`` of every axis."""
    def rule(node, ins, names):
        shape, axes = shape_of(node, ins), node.attr("axes")
        if len(axes) == len(shape) > 1:
            return f"{prefix}_all"
        return f"{prefix}_" + "x".join(re.sub(r"\W", "", str(shape[a])) for a in axes)
    return rule
