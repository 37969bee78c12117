"""``graphc explain``: what each pass did, and what the emitted code costs, measured on random data."""
from __future__ import annotations

import re
import tracemalloc

import numpy as np
import sympy

from graphc.core import shapes
from graphc.core.describe import describe
from graphc.core.registry import OPS
from graphc.dsl import init_params, init_state


def random_feeds(graph, sizes: dict, seed: int = 0) -> dict:
    """Inputs of the right shapes and dtypes (labels below their class count), initialized params and state."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, nid in graph.inputs.items():
        node = graph.nodes[nid]
        shape = shapes.evaluate(node.shape, sizes)
        if node.dtype == "int64":
            feeds[name] = rng.integers(0, class_count(graph, nid, sizes), size=shape)
        elif node.dtype == "bool":
            feeds[name] = rng.random(shape) > 0.5
        else:
            feeds[name] = rng.normal(size=shape).astype(node.dtype)
    return {**feeds, **init_params(graph, seed), **init_state(graph)}


def class_count(graph, nid: int, sizes: dict) -> int:
    """The number of classes integer labels index: from the op reading them as class ids (one_hot, …)."""
    counts = []
    for user in graph.consumers(nid):
        node = graph.nodes[user]
        rule = OPS[node.op].class_ids
        ins = [graph.nodes[i] for i in node.inputs]
        counts += [int(sympy.sympify(k).subs(sizes)) for slot, k in (rule(node, ins) if rule else ())
                   if node.inputs[slot] == nid]
    return min(counts, default=2)


def measure(prog, feeds: dict) -> dict:
    """Statements of the generated step and the bytes one steady-state call allocates (tracemalloc)."""
    training = prog.train_records is not None and "def train_step" in prog.source
    function = "_train" if training else "_compute"
    body = prog.source.split(f"def {function}(", 1)[1].split("\n\n", 1)[0]
    statements = [ln for ln in body.splitlines()[1:] if ln.strip() and not ln.strip().startswith(("#", "return"))]
    alloc = prog.source.split(f"def {function}_allocate(", 1)[1].split("return _Buffers", 1)[0]
    planned = re.findall(r"np\.empty\(", alloc)
    module = prog.module
    params = {k: v.copy() for k, v in feeds.items() if k in prog.graph.params}
    batch = {k: v for k, v in feeds.items() if k in prog.graph.inputs}
    state = module.init_state(params) if training else {}

    def step():
        return module.train_step(params, batch, state) if training else module.run(feeds)

    step()  # warm-up: buffers are allocated once per batch size
    tracemalloc.start()
    step()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    cache = getattr(module, f"{function}_cache").sizes  # this thread's buffers, by batch size
    buffer_bytes = sum(b.nbytes for bufs in cache.values() for b in bufs if hasattr(b, "nbytes"))
    return {"function": function, "statements": len(statements), "buffers": len(planned),
            "buffer_bytes": buffer_bytes, "step_bytes": peak}


def node_table(prog) -> list[str]:
    """The nodes of the emitted function by the names the code and the diagrams give them: what each computes,
    its shape and where its value lives."""
    function = "_train" if "_train" in prog.emitted else "_compute"
    emitted = prog.emitted[function]
    graph = emitted.graph
    rows = [f"nodes of {function}, as the code and the diagrams name them:"]
    for nid in sorted(emitted.names):
        node = graph.nodes[nid]
        fused = f"  [fused: {', '.join(graph.absorbed[nid])}]" if graph.absorbed.get(nid) else ""
        rows.append(f"  {emitted.names[nid]:<12} = {describe(node, emitted.names):<44} "
                    f"{shapes.fmt_x(node.shape) or 'scalar':<8} {emitted.storage[nid]}{fused}")
    return rows


def report(graph, prog, batch: int = 1024) -> str:
    """The text ``graphc explain`` prints."""
    records = prog.train_records or prog.records
    lines = [f"graph {graph.name!r}: {len(graph.nodes)} nodes as built"]
    for r in records:
        lines.append(f"  {r.name:<18} {r.nodes_before:>4} -> {r.nodes_after:<4} {r.summary}")
        lines.extend(f"      - {note}" for note in r.rewrites[:12])
        if len(r.rewrites) > 12:
            lines.append(f"      … and {len(r.rewrites) - 12} more")
    lines += node_table(prog)
    sizes = {d: batch for d in graph.dims()}
    stats = measure(prog, random_feeds(graph, sizes))
    at = ", ".join(f"{k}={v}" for k, v in sizes.items())
    lines.append(f"emitted {stats['function']}: {stats['statements']} statements, {stats['buffers']} planned buffers "
                 f"({stats['buffer_bytes']:,} bytes, allocated once per batch size)")
    lines.append(f"measured at {at}: {stats['step_bytes']:,} bytes allocated by one steady-state "
                 f"{'training step' if stats['function'] == '_train' else 'call'} (tracemalloc)")
    return "\n".join(lines)
