"""Softmax + cross-entropy fusion, for the computation written by hand."""
import sympy

from graphc.ir import Rebuild
from graphc.ops.elementwise import arg


def fuse_softmax_xent(graph, notes):
    """log(softmax(z)) -> log_softmax(z); -sum(t·log_softmax(z), axis) -> softmax_cross_entropy(z, t)

    ``softmax_cross_entropy`` has a stable forward (log-sum-exp) and the fused gradient (softmax(z) − t)·g,
    so after this pass (and ``differentiate``) a hand-written cross-entropy trains exactly like the op.
    ``t`` may be ``one_hot(labels)`` (the labels are used directly) or any float tensor of the logits' shape.
    """
    roots = set(graph.roots())

    def private(old_id, op):
        return graph.nodes[old_id].op == op and old_id not in roots and len(graph.consumers(old_id)) == 1

    def rule(rb, node):
        ins = [rb.arg(i) for i in node.inputs]
        if node.op == "ew" and node.phase != "forward" and len(node.inputs) >= 2 and not graph.grads:
            fused = _gradient(rb, node, ins, private)
            if fused is not None:
                notes.note(f"(softmax(z) − onehot(t))·g -> softmax_xent_grad at {graph.display_name(node.id)}")
                return fused
        if node.op == "ew" and node.phase == "forward" and node.attr("expr") == sympy.log(arg(0)):
            src = rb.node(ins[0])
            if src.op == "softmax":
                notes.note(f"log(softmax) -> log_softmax at {graph.display_name(node.id)}")
                return rb.add(node, "log_softmax", list(src.inputs), {"axis": src.attr("axis")})
        if node.op == "sum" and node.phase == "forward" and not node.attr("keepdims") and len(node.attr("axes")) == 1:
            (axis,) = node.attr("axes")
            product = rb.node(ins[0])
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

    return Rebuild(graph).run(rule)


def _gradient(rb, node, ins, private):
    """(softmax(z) − one_hot(t))·scale, both read only here -> softmax_xent_grad(z, t; scale)."""
    expr = node.attr("expr")
    s_old, h_old = node.inputs[0], node.inputs[1]
    if not (private(s_old, "softmax") and private(h_old, "one_hot")):
        return None
    s, h = rb.node(ins[0]), rb.node(ins[1])
    if s.attr("axis") != len(s.shape) - 1 or h.shape != s.shape:
        return None
    difference = arg(0) - arg(1)
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
    return rb.add(node, "softmax_xent_grad", [s.inputs[0], h.inputs[0], *rest], {"scale": scale})
