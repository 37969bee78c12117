"""Elementwise fusion."""
from graphc.core.ir import Rebuild
from graphc.passes.toolkit import add_ew, inline


def fuse_elementwise(graph, notes):
    """ew(ew(x), y) -> one ew node holding the combined sympy expression

    A producer is inlined into its consumer when the consumer is its only reader, it is no output, and both
    have the same shape (inlining a smaller, broadcast producer would recompute it per element). Groups grown
    this way are trees of single-reader producers, so they are convex: no path leaves a group and comes back.
    """
    def rule(rb, node):
        expr, ins = node.attr("expr"), [rb.arg(i) for i in node.inputs]
        fused = []
        for position, old in enumerate(node.inputs):
            src = rb.node(ins[position])
            if src.op == "ew" and graph.single_use(old) and tuple(src.shape) == tuple(node.shape):
                expr, ins = inline(expr, ins, position, src.attr("expr"), list(src.inputs))
                fused.append(old)
        if not fused:
            return None
        notes.note(f"fused {', '.join(graph.display_name(old) for old in fused)} into {graph.display_name(node.id)}")
        new_id = add_ew(rb, node, expr, ins)
        for old in fused:
            rb.absorb(new_id, old)
        return new_id

    return Rebuild(graph).run({"ew": rule})
