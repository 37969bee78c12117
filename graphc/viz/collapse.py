"""Repeated layers drawn once: ``graphc show --collapse``.

A layer is numbered by the digits ending the user's names (``W3``, ``b3``, ``h3``, ``dW3``); a node without such
a name belongs to the highest layer among its inputs. Three or more consecutive layers that compute the same
thing (the same ops, expressions, shapes and names but for their numbers) keep their first and last layer; the
ones between become one box per phase, which every edge into or out of them meets.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

NUMBERED = re.compile(r"^(.*?)(\d+)$")
MIN_RUN = 3  # consecutive equal layers before the middle ones are folded


@dataclass(frozen=True)
class Box:
    """The nodes of the layers ``first..last`` in one phase, drawn as one node."""
    key: str
    phase: str
    first: int
    last: int
    ids: frozenset


def layers(graph, ids) -> dict[int, int]:
    """The layer of each node of ``ids`` that has one."""
    out: dict[int, int] = {}
    for nid in sorted(ids):
        node = graph.nodes[nid]
        hit = NUMBERED.match(node.name or "")
        if hit:
            out[nid] = int(hit.group(2))
        else:
            numbers = [out[i] for i in node.inputs if i in out]
            if numbers:
                out[nid] = max(numbers)
    return out


def _signature(graph, members: list[int]) -> tuple:
    """What a layer computes, its numbers left out: equal for repeats of one layer."""
    def local(nid):
        node = graph.nodes[nid]
        attrs = tuple((k, str(v)) for k, v in node.attrs if k != "name")
        return node.op, attrs, tuple(map(str, node.shape)), node.phase, NUMBERED.sub(r"\1", node.name or "")
    return tuple(sorted(map(local, members)))


def boxes(graph, ids) -> list[Box]:
    """The boxes standing for the middle of each run of repeated layers (none where nothing repeats)."""
    of = layers(graph, ids)
    members: dict[int, list[int]] = {}
    for nid, layer in of.items():
        members.setdefault(layer, []).append(nid)
    numbers = sorted(members)
    runs, run = [], numbers[:1]
    for a, b in zip(numbers, numbers[1:]):
        if b == a + 1 and _signature(graph, members[a]) == _signature(graph, members[b]):
            run.append(b)
        else:
            runs.append(run)
            run = [b]
    runs.append(run)
    out = []
    for run in runs:
        if len(run) < MIN_RUN:
            continue
        middle = [nid for layer in run[1:-1] for nid in members[layer]]
        for phase in dict.fromkeys(graph.nodes[i].phase for i in sorted(middle)):
            folded = frozenset(i for i in middle if graph.nodes[i].phase == phase)
            out.append(Box(f"layers{run[1]}_{run[-2]}_{phase}", phase, run[1], run[-2], folded))
    return out


def box_label(box: Box) -> tuple[str, list[str]]:
    count = box.last - box.first + 1
    what = "their gradients" if box.phase == "backward" else "their updates" if box.phase == "update" else \
        f"as layer {box.first - 1}"
    return f"layers {box.first}–{box.last}", [f"× {count}, {what}", f"{len(box.ids)} nodes"]
