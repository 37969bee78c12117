"""Every op of the registry: its VJP against central finite differences in float64 (≤ 1e-6 relative)."""
import numpy as np
import pytest
import sympy

import graphc as gc
from graphc.dsl import apply
from graphc.ops import OPS
from graphc.ops import conv as cv
from graphc.ops import indexing as ix
from graphc.ops.elementwise import FUNCTIONS

from helpers import assert_grads_match_fd, m, op_graph, random_feeds

# op -> (builder, shapes, feed options); several cases per op: broadcasting, keepdims, axes, symbolic dims
CASES = {
    "ew": [
        (lambda a, b: a + b, [(m, 4), (4,)], {}),
        (lambda a, b: a - b, [(m, 1), (1, 4)], {}),
        (lambda a, b: a * b, [(m, 4), (m, 4)], {}),
        (lambda a, b: a / b, [(m, 4), (4,)], {"avoid_zero": True}),
        (lambda a: 2.0 - a / 3 + 0.5 * a, [(m, 4)], {}),
        (lambda a, b: a ** 2 * b, [(m, 4), ()], {}),
        (lambda a: -a, [(m, 2)], {}),
        (lambda a: a * a, [(m, 3)], {}),
        (gc.exp, [(m, 4)], {}),
        (gc.log, [(m, 4)], {"low": 0.5, "high": 3.0}),
        (gc.log1p, [(m, 4)], {"low": 0.1, "high": 3.0}),
        (gc.sqrt, [(m, 4)], {"low": 0.5, "high": 3.0}),
        (gc.abs, [(m, 4)], {"avoid_zero": True}),
        (gc.square, [(m, 4)], {}),
        (gc.tanh, [(m, 4)], {}),
        (gc.sigmoid, [(m, 4)], {}),
        (gc.relu, [(m, 4)], {"avoid_zero": True}),
        (lambda a: gc.leaky_relu(a, 0.1), [(m, 4)], {"avoid_zero": True}),
        (gc.softplus, [(m, 4)], {}),
        (gc.maximum, [(m, 4), (4,)], {}),
        (gc.minimum, [(m, 4), (m, 1)], {}),
        (lambda a, b: gc.where(a > b, a * b, a - b), [(m, 4), (m, 4)], {}),
        (lambda a, b: gc.where(a >= 0.0, a, 2 * b), [(m, 4), (4,)], {"avoid_zero": True}),
        (lambda a, b: gc.where(gc.less(a, b), gc.exp(a), b), [(m, 4), (m, 4)], {}),
        (lambda a, b: a ** b, [(m, 4), (4,)], {"low": 0.5, "high": 2.0}),
        (gc.binary_cross_entropy_with_logits, [(m, 4), (m, 4)], {"low": 0.0, "high": 1.0}),
        (gc.erf, [(m, 4)], {}),
        (gc.gelu, [(m, 4)], {"low": -4.0, "high": 4.0}),
        (lambda a: gc.gelu(a, approximate="tanh"), [(m, 4)], {"low": -4.0, "high": 4.0}),
        (gc.silu, [(m, 4)], {}),
        (lambda a, b: gc.sin(a) * gc.cos(b), [(m, 4), (4,)], {}),
        (gc.rsqrt, [(m, 4)], {"low": 0.5, "high": 3.0}),
        (lambda a: gc.exp(a) * 0 + gc.log1p(gc.abs(a)) * gc.tanh(a), [(m, 3)], {"avoid_zero": True}),
        (lambda a, b: gc.where(gc.where(a > 0, a > b, b > 0), a, b), [(m, 4), (4,)], {}),  # a bool where
        (lambda a, b: gc.layer_norm(a, b, b * b, axis=-1), [(m, 4), (4,)], {}),
        (lambda a: gc.layer_norm(a, axis=(0, 2), eps=0.1), [(m, 2, 3)], {}),
        (lambda a: gc.var(a, axis=1, keepdims=True, ddof=1) + gc.std(a, axis=0, keepdims=True), [(m, 4)], {}),
    ],
    "sum": [
        (lambda a: gc.sum(a), [(m, 4)], {}),
        (lambda a: gc.sum(a, axis=0), [(m, 4)], {}),
        (lambda a: gc.sum(a, axis=1, keepdims=True), [(m, 4)], {}),
        (lambda a: gc.sum(a, axis=(0, 2)), [(2, m, 4)], {}),
        (lambda a: gc.mean(a, axis=-1, keepdims=True), [(m, 4)], {}),
        (lambda a: gc.mean(a), [(m, 2, 3)], {}),
    ],
    "max": [
        (lambda a: gc.max(a), [(m, 4)], {}),
        (lambda a: gc.max(a, axis=1), [(m, 4)], {}),
        (lambda a: gc.max(a, axis=(0, 2), keepdims=True), [(2, m, 4)], {}),
        (lambda a: gc.min(a, axis=1) + a.min(), [(m, 4)], {}),
    ],
    "logsumexp": [
        (lambda a: gc.logsumexp(a, axis=-1), [(m, 4)], {}),
        (lambda a: gc.logsumexp(a, axis=0, keepdims=True), [(m, 4)], {}),
        (lambda a: gc.logsumexp(a), [(m, 2, 3)], {}),
    ],
    "reshape": [
        (lambda a: gc.reshape(a, (m * 2, 2)), [(m, 4)], {}),
        (lambda a: gc.reshape(a, (-1,)), [(m, 2, 2)], {}),
    ],
    "transpose": [
        (lambda a: a.T, [(m, 4)], {}),
        (lambda a: gc.transpose(a, (1, 2, 0)), [(m, 2, 3)], {}),
    ],
    "broadcast_to": [
        (lambda a: gc.broadcast_to(a, (m, 4)), [(4,)], {}),
        (lambda a: gc.broadcast_to(a, (2, m, 4)), [(m, 1)], {}),
    ],
    "concat": [
        (lambda a, b: gc.concat([a, b], axis=1), [(m, 2), (m, 3)], {}),
        (lambda a, b: gc.concat([a, b, a], axis=0), [(m, 2), (1, 2)], {}),
    ],
    "slice": [
        (lambda a: a[:, 1:3], [(m, 4)], {}),
        (lambda a: a[1:, ::2], [(m, 5)], {}),
        (lambda a: a[..., -1], [(m, 2, 3)], {}),
        (lambda a: a[0], [(m, 4)], {}),
        (lambda a: a[::-1, None, 3:0:-2], [(m, 5)], {}),
        (lambda a: a[..., ::-2] * a[:, None, -1, 1:], [(m, 2, 3)], {}),
    ],
    "unslice": [
        (lambda a: gc.grad(gc.sum(a[:, 1:3] * a[:, 0:2]), a) * a, [(m, 4)], {}),
    ],
    "take": [  # fixed ids: CASES feed floats only (embeddings with fed ids: test_indexing.py)
        (lambda a: gc.take(a, gc.const([[0, 3], [3, 1]])), [(5, m)], {}),
        (lambda a: gc.take(a, gc.const([4, 0, 4]), axis=1) * 2, [(m, 5, 2)], {}),
        (lambda a: a[gc.const(np.array(2))] + a[:, gc.const([1, 1])].sum(), [(3, m)], {}),
    ],
    "scatter_add": [
        (lambda g: ix.scatter_add(g, gc.const([[1, 1], [0, 3]]), 4), [(2, 2, m)], {}),
        (lambda g: ix.scatter_add(g, gc.const([2, 2, 2]), 3), [(3,)], {}),
    ],
    "in_training": [  # batch_norm's statistic of its mode: the training value's gradient (tests/test_batch_norm.py)
        (lambda a, b: apply("in_training", [a * a, b], count=2 * m) * a, [(m, 2), (m, 2)], {}),
    ],
    "cast": [  # exact casts only: every backend must match float64 references to 1e-10
        (lambda a: gc.cast(a > 0.5, "float64") * a + gc.cast(gc.cast(a, "int64"), "float64"), [(m, 4)], {}),
    ],
    "matmul": [
        (lambda a, b: a @ b, [(m, 4), (4, 3)], {}),
        (lambda a, b: a @ b, [(2, m, 4), (4, 3)], {}),
        (lambda a, b: a @ b, [(2, m, 4), (2, 4, 3)], {}),
        (lambda a, b: a @ b, [(4,), (4, 3)], {}),
        (lambda a, b: a @ b, [(m, 4), (4,)], {}),
        (lambda a, b: a @ b, [(4,), (4,)], {}),
        (lambda a, b: a @ b, [(4,), (2, 4, 3)], {}),
    ],
    "softmax": [
        (lambda a: gc.softmax(a), [(m, 4)], {}),
        (lambda a: gc.softmax(a, axis=0), [(m, 4)], {}),
    ],
    "log_softmax": [
        (lambda a: gc.log_softmax(a), [(m, 4)], {}),
        (lambda a: gc.log_softmax(a, axis=1), [(2, m, 3)], {}),
    ],
    "softmax_cross_entropy": [
        (lambda z, t: gc.softmax_cross_entropy(z, gc.softmax(t)), [(m, 4), (m, 4)], {}),
        (lambda z, t: gc.softmax_cross_entropy(z, t * t, axis=0), [(m, 4), (m, 4)], {}),
    ],
    # convolution and pooling (many more geometries in test_conv.py); the gradient ops are differentiated too
    "conv2d": [
        (lambda x, w: gc.conv2d(x, w), [(m, 2, 5, 4), (3, 2, 3, 2)], {}),
        (lambda x, w: gc.conv2d(x, w, stride=2, padding=1), [(m, 1, 6, 5), (2, 1, 3, 3)], {}),
        (lambda x, w: gc.conv2d(x, w, stride=(1, 2), padding="same"), [(m, 2, 5, 5), (2, 2, 2, 3)], {}),
    ],
    "conv2d_input_grad": [
        (lambda g, w: cv.conv2d_input_grad(g, w, (1, 1), ((0, 0), (0, 0)), (5, 4)), [(m, 3, 3, 3), (3, 2, 3, 2)], {}),
        (lambda g, w: cv.conv2d_input_grad(g, w, (2, 2), ((1, 1), (0, 1)), (6, 5)), [(m, 2, 3, 2), (2, 1, 3, 3)], {}),
    ],
    "conv2d_weight_grad": [
        (lambda x, g: cv.conv2d_weight_grad(x, g, (1, 1), ((0, 0), (0, 0)), (3, 2)), [(m, 2, 5, 4), (m, 3, 3, 3)], {}),
        (lambda x, g: cv.conv2d_weight_grad(x, g, (2, 1), ((1, 0), (1, 1)), (2, 3)), [(m, 1, 6, 5), (m, 2, 3, 5)], {}),
    ],
    "max_pool2d": [
        (lambda x: gc.max_pool2d(x, 2), [(m, 2, 5, 4)], {}),
        (lambda x: gc.max_pool2d(x, (3, 2), stride=1), [(m, 1, 5, 5)], {}),
    ],
    "max_pool2d_grad": [
        (lambda x, g: gc.grad(gc.sum(gc.max_pool2d(x, 2, stride=1) * g), x), [(m, 2, 4, 5), (m, 2, 3, 4)], {}),
    ],
    "max_pool2d_gather": [
        (lambda x, u: cv.max_pool2d_gather(x, u, (2, 3), (2, 1)), [(m, 2, 5, 5), (m, 2, 5, 5)], {}),
    ],
    "avg_pool2d": [
        (lambda x: gc.avg_pool2d(x, 2), [(m, 2, 5, 4)], {}),
        (lambda x: gc.avg_pool2d(x, (2, 3), stride=(1, 2)), [(m, 1, 5, 6)], {}),
    ],
    "avg_pool2d_grad": [
        (lambda g: gc.grad(gc.sum(gc.avg_pool2d(g, 3, stride=2) ** 2), g), [(m, 2, 7, 6)], {}),
    ],
}


def test_every_differentiable_op_has_cases():
    differentiable = {name for name, op in OPS.items() if op.vjp is not None}
    assert differentiable <= set(CASES), f"ops without gradient cases: {differentiable - set(CASES)}"


def test_every_elementwise_function_has_a_case():
    """Each function record (exp, sigmoid, gelu, …) is differentiated and FD-checked by some ``ew`` case."""
    called = set()
    for fn, shapes, _ in CASES["ew"]:
        for node in op_graph(fn, *shapes).nodes.values():
            if node.op == "ew":
                called |= {type(f) for f in node.attr("expr").atoms(sympy.Function)}
    missing = {f.name for sym, f in FUNCTIONS.items() if sym not in called}
    assert not missing, f"elementwise functions without a gradient case: {sorted(missing)}"


@pytest.mark.parametrize("op,index", [(op, i) for op, cases in CASES.items() for i in range(len(cases))])
def test_vjp_matches_finite_differences(op, index):
    fn, shapes, opts = CASES[op][index]
    g = op_graph(fn, *shapes)
    assert any(n.op == op for n in g.nodes.values()), f"case does not exercise {op}"
    assert_grads_match_fd(g, random_feeds(g, seed=index, **opts))


@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_cross_entropy_with_integer_labels(axis):
    rng = np.random.default_rng(1)
    with gc.Graph("xent") as g:
        z = gc.input("a0", (m, 5), dtype="float64")
        labels_shape = (5,) if axis == 0 else (m,)
        t = gc.input("t", labels_shape, dtype="int64")
        weight = gc.input("weight", labels_shape, dtype="float64")
        loss = gc.sum(gc.softmax_cross_entropy(z, t, axis=axis) * weight)
        g.output(loss=loss, g0=gc.grad(loss, z))
    n_labels, n_classes = (5, 3) if axis == 0 else (3, 5)
    feeds = {"a0": rng.normal(size=(3, 5)), "t": rng.integers(0, n_classes, size=n_labels),
             "weight": rng.normal(size=n_labels)}
    assert_grads_match_fd(g, feeds, names=["a0"])
