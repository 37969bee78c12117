"""Constant folding: scalar fills (seeds, 1/m, zeros) are folded into the expressions that use them."""
import sympy

from graphc.core import shapes
from graphc.core.ir import Rebuild
from graphc.core.registry import OPS
from graphc.ops.elementwise import arg
from graphc.passes.toolkit import add_ew, fill_value


def fold_constants(graph, notes):
    """ew(fill(c), x) -> ew'(x) with c inside; a view or sum of fill(c) -> fill

    A ``fill`` is an array of one (possibly symbolic) value, like the seed 1 of a gradient or its 1/m after
    a mean. Folding it into the elementwise expressions that read it means no array of ones or of 1/m is
    ever materialized.
    """
    def rule(rb, node):
        ins = [rb.arg(i) for i in node.inputs]
        values = [fill_value(rb.node(i)) for i in ins]
        if node.op == "ew" and any(v is not None for v in values):
            expr = node.attr("expr").xreplace({arg(i): v for i, v in enumerate(values) if v is not None})
            notes.note(f"folded a constant into {graph.display_name(node.id)}: {expr}")
            return add_ew(rb, node, expr, ins)
        if OPS[node.op].view and values[0] is not None:  # a view of one value everywhere is that value
            return rb.add(node, "fill", [], {"value": values[0]})
        if node.op == "sum" and values[0] is not None:
            count = shapes.numel([rb.node(ins[0]).shape[a] for a in node.attr("axes")])
            return rb.add(node, "fill", [], {"value": sympy.simplify(values[0] * count)})
        return None

    return Rebuild(graph).run(rule)

