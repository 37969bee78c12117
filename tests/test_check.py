"""``graphc check``: gradients against finite differences on a float64 twin of the graph, a table and an exit code."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import graphc as gc
from graphc import OPS, cli
from graphc.cli.check import as_float64, check_graph, parse_dims, table

m = gc.dim("m")

MLP = '''
import graphc as gc

m = gc.dim("m")
with gc.Graph("mlp") as g:
    x = gc.input("x", (m, 6))
    t = gc.input("t", (m,), dtype="int64")
    W1 = gc.param("W1", (6, 5), init="he_normal")
    b1 = gc.param("b1", (5,))
    W2 = gc.param("W2", (5, 4), init="glorot_uniform")
    b2 = gc.param("b2", (4,))
    h = gc.relu(x @ W1 + b1)
    loss = gc.mean(gc.softmax_cross_entropy(h @ W2 + b2, t))
    g.output(loss=loss)
'''


def model(tmp_path, source=MLP):
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(source))
    return path


def graphc(*args, cwd):
    return subprocess.run([sys.executable, "-m", "graphc.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def mlp_graph(tmp_path):
    return cli.load_graphs(str(model(tmp_path)))[0]


def test_correct_mlp_passes_with_a_row_per_param(tmp_path):
    proc = graphc("check", model(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "tolerance 0.0001" in lines[0]  # a float32 graph
    assert [c.strip() for c in lines[1].split(" | ")][:4] == ["param", "shape", "max |grad|", "max rel error"]
    rows = {ln.split(" | ")[0].strip(): ln for ln in lines[3:-1]}
    assert set(rows) == {"W1", "b1", "W2", "b2"}
    assert all(r.rstrip().endswith("ok") for r in rows.values())
    assert "(6, 5)" in rows["W1"] and "(4,)" in rows["b2"]
    assert lines[-1] == "all gradients match"


def test_dims_tol_and_float64_tolerance(tmp_path):
    source = MLP.replace('(m, 6))', '(m, 6), dtype="float64")').replace('init="he_normal")', 'init="he_normal", '
                                                                          'dtype="float64")')
    proc = graphc("check", model(tmp_path, source), "--dims", "m=5", "--tol", "1e-5", "--inputs", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "tolerance 1e-05" in proc.stdout
    assert "x     | (5, 6)" in proc.stdout  # the float input, at the bound batch size


def test_usage_errors_exit_2(tmp_path, capsys):
    path = str(model(tmp_path))
    for args, message in ((["--dims", "n=2"], "no dims ['n']"), (["--dims", "m"], "expected NAME=SIZE"),
                          (["--loss", "nope"], "no output 'nope'")):
        assert cli.main(["check", path, *args]) == 2
        assert message in capsys.readouterr().err


def test_as_float64_widens_every_float32_tensor_and_keeps_values():
    with gc.Graph("mixed") as g:
        x = gc.input("x", (m, 3))
        t = gc.input("t", (m,), dtype="int64")
        W = gc.param("W", (3, 4), init="glorot_uniform")
        c = gc.const(np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32))
        y = gc.tanh(x @ W) * c + gc.one_hot(t, 4)
        loss = gc.sum(y * y)
        g.output(loss=loss, dW=gc.grad(loss, W), count=gc.sum(t))
    twin = as_float64(g)
    floats = {n.dtype for n in twin.nodes.values()} - {"int64", "bool"}
    assert floats == {"float64"}
    assert dict(twin.nodes[twin.outputs["dW"]].attrs) == dict(g.nodes[g.outputs["dW"]].attrs)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(size=(2, 3)).astype(np.float32), "t": np.array([1, 3]), **gc.init_params(g)}
    wide = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in feeds.items()}
    want, got = g.evaluate(feeds), twin.evaluate(wide)
    for name in want:
        assert got[name].dtype == (np.int64 if name == "count" else np.float64)
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)


def test_large_params_are_sampled(tmp_path):
    rows = check_graph(mlp_graph(tmp_path), max_entries=7)
    assert [r.checked for r in rows] == [7, 5, 7, 4]
    assert "(6, 5) (7 sampled)" in table(rows) and all(r.ok for r in rows)


def test_wrong_vjp_is_reported_above_tolerance(tmp_path, monkeypatch, capsys):
    rule = OPS["matmul"].vjp

    def wrong(out, g, a, b):  # the weight's gradient 1% too large
        da, db = rule(out, g, a, b)
        return [da, db * 1.01]
    monkeypatch.setitem(OPS, "matmul", dataclasses.replace(OPS["matmul"], vjp=wrong))
    rows = {r.name: r for r in check_graph(mlp_graph(tmp_path))}
    assert not rows["W1"].ok and not rows["W2"].ok and rows["b1"].ok and rows["b2"].ok
    for name in ("W1", "W2"):  # both the evaluator and the compiled module carry the wrong rule
        assert rows[name].error_graph == pytest.approx(0.01 / 1.01, rel=1e-3)
        assert rows[name].error_compiled == pytest.approx(0.01 / 1.01, rel=1e-3)
    assert cli.main(["check", str(model(tmp_path))]) == 1
    out = capsys.readouterr().out
    assert "FAIL: W1, W2 above tolerance" in out and out.count("FAIL") == 3


def test_parse_dims():
    assert parse_dims(["m=4", "n=1"]) == {"m": 4, "n": 1}
    with pytest.raises(gc.GraphError):
        parse_dims(["m=0"])
