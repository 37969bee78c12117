"""Softmax cross-entropy written out in the nodes its fused gradient shares."""
import sympy

from graphc.core.ir import Rebuild
from graphc.ops.elementwise import arg
from graphc.passes.fuse_softmax_xent_grad import exponentials


def expand_softmax_xent(graph, notes):
    """softmax_cross_entropy(z, t) -> log(s) + max z − z[t] with e = exp(z − max z), s = Σ e

    The forward pass computes the exponentials the fused gradient reads (``softmax_xent_grad(e, s, t)``), so a
    training step takes them once. Distribution labels give ``Σ t·(log s + max z − z)``. Classes on the last
    axis only; elsewhere the op stays as it is.
    """
    def rule(rb, node):
        z, t = (rb.node(rb.arg(i)) for i in node.inputs)
        if node.attr("axis") != len(z.shape) - 1:
            return None
        e, total = exponentials(rb, node, z.id)
        peak = rb.node(e).inputs[1]
        rows = rb.node(total).shape
        if t.dtype == "int64":
            true_logit = rb.add(node, "pick", [z.id, t.id], {}, shape=rows)
            loss = rb.add(node, "ew", [total, peak, true_logit], {"expr": sympy.log(arg(0)) + arg(1) - arg(2)},
                          shape=rows)
        else:
            terms = rb.add(node, "ew", [t.id, total, peak, z.id],
                           {"expr": arg(0) * (sympy.log(arg(1)) + arg(2) - arg(3))}, shape=z.shape)
            loss = rb.add(node, "sum", [terms], {"axes": (len(z.shape) - 1,), "keepdims": True}, shape=rows)
        notes.note(f"softmax_cross_entropy -> log-sum-exp minus the labels' logits at {graph.display_name(node.id)}")
        return rb.add(node, "reshape", [loss], {"shape": tuple(node.shape)})

    return Rebuild(graph).run({"softmax_cross_entropy": rule})
