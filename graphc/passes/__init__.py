"""The passes layer. The optimization pipeline: an explicit ordered list of passes, each a plain
``graph -> graph`` function.

Each pass's docstring starts with its ``before -> after`` line. After each pass ``validate()`` runs; a failure
names the pass. The manager records what each pass did, for ``graphc explain`` and the per-pass diagrams.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from graphc.core.errors import GraphError
from graphc.core.ir import Graph
from graphc.passes.cse import cse
from graphc.passes.dce import dce
from graphc.passes.differentiate import differentiate
from graphc.passes.expand_softmax_xent import expand_softmax_xent
from graphc.passes.fold_constants import fold_constants
from graphc.passes.fuse_elementwise import fuse_elementwise
from graphc.passes.fuse_reductions import fuse_reductions
from graphc.passes.fuse_softmax_xent import fuse_softmax_xent
from graphc.passes.fuse_softmax_xent_grad import fuse_softmax_xent_grad
from graphc.passes.fuse_updates import fuse_updates
from graphc.passes.rowwise_softmax_xent import rowwise_softmax_xent
from graphc.passes.scale import scale
from graphc.passes.simplify import simplify

# (pass, lowest opt level that runs it), in order
PIPELINE = [
    (fuse_softmax_xent, 2),
    (differentiate, 2),
    (simplify, 1),
    (fold_constants, 1),
    (cse, 1),
    (dce, 1),
    (scale, 2),
    (fold_constants, 2),
    (fuse_softmax_xent_grad, 2),
    (expand_softmax_xent, 2),
    (fuse_elementwise, 2),
    (fuse_reductions, 2),
    (dce, 1),
    (fuse_updates, 2),
]
# where a backend computes differently: the pass it runs in place of the pipeline's
INSTEAD = {"cupy": {expand_softmax_xent: rowwise_softmax_xent}}
PASS_NAMES = sorted({p.__name__ for p, _ in PIPELINE} | {p.__name__ for i in INSTEAD.values() for p in i.values()})


@dataclass
class PassRecord:
    """What one pass did: node counts before/after, the rewrites it applied, and the graph it produced."""
    name: str
    summary: str
    nodes_before: int
    nodes_after: int
    rewrites: list[str] = field(default_factory=list)
    graph: Graph | None = None


class Rewrites(list):
    """Collects human-readable notes of the rewrites a pass applies (``note(...)``)."""

    def note(self, text: str) -> None:
        self.append(text)


def optimize(graph: Graph, opt_level: int = 2, disable=(), backend: str = "numpy") -> tuple[Graph, list[PassRecord]]:
    """Run the pipeline at ``opt_level`` (0, 1, 2) for ``backend``, skipping passes named in ``disable``."""
    unknown = set(disable) - set(PASS_NAMES)
    if unknown:
        raise GraphError(f"unknown passes {sorted(unknown)}; the passes are {PASS_NAMES}")
    if opt_level not in (0, 1, 2):
        raise GraphError(f"opt_level must be 0, 1 or 2, not {opt_level!r}")
    records, instead = [], INSTEAD.get(backend, {})
    for planned, level in PIPELINE:
        fn = instead.get(planned, planned)
        if level > opt_level or {planned.__name__, fn.__name__} & set(disable):
            continue
        notes = Rewrites()
        before = len(graph.nodes)
        try:
            graph = fn(graph, notes)
            graph.validate()
        except GraphError as exc:
            raise GraphError(f"pass {fn.__name__} produced an invalid graph: {exc}") from exc
        summary = (fn.__doc__ or "").strip().splitlines()[0]
        records.append(PassRecord(fn.__name__, summary, before, len(graph.nodes), list(notes), graph))
    return graph, records
