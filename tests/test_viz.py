"""Diagrams: DOT and Mermaid text, real SVG and PNG through Graphviz, every stage, and ``graphc show``."""
import os
import re
import shutil
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import graphc as gc
from graphc import viz
from graphc.cli import main
from graphc.passes import optimize

from models import m, mlp

needs_dot = pytest.mark.skipif(viz.layout_program() is None, reason="neither dot nor graphviz-pure is installed")
# every layout program this machine has, each tested on its own
PROGRAMS = [pytest.param(p, marks=pytest.mark.skipif(shutil.which(p) is None, reason=f"{p} is not installed"))
            for p in viz.LAYOUT_PROGRAMS]


@pytest.fixture(params=PROGRAMS)
def only(request, monkeypatch):
    """Run the test with one layout program: ``shutil.which`` finds no other."""
    found = shutil.which(request.param)
    monkeypatch.setattr(viz.shutil, "which", lambda name, path=None: found if name == request.param else None)
    return request.param
NODE = re.compile(r"^\s*(n\d+)[\[({]", re.M)
EDGE = re.compile(r"^\s*(n\d+) -->\|.*?\| (n\d+)$", re.M)

MODEL = '''
import graphc as gc
m = gc.dim("m")
with gc.Graph("tiny") as g:
    x = gc.input("x", (m, 4))
    t = gc.input("t", (m,), dtype="int64")
    W = gc.param("W", (4, 3), init="glorot_uniform")
    logits = (x @ W).named("logits")
    loss = gc.mean(gc.softmax_cross_entropy(logits, t))
    g.output(loss=loss, dW=gc.grad(loss, W))
'''


def deep_mlp(layers: int, width: int = 32):
    with gc.Graph("deep") as g:
        h = gc.input("x", (m, width))
        t = gc.input("t", (m,), dtype="int64")
        params = []
        for i in range(layers):
            W = gc.param(f"W{i}", (width, width), init="he_normal")
            b = gc.param(f"b{i}", (width,))
            params += [W, b]
            h = gc.relu(h @ W + b).named(f"h{i}")
        loss = gc.mean(gc.softmax_cross_entropy(h, t))
        g.output(loss=loss, **{f"d{p.name}": d for p, d in zip(params, gc.grad(loss, params))})
    return g


def shown(g, stage):
    d = viz.diagram(g, stage)
    return d.graph, d.ids


def svg_texts(data: bytes) -> set:
    root = ET.fromstring(data)
    return {"".join(t.itertext()).replace("\xa0", " ").strip() for t in root.iter("{http://www.w3.org/2000/svg}text")}


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind, width, height = struct.unpack(">I4sII", data[8:24])
    assert kind == b"IHDR"
    return width, height


# -- what a stage shows ---------------------------------------------------------------------------------------
def test_stages_select_phases():
    g, _ = mlp()
    graph, ids = shown(g, "forward")
    assert ids and all(graph.nodes[i].phase == "forward" for i in ids)
    graph, ids = shown(g, "backward")
    assert list(ids) == g.order() and any(graph.nodes[i].phase == "backward" for i in ids)
    optimized = optimize(g, 2)[0]
    graph, ids = shown(g, "optimized")
    assert list(ids) == optimized.order() and len(ids) == len(optimized.nodes) < len(g.nodes)
    with pytest.raises(gc.GraphError, match="unknown stage 'fused'"):
        g.to_dot(stage="fused")


def test_dot_is_deterministic():
    (a, _), (b, _) = mlp(), mlp()
    for stage in viz.STAGES:
        assert a.to_dot(stage=stage) == b.to_dot(stage=stage) == a.to_dot(stage=stage)
        assert a.to_mermaid(stage=stage) == b.to_mermaid(stage=stage)


def test_dot_is_the_same_in_every_process():
    code = ("import models; g, _ = models.tanh_net(); "
            "print(g.to_dot(stage='backward') + g.to_dot(stage='optimized') + g.to_mermaid(stage='optimized'))")
    path = os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])
    runs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": path}) for seed in ("1", "2")]
    outs = [run.communicate()[0] for run in runs]
    assert all(run.returncode == 0 for run in runs) and outs[0] == outs[1] and "digraph" in outs[0]


def test_dot_shows_kinds_phases_names_attributes_and_shapes():
    g, _ = mlp()
    text = g.to_dot(stage="backward")
    line = {name: next(ln for ln in text.splitlines() if re.match(rf"\s*n{nid} \[", ln))
            for name, nid in {**g.inputs, **g.params, **g.outputs}.items()}
    assert "shape=invhouse" in line["x"] and "shape=cylinder" in line["W1"]
    assert "peripheries=2" in line["loss"] and "peripheries=2" in line["dW1"]
    assert "fillcolor=\"#dbeafe\"" in line["loss"] and "fillcolor=\"#ffedd5\"" in line["dW1"]  # phase colours
    assert "subgraph cluster_forward" in text and "subgraph cluster_backward" in text
    seed = next(n for n in g.nodes.values() if n.op == "fill")
    assert re.search(rf'n{seed.id} \[[^\n]*shape=note', text)
    for name in ("x", "W1", "h", "logits", "losses", "loss", "dW1", "db2"):
        assert f">{name}<" in text
    assert "relu(" in text and "x @ W1" in text and "axis=1" in text and "/m" in text
    assert 'label=" m×12"' in text and 'label=" m int64"' in text
    assert "keepdims" not in text  # False attributes say nothing


def test_labels_print_expressions_with_input_names():
    with gc.Graph("expr") as g:
        x = gc.input("x", (m, 3))
        y = gc.input("y", (m, 3))
        d = (x - y).named("d")
        z = gc.where(d > 0, gc.sigmoid(d), y / 2).named("z")
        s = gc.sum(z, axis=1, keepdims=True).named("s")
        c = gc.const([1.0, 2.0, 3.0], name="c")
        w = (x[:, 1:] + c[1:]).named("w")
        g.output(s=s, w=w, z=z)
    assert viz.node_label(g, d.id)[1] == ["x - y"]
    assert viz.node_label(g, z.id)[1] == ["where(gt, sigmoid, scale)"]  # inputs named by what they compute
    fused = optimize(g, 2)[0]
    (z2,) = [n for n in fused.nodes.values() if n.name == "z"]
    assert viz.node_label(fused, z2.id)[1] == ["where(d > 0, sigmoid(d), y/2)"]
    assert viz.node_label(g, s.id)[1] == ["sum(z, axis=1, keepdims)"]
    assert viz.node_label(g, c.id)[1] == ["const [1., 2., 3.]"]
    sliced = g.nodes[w.id].inputs[0]
    assert viz.node_label(g, sliced)[1] == ["x[:m, 1:3]"]
    assert viz.node_label(g, w.id, shown=set(g.nodes))[1][-1] == "shape m×2"  # nothing reads it: no edge says it


def test_scale_factor_and_fused_kernels_are_shown():
    g, _ = mlp()
    text = g.to_dot(stage="optimized")
    assert "× 1/m" in text or "/m" in text
    assert "relu(xW1 + b1)" in text  # the bias add fused into the activation


# -- Mermaid ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", viz.STAGES)
def test_mermaid_has_one_node_per_node_and_one_edge_per_edge(stage):
    g, _ = mlp()
    graph, ids = shown(g, stage)
    text = g.to_mermaid(stage=stage)
    assert sorted(NODE.findall(text)) == sorted(f"n{i}" for i in ids)
    expected = sorted((f"n{s}", f"n{d}") for s, d, _ in graph.nx.subgraph(ids).edges(keys=True))
    assert sorted(EDGE.findall(text)) == expected


def test_mermaid_keeps_repeated_operands_as_the_graph_does():
    with gc.Graph("twice") as g:
        x = gc.input("x", (3, 3))
        g.output(sq=x * x, mm=x @ x)
    text = g.to_mermaid()
    sq, mm = g.outputs["sq"], g.outputs["mm"]
    edges = EDGE.findall(text)
    assert edges.count((f"n{x.id}", f"n{sq}")) == 1  # x*x is one ew node reading x once
    assert edges.count((f"n{x.id}", f"n{mm}")) == 2  # matmul(x, x) reads it at both positions
    assert g.nx.number_of_edges() == len(edges) == 3


def test_mermaid_escapes_label_text():
    with gc.Graph("cmp") as g:
        x = gc.input("x", (m,))
        g.output(big=gc.where(x > 0, x, -x))
    text = g.to_mermaid()
    labels = [ln.split('"')[1].replace("<br/>", "\n") for ln in text.splitlines() if NODE.match(ln)]
    assert any("#gt;" in label for label in labels)
    assert not any(c in label for label in labels for c in '<>"')


# -- SVG and PNG through Graphviz -------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", viz.STAGES)
def test_svg_parses_and_contains_every_label(tmp_path, stage, only):
    g, _ = mlp()
    path = gc.render(g, tmp_path / "mlp.svg", stage=stage)
    texts = svg_texts(path.read_bytes())
    graph, ids = shown(g, stage)
    for nid in ids:
        title, lines = viz.node_label(graph, nid, set(ids))
        assert title in texts, title
        for line in lines:
            assert line in texts, (title, line)
    assert "m×12" in texts


def test_png_has_the_size_graphviz_laid_out(tmp_path, only):
    g, _ = mlp()
    source = g.to_dot(stage="backward")
    plain = subprocess.run([viz.layout_program(), "-Tplain"], input=source.encode(), capture_output=True,
                           check=True).stdout
    _, _, width_in, height_in = plain.split(b"\n", 1)[0].split()[:4]
    for dpi in (96, 144):
        width, height = png_size(gc.render(g, tmp_path / f"mlp{dpi}.png", stage="backward", dpi=dpi).read_bytes())
        pad = 2 * 4 / 72  # Graphviz pads the drawing by 4 points on each side
        assert abs(width - (float(width_in) + pad) * dpi) <= 1.5
        assert abs(height - (float(height_in) + pad) * dpi) <= 1.5


@needs_dot
def test_fifty_layer_mlp_with_backward_graph_renders(tmp_path):
    g = deep_mlp(50)
    assert len(g.nodes) > 500
    texts = svg_texts(gc.render(g, tmp_path / "deep.svg", stage="backward").read_bytes())
    assert {"dW0", "dW49", "h49", "loss"} <= texts


def test_text_formats_need_no_graphviz(tmp_path):
    g, _ = mlp()
    assert gc.render(g, tmp_path / "a.dot").read_text() == g.to_dot()
    assert gc.render(g, tmp_path / "a.mmd", stage="backward").read_text() == g.to_mermaid(stage="backward")
    with pytest.raises(gc.GraphError, match=r"\.mmd"):
        gc.render(g, tmp_path / "a.jpg")


def test_without_system_graphviz_graphviz_pure_draws(tmp_path, monkeypatch):
    pure = shutil.which("graphviz-pure")
    if pure is None:
        pytest.skip("graphviz-pure is not installed")
    monkeypatch.setenv("PATH", str(tmp_path))  # no dot on it: only graphviz-pure, beside the running Python
    monkeypatch.setattr(viz.sys, "executable", str(Path(pure).parent / "python"))
    assert viz.layout_program() == pure
    g, _ = mlp()
    assert "dW1" in svg_texts(gc.render(g, tmp_path / "mlp.svg", stage="backward").read_bytes())
    assert assert_png(gc.render(g, tmp_path / "mlp.png").read_bytes())


def assert_png(data: bytes) -> bool:
    return min(png_size(data)) > 100


def test_without_graphviz_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    g, _ = mlp()
    monkeypatch.setattr(viz.shutil, "which", lambda name, path=None: None)  # neither program anywhere
    for name in ("mlp.svg", "mlp.png"):
        with pytest.raises(gc.GraphError) as info:
            gc.render(g, tmp_path / name)
        message = str(info.value)
        assert 'pip install "graphc[diagrams]"' in message and "apt-get install graphviz" in message
        assert ".dot" in message and ".mmd" in message
    assert gc.render(g, tmp_path / "mlp.dot").exists() and gc.render(g, tmp_path / "mlp.mmd").exists()
    assert not (tmp_path / "mlp.svg").exists()


def test_written_files_are_not_private(tmp_path):
    g, _ = mlp()
    umask = os.umask(0o022)
    try:
        path = gc.render(g, tmp_path / "new.dot")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644
    path.chmod(0o640)
    assert gc.render(g, path).stat().st_mode & 0o777 == 0o640  # a replaced file keeps its mode


def test_a_failed_render_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "dot"
    fake.write_text("#!/bin/sh\necho 'Error: broken layout' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(viz, "layout_program", lambda: str(fake))
    out = tmp_path / "out"
    out.mkdir()
    (out / "mlp.svg").write_text("old")
    g, _ = mlp()
    with pytest.raises(gc.GraphError, match="broken layout"):
        gc.render(g, out / "mlp.svg")
    assert (out / "mlp.svg").read_text() == "old" and os.listdir(out) == ["mlp.svg"]
    gc.render(g, out / "mlp.dot")
    assert sorted(os.listdir(out)) == ["mlp.dot", "mlp.svg"]


# -- one diagram per pass ---------------------------------------------------------------------------------------
def test_each_pass_writes_numbered_diagrams_and_outlines_rewrites(tmp_path):
    g, _ = mlp()
    _, records = optimize(g, 2)
    paths = viz.render_passes(g, tmp_path, "dot")
    assert [p.name for p in paths] == ["00-input.dot"] + [f"{n:02d}-{r.name}.dot" for n, r in enumerate(records, 1)]
    diagrams = dict(viz.pass_diagrams(g))
    for n, r in enumerate(records, 1):
        d = diagrams[f"{n:02d}-{r.name}"]
        assert d.ids == tuple(r.graph.order()) and r.name in d.title and d.notes == (r.summary, *r.rewrites)
        assert d.changed <= set(r.graph.nodes)
    fused = next(d for stem, d in diagrams.items() if stem.endswith("fuse_elementwise"))
    assert fused.changed and viz.CHANGED in viz.dot_text(fused)
    assert all(not d.changed for stem, d in diagrams.items() if stem.endswith(("-dce", "-cse")))


def test_rewritten_marks_the_rewrite_not_what_is_downstream():
    g, _ = mlp()
    records = optimize(g, 2)[1]
    k = [r.name for r in records].index("fuse_elementwise")
    before, after = records[k - 1].graph, records[k].graph
    changed = viz.rewritten(before, after)
    assert {after.nodes[i].op for i in changed} == {"ew"}
    h = next(i for i, n in after.nodes.items() if n.name == "h")
    assert h in changed  # the bias add was fused into relu
    assert not any(after.nodes[i].op == "matmul" for i in changed)  # its readers are not rewrites


# -- graphc show --------------------------------------------------------------------------------------------------
def test_show_prints_dot_and_writes_files(tmp_path, capsys):
    model = tmp_path / "tiny.py"
    model.write_text(MODEL)
    assert main(["show", str(model), "--stage", "forward"]) == 0
    assert capsys.readouterr().out.startswith('digraph "tiny"')
    assert main(["show", str(model), "-o", str(tmp_path / "tiny.mmd"), "--stage", "optimized"]) == 0
    assert (tmp_path / "tiny.mmd").read_text().startswith("---\ntitle: \"tiny · optimized")
    assert main(["show", str(model), "--each-pass", str(tmp_path / "passes"), "--format", "mmd"]) == 0
    names = sorted(os.listdir(tmp_path / "passes"))
    assert names[0] == "00-input.mmd" and any(n.endswith("-fuse_softmax_xent.mmd") for n in names)
    assert main(["show", str(model), "--train", "-o", str(tmp_path / "train.dot")]) == 0
    assert "cluster_update" in (tmp_path / "train.dot").read_text()


@needs_dot
def test_show_renders_svg_and_png(tmp_path):
    model = tmp_path / "tiny.py"
    model.write_text(MODEL)
    assert main(["show", str(model), "-o", str(tmp_path / "tiny.svg")]) == 0
    assert "dW" in svg_texts((tmp_path / "tiny.svg").read_bytes())
    assert main(["show", str(model), "-o", str(tmp_path / "tiny.png"), "--stage", "optimized"]) == 0
    assert min(png_size((tmp_path / "tiny.png").read_bytes())) > 100


def test_show_reports_errors(tmp_path, capsys):
    model = tmp_path / "tiny.py"
    model.write_text(MODEL)
    assert main(["show", str(model), "-o", str(tmp_path / "tiny.gif")]) == 2
    assert "cannot tell the diagram format" in capsys.readouterr().err
