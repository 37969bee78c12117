"""Algebraic and structural simplification."""
import sympy

from graphc.core.ir import Rebuild
from graphc.passes.toolkit import add_ew, inline


def simplify(graph, notes):
    """x·1, x+0, −(−x), exp(log x), reshape∘reshape, transpose∘transpose, ew(broadcast_to(x)) -> the simpler form

    Elementwise expressions are sympy expressions, so sympy's own canonicalization folds x·1, x+0 and scalar
    factors (0.5·2 = 1) within a node; across two nodes this pass inlines a one-input producer into its only
    reader when sympy then cancels something (−(−x), exp(log x)). It also drops redundant reshapes,
    transposes and broadcasts.
    """
    def rule(rb, node):
        ins = [rb.arg(i) for i in node.inputs]
        if node.op == "reshape":
            src = rb.node(ins[0])
            if src.op == "reshape":
                ins = list(src.inputs)
                notes.note(f"reshape∘reshape -> reshape at {graph.display_name(node.id)}")
            if tuple(rb.node(ins[0]).shape) == tuple(node.shape):
                return ins[0]
            return rb.add(node, "reshape", ins, dict(node.attrs))
        if node.op == "transpose":
            src = rb.node(ins[0])
            if src.op == "transpose":
                inner, outer = src.attr("perm"), node.attr("perm")
                perm = tuple(inner[p] for p in outer)
                notes.note(f"transpose∘transpose -> {'nothing' if perm == tuple(sorted(perm)) else 'transpose'}")
                if perm == tuple(range(len(perm))):
                    return src.inputs[0]
                return rb.add(node, "transpose", list(src.inputs), {"perm": perm})
            return None
        if node.op == "ew":
            expr = node.attr("expr")
            for position in range(len(ins)):
                src = rb.node(ins[position])
                if src.op == "broadcast_to":
                    ins[position] = src.inputs[0]  # elementwise ops broadcast by themselves
                    notes.note(f"dropped broadcast_to feeding {graph.display_name(node.id)}")
                elif src.op == "ew" and len(src.inputs) == 1 and graph.single_use(node.inputs[position]):
                    merged, merged_ins = inline(expr, ins, position, src.attr("expr"), list(src.inputs))
                    if sympy.count_ops(merged) < sympy.count_ops(expr) + sympy.count_ops(src.attr("expr")):
                        notes.note(f"{src.attr('expr')} inside {expr} -> {merged} at {graph.display_name(node.id)}")
                        expr, ins = merged, merged_ins  # sympy cancelled something: −(−x), exp(log x), x·1/x
            return add_ew(rb, node, expr, ins)
        return None

    return Rebuild(graph).run(rule)

