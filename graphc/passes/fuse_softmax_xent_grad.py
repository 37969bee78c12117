"""Softmax + cross-entropy fusion of the gradient."""
import sympy

from graphc.core.ir import Rebuild
from graphc.ops.elementwise import arg


def fuse_softmax_xent_grad(graph, notes):
    """(softmax(z) − one_hot(t))·scale -> softmax_xent_grad(e, s, t; scale) with e = exp(z − max z), s = Σ e

    The gradient of ``softmax_cross_entropy`` w.r.t. its logits, once the graph is differentiated: no one-hot
    array, the scale (the ``1/m`` of a mean) applied once, on the row sums. ``e`` and ``s`` are the nodes the
    expanded forward pass computes too, so forward and backward share the exponentials. Both the softmax and the
    one-hot must be read only here, and the scale constant along the classes.
    """
    def rule(rb, node):
        if node.phase == "forward" or len(node.inputs) < 2:
            return None
        s_old, h_old = node.inputs[0], node.inputs[1]
        if not (_private(graph, s_old, "softmax") and _private(graph, h_old, "one_hot")):
            return None
        ins = [rb.arg(i) for i in node.inputs]
        soft, hot = rb.node(ins[0]), rb.node(ins[1])
        if soft.attr("axis") != len(soft.shape) - 1 or hot.shape != soft.shape:
            return None
        expr, difference = node.attr("expr"), arg(0) - arg(1)
        if expr == difference:
            scale = sympy.S.One
        elif expr.is_Mul and difference in expr.args:  # structural: (s − h)·scale, scale free of s and h
            scale = expr / difference
        else:
            return None
        if scale.free_symbols & {arg(0), arg(1)}:
            return None
        rest = ins[2:]
        if any(len(rb.node(r).shape) and rb.node(r).shape[-1] != 1 for r in rest):
            return None  # the scale must be constant along the classes
        scale = scale.xreplace({arg(i + 2): arg(i) for i in range(len(rest))})
        e, total = exponentials(rb, node, soft.inputs[0])
        notes.note(f"(softmax(z) − onehot(t))·g -> softmax_xent_grad at {graph.display_name(node.id)}")
        return rb.add(node, "softmax_xent_grad", [e, total, hot.inputs[0], *rest], {"scale": scale})

    return Rebuild(graph).run({"ew": rule})


def exponentials(rb, like, z: int) -> tuple[int, int]:
    """``e = exp(z − max z)`` and ``s = Σ e`` along the last axis (kept as size 1): softmax(z) = e/s, stably."""
    shape = rb.node(z).shape
    rows = (*shape[:-1], sympy.Integer(1))
    axes = {"axes": (len(shape) - 1,), "keepdims": True}
    peak = rb.add(like, "max", [z], axes, shape=rows)
    e = rb.add(like, "ew", [z, peak], {"expr": sympy.exp(arg(0) - arg(1))}, shape=shape)
    total = rb.add(like, "sum", [e], axes, shape=rows)
    name = rb.node(z).name
    for nid, prefix in ((peak, "rowmax"), (e, "exp"), (total, "sumexp")) if name else ():
        if not rb.node(nid).name:
            rb.new.rename(nid, f"{prefix}_{name}")  # softmax(logits) reads exp_logits/sumexp_logits
    return e, total


def _private(graph, nid: int, op: str) -> bool:
    return graph.nodes[nid].op == op and graph.single_use(nid)
