"""Reduction fusion."""
import sympy

from graphc.core.ir import Rebuild
from graphc.ops.elementwise import arg
from graphc.passes.scale import scalar_factor


def fuse_reductions(graph, notes):
    """sum(ew(x…), axes) -> sum_ew(x…; expr, axes); c·sum(…) -> sum_ew(…; scale c)

    An elementwise group read only by a sum becomes one node (a sum of every element also through a reshape), so
    backends can reduce without keeping the full-size product (NumPy: ``einsum``/``out=``; CuPy: one
    ReductionKernel). Bias gradients ``sum(relu_mask·dh, axis=0)`` and ``mean((y−t)²)`` take this form. A scalar
    factor applied to the sum alone (the ``1/m`` of a mean) rides on the reduced result: on CuPy the kernel's last
    step.
    """
    def fused_sum(rb, node):
        (old,) = node.inputs
        axes, keepdims = node.attr("axes"), node.attr("keepdims")
        if _total(graph, node) and graph.nodes[old].op == "reshape" and graph.single_use(old):
            old = graph.nodes[old].inputs[0]  # a sum of every element ignores their layout
            axes = tuple(range(len(graph.nodes[old].shape)))
        src = rb.node(rb.arg(old))
        if src.op != "ew" or not graph.single_use(old):
            return None
        notes.note(f"fused {graph.display_name(old)} into the sum {graph.display_name(node.id)}")
        new_id = rb.add(node, "sum_ew", list(src.inputs), {
            "expr": src.attr("expr"), "axes": axes, "keepdims": keepdims, "ew_shape": src.shape,
            "scale": sympy.S.One})
        rb.absorb(new_id, old)
        return new_id

    def scaled_sum(rb, node):
        c = scalar_factor(graph, node)
        if c is None:
            return None
        (old,) = node.inputs
        if graph.nodes[old].op != "sum" or not graph.single_use(old):
            return None
        total = rb.node(rb.arg(old))
        if total.op == "sum":  # a sum of a shared tensor: its elements as they are
            attrs = {"expr": arg(0), "axes": total.attr("axes"), "keepdims": total.attr("keepdims"),
                     "ew_shape": rb.node(total.inputs[0]).shape, "scale": c}
        else:
            attrs = {**dict(total.attrs), "scale": total.attr("scale") * c}
        notes.note(f"the factor {c} of {graph.display_name(node.id)} rides on the sum {graph.display_name(old)}")
        new_id = rb.add(node, "sum_ew", list(total.inputs), attrs)
        rb.absorb(new_id, old)
        return new_id

    return Rebuild(graph).run({"sum": fused_sum, "ew": scaled_sum})


def _total(graph, node) -> bool:
    """Whether a sum adds up every element of its input into a scalar."""
    return not node.attr("keepdims") and len(node.attr("axes")) == len(graph.nodes[node.inputs[0]].shape)
