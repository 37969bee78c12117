"""Scheduling for the emitters: statement order, liveness, and a buffer plan that reuses memory.

Order is ascending node id (topological and deterministic). Views (ops with the ``view`` trait) share their
source's storage, so a buffer stays live until the last reader of any view of it.
Buffers are keyed by (symbolic shape, dtype); a dead buffer is reused by the next node of the same key.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from graphc.core.registry import OPS


@dataclass
class Buffer:
    index: int
    shape: tuple
    dtype: str
    users: list = field(default_factory=list)  # node ids stored here, for the allocation comment


@dataclass
class Plan:
    order: list[int]
    buffer_of: dict[int, int]  # node id -> buffer index (nodes computed into a planned buffer)
    buffers: list[Buffer]
    last_use: dict[int, int]  # storage root id -> position of its last reader
    storage: dict[int, int]  # node id -> id of the node that owns its memory (itself unless a view)
    scratch: dict[int, list[int]] = field(default_factory=dict)  # node id -> scratch buffer indices


def reads(graph, order) -> tuple[dict, dict]:
    """(storage, last read): the node owning each node's memory (views share it), and the position in
    ``order`` of the last statement reading each storage."""
    position = {nid: i for i, nid in enumerate(order)}
    storage, last_read = {}, {}
    for nid in order:
        node = graph.nodes[nid]
        storage[nid] = storage.get(node.inputs[0], node.inputs[0]) if OPS[node.op].view else nid
        for src in node.inputs:
            root = storage.get(src, src)
            last_read[root] = max(last_read.get(root, -1), position[nid])
    return storage, last_read


def deferred_updates(graph, nodes, updates: dict) -> set:
    """Of ``updates`` (node -> the param it overwrites in place), those that would overwrite their param while
    a later statement still reads the old value (another param's update, or a view of the param): they are
    computed into a buffer of their own and copied into the param after every other statement."""
    order = sorted(nodes)
    position = {nid: i for i, nid in enumerate(order)}
    _, last_read = reads(graph, order)
    return {u for u, param in updates.items() if last_read.get(param, -1) > position[u]}


def plan(graph, nodes, keep_alive=(), needs_buffer=None, scratch_for=None) -> Plan:
    """Plan ``nodes`` (ids) of ``graph``. ``keep_alive`` ids (outputs, deferred updates) are never overwritten.

    ``needs_buffer(node)`` says whether a node gets a planned buffer (default: all but sources and views);
    ``scratch_for(node)`` lists (shape, dtype) of the temporaries its statements need, or (shape, dtype, key, last)
    for one that several nodes share: the first to ask for ``key`` fills it, and it lives until node ``last``.
    """
    order = sorted(nodes)
    storage, last_use = reads(graph, order)
    end = len(order)
    for nid in keep_alive:
        last_use[storage.get(nid, nid)] = end
    needs_buffer = needs_buffer or (lambda n: not OPS[n.op].view and not OPS[n.op].given)
    buffers: list[Buffer] = []
    free: dict[tuple, list[int]] = {}
    buffer_of, scratch = {}, {}
    expiring: dict[int, list[int]] = {}
    position = {nid: i for i, nid in enumerate(order)}
    shared: dict = {}  # key -> buffer of a scratch several nodes read

    def take(shape, dtype):
        key = (tuple(shape), dtype)
        if free.get(key):
            return free[key].pop(0)
        buffers.append(Buffer(len(buffers), tuple(shape), dtype))
        return len(buffers) - 1

    for i, nid in enumerate(order):
        node = graph.nodes[nid]
        if needs_buffer(node):
            b = buffer_of[nid] = take(node.shape, node.dtype)
            buffers[b].users.append(nid)
            expiring.setdefault(max(last_use.get(nid, i), i), []).append(b)
        temps, own = [], []
        for shape, dtype, *kept in scratch_for(node) if scratch_for else []:
            if not kept:
                own.append(take(shape, dtype))
                temps.append(own[-1])
                continue
            key, last = kept
            if key not in shared:
                shared[key] = take(shape, dtype)
                expiring.setdefault(max(position[last], i), []).append(shared[key])
            temps.append(shared[key])
        if temps:
            scratch[nid] = temps
        for b in own:  # scratch lives only within the node's own statements
            free.setdefault((buffers[b].shape, buffers[b].dtype), []).append(b)
        for b in expiring.pop(i, []):
            free.setdefault((buffers[b].shape, buffers[b].dtype), []).append(b)
        for key in free:
            free[key].sort()
    return Plan(order, buffer_of, buffers, last_use, storage, scratch)
