"""The NumPy backend: every op and model, at every opt level, matches the reference evaluator."""
import numpy as np
import pytest

import graphc as gc
from graphc.transforms.gradcheck import rel_error

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



LEADING_SUMS = {  # sums over leading axes (and others), of arrays and of views: (graphc, NumPy, shape)
    "bias gradient": (lambda x: gc.sum(x, axis=0), lambda a: a.sum(axis=0), (8, 5)),
    "keepdims": (lambda x: gc.sum(x, axis=0, keepdims=True), lambda a: a.sum(axis=0, keepdims=True), (8, 5)),
    "two leading axes": (lambda x: gc.sum(x, axis=(0, 1)), lambda a: a.sum(axis=(0, 1)), (8, 3, 4)),
    "3-d keepdims": (lambda x: gc.sum(x, axis=(0, 1), keepdims=True), lambda a: a.sum(axis=(0, 1), keepdims=True),
                     (8, 3, 4)),
    "one of three": (lambda x: gc.sum(x, axis=0), lambda a: a.sum(axis=0), (8, 3, 4)),
    "of a transpose": (lambda x: gc.sum(gc.transpose(x), axis=0), lambda a: a.T.sum(axis=0), (8, 5)),
    "of a 3-d transpose": (lambda x: gc.sum(gc.transpose(x, (2, 0, 1)), axis=(0, 1)),
                           lambda a: a.transpose(2, 0, 1).sum(axis=(0, 1)), (8, 3, 4)),
    "of every other row": (lambda x: gc.sum(x[::2], axis=0), lambda a: a[::2].sum(axis=0), (8, 5)),
    "of size-1 rows": (lambda x: gc.sum(x, axis=0), lambda a: a.sum(axis=0), (1, 5)),
    "a conv's bias gradient": (lambda x: gc.sum(x, axis=(0, 2, 3)), lambda a: a.sum(axis=(0, 2, 3)), (8, 3, 4, 5)),
    "conv keepdims": (lambda x: gc.sum(x, axis=(0, 2, 3), keepdims=True),
                      lambda a: a.sum(axis=(0, 2, 3), keepdims=True), (8, 3, 4, 5)),
    "first and last": (lambda x: gc.sum(x, axis=(0, 2)), lambda a: a.sum(axis=(0, 2)), (8, 3, 4)),
    "two leading and one more": (lambda x: gc.sum(x, axis=(0, 1, 3)), lambda a: a.sum(axis=(0, 1, 3)), (8, 3, 4, 2)),
    "leading and a middle of a transpose": (lambda x: gc.sum(gc.transpose(x, (1, 0, 2)), axis=(0, 2)),
                                            lambda a: a.transpose(1, 0, 2).sum(axis=(0, 2)), (8, 3, 4)),
}


@pytest.mark.parametrize("dtype", ["float64", "float32", "int64"])
@pytest.mark.parametrize("case", sorted(LEADING_SUMS))
def test_a_sum_over_leading_axes_is_a_blas_product_and_exact(case, dtype):
    """Float sums over leading axes are ``ones @ matrix`` (BLAS); the values equal NumPy's float64 sums of the
    same array, for views too (a strided view is copied by reshape, never read wrongly); ints keep the reduction."""
    graph_fn, numpy_fn, shape = LEADING_SUMS[case]
    m = gc.dim("m")
    with gc.Graph("leading_sum") as g:
        g.output(s=graph_fn(gc.input("x", (m, *shape[1:]), dtype=dtype)))
    prog = gc.compile(g, backend="numpy")
    rng = np.random.default_rng(3)
    feed = rng.normal(size=shape).astype(dtype) if dtype != "int64" else rng.integers(-9, 9, size=shape)
    got, expected = prog({"x": feed})["s"], numpy_fn(feed.astype(np.float64))
    assert got.shape == expected.shape and got.dtype == np.dtype(dtype)
    np.testing.assert_allclose(got, expected, rtol=TOL.get(dtype, 0), atol=TOL.get(dtype, 0))
    assert ("np.matmul(B['_ones" in prog.source) == (dtype != "int64")
