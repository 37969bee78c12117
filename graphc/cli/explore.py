"""``graphc explore``: the compilation of a graph as one self-contained HTML page (``graphc.viz.explore``)."""
from __future__ import annotations

from pathlib import Path

from graphc.core.files import write_atomic
from graphc.optim import training_graph
from graphc.program import compile as compile_graph
from graphc.viz.explore import page, steps


def explore(graph, path, *, backend: str = "numpy", opt_level: int = 2, loss: str | None = None, optimizer=None,
            disable=()) -> Path:
    """Write the explorer page of ``graph`` to ``path``. With ``loss`` and ``optimizer`` it tells the story of
    the training step (as ``graphc explain`` does), else of the graph's own outputs."""
    prog = compile_graph(graph, backend=backend, opt_level=opt_level, loss=loss, optimizer=optimizer,
                         disable=disable)
    training = loss is not None and "_train" in prog.emitted
    start = training_graph(graph, loss, optimizer) if training else graph
    emitted = prog.emitted["_train" if training else "_compute"]
    lines = {emitted.names[nid]: span for nid, span in emitted.lines.items()}
    storage = {emitted.names[nid]: where for nid, where in emitted.storage.items()}
    story = steps(start, prog.train_records if training else prog.records)
    what = "training step" if training else "outputs"
    text = page(f"{graph.name} · {what} · graphc explore", story, prog.source, lines, storage)
    return write_atomic(path, text.encode())
