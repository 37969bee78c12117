"""Inference mode: what ``predict`` computes. The outputs that need no labels, and only their ancestors (no
gradients), with every random source that has an inference value (a dropout mask: 1) fixed to it, and every
node with an inference input (batch statistics) replaced by it (the running statistics)."""
from __future__ import annotations

import sympy

from graphc.core.errors import GraphError
from graphc.core.ir import Rebuild
from graphc.core.registry import OPS


def _inputs_of(graph, nid: int) -> set[str]:
    needed = graph.needed([nid])
    return {name for name, i in graph.inputs.items() if i in needed}


def _bound(graph, nid: int) -> bool:
    """Whether the inputs ``nid`` reads bind every dim it computes with (``(m, 4)`` from a weight fed only with
    the labels does not)."""
    needed = graph.needed([nid])
    dims = {s for i in graph.inputs.values() if i in needed for d in graph.nodes[i].shape for s in d.free_symbols}
    return all(s in dims for i in needed for d in graph.nodes[i].shape for s in sympy.sympify(d).free_symbols)


def prediction_outputs(graph, loss: str | None = None) -> list[str]:
    """The forward outputs (not gradients) that the loss's labels do not reach, and whose dims their inputs bind.

    The labels are the inputs of the loss that the forward outputs reading fewer inputs than the loss do not
    read: with outputs ``loss`` (x, t) and ``logits`` (x), ``t``. Without a loss output, or where no output
    reads fewer inputs than it (an autoencoder), there are none, and every forward output is a prediction.
    """
    forward = [name for name, nid in graph.outputs.items()
               if graph.nodes[nid].phase == "forward" and _bound(graph, nid)]
    if loss not in graph.outputs:
        return forward
    reads = {name: _inputs_of(graph, graph.outputs[name]) for name in [*forward, loss]}
    fewer = [reads[name] for name in forward if reads[name] < reads[loss]]
    labels = reads[loss] - set().union(*fewer) if fewer else set()
    return [name for name in forward if not reads[name] & labels]


def changes_in_inference(graph, outputs) -> bool:
    """Whether a node that changes in inference mode (a dropout mask, batch statistics) reaches ``outputs``."""
    needed = graph.needed(graph.outputs[name] for name in outputs if name in graph.outputs)
    return any(OPS[graph.nodes[nid].op].inference is not None or OPS[graph.nodes[nid].op].inference_input is not None
               for nid in needed)


def inputs_read(graph, outputs) -> set[str]:
    """The inputs that ``outputs`` of ``graph`` read."""
    return set().union(*(_inputs_of(graph, graph.outputs[name]) for name in outputs if name in graph.outputs))


def check_predicts(graph, outputs) -> None:
    """``outputs`` name forward outputs of the user's ``graph`` (once optimized, one may share a gradient's node)."""
    unknown = [name for name in outputs if name not in graph.outputs]
    if unknown:
        raise GraphError(f"predict: graph {graph.name!r} has no outputs {unknown} (it has {list(graph.outputs)})")
    gradients = [name for name in outputs if graph.nodes[graph.outputs[name]].phase != "forward"]
    if gradients:
        raise GraphError(f"predict: {gradients} are gradients; predict computes forward outputs only")


def inference_graph(graph, outputs, reads=()) -> object:
    """A graph computing ``outputs`` (checked by ``check_predicts``) of ``graph`` alone, in inference mode (dropout
    masks are 1, running statistics stand for batch ones), taking the inputs ``reads`` too where its outputs no
    longer read them (an optimized ``0·x`` is a fill of x's shape: the feed of x still gives its size)."""
    def fixed(rb, node):
        op = OPS[node.op]
        if op.inference_input is not None:
            return rb.map[node.inputs[op.inference_input]]
        return None if op.inference is None else rb.add(node, "fill", (), {"value": sympy.sympify(op.inference)})

    keep = graph.needed(graph.outputs[name] for name in outputs) | {graph.inputs[n] for n in reads}
    new = Rebuild(graph).run(fixed, keep=keep)
    new.outputs = {name: new.outputs[name] for name in outputs}
    new.grads = []
    new.check_dims()
    return new
