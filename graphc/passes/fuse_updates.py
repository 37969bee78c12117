"""Fusion of a param's elementwise update with the updates of the state its optimizer keeps."""
from __future__ import annotations

from graphc.core.ir import Rebuild
from graphc.ops.elementwise import arg


def fuse_updates(graph, notes):
    """m' = f(m, g), v' = f(v, g), p' = h(p, m', v') -> one fused_update node writing m, v and p in place

    The elementwise new values of params and state that read one another, with the elementwise values only they
    read, become one node: its expressions run in one loop over the elements (one kernel per param on CuPy; on
    NumPy, consecutive in-place chains), and nothing is written to memory but the new values. A group forms only
    where that is safe in place: no statement after it reads an array it overwrites, and no expression of it reads
    the old value of an array an earlier one has overwritten.
    """
    targets = {nid: name for name, nid in graph.updates.items()
               if graph.nodes[nid].op == "ew" and list(graph.updates.values()).count(nid) == 1}
    fused = {}  # old id of a group's last member -> the group's members
    for group in _groups(graph, targets):
        if len(group) > 1 and _safe(graph, group, targets):
            fused[group[-1]] = group
            notes.note(f"fused the updates of {', '.join(targets[n] for n in group if n in targets)} into one loop")
    if not fused:
        return graph
    absorbed = {n for group in fused.values() for n in group[:-1]}
    rb = Rebuild(graph)

    def rule(rb, node):
        group = fused.get(node.id)
        if group is None:
            return None
        new = _fused(rb, graph, group, targets)
        for member in group[:-1]:
            rb.map[member] = new
        return new

    return rb.run(rule, keep=set(graph.nodes) - absorbed)


def _groups(graph, targets: dict) -> list[list[int]]:
    """Connected groups (ascending ids) of the elementwise updates and the elementwise values of their shape that
    only they read."""
    members, roots = set(targets), set(graph.roots())
    grown = True
    while grown:
        grown = False
        for nid in sorted(members):
            node = graph.nodes[nid]
            for i in node.inputs:
                src = graph.nodes[i]
                if (i not in members and src.op == "ew" and src.shape == node.shape and src.dtype == node.dtype
                        and i not in roots and set(graph.consumers(i)) <= members):
                    members.add(i)
                    grown = True
    parent = {n: n for n in members}

    def root(n):
        while parent[n] != n:
            n = parent[n]
        return n

    for nid in members:
        for i in graph.nodes[nid].inputs:
            if i in members and graph.nodes[i].shape == graph.nodes[nid].shape:
                parent[root(i)] = root(nid)
    groups: dict[int, list[int]] = {}
    for nid in sorted(members):
        groups.setdefault(root(nid), []).append(nid)
    return list(groups.values())


def _safe(graph, group: list[int], targets: dict) -> bool:
    """Only the group reads its values, no reader outside it comes after it, and no member reads the old value of
    an array written by an earlier member."""
    fed = graph.fed()
    inside, last = set(group), group[-1]
    if inside & set(graph.outputs.values()) or any(not set(graph.consumers(n)) <= inside for n in group):
        return False
    if len({graph.nodes[n].dtype for n in group}) > 1:
        return False
    written = {fed[targets[n]]: n for n in group if n in targets}
    for array, writer in written.items():
        if any(r not in inside and r > last for r in graph.consumers(array)):
            return False
        if any(r in inside and r > writer for r in graph.consumers(array)):
            return False
    return True


def _fused(rb, graph, group: list[int], targets: dict) -> int:
    """The fused_update node of ``group`` in the new graph."""
    fed = graph.fed()
    position = {n: k for k, n in enumerate(group)}
    outside = []
    for nid in group:
        outside += [i for i in graph.nodes[nid].inputs if i not in position and i not in outside]
    outside += [fed[targets[n]] for n in group if n in targets and fed[targets[n]] not in outside]
    slot = {i: k for k, i in enumerate(outside)}
    exprs = []
    for nid in group:
        node = graph.nodes[nid]
        subs = {arg(k): arg(slot[i]) if i in slot else arg(len(outside) + position[i])
                for k, i in enumerate(node.inputs)}
        exprs.append(node.attr("expr").xreplace(subs))
    written = tuple(slot[fed[targets[n]]] if n in targets else -1 for n in group)
    last, names = graph.nodes[group[-1]], tuple(graph.nodes[n].name for n in group)
    attrs = {"exprs": tuple(exprs), "targets": written, "names": names}
    return rb.add(last, "fused_update", [rb.arg(i) for i in outside], attrs)
