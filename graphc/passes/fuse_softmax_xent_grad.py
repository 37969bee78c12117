"""Softmax + cross-entropy fusion of the gradient."""
import sympy

from graphc.core.ir import Rebuild
from graphc.ops.elementwise import arg


def fuse_softmax_xent_grad(graph, notes):
    """(softmax(z) − one_hot(t))·scale -> softmax_xent_grad(z, t; scale)

    The gradient of ``softmax_cross_entropy`` w.r.t. its logits, once the graph is differentiated: one node that
    needs no one-hot array and applies the scale (the ``1/m`` of a mean) once, on the row sums. Both the softmax
    and the one-hot must be read only here, and the scale constant along the classes.
    """
    def rule(rb, node):
        if node.phase == "forward" or len(node.inputs) < 2:
            return None
        s_old, h_old = node.inputs[0], node.inputs[1]
        if not (_private(graph, s_old, "softmax") and _private(graph, h_old, "one_hot")):
            return None
        ins = [rb.arg(i) for i in node.inputs]
        s, h = rb.node(ins[0]), rb.node(ins[1])
        if s.attr("axis") != len(s.shape) - 1 or h.shape != s.shape:
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
        notes.note(f"(softmax(z) − onehot(t))·g -> softmax_xent_grad at {graph.display_name(node.id)}")
        return rb.add(node, "softmax_xent_grad", [s.inputs[0], h.inputs[0], *rest], {"scale": scale})

    return Rebuild(graph).run({"ew": rule})


def _private(graph, nid: int, op: str) -> bool:
    return graph.nodes[nid].op == op and graph.single_use(nid)
