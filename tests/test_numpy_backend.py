"""The NumPy backend: every op and model, at every opt level, matches the reference evaluator."""
import numpy as np
import pytest

import graphc as gc
from graphc.gradcheck import rel_error

from helpers import op_graph, random_feeds
from models import MODELS, feeds_with_params
from test_op_gradients import CASES

TOL = {"float64": 1e-10, "float32": 1e-5}


def assert_matches_reference(g, feeds, opt_level, dtype="float64"):
    expected = g.evaluate(feeds)
    got = gc.compile(g, backend="numpy", opt_level=opt_level)(feeds)
    assert set(got) == set(expected)
    for name in expected:
        assert got[name].shape == expected[name].shape, name
        assert rel_error(got[name], expected[name]) <= TOL[dtype], name


@pytest.mark.parametrize("opt_level", [0, 1, 2])
@pytest.mark.parametrize("op,index", [(op, i) for op, cases in CASES.items() for i in range(len(cases))])
def test_every_op_case_matches_reference(op, index, opt_level):
    fn, shapes, opts = CASES[op][index]
    g = op_graph(fn, *shapes)
    assert_matches_reference(g, random_feeds(g, seed=index, **opts), opt_level)


@pytest.mark.parametrize("opt_level", [0, 1, 2])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_match_reference(name, dtype, opt_level):
    g, feeds = MODELS[name](dtype=dtype)
    assert_matches_reference(g, feeds_with_params(g, feeds), opt_level, dtype)


@pytest.mark.parametrize("axis", [0, -1])
def test_cross_entropy_with_integer_labels_on_any_axis(axis):
    with gc.Graph("xent_axis") as g:
        z = gc.input("z", (3, 5), dtype="float64")
        t = gc.input("t", (5,) if axis == 0 else (3,), dtype="int64")
        loss = gc.mean(gc.softmax_cross_entropy(z, t, axis=axis))
        g.output(loss=loss, dz=gc.grad(loss, z))
    rng = np.random.default_rng(0)
    feeds = {"z": rng.normal(size=(3, 5)), "t": rng.integers(0, 3 if axis == 0 else 5, size=5 if axis == 0 else 3)}
    for level in (0, 1, 2):
        assert_matches_reference(g, feeds, level)


def test_blas_fast_paths_and_their_numpy_fallbacks_agree():
    """With SciPy the update and bias GEMMs run through BLAS in place; without it, through NumPy alone."""
    g, feeds = MODELS["tanh_net"](dtype="float64")
    m_ = gc.dim("m")
    with gc.Graph("plain") as plain:  # a model whose weight gradients are not outputs: updates fuse into GEMMs
        x, t = gc.input("x", (m_, 5), dtype="float64"), gc.input("t", (m_, 2), dtype="float64")
        W1, b1 = gc.param("W1", (5, 6), dtype="float64", init="glorot_uniform"), gc.param("b1", (6,), "float64")
        W2 = gc.param("W2", (6, 2), dtype="float64", init="glorot_uniform")
        plain.output(loss=gc.mean((gc.tanh(x @ W1 + b1) @ W2 - t) ** 2))
    for graph in (g, plain):
        prog = gc.compile(graph, loss="loss", optimizer=gc.SGD(lr=0.1))
        assert "_gemm(" in prog.source and "_axpy(" in prog.source
        fast, slow = prog.init_params(0), prog.init_params(0)
        out_fast = prog.train_step(fast, feeds)["loss"].copy()
        module = prog.module
        saved = module._GEMM, module._AXPY
        module._GEMM, module._AXPY = {}, {}
        try:
            out_slow = prog.train_step(slow, feeds)["loss"].copy()
        finally:
            module._GEMM, module._AXPY = saved
        assert rel_error(out_fast, out_slow) <= 1e-12
        for name in fast:
            assert rel_error(fast[name], slow[name]) <= 1e-12, name
