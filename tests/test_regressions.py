"""Regressions found by the random-graph tests and by review, each as its minimal graph."""
import numpy as np
import pytest

import graphc as gc
from graphc.transforms.gradcheck import rel_error

from helpers import m


def test_scalar_cse_subexpression_is_not_left_unnamed():
    """Two means of one shared value: dx = e·(1−t²)·(a/(4m) + b/(4m)); sympy.cse names 1/(4m), and the
    NumPy emitter printed ``b * _cse0`` without ever defining ``_cse0`` (NameError at opt level 2)."""
    with gc.Graph("r") as g:
        x, a, b = (gc.input(n, (m, 4), dtype="float64") for n in "xab")
        e = gc.exp(gc.tanh(x))
        loss = gc.mean(e * a) + gc.mean(e * b)
        g.output(loss=loss, dx=gc.grad(loss, x))
    rng = np.random.default_rng(0)
    feeds = {n: rng.normal(size=(3, 4)) for n in "xab"}
    want = g.evaluate(feeds)
    for level in (0, 1, 2):
        got = gc.compile(g, opt_level=level)(feeds)
        assert all(rel_error(got[k], want[k]) <= 1e-10 for k in want)


def test_cse_temporary_before_the_target_is_known():
    """log_softmax of log_softmax of e/(1.5 + t), e = exp(t), t = tanh(x): sympy.cse names a subexpression of the
    backward chain, and materializing it read the printer's ``protected`` flag before ``run`` had set it
    (AttributeError while emitting); then an expression over that temporary passed for a scalar and named
    _cse0 without defining it."""
    with gc.Graph("r") as g:
        x, w = (gc.input(n, (m, 4), dtype="float64") for n in "xw")
        v = gc.exp(gc.tanh(x)) / (1.5 + gc.tanh(x))
        loss = gc.sum(gc.log_softmax(gc.log_softmax(v, axis=-1), axis=-1) * w)
        g.output(loss=loss, dx=gc.grad(loss, x))
    rng = np.random.default_rng(0)
    feeds = {n: rng.normal(size=(3, 4)) for n in "xw"}
    want = g.evaluate(feeds)
    for level in (0, 1, 2):
        got = gc.compile(g, opt_level=level)(feeds)
        assert all(rel_error(got[k], want[k]) <= 1e-10 for k in want)


@pytest.mark.parametrize("level", [0, 1, 2])
def test_an_update_never_reads_a_param_another_update_already_wrote(level):
    """d(a·b·x)/db reads a: a's in-place update must wait until b's has read the old a (also through a view)."""
    rng = np.random.default_rng(0)
    with gc.Graph("coupled") as g:
        x = gc.input("x", (3,), dtype="float64")
        a, b = gc.param("a", (3,), dtype="float64"), gc.param("b", (3,), dtype="float64")
        c, d = gc.param("c", (2, 3), dtype="float64"), gc.param("d", (3, 2), dtype="float64")
        g.output(loss=gc.sum(a * b * x) + gc.sum(c * gc.transpose(d)) + gc.sum(x))
    start = {"a": rng.normal(size=3), "b": rng.normal(size=3), "c": rng.normal(size=(2, 3)),
             "d": rng.normal(size=(3, 2))}
    X = rng.normal(size=3)
    params = {k: v.copy() for k, v in start.items()}
    gc.compile(g, opt_level=level, loss="loss", optimizer=gc.SGD(lr=0.1)).train_step(params, {"x": X})
    expected = {"a": start["a"] - 0.1 * start["b"] * X, "b": start["b"] - 0.1 * start["a"] * X,
                "c": start["c"] - 0.1 * start["d"].T, "d": start["d"] - 0.1 * start["c"].T}
    for name in expected:
        assert rel_error(params[name], expected[name]) <= 1e-12, name


def test_a_comparison_sympy_decides_is_still_boolean():
    with gc.Graph("same") as g:
        x = gc.input("x", (3,), dtype="float64")
        never = x > x  # sympy folds it to False
        g.output(y=gc.where(never, x, 2 * x))
    assert never.dtype == "bool"
    feeds = {"x": np.arange(3.0)}
    assert np.array_equal(gc.compile(g)(feeds)["y"], g.evaluate(feeds)["y"])


def test_where_between_booleans_is_boolean():
    """gc.where(c, a, b) of bool a and b gave int64 (the choice was typed as arithmetic on 0/1)."""
    with gc.Graph("bools") as g:
        x = gc.input("x", (m, 3), dtype="float64")
        y = gc.where(x > 0, x > 1, x < -1)
        g.output(y=y)
    assert y.dtype == "bool"
    feeds = {"x": np.array([[-2.0, 0.5, 2.0], [-0.5, 1.5, -1.5]])}
    expected = np.where(feeds["x"] > 0, feeds["x"] > 1, feeds["x"] < -1)
    for level in (0, 2):
        assert np.array_equal(gc.compile(g, opt_level=level)(feeds)["y"], expected)


def test_a_zero_dimensional_constant_stays_zero_dimensional():
    """gc.const(np.float32(2)) had shape (1,): np.ascontiguousarray makes a 0-d array 1-d."""
    with gc.Graph("scalar") as g:
        x = gc.input("x", (3,), dtype="float64")
        two = gc.const(np.float64(2.0))
        g.output(y=x * two)
    assert two.shape == ()
    assert np.array_equal(gc.compile(g)({"x": np.ones(3)})["y"], np.full(3, 2.0))


def test_a_constant_holding_inf_or_nan_is_written_into_a_module_that_runs():
    """A constant with inf or NaN was written as ``np.array([inf, …])``: NameError: name 'inf' is not defined."""
    with gc.Graph("inf") as g:
        x = gc.input("x", (3,), dtype="float64")
        g.output(y=gc.maximum(x, gc.const([-np.inf, 0.0, np.nan], dtype="float64")))
    y = gc.compile(g)({"x": np.zeros(3)})["y"]
    np.testing.assert_array_equal(y, [0.0, 0.0, np.nan])


def test_the_evaluator_refuses_feeds_of_another_dtype_as_the_module_does():
    """g.evaluate took an int8 feed for an int64 input (and cast it); the generated module refuses it."""
    with gc.Graph("ids") as g:
        ids = gc.input("ids", (m,), dtype="int64")
        g.output(y=ids * 2)
    with pytest.raises(gc.GraphError, match="expects int64, got int8"):
        g.evaluate({"ids": np.arange(3, dtype=np.int8)})
    with pytest.raises(ValueError, match="ids expects int64"):
        gc.compile(g)({"ids": np.arange(3, dtype=np.int8)})


def test_a_graph_gives_its_tensors_by_name():
    with gc.Graph("named") as g:
        x = gc.input("x", (m, 2))
        W = gc.param("W", (2, 2))
        g.output(y=x @ W)
    assert g["x"].id == x.id and g["W"].id == W.id and g["y"].id == g.outputs["y"]
    with pytest.raises(gc.GraphError, match="no input, param or output 'z'"):
        g["z"]


def test_equality_of_tensors_is_elementwise_and_a_tensor_has_no_truth_value():
    """x == 1 and x != 1 compare elementwise, as in NumPy (they were Python's identity: False and True, which
    gc.where took as its condition); a tensor in an ``if`` is refused; handles stay usable as dict keys."""
    m = gc.dim("m")
    with gc.Graph("eq") as g:
        x = gc.input("x", (m, 4), dtype="float64")
        g.output(y=gc.where(x == 1, 100.0, x), z=gc.where(x != 1, 100.0, x), r=gc.where(2 == x, 1.0, 0.0))
        assert {x: "kept"}[x] == "kept"
        with pytest.raises(gc.GraphError, match="no truth value"):
            bool(x > 0)
    X = np.array([[0.0, 1.0, 2.0, 3.0]])
    for level in (0, 2):
        got = gc.compile(g, opt_level=level)({"x": X})
        np.testing.assert_array_equal(got["y"], np.where(X == 1, 100.0, X))
        np.testing.assert_array_equal(got["z"], np.where(X != 1, 100.0, X))
        np.testing.assert_array_equal(got["r"], (X == 2).astype(float))
