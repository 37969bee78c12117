"""The explorer: the compilation as one self-contained HTML page (``graphc explore``).

A slider walks through the stages: the forward graph, the graph with its backward (and update) part, the graph
after each optimization pass (what the pass made outlined, its rewrites listed) and the final graph. Beside the
diagram is the generated code: a click on a node marks the lines computing it, a click on a line marks its node,
and a panel gives the node's shape, dtype, size in bytes (symbolic) and the buffer it lives in. Everything is
inline (SVG, CSS, a little plain JavaScript): the page needs no network and no framework.
"""
from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graphc.core import shapes
from graphc.core.describe import describe
from graphc.core.ir import Graph
from graphc.viz import Diagram, diagram, encode, forward_ids, record_diagrams

ASSETS = "explore"  # explore.css and explore.js beside this module, inlined into the page


@dataclass(frozen=True)
class Step:
    """One stop of the slider: a diagram, what happened to get there, and the facts of its nodes."""
    label: str
    summary: str
    notes: tuple[str, ...]
    diagram: Diagram


def steps(graph: Graph, records) -> list[Step]:
    """forward → backward → each pass of ``records`` (from ``graphc.passes.optimize`` of ``graph``) → final."""
    out = [Step("forward", "the model as written: its forward graph", (),
                Diagram(graph, tuple(forward_ids(graph)), f"{graph.name} · forward"))]
    if any(n.phase != "forward" for n in graph.nodes.values()):
        out.append(Step("backward", "with the backward graph gc.grad built (and the updates of a training step)",
                        (), diagram(graph, "backward")))
    for (_, d), rec in zip(record_diagrams(graph, records)[1:], records):
        out.append(Step(f"pass {len(out) - 1}: {rec.name}", rec.summary, tuple(rec.rewrites), d))
    final = records[-1].graph if records else graph
    out.append(Step("final", "the graph the generated code computes, one statement per node", (),
                    Diagram(final, tuple(final.order()), f"{graph.name} · final")))
    return out


def size_text(node) -> str:
    """Bytes of a node's value, symbolic where its shape is: ``512·m``."""
    if node.dtype not in np.sctypeDict:
        return "?"
    count = shapes.numel(node.shape) * np.dtype(node.dtype).itemsize
    return str(count).replace("*", "·")


def facts(graph: Graph, nid: int, storage: dict[str, str]) -> dict:
    """What the page says about one node; ``storage`` maps names to where the generated code keeps them."""
    node, names = graph.nodes[nid], graph.names()
    return {"name": names[nid], "op": node.op, "phase": node.phase, "computes": describe(node, names),
            "shape": shapes.fmt_x(node.shape) or "scalar", "dtype": node.dtype, "bytes": size_text(node),
            "fused": list(graph.absorbed.get(nid, ())), "storage": storage.get(names[nid], "")}


def _svg(d: Diagram) -> str:
    """The diagram as inline SVG: no XML prolog or doctype, which only a standalone file needs."""
    text = encode(d, "svg").decode()
    return text[text.index("<svg"):]


def _code(source: str, lines: dict[str, tuple[int, int]]) -> str:
    """The source, one element per line; lines computing a node carry its name."""
    owner = {k: name for name, (a, b) in lines.items() for k in range(a, b + 1)}
    rows = []
    for k, text in enumerate(source.splitlines(), 1):
        attr = f' data-name="{html.escape(owner[k])}"' if k in owner else ""
        rows.append(f'<span class="line" id="L{k}"{attr}><i>{k}</i>{html.escape(text) or " "}</span>')
    return "".join(rows)  # each line is a block of its own: no newline between them


def page(title: str, story: list[Step], source: str, lines: dict[str, tuple[int, int]],
         storage: dict[str, str]) -> str:
    """The HTML page: ``lines`` and ``storage`` are by node name (the names the code and diagrams share)."""
    data = {"steps": [{"label": s.label, "summary": s.summary, "notes": list(s.notes),
                       "changed": sorted(s.diagram.graph.names()[i] for i in s.diagram.changed),
                       "nodes": {f"n{i}": facts(s.diagram.graph, i, storage) for i in s.diagram.ids}}
                      for s in story],
            "lines": lines}
    blob = json.dumps(data, ensure_ascii=False, sort_keys=True).replace("</", "<\\/")
    views = "\n".join(f'<div class="step" data-step="{k}"{"" if k == 0 else " hidden"}>{_svg(s.diagram)}</div>'
                      for k, s in enumerate(story))
    return TEMPLATE.format(title=html.escape(title), last=len(story) - 1, views=views, code=_code(source, lines),
                           data=blob, css=asset("css"), js=asset("js"))


def asset(kind: str) -> str:
    """The page's stylesheet or script, kept beside this module as a file of its own."""
    return (Path(__file__).parent / f"{ASSETS}.{kind}").read_text()


TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
{css}
</style>
</head>
<body>
<header>
  <h1>{title}</h1>
  <label class="slider">stage <input id="slider" type="range" min="0" max="{last}" value="0" step="1"></label>
  <span id="position"></span>
</header>
<section id="story"><h2 id="label"></h2><p id="summary"></p><ul id="notes"></ul></section>
<main>
  <div id="diagram">
{views}
  </div>
  <aside>
    <dl id="facts"><dt>node</dt><dd>click a node or a line of code</dd></dl>
    <pre id="code">{code}</pre>
  </aside>
</main>
<script type="application/json" id="data">{data}</script>
<script>
{js}
</script>
</body>
</html>
"""
