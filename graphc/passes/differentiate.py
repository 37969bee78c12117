"""Re-derive the backward graph after forward rewrites."""
from graphc.core.ir import Rebuild
from graphc.dsl import Tensor, fill
from graphc.transforms.autodiff import backprop


def differentiate(graph, notes):
    """gc.grad(loss) over the user's forward graph -> gc.grad(loss) over the rewritten forward graph

    Forward passes (e.g. softmax + cross-entropy fusion) change what the gradient should be built from, so
    each ``gc.grad`` request is derived again on the rewritten graph; its old backward nodes are dropped.
    """
    if not graph.grads:
        return graph
    owner = {nid: r for r in graph.grads for nid in r.nodes}
    rb = Rebuild(graph)
    done = set()

    def derive(request):
        new = rb.new
        with new.in_phase("backward"):
            seed = (Tensor(new, rb.map[request.seed]) if request.seed is not None
                    else fill(new, 1, (), new.nodes[rb.map[request.loss]].dtype))
            results = backprop(new, rb.map[request.loss], [rb.map[w] for w in request.wrt], seed)
        for old, r in zip(request.results, results):
            rb.map[old] = r.id
            if graph.nodes[old].name and not new.nodes[r.id].name:
                new.rename(r.id, graph.nodes[old].name)
        notes.note(f"derived the gradient of {graph.display_name(request.loss)} w.r.t. "
                   + ", ".join(graph.display_name(w) for w in request.wrt))

    def keep(roots):
        """Copy, as they were, the inner nodes of a request that something outside it reads (e.g. a
        ``transpose(x)`` that later code shares by hash-consing): still the same values on the new graph."""
        todo, stack = set(), [r for r in roots if r not in rb.map]
        while stack:
            nid = stack.pop()
            if nid not in todo:
                todo.add(nid)
                stack.extend(i for i in graph.nodes[nid].inputs if i not in rb.map)
        for nid in sorted(todo):
            rb.map[nid] = rb.copy(graph.nodes[nid])

    def ready(request):
        """Whether what the gradient is built from is in the new graph (rewrites can merge one of its backward
        nodes into an earlier forward node, which then comes before its loss)."""
        return all(x in rb.map for x in (request.loss, *request.wrt, request.seed) if x is not None)

    for nid in graph.order():
        request = owner.get(nid)
        if request is not None and id(request) not in done and ready(request):
            done.add(id(request))
            derive(request)
        elif nid not in rb.map and (request is None or id(request) not in done):
            keep(graph.nodes[nid].inputs)  # an ordinary node, or one of a request not derived yet: as it was
            rb.map[nid] = rb.copy(graph.nodes[nid])
    for request in graph.grads:
        if id(request) not in done:
            done.add(id(request))
            derive(request)
    keep([*graph.outputs.values(), *graph.updates.values(), *(x for r in graph.grads for x in r.results)])
    new = rb.finish()
    new.grads = []
    return new
