"""Softmax cross-entropy written out around one row-wise log-sum-exp, for backends that fuse each row's pass."""
import sympy

from graphc.core.ir import Rebuild
from graphc.ops.elementwise import arg
from graphc.passes.expand_softmax_xent import per_example_losses


def rowwise_softmax_xent(graph, notes):
    """softmax_cross_entropy(z, t) -> logsumexp(z) − z[t]; softmax_xent_grad(e, s, t) -> exp(z − lse) − onehot(t)

    The form for a GPU: the log-sum-exp is one row-wise reduction (a running maximum and sum), the loss reads it
    and the labels' logits, and the gradient recomputes ``exp(z − lse)`` in its own elementwise pass instead of
    keeping the exponentials in memory. Distribution labels give ``Σ t·(lse − z)``. Classes on the last axis only;
    elsewhere the op stays as it is.
    """
    def lse(rb, like, z: int) -> int:
        shape = rb.node(z).shape
        nid = rb.add(like, "logsumexp", [z], {"axes": (len(shape) - 1,), "keepdims": True},
                     shape=(*shape[:-1], sympy.Integer(1)))
        if rb.node(z).name and not rb.node(nid).name:
            rb.new.rename(nid, f"lse_{rb.node(z).name}")
        return nid

    def forward(rb, node):
        z, t = (rb.node(rb.arg(i)) for i in node.inputs)
        if node.attr("axis") != len(z.shape) - 1:
            return None
        notes.note(f"softmax_cross_entropy -> row-wise log-sum-exp minus the labels' logits at "
                   f"{graph.display_name(node.id)}")
        return per_example_losses(rb, node, z, t, arg(0), [lse(rb, node, z.id)])

    def gradient(rb, node):
        e, _, t, *rest = (rb.arg(i) for i in node.inputs)
        z = rb.node(e).inputs[0]  # e = exp(z − max z)
        notes.note(f"softmax_xent_grad -> exp(z − lse) − onehot(t) at {graph.display_name(node.id)}")
        return rb.add(node, "softmax_xent_grad", [z, lse(rb, node, z), t, *rest],
                      {**dict(node.attrs), "log": True})

    return Rebuild(graph).run({"softmax_cross_entropy": forward, "softmax_xent_grad": gradient})
