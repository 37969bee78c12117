"""GEMM fusion: a matmul's bias, accumulation or SGD update rides in the GEMM itself."""
from graphc.ir import Rebuild


def linear_terms(expr):
    """{input index: scalar coefficient} where ``expr`` is α·_i + β·_j exactly, else None."""
    if not expr.is_Add or len(expr.args) != 2:
        return None
    terms = {}
    for term in expr.args:
        coeff, rest = term.as_coeff_Mul()
        if rest.is_Symbol and rest.name.startswith("_") and rest.name[1:].isdigit():
            terms[int(rest.name[1:])] = coeff
        else:
            return None
    return terms if len(terms) == 2 else None


def fuse_gemm(graph, notes):
    """α·(a @ b) + β·c -> gemm(a, b, c; α, β)

    BLAS computes ``α·a@b + β·c`` into ``c`` in one call: a bias (``c`` the broadcast bias, copied in first),
    a sum of gradients, or an SGD update ``W − lr·(xᵀ@dz)`` written straight into ``W`` without a ``dW``
    buffer. Only a matmul of two matrices that nothing else reads is absorbed.
    """
    roots = set(graph.roots())
    updates = set(graph.updates.values())

    def private_matmul(old_id):
        node = graph.nodes[old_id]
        return (node.op == "matmul" and old_id not in roots and len(graph.consumers(old_id)) == 1
                and all(len(graph.nodes[i].shape) == 2 for i in node.inputs))

    def rule(rb, node):
        if node.op != "ew" or len(node.inputs) != 2:
            return None
        terms = linear_terms(node.attr("expr"))
        if terms is None:
            return None
        for k in (0, 1):
            mm_old, c_old = node.inputs[k], node.inputs[1 - k]
            if private_matmul(mm_old) and tuple(graph.nodes[mm_old].shape) == tuple(node.shape):
                c, operands = graph.nodes[c_old], graph.nodes[mm_old].inputs
                if c.dtype != node.dtype or len(c.shape) > 2 or c_old in operands:
                    return None  # BLAS writes c while it reads a and b: they must not be the same array
                if node.id in updates and any(graph.nodes[i].op == "param" for i in operands):
                    return None  # an update is written into its param, which the matmul would still read
                notes.note(f"{graph.display_name(node.id)} = {terms[k]}·({graph.display_name(mm_old)}) + "
                           f"{terms[1 - k]}·{graph.display_name(c_old)} -> one gemm")
                a, b = (rb.arg(i) for i in graph.nodes[mm_old].inputs)
                return rb.add(node, "gemm", [a, b, rb.arg(c_old)], {"alpha": terms[k], "beta": terms[1 - k]})
        return None

    return Rebuild(graph).run(rule)

