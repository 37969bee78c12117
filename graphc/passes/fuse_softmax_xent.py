"""Softmax + cross-entropy fusion of the forward computation, as written by hand."""
import sympy

from graphc.core.ir import Rebuild
from graphc.ops.elementwise import arg


def fuse_softmax_xent(graph, notes):
    """log(softmax(z)) -> log_softmax(z); -sum(t·log_softmax(z), axis) -> softmax_cross_entropy(z, t)

    ``softmax_cross_entropy`` has a stable forward (log-sum-exp) and the fused gradient (softmax(z) − t)·g,
    so after this pass (and ``differentiate``) a hand-written cross-entropy trains exactly like the op.
    ``t`` may be ``one_hot(labels)`` (the labels are used directly) or any float tensor of the logits' shape.
    """
    def log_of_softmax(rb, node):
        if node.phase != "forward" or node.attr("expr") != sympy.log(arg(0)):  # (0·x is an ew of no inputs)
            return None
        src = rb.node(rb.arg(node.inputs[0]))
        if src.op != "softmax":
            return None
        notes.note(f"log(softmax) -> log_softmax at {graph.display_name(node.id)}")
        return rb.add(node, "log_softmax", list(src.inputs), {"axis": src.attr("axis")})

    def negated_sum(rb, node):
        if node.phase != "forward" or node.attr("keepdims") or len(node.attr("axes")) != 1:
            return None
        (axis,) = node.attr("axes")
        product = rb.node(rb.arg(node.inputs[0]))
        if product.op != "ew" or len(product.inputs) != 2:
            return None
        expr = product.attr("expr")
        sign = 1 if expr == arg(0) * arg(1) else -1 if expr == -arg(0) * arg(1) else 0
        for k in (0, 1):
            logp, target = rb.node(product.inputs[k]), rb.node(product.inputs[1 - k])
            if sign and logp.op == "log_softmax" and logp.attr("axis") == axis and target.shape == logp.shape:
                labels = target.inputs[0] if target.op == "one_hot" and axis == len(logp.shape) - 1 else target.id
                xent = rb.add(node, "softmax_cross_entropy", [logp.inputs[0], labels], {"axis": axis})
                notes.note(f"-sum(t·log_softmax(z)) -> softmax_cross_entropy at {graph.display_name(node.id)}")
                return xent if sign < 0 else rb.add(node, "ew", [xent], {"expr": -arg(0)})
        return None

    return Rebuild(graph).run({"ew": log_of_softmax, "sum": negated_sum})
