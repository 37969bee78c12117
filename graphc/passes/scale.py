"""Placement of scalar factors (1/m, 0.5, constants): moved through linear ops to the cheapest place."""
import sympy

from graphc.core.ir import Rebuild
from graphc.core.registry import OPS
from graphc.ops.elementwise import arg
from graphc.passes.toolkit import add_ew

TYPICAL = 1024  # the size symbolic dims are assumed to take when comparing costs


def cost(node) -> int:
    """Elements a scaling of ``node`` touches, with symbolic dims at a typical size."""
    count = sympy.Mul(*node.shape)
    return int(count.subs({s: TYPICAL for s in count.free_symbols}))


def scalar_factor(graph, node):
    """``c`` where ``node`` is the pure scaling ``c·x`` of one input of its own shape, else None (a scaling that
    also broadcasts its input cannot be moved past an op that reads the broadcast result)."""
    if node.op != "ew" or len(node.inputs) != 1 or node.dtype == "bool":
        return None
    if tuple(graph.nodes[node.inputs[0]].shape) != tuple(node.shape):
        return None
    # structural, not sympy.simplify: simplify (trigsimp, factor) costs ~0.1 s a node on deep graphs
    c, rest = node.attr("expr").as_independent(arg(0), as_Add=False)
    return None if rest != arg(0) or c == 1 else c


def scale(graph, notes):
    """c·linear(ew(x)) -> linear(ew(c·x)) where x is smaller; A @ fill(c) -> c·sum(A) broadcast

    Scalar factors commute with linear ops (matmul, sum, reshape, transpose, broadcast_to), so a factor may
    sit before or after one. It goes where it touches the fewest elements: into the elementwise kernel that
    produces a smaller operand (across a broadcast, or a matmul whose output is bigger than an operand),
    else it stays after the op (after a sum: on the reduced result). A matmul with an all-constant operand
    becomes a sum, so no array of ones or of 1/m is materialized.
    """
    def private_ew(old_id):
        """``old_id`` is an elementwise node read by one consumer only, so it may absorb a factor."""
        return graph.nodes[old_id].op == "ew" and graph.single_use(old_id)

    def absorb(rb, like_old, c):
        """New id of ``c`` times the (elementwise) node ``like_old``."""
        src = rb.node(rb.arg(like_old))
        if src.op == "ew":
            return add_ew(rb, src, c * src.attr("expr"), list(src.inputs))
        return add_ew(rb, src, c * arg(0), [src.id])

    def scaled_operand(node):
        """(position, c) of an operand that is a private pure scaling c·x costing more than ``node``."""
        for k, old in enumerate(node.inputs):
            src = graph.nodes[old]
            c = scalar_factor(graph, src)
            if c is not None and graph.single_use(old) and cost(src) > cost(node):
                return k, c
        return None

    def rule(rb, node):
        if OPS[node.op].linear and scaled_operand(node):  # linear(c·x) -> c·linear(x) on the smaller result
            k, c = scaled_operand(node)
            ins = [rb.arg(i) for i in node.inputs]
            ins[k] = rb.node(ins[k]).inputs[0]
            notes.note(f"moved factor {c} past {node.op} {graph.display_name(node.id)} to its smaller result")
            return add_ew(rb, node, c * arg(0), [rb.add(node, node.op, ins, dict(node.attrs))])
        if node.op == "matmul":
            a, b = (rb.node(rb.arg(i)) for i in node.inputs)
            if min(len(a.shape), len(b.shape)) >= 2 and (a.op == "fill") != (b.op == "fill"):
                other, fill, axis = (a, b, -1) if b.op == "fill" else (b, a, -2)
                total = rb.add(node, "sum", [other.id], {"axes": (len(other.shape) + axis,), "keepdims": True},
                               shape=tuple(1 if i == len(other.shape) + axis else d for i, d in enumerate(other.shape)))
                notes.note(f"matmul with constant {fill.attr('value')} -> scaled sum at {graph.display_name(node.id)}")
                return add_ew(rb, node, fill.attr("value") * arg(0), [total])
            return None
        c = scalar_factor(graph, node)
        if c is None:
            return None
        (old_src,) = node.inputs
        src = graph.nodes[old_src]
        if not OPS[src.op].linear or not graph.single_use(old_src):
            return None
        operands = list(src.inputs)
        movable = [k for k, o in enumerate(operands) if private_ew(o) or src.op == "broadcast_to"]
        target = min(movable, key=lambda k: cost(graph.nodes[operands[k]]), default=None)
        if target is None or cost(graph.nodes[operands[target]]) >= cost(src):
            return None
        new_inputs = [rb.arg(o) for o in operands]
        new_inputs[target] = absorb(rb, operands[target], c)
        notes.note(f"moved factor {c} from {graph.display_name(node.id)} into the operand of {src.op}")
        return rb.add(node, src.op, new_inputs, dict(src.attrs), shape=src.shape)

    return Rebuild(graph).run(rule)
