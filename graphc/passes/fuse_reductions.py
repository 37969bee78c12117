"""Reduction fusion."""
from graphc.core.ir import Rebuild


def fuse_reductions(graph, notes):
    """sum(ew(x…), axes) -> sum_ew(x…; expr, axes)

    An elementwise group read only by a sum becomes one node, so backends can reduce without keeping the
    full-size product (NumPy: ``einsum``/``out=``; CuPy: one ReductionKernel). Bias gradients
    ``sum(relu_mask·dh, axis=0)`` and ``mean((y−t)²)`` take this form.
    """
    def rule(rb, node):
        (old,) = node.inputs
        src = rb.node(rb.arg(old))
        if src.op != "ew" or not graph.single_use(old):
            return None
        notes.note(f"fused {graph.display_name(old)} into the sum {graph.display_name(node.id)}")
        new_id = rb.add(node, "sum_ew", list(src.inputs), {
            "expr": src.attr("expr"), "axes": node.attr("axes"), "keepdims": node.attr("keepdims"),
            "ew_shape": src.shape})
        rb.absorb(new_id, old)
        return new_id

    return Rebuild(graph).run({"sum": rule})
