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
        notes.note(f"softmax_cross_entropy -> log-sum-exp minus the labels' logits at {graph.display_name(node.id)}")
        return per_example_losses(rb, node, z, t, sympy.log(arg(0)) + arg(1), [total, peak])

    return Rebuild(graph).run({"softmax_cross_entropy": rule})


def per_example_losses(rb, node, z, t, norm, inputs: list) -> int:
    """The losses of ``softmax_cross_entropy`` node ``node``, in its shape: ``norm − z[t]`` for class ids,
    ``Σ t·(norm − z)`` for distributions, where ``norm`` (an expression of ``inputs``, per-row nodes with a size-1
    last axis) is each row's log-sum-exp."""
    rows, n = rb.node(inputs[0]).shape, len(inputs)
    if t.dtype == "int64":
        true_logit = rb.add(node, "pick", [z.id, t.id], {}, shape=rows)
        loss = rb.add(node, "ew", [*inputs, true_logit], {"expr": norm - arg(n)}, shape=rows)
    else:
        shifted = norm.xreplace({arg(i): arg(i + 1) for i in range(n)})  # after the labels
        terms = rb.add(node, "ew", [t.id, *inputs, z.id], {"expr": arg(0) * (shifted - arg(n + 1))}, shape=z.shape)
        loss = rb.add(node, "sum", [terms], {"axes": (len(z.shape) - 1,), "keepdims": True}, shape=rows)
    return rb.add(node, "reshape", [loss], {"shape": tuple(node.shape)})
