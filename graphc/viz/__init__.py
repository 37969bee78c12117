"""Diagrams of a graph at any stage: DOT and Mermaid text, SVG and PNG through Graphviz's ``dot`` program or
graphviz-pure, its self-contained port (``pip install "graphc[diagrams]"``).

Inputs, params and constants have shapes of their own, outputs a double border, compute nodes the colour of
their phase; edges carry the symbolic shape of the value they move. Where forward and backward nodes mix, the
backward graph is laid out bottom-up beside the forward graph, so each layer's gradients sit level with the
layer. The text is deterministic (nodes in ascending id order, edges in input order).
"""
from __future__ import annotations

import html
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from graphc.core import shapes
from graphc.core.describe import describe
from graphc.core.errors import GraphError
from graphc.core.files import write_atomic
from graphc.core.ir import PHASES, Graph
from graphc.core.registry import OPS
from graphc.passes import optimize
from graphc.viz.collapse import Box, box_label, boxes

STAGES = ("forward", "backward", "optimized")
FORMATS = {".svg": "svg", ".png": "png", ".dot": "dot", ".gv": "dot", ".mmd": "mermaid", ".mermaid": "mermaid"}
EXTENSIONS = {"svg": ".svg", "png": ".png", "dot": ".dot", "mermaid": ".mmd"}

# (fill, border): light fills keep the text readable; one hue per phase, others for the sources
PHASE_COLORS = {"forward": ("#dbeafe", "#2563eb"), "backward": ("#ffedd5", "#ea580c"),
                "update": ("#dcfce7", "#16a34a")}
SOURCE_COLORS = {"input": ("#fef9c3", "#a16207"), "param": ("#ede9fe", "#7c3aed"),
                 "const": ("#f3f4f6", "#6b7280"), "fill": ("#f3f4f6", "#6b7280")}
CLUSTER_FILLS = {"forward": "#f8fafc", "backward": "#fff7ed", "update": "#f0fdf4"}
DOT_SHAPES = {"input": "invhouse", "param": "cylinder", "const": "note", "fill": "note"}
MERMAID_SHAPES = {"input": ('[/"', '"/]'), "param": ('[("', '")]'), "const": ('{{"', '"}}'),
                  "fill": ('{{"', '"}}'), "op": ('("', '")'), "output": ('[["', '"]]')}
CHANGED = "#dc2626"  # outline of the nodes a pass rewrote
FONT = "Helvetica"  # a name every layout program has metrics for
WRAP = 44  # characters per label line
MAX_LINES = 6  # per expression: fused kernels can be long
MAX_NOTES = 8  # rewrites listed under a pass's title
CROSS_WEIGHT = 8  # how hard an edge from one phase to another pulls its ends level
BIG = 300  # nodes beyond which crossing minimization is cut short


@dataclass(frozen=True)
class Diagram:
    """One picture: a graph, the ids it shows (ascending), a title, notes under it and nodes to outline."""
    graph: Graph
    ids: tuple[int, ...]
    title: str
    notes: tuple[str, ...] = ()
    changed: frozenset = frozenset()
    boxes: tuple[Box, ...] = ()  # repeated layers drawn as one node each (``collapse``)

    def key(self, nid: int) -> str:
        """The DOT node a graph node is drawn as: its own, or the box of the layers it is folded into."""
        return next((b.key for b in self.boxes if nid in b.ids), f"n{nid}")


# -- what a stage shows ---------------------------------------------------------------------------------
def diagram(graph: Graph, stage: str = "forward", opt_level: int = 2, title: str | None = None,
            collapse: bool = False) -> Diagram:
    """``forward``: the forward nodes; ``backward``: with the backward (and update) nodes; ``optimized``: the
    graph after ``graphc.passes.optimize`` at ``opt_level``, which is what the emitters see. ``collapse`` draws
    the middle of each run of repeated layers as one node per phase (``graphc.viz.collapse``)."""
    if stage not in STAGES:
        raise GraphError(f"unknown stage {stage!r}; the stages are {', '.join(STAGES)}")
    heading = f"{graph.name} · {stage}" + (f" (opt level {opt_level})" if stage == "optimized" else "")
    if stage == "optimized":
        graph = optimize(graph, opt_level)[0]
    ids = forward_ids(graph) if stage == "forward" else graph.order()
    return Diagram(graph, tuple(ids), title or heading, boxes=tuple(boxes(graph, ids)) if collapse else ())


def forward_ids(graph: Graph) -> list[int]:
    """Forward-phase nodes that depend on nothing of a later phase."""
    keep: set[int] = set()
    for nid in graph.order():
        node = graph.nodes[nid]
        if node.phase == "forward" and all(i in keep for i in node.inputs):
            keep.add(nid)
    return sorted(keep)


def edges(graph: Graph, ids) -> list[tuple[int, int, int]]:
    """``(src, dst, position)`` per input position of the shown nodes: the graph's multi-edges, in order."""
    shown = set(ids)
    return [(src, nid, pos) for nid in ids for pos, src in enumerate(graph.nodes[nid].inputs) if src in shown]


def kind(graph: Graph, nid: int) -> str:
    """How a node is drawn: as its source kind (input, param, const, fill) or as an op."""
    source = OPS[graph.nodes[nid].op].source
    return source if source in SOURCE_COLORS else "op"


def roles(graph: Graph) -> dict[int, list[str]]:
    """The names under which a node leaves the graph: ``output NAME`` or ``new W`` (a param's update)."""
    out: dict[int, list[str]] = {}
    for name, nid in graph.outputs.items():
        out.setdefault(nid, []).append(name)
    for name, nid in getattr(graph, "updates", {}).items():
        out.setdefault(nid, []).append(f"new {name}")
    return out


# -- labels -----------------------------------------------------------------------------------------------
def _init(spec) -> str:
    name, *args = spec
    return f"{name}({', '.join(f'{a:g}' for a in args)})" if args else name


def _glue(text: str) -> str:
    """``text`` with the spaces inside brackets made non-breaking: ``padding=(1, 1)`` stays on one line."""
    depth, out = 0, []
    for c in text:
        depth += (c in "([{") - (c in ")]}")
        out.append("\xa0" if c == " " and depth > 0 else c)
    return "".join(out)


def _wrap(text: str) -> list[str]:
    lines = textwrap.wrap(_glue(text), WRAP, break_long_words=True, break_on_hyphens=False) or [text]
    if len(lines) > MAX_LINES:
        lines = lines[:MAX_LINES]
        lines[-1] = lines[-1][: WRAP - 1] + "…"
    return [line.replace("\xa0", " ") for line in lines]


def _operation(graph: Graph, nid: int) -> list[str]:
    """What the node computes (the describer's words, inputs by their display names), and a source's dtype."""
    node = graph.nodes[nid]
    text = describe(node, {i: graph.display_name(i) for i in node.inputs})
    if node.op == "param":
        text += f" {_init(node.attr('init'))}"
    if OPS[node.op].source and node.dtype not in ("float32", "float64"):
        text += f" {node.dtype}"
    return _wrap(text)


def node_label(graph: Graph, nid: int, shown=None) -> tuple[str, list[str]]:
    """A node's box: its title (its name, as the generated code calls it: ``graphc.core.naming``) and the lines
    under it: what it computes, the user names fused into it, the names it leaves the graph under.

    A node none of ``shown`` reads also gets its shape, as no edge carries it.
    """
    node = graph.nodes[nid]
    title = graph.display_name(nid)
    lines = _operation(graph, nid)
    if graph.absorbed.get(nid):
        lines.append("fused: " + ", ".join(graph.absorbed[nid]))
    lines += [f"→ {role}" for role in roles(graph).get(nid, []) if role != title]
    if shown is not None and kind(graph, nid) == "op" and not any(c in shown for c in graph.consumers(nid)):
        lines.append(f"shape {shapes.fmt_x(node.shape)}" if node.shape else "scalar")
    return title, [line for line in lines if line]


def edge_label(graph: Graph, src: int) -> str:
    node = graph.nodes[src]
    text = shapes.fmt_x(node.shape)
    return text if node.dtype in ("float32", "float64") else f"{text} {node.dtype}"


def legend(d: Diagram) -> list[tuple[str, str, str]]:
    """``(text, fill, border)`` for what the diagram contains, in a fixed order."""
    graph = d.graph
    phases = {graph.nodes[i].phase for i in d.ids if kind(graph, i) == "op"}
    kinds = {kind(graph, i) for i in d.ids}
    items = [(p, *PHASE_COLORS[p]) for p in PHASES if p in phases]
    items += [(k, *SOURCE_COLORS[k]) for k in ("input", "param", "const") if k in kinds]
    if "fill" in kinds and "const" not in kinds:
        items.append(("const", *SOURCE_COLORS["fill"]))
    if any(i in roles(graph) for i in d.ids):
        items.append(("output", "#ffffff", "#111827"))
    if d.changed:
        items.append(("rewritten", "#ffffff", CHANGED))
    return items


# -- DOT ------------------------------------------------------------------------------------------------
def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _esc(text: str) -> str:
    return html.escape(text, quote=False)


def _dot_label(title: str, lines: list[str], named: bool) -> str:
    head = f"<b>{_esc(title)}</b>" if named else f'<font color="#4b5563">{_esc(title)}</font>'
    return "<" + head + "".join(f'<br/><font point-size="9">{_esc(line)}</font>' for line in lines) + ">"


def _dot_heading(d: Diagram) -> str:
    """The graph's title, the notes under it, and a legend row, as one HTML-like table."""
    rows = [f'<tr><td align="left"><font point-size="15"><b>{_esc(d.title)}</b></font></td></tr>']
    notes = list(d.notes[:MAX_NOTES])
    if len(d.notes) > MAX_NOTES:
        notes.append(f"… and {len(d.notes) - MAX_NOTES} more")
    rows += [f'<tr><td align="left"><font point-size="10">{_esc(n)}</font></td></tr>'
             for note in notes for n in textwrap.wrap(note, 110)]
    cells = "".join(f'<td bgcolor="{fill}" color="{border}" border="{2 if text in ("output", "rewritten") else 1}">'
                    f'<font point-size="10"> {_esc(text)} </font></td>' for text, fill, border in legend(d))
    rows.append(f'<tr><td align="left"><table border="0" cellspacing="3" cellpadding="2"><tr>{cells}</tr>'
                "</table></td></tr>")
    return f'<<table border="0" cellspacing="0" cellpadding="1">{"".join(rows)}</table>>'


def _dot_node(d: Diagram, nid: int, shown: set, outs: dict) -> str:
    graph = d.graph
    node = graph.nodes[nid]
    title, lines = node_label(graph, nid, shown)
    k = kind(graph, nid)
    fill, border = SOURCE_COLORS[k] if k in SOURCE_COLORS else PHASE_COLORS[node.phase]
    # outputs keep square corners: Graphviz draws no second periphery around a rounded box
    style = "filled" if k != "op" or nid in outs else "filled,rounded"
    named = bool(node.name or graph.absorbed.get(nid))
    attrs = {"label": _dot_label(title, lines, named), "shape": DOT_SHAPES.get(k, "box"),
             "style": _quote(style), "fillcolor": _quote(fill), "color": _quote(border)}
    if nid in outs:
        attrs["peripheries"] = "2"
    if nid in d.changed:
        attrs["color"], attrs["penwidth"] = _quote(CHANGED), "2.5"
    return f"n{nid} [{', '.join(f'{key}={value}' for key, value in attrs.items())}];"


def _dot_box(box: Box) -> str:
    title, lines = box_label(box)
    fill, border = PHASE_COLORS[box.phase]
    return (f'{box.key} [label={_dot_label(title, lines, True)}, shape=box3d, style="filled", '
            f'fillcolor="{fill}", color="{border}"];')


def _dot_nodes(d: Diagram) -> list[str]:
    """Node statements; where phases mix, one cluster per phase, side by side."""
    shown, outs, graph = set(d.ids), roles(d.graph), d.graph
    folded = {i for b in d.boxes for i in b.ids}
    by_phase = {p: [_dot_node(d, i, shown, outs) for i in d.ids if graph.nodes[i].phase == p and i not in folded]
                + [_dot_box(b) for b in d.boxes if b.phase == p] for p in PHASES}
    present = [p for p in PHASES if by_phase[p]]
    if len(present) < 2:
        return ["  " + line for p in present for line in by_phase[p]]
    lines = []
    for phase in present:
        lines.append(f'  subgraph cluster_{phase} {{ label="{phase}"; style=filled; '
                     f'color="{CLUSTER_FILLS[phase]}"; fontsize=13; fontcolor="#374151";')
        lines.append(f'    anchor_{phase} [style=invis, shape=point, width=0, height=0, label=""];')
        lines += ["    " + line for line in by_phase[phase]]
        lines.append("  }")
    # invisible anchors, one per cluster, chained on one rank: clusters always run forward, backward, update
    # from left to right, whatever the layout heuristics would prefer for this graph
    chain = " -> ".join(f"anchor_{p}" for p in present)
    lines.append(f"  {{ rank=same; {chain} [style=invis]; }}")
    return lines


def _dot_edges(d: Diagram) -> list[str]:
    """One edge per input position; into or out of a box of folded layers once per pair of ends."""
    seen, out = set(), []
    for src, dst, _ in edges(d.graph, d.ids):
        ends = d.key(src), d.key(dst)
        if ends[0] != ends[1] and (not d.boxes or ends not in seen):
            seen.add(ends)
            out.append(_dot_edge(d.graph, src, dst, *ends))
    return out


def _dot_edge(graph: Graph, src: int, dst: int, tail: str, head: str) -> str:
    """An edge, labelled with the shape it carries. One inside the backward graph is laid out upwards (written
    reversed, arrowhead still at its consumer): the backward pass climbs back up beside the forward pass, and
    the weighted edges from one phase to the next keep each layer's gradient level with the layer."""
    phase, from_phase = graph.nodes[dst].phase, graph.nodes[src].phase
    colour = PHASE_COLORS[phase][1] if phase != "forward" else "#6b7280"
    attrs = f"label={_quote(' ' + edge_label(graph, src))}, color={_quote(colour)}"
    if phase == from_phase == "backward":
        return f"  {head} -> {tail} [{attrs}, dir=back];"
    if phase != from_phase:
        return f"  {tail} -> {head} [{attrs}, weight={CROSS_WEIGHT}];"
    return f"  {tail} -> {head} [{attrs}];"


def dot_text(d: Diagram, rankdir: str = "TB", dpi: int | None = None) -> str:
    """The DOT source of a diagram."""
    options = [f"rankdir={rankdir}", f'fontname="{FONT}"', "labelloc=t", "labeljust=l", "newrank=true",
               "nodesep=0.25", "ranksep=0.3", f"label={_dot_heading(d)}"]
    if dpi:
        options.append(f"dpi={int(dpi)}")
    if len(d.ids) > BIG:
        options.append("mclimit=0.3")
    lines = [f"digraph {_quote(d.graph.name)} {{",
             f"  graph [{', '.join(options)}];",
             f'  node [fontname="{FONT}", fontsize=11, margin="0.12,0.04", height=0.3, penwidth=1.2];',
             f'  edge [fontname="{FONT}", fontsize=8, fontcolor="#4b5563", color="#6b7280", arrowsize=0.6];',
             *_dot_nodes(d),
             *_dot_edges(d),
             "}"]
    return "\n".join(lines) + "\n"


def to_dot(graph: Graph, stage: str = "forward", *, opt_level: int = 2, title: str | None = None,
           rankdir: str = "TB", dpi: int | None = None, collapse: bool = False) -> str:
    """The DOT text of ``graph`` at ``stage`` (forward, backward or optimized); ``dpi`` applies to PNG."""
    return dot_text(diagram(graph, stage, opt_level, title, collapse), rankdir, dpi)


# -- Mermaid ----------------------------------------------------------------------------------------------
def _mm(text: str) -> str:
    """Text inside a quoted Mermaid label, with Mermaid's entity codes for what would end or mark it up."""
    return text.replace("#", "#35;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")


def mermaid_text(d: Diagram) -> str:
    """A Mermaid flowchart: one node per graph node, one edge per input position."""
    graph, shown, outs = d.graph, set(d.ids), roles(d.graph)
    lines = ["---", f"title: {_quote(d.title)}", "---", "flowchart TB"]
    lines += [f"  %% {note.replace('{', '(').replace('}', ')')}" for note in d.notes]  # braces open directives
    classes: dict[str, list[str]] = {}
    for nid in d.ids:
        title, details = node_label(graph, nid, shown)
        k = kind(graph, nid)
        left, right = MERMAID_SHAPES["output" if k == "op" and nid in outs else k]
        lines.append(f"  n{nid}{left}{'<br/>'.join(_mm(t) for t in (title, *details))}{right}")
        groups = [graph.nodes[nid].phase if k == "op" else "constant" if k in ("const", "fill") else k]
        groups += ["output"] * (nid in outs) + ["rewritten"] * (nid in d.changed)
        for group in groups:
            classes.setdefault(group, []).append(f"n{nid}")
    lines += [f'  n{src} -->|"{_mm(edge_label(graph, src))}"| n{dst}' for src, dst, _ in edges(graph, d.ids)]
    styles = {**{p: f"fill:{f},stroke:{b},color:#111827" for p, (f, b) in PHASE_COLORS.items()},
              **{("constant" if k == "const" else k): f"fill:{f},stroke:{b},color:#111827"
                 for k, (f, b) in SOURCE_COLORS.items() if k != "fill"},
              "output": "stroke-width:3px", "rewritten": f"stroke:{CHANGED},stroke-width:3px"}
    for group, style in styles.items():
        if group in classes:
            lines += [f"  classDef {group} {style}", f"  class {','.join(classes[group])} {group}"]
    return "\n".join(lines) + "\n"


def to_mermaid(graph: Graph, stage: str = "forward", *, opt_level: int = 2, title: str | None = None) -> str:
    """The Mermaid flowchart of ``graph`` at ``stage`` (forward, backward or optimized)."""
    return mermaid_text(diagram(graph, stage, opt_level, title))


# -- files ------------------------------------------------------------------------------------------------
def file_format(path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise GraphError(f"cannot tell the diagram format of {str(path)!r} from its suffix: use "
                         f"{', '.join(sorted(FORMATS))}")
    return FORMATS[suffix]


# Layout programs, best first: Graphviz's own `dot`, else graphviz-pure (a self-contained port of dot from
# PyPI, `pip install "graphc[diagrams]"`), which needs no system libraries and takes dot's flags.
LAYOUT_PROGRAMS = ("dot", "graphviz-pure")
INSTALL_HINT = ('Install one: `pip install "graphc[diagrams]"` (graphviz-pure, a self-contained port of dot: no '
                "system libraries), or Graphviz itself: `sudo apt-get install graphviz` (Debian/Ubuntu), "
                "`brew install graphviz` (macOS) or `conda install graphviz`. A .dot or .mmd (Mermaid) file needs "
                "neither.")


def layout_program() -> str | None:
    """The path of the first layout program found: on PATH, or beside the running Python (a virtual
    environment's bin folder, where pip puts graphviz-pure, even when the environment is not activated)."""
    for name in LAYOUT_PROGRAMS:
        found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
        if found:
            return found
    return None


def graphviz(source: str, fmt: str, what: str) -> bytes:
    """``source`` (DOT) laid out and drawn as ``fmt`` (svg, png) by the layout program found."""
    exe = layout_program()
    if exe is None:
        raise GraphError(f"drawing {what} as {fmt.upper()} needs a Graphviz layout program; neither "
                         f"{' nor '.join(f'`{p}`' for p in LAYOUT_PROGRAMS)} is installed. {INSTALL_HINT}")
    done = subprocess.run([exe, f"-T{fmt}"], input=source.encode(), capture_output=True, check=False)
    if done.returncode != 0:
        raise GraphError(f"{Path(exe).name} failed drawing {what}: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def encode(d: Diagram, fmt: str, dpi: int | None = None) -> bytes:
    """A diagram's file content in ``fmt`` (svg, png, dot, mermaid)."""
    if fmt == "mermaid":
        return mermaid_text(d).encode()
    source = dot_text(d, dpi=dpi)
    return source.encode() if fmt == "dot" else graphviz(source, fmt, repr(d.title))


def render(graph: Graph, path, stage: str = "forward", *, opt_level: int = 2, title: str | None = None,
           dpi: int | None = None, collapse: bool = False) -> Path:
    """Draw ``graph`` at ``stage`` into ``path``: .svg or .png through Graphviz, or .dot / .mmd text;
    ``collapse`` folds repeated layers (SVG, PNG and DOT)."""
    fmt = file_format(path)
    return write_atomic(path, encode(diagram(graph, stage, opt_level, title, collapse), fmt, dpi))


# -- one diagram per optimization pass ----------------------------------------------------------------
def _local(node) -> tuple:
    return node.op, node.attrs, node.shape, node.phase


def _numbered(graph: Graph, table: dict) -> dict[int, int]:
    """Structural numbers: equal for nodes of equal op, attributes and (numbered) inputs, across graphs that
    share ``table``. Numbers, not nested keys, keep hashing linear in deep graphs."""
    out: dict[int, int] = {}
    for nid in graph.order():
        node = graph.nodes[nid]
        out[nid] = table.setdefault((*_local(node), tuple(out[i] for i in node.inputs)), len(table))
    return out


def rewritten(before: Graph, after: Graph) -> frozenset:
    """Ids of ``after`` that a pass made: nodes that no node of ``before`` matches.

    A node downstream of a rewrite, the same op reading new inputs, is not counted: only the rewrite is.
    """
    table: dict = {}
    old = set(_numbered(before, table).values())
    old_local = {_local(n) for n in before.nodes.values()}
    keys = _numbered(after, table)

    def made(nid: int) -> bool:
        node = after.nodes[nid]
        return keys[nid] not in old and (_local(node) not in old_local or all(keys[i] in old for i in node.inputs))

    return frozenset(nid for nid in keys if made(nid))


def pass_diagrams(graph: Graph, opt_level: int = 2, disable=()) -> list[tuple[str, Diagram]]:
    """``(file stem, diagram)`` for the graph before optimization and after each pass, numbered."""
    return record_diagrams(graph, optimize(graph, opt_level, disable)[1])


def record_diagrams(graph: Graph, records) -> list[tuple[str, Diagram]]:
    """``(file stem, diagram)`` for ``graph`` and the graph each pass record holds; what a pass made is outlined."""
    out = [("00-input", Diagram(graph, tuple(graph.order()), f"{graph.name} · before optimization"))]
    before = graph
    for n, rec in enumerate(records, 1):
        title = f"{graph.name} · pass {n}: {rec.name} ({rec.nodes_before} → {rec.nodes_after} nodes)"
        notes = (rec.summary, *rec.rewrites) if rec.summary else tuple(rec.rewrites)
        out.append((f"{n:02d}-{rec.name}", Diagram(rec.graph, tuple(rec.graph.order()), title, notes,
                                                   rewritten(before, rec.graph))))
        before = rec.graph
    return out


def render_passes(graph: Graph, directory, fmt: str = "svg", *, opt_level: int = 2, disable=(),
                  dpi: int | None = None) -> list[Path]:
    """Write one numbered diagram per optimization pass into ``directory``; what a pass rewrote is outlined."""
    if fmt not in EXTENSIONS:
        raise GraphError(f"unknown diagram format {fmt!r}; use one of {', '.join(EXTENSIONS)}")
    directory = Path(directory)
    return [write_atomic(directory / f"{stem}{EXTENSIONS[fmt]}", encode(d, fmt, dpi))
            for stem, d in pass_diagrams(graph, opt_level, disable)]
