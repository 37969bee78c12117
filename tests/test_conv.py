"""conv2d, pooling and flatten: values against explicit loops, gradients against finite differences, errors."""
import numpy as np
import pytest

import graphc as gc
from graphc.core.shapes import as_shape
from graphc.passes import optimize
from graphc.transforms.gradcheck import fd_grads, rel_error

from helpers import M, assert_grads_match_fd, concrete, m, op_graph, random_feeds


# -- oracles written with explicit loops, independent of graphc ---------------------------------------
def loop_conv2d(x, w, stride, pads):
    (sh, sw), ((top, bottom), (left, right)) = stride, pads
    xp = np.zeros((x.shape[0], x.shape[1], x.shape[2] + top + bottom, x.shape[3] + left + right))
    xp[:, :, top:top + x.shape[2], left:left + x.shape[3]] = x
    c_out, _, kh, kw = w.shape
    oh, ow = (xp.shape[2] - kh) // sh + 1, (xp.shape[3] - kw) // sw + 1
    out = np.zeros((x.shape[0], c_out, oh, ow))
    for n in range(x.shape[0]):
        for o in range(c_out):
            for i in range(oh):
                for j in range(ow):
                    out[n, o, i, j] = np.sum(xp[n, :, i * sh:i * sh + kh, j * sw:j * sw + kw] * w[o])
    return out


def loop_pool(x, kernel, stride, reduce):
    (kh, kw), (sh, sw) = kernel, stride
    oh, ow = (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1
    out = np.zeros((*x.shape[:2], oh, ow))
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            for i in range(oh):
                for j in range(ow):
                    out[n, c, i, j] = reduce(x[n, c, i * sh:i * sh + kh, j * sw:j * sw + kw])
    return out


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def explicit_pads(padding):
    if isinstance(padding, int):
        return (padding, padding), (padding, padding)
    if isinstance(padding[0], int):
        return (padding[0],) * 2, (padding[1],) * 2
    return tuple(map(tuple, padding))


# (input (C, H, W), weights (C_out, C_in, kh, kw), stride, padding): odd sizes, strides that leave rows unused
CONV = [
    ((1, 5, 5), (1, 1, 3, 3), 1, 0),
    ((2, 5, 4), (3, 2, 3, 2), 1, 1),
    ((2, 7, 6), (2, 2, 3, 3), 2, 0),
    ((1, 6, 7), (2, 1, 2, 3), (2, 3), (1, 2)),
    ((3, 5, 5), (2, 3, 1, 1), 2, 0),
    ((2, 4, 5), (2, 2, 4, 5), 1, 0),
    ((1, 5, 6), (2, 1, 3, 2), (1, 2), ((0, 2), (1, 0))),
    ((2, 5, 5), (1, 2, 3, 3), 3, 2),
    ((1, 5, 6), (2, 1, 3, 2), 1, ((0, 2), (1, 0))),  # stride 1, uneven frames
    ((2, 5, 4), (2, 2, 3, 4), 1, ((1, 1), (1, 2))),  # a wider right margin: windows run into the next row
    ((1, 3, 3), (2, 1, 1, 1), 1, 1),  # margins wider than the kernel: outputs of zeros all around
    ((2, 4, 3), (2, 2, 2, 2), 1, 2),  # a frame wider than the kernel: no transposed conv of the gradient
]


@pytest.mark.parametrize("case", CONV, ids=str)
def test_conv2d_matches_loops_and_finite_differences(case):
    (c, h, w_), wshape, stride, padding = case
    g = op_graph(lambda x, w: gc.conv2d(x, w, stride=stride, padding=padding), (m, c, h, w_), wshape)
    feeds = random_feeds(g, seed=1)
    out = assert_grads_match_fd(g, feeds)
    want = loop_conv2d(feeds["a0"], feeds["a1"], pair(stride), explicit_pads(padding))
    np.testing.assert_allclose(out["y"], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("hw,kernel,stride", [((5, 5), (3, 3), 1), ((6, 7), (3, 2), 2), ((7, 7), (2, 2), (3, 1)),
                                              ((4, 5), (4, 5), 1), ((8, 8), (3, 3), 3)])
def test_same_padding_keeps_ceil_of_size_over_stride(hw, kernel, stride):
    s = pair(stride)
    g = op_graph(lambda x, w: gc.conv2d(x, w, stride=stride, padding="same"), (m, 2, *hw), (2, 2, *kernel))
    y = g.nodes[g.outputs["y"]]
    assert tuple(y.shape[2:]) == tuple(-(-n // k) for n, k in zip(hw, s))
    assert_grads_match_fd(g, random_feeds(g, seed=2))


def test_valid_padding_is_no_padding():
    with gc.Graph("valid"):
        x = gc.input("x", (m, 1, 6, 5))
        w = gc.param("w", (4, 1, 3, 2))
        assert tuple(gc.conv2d(x, w, padding="valid").shape) == (m, 4, 4, 4)


def test_conv2d_bias_is_added_per_channel_and_differentiated():
    with gc.Graph("bias") as g:
        x = gc.input("x", (m, 2, 5, 5), dtype="float64")
        w = gc.param("w", (3, 2, 3, 3), dtype="float64", init="he_normal")
        b = gc.param("b", (3,), dtype="float64", init=("normal", 1.0))
        y = gc.conv2d(x, w, padding=1, bias=b)
        loss = gc.sum(gc.tanh(y))
        dw, db = gc.grad(loss, [w, b])
        g.output(loss=loss, y=y, dw=dw, db=db)
    feeds = random_feeds(g, seed=3)
    out = g.evaluate(feeds)
    want = loop_conv2d(feeds["x"], feeds["w"], (1, 1), ((1, 1), (1, 1))) + feeds["b"][:, None, None]
    np.testing.assert_allclose(out["y"], want, rtol=1e-12)
    fd = fd_grads(g, "loss", feeds, ["w", "b"])
    assert rel_error(out["dw"], fd["w"]) < 1e-6 and rel_error(out["db"], fd["b"]) < 1e-6


# -- the classic single-channel example, every number worked out by hand ------------------------------
def test_classic_single_channel_example():
    """out = x ⋆ F + b over a 3×3 input and a 2×2 filter; loss = ½·Σ(out − target)².

    out = [[1+4−4+1, 2+6−5+1], [4+10−7+1, 5+12−8+1]] = [[2, 4], [8, 10]];  e = out − target = [[2, 3], [6, 7]]
    ∂loss/∂b = Σe = 18;  ∂loss/∂F[a, b'] = Σ_ij e[i, j]·x[i + a, j + b']:
      F00: 2·1 + 3·2 + 6·4 + 7·5 = 67     F01: 2·2 + 3·3 + 6·5 + 7·6 = 85
      F10: 2·4 + 3·5 + 6·7 + 7·8 = 121    F11: 2·5 + 3·6 + 6·8 + 7·9 = 139
    ∂loss/∂x[p, q] = Σ_ij e[i, j]·F[p − i, q − j] (the full convolution of e with F).
    """
    x = np.array([[1.0, 2, 3], [4, 5, 6], [7, 8, 9]])
    F = np.array([[1.0, 2], [-1, 0]])
    target = np.array([[0.0, 1], [2, 3]])
    with gc.Graph("classic") as g:
        xi = gc.input("x", (1, 1, 3, 3), dtype="float64")
        t = gc.input("t", (1, 1, 2, 2), dtype="float64")
        filt = gc.param("F", (1, 1, 2, 2), dtype="float64")
        b = gc.param("b", (), dtype="float64")
        out = gc.conv2d(xi, filt) + b
        loss = 0.5 * gc.sum((out - t) ** 2)
        dF, db, dx = gc.grad(loss, [filt, b, xi])
        g.output(loss=loss, out=out, dF=dF, db=db, dx=dx)
    res = g.evaluate({"x": x[None, None], "t": target[None, None], "F": F[None, None], "b": np.array(1.0)})

    np.testing.assert_array_equal(res["out"][0, 0], [[2, 4], [8, 10]])
    assert res["loss"] == 0.5 * (2 ** 2 + 3 ** 2 + 6 ** 2 + 7 ** 2) == 49
    assert res["db"] == 18
    np.testing.assert_array_equal(res["dF"][0, 0], [[67, 85], [121, 139]])

    e = res["out"][0, 0] - target
    assert np.sum(e) == res["db"]
    for a in range(2):
        for b_ in range(2):
            assert res["dF"][0, 0, a, b_] == sum(e[i, j] * x[i + a, j + b_] for i in range(2) for j in range(2))
    dx = np.zeros((3, 3))
    for i in range(2):
        for j in range(2):
            dx[i:i + 2, j:j + 2] += e[i, j] * F
    np.testing.assert_array_equal(res["dx"][0, 0], dx)
    np.testing.assert_array_equal(dx, [[2, 7, 6], [4, 16, 14], [-6, -7, 0]])


# -- pooling ------------------------------------------------------------------------------------------
POOL = [((5, 5), 2, None), ((6, 6), 2, None), ((7, 6), 3, 2), ((5, 7), (2, 3), 1), ((6, 5), (3, 2), (1, 2)),
        ((4, 4), 4, None), ((7, 7), 2, 3)]


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("hw,kernel,stride", POOL, ids=str)
def test_pooling_matches_loops_and_finite_differences(kind, hw, kernel, stride):
    pool = gc.max_pool2d if kind == "max" else gc.avg_pool2d
    g = op_graph(lambda x: pool(x, kernel, stride), (m, 2, *hw))
    feeds = random_feeds(g, seed=4)
    out = assert_grads_match_fd(g, feeds)
    k = pair(kernel)
    want = loop_pool(feeds["a0"], k, k if stride is None else pair(stride), np.max if kind == "max" else np.mean)
    np.testing.assert_allclose(out["y"], want, rtol=1e-12)


def test_max_pool_routes_each_gradient_to_the_first_maximum():
    x = np.array([[1.0, 3, 3, 0], [3, 2, 0, 0], [5, 5, 1, 2], [5, 5, 2, 1]])
    with gc.Graph("ties") as g:
        xi = gc.input("x", (1, 1, 4, 4), dtype="float64")
        y = gc.max_pool2d(xi, 2)
        g.output(y=y, dx=gc.grad(gc.sum(y * gc.const(np.arange(1.0, 5).reshape(1, 1, 2, 2), "float64")), xi))
    for res in (g.evaluate({"x": x[None, None]}),
                *(gc.compile(g, opt_level=level)({"x": x[None, None]}) for level in (0, 1, 2))):
        np.testing.assert_array_equal(res["y"][0, 0], [[3, 3], [5, 2]])
        np.testing.assert_array_equal(res["dx"][0, 0], [[0, 1, 2, 0], [0, 0, 0, 0], [3, 0, 0, 4], [0, 0, 0, 0]])


def test_overlapping_max_windows_accumulate():
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 1.0  # the centre is the maximum of all four 2×2 windows
    with gc.Graph("overlap") as g:
        xi = gc.input("x", (1, 1, 3, 3), dtype="float64")
        g.output(dx=gc.grad(gc.sum(gc.max_pool2d(xi, 2, stride=1)), xi))
    assert g.evaluate({"x": x})["dx"][0, 0, 1, 1] == 4


def test_avg_pool_spreads_evenly():
    with gc.Graph("spread") as g:
        xi = gc.input("x", (1, 1, 4, 4), dtype="float64")
        g.output(dx=gc.grad(gc.sum(gc.avg_pool2d(xi, 2)), xi))
    np.testing.assert_array_equal(g.evaluate({"x": np.zeros((1, 1, 4, 4))})["dx"], np.full((1, 1, 4, 4), 0.25))


# -- flatten ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("start,want", [(1, (m, 60)), (2, (m, 3, 20)), (-1, (m, 3, 4, 5)), (0, (60 * m,))])
def test_flatten(start, want):
    g = op_graph(lambda x: gc.flatten(x, start), (m, 3, 4, 5))
    assert tuple(g.nodes[g.outputs["y"]].shape) == want
    feeds = random_feeds(g)
    out = assert_grads_match_fd(g, feeds)
    np.testing.assert_array_equal(out["y"], feeds["a0"].reshape(concrete(as_shape(want))))


# -- a small CNN: the whole model against finite differences, and unchanged by the optimizer -----------
def small_cnn(dtype="float64", batch=M):
    with gc.Graph("cnn") as g:
        x = gc.input("x", (m, 1, 8, 8), dtype=dtype)
        t = gc.input("t", (m,), dtype="int64")
        w1 = gc.param("w1", (4, 1, 3, 3), dtype=dtype, init="he_normal")
        b1 = gc.param("b1", (4,), dtype=dtype, init=("normal", 0.1))
        w2 = gc.param("w2", (6, 4, 3, 3), dtype=dtype, init="he_normal")
        W3 = gc.param("W3", (54, 10), dtype=dtype, init="glorot_uniform")
        h = gc.max_pool2d(gc.relu(gc.conv2d(x, w1, padding="same", bias=b1)), 2)
        h = gc.avg_pool2d(gc.tanh(gc.conv2d(h, w2, stride=1, padding=1)), 2, stride=1)
        logits = gc.flatten(h) @ W3
        loss = gc.mean(gc.softmax_cross_entropy(logits, t))
        grads = gc.grad(loss, [w1, b1, w2, W3])
        g.output(loss=loss, **{f"d{n}": d for n, d in zip(["w1", "b1", "w2", "W3"], grads)})
    rng = np.random.default_rng(5)
    feeds = {"x": rng.normal(size=(batch, 1, 8, 8)).astype(dtype), "t": rng.integers(0, 10, size=batch),
             **gc.init_params(g, 0)}
    return g, feeds


def test_small_cnn_gradients_match_finite_differences():
    g, feeds = small_cnn()
    out = g.evaluate(feeds)
    fd = fd_grads(g, "loss", feeds, ["w1", "b1", "w2", "W3"])
    for name, want in fd.items():
        assert rel_error(out[f"d{name}"], want) < 1e-6, name


def test_small_cnn_survives_the_optimizer():
    g, feeds = small_cnn()
    opt, _ = optimize(g)
    want, got = g.evaluate(feeds), opt.evaluate(feeds)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("opt_level", [0, 1, 2])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 1e-5)])
def test_small_cnn_compiled_with_numpy_matches_reference(dtype, tol, opt_level):
    g, feeds = small_cnn(dtype, batch=5)
    program = gc.compile(g, backend="numpy", opt_level=opt_level)
    body = program.source.split("def _compute(")[1].split("\n\n")[0]
    assert "import graphc" not in program.source
    assert not any(line.lstrip().startswith("for ") for line in body.split("\n"))  # no Python loops
    want = g.evaluate(feeds)
    for _ in range(2):  # the second call runs in the cached buffers
        got = program(feeds)
        for name in want:
            assert got[name].dtype == want[name].dtype and rel_error(got[name], want[name]) <= tol, name


def test_small_cnn_training_step_matches_reference_sgd():
    g, feeds = small_cnn(batch=4)
    program = gc.compile(g, backend="numpy", optimizer=gc.SGD(lr=0.1))
    params = {n: feeds[n].copy() for n in g.params}
    batch = {n: feeds[n] for n in g.inputs}
    for _ in range(3):
        want = g.evaluate({**batch, **params})
        got = program.train_step(params, batch)
        assert rel_error(got["loss"], want["loss"]) <= 1e-10
        for n in g.params:
            np.testing.assert_allclose(params[n], feeds[n] - 0.1 * want[f"d{n}"], rtol=1e-10, atol=1e-12)
            feeds[n] = params[n].copy()


def test_a_convolution_and_its_weight_gradient_gather_the_windows_once():
    """The weight gradient reads the windows the forward convolution gathered (kept until then); two convolutions
    of one input with different kernels gather their own."""
    g, feeds = small_cnn(batch=4)
    train = gc.compile(g, backend="numpy", optimizer=gc.SGD(lr=0.1)).source.split("def _train(")[1].split("\ndef ")[0]
    # conv1 and conv2 forward, conv2's input gradient (a convolution of the gradient): 3, not 5
    assert train.count("sliding_window_view") == 3
    with gc.Graph("two") as two:
        x = gc.input("x", (m, 2, 5, 5), dtype="float64")
        w3, w5 = gc.param("w3", (3, 2, 3, 3), dtype="float64"), gc.param("w5", (3, 2, 5, 5), dtype="float64")
        loss = gc.sum(gc.tanh(gc.conv2d(x, w3, padding="same"))) + gc.sum(gc.conv2d(x, w5, padding="same") ** 2)
        two.output(loss=loss, dw3=gc.grad(loss, w3), dw5=gc.grad(loss, w5))
    feeds = {"x": np.random.default_rng(0).normal(size=(3, 2, 5, 5)), **gc.init_params(two, 1)}
    got, want = gc.compile(two)(feeds), two.evaluate(feeds)
    for name in want:
        assert rel_error(got[name], want[name]) <= 1e-12, name


@pytest.mark.parametrize("geometry", [dict(stride=2, padding=1), dict(stride=(1, 2), padding=((0, 2), (1, 0))),
                                      dict(stride=3, padding="same"), dict(stride=1, padding="valid")], ids=str)
@pytest.mark.parametrize("pool", [(2, None), (3, 1), ((2, 3), (2, 1)), (2, 3)], ids=str)
def test_compiled_conv_and_pool_geometries_match_reference(geometry, pool):
    def fn(x, w):
        y = gc.conv2d(x, w, **geometry)
        return gc.max_pool2d(y, *pool) + gc.avg_pool2d(y * y, *pool)
    g = op_graph(fn, (m, 2, 9, 8), (3, 2, 3, 2))
    feeds = random_feeds(g, seed=7)
    want, got = g.evaluate(feeds), gc.compile(g, backend="numpy")(feeds)
    for name in want:
        assert rel_error(got[name], want[name]) <= 1e-10, name


def test_second_order_through_conv_and_pooling():
    """∂/∂x of Σ(∂loss/∂w)²: differentiates the gradient ops themselves."""
    def fn(x, w):
        y = gc.max_pool2d(gc.conv2d(x, w, stride=2, padding=1), 2, stride=1)
        dw = gc.grad(gc.sum(gc.avg_pool2d(y * y, 2)), w)
        return dw * dw
    g = op_graph(fn, (m, 2, 6, 5), (3, 2, 3, 3))
    assert {"conv2d_input_grad", "conv2d_weight_grad", "max_pool2d_grad", "avg_pool2d_grad"} <= {
        n.op for n in g.nodes.values()}
    assert_grads_match_fd(g, random_feeds(g, seed=6), tol=1e-5)


# -- errors -------------------------------------------------------------------------------------------
def raises(match):
    return pytest.raises(gc.GraphError, match=match)


def test_channel_mismatch_names_tensors_and_shapes():
    with gc.Graph("bad"):
        x = gc.input("x", (m, 3, 8, 8))
        w = gc.param("w", (4, 2, 3, 3))
        with raises(r"conv2d: channel mismatch: input has 3 channels .*weights expect 2.*'x' \(m, 3, 8, 8\), "
                    r"'w' \(4, 2, 3, 3\)"):
            gc.conv2d(x, w)


@pytest.mark.parametrize("padding,match", [(0, r"padded input 4×4"),
                                           (((0, 0), (1, 0)), r"padded input 4×5 \(input 4×4")])
def test_kernel_larger_than_padded_input(padding, match):
    with gc.Graph("bad"):
        x = gc.input("x", (m, 1, 4, 4))
        w = gc.param("w", (2, 1, 5, 5))
        with raises(rf"conv2d: kernel 5×5 is larger than the {match}.*'x' \(m, 1, 4, 4\), 'w' \(2, 1, 5, 5\)"):
            gc.conv2d(x, w, padding=padding)


def test_pool_kernel_larger_than_input():
    with gc.Graph("bad"):
        x = gc.input("x", (m, 2, 3, 3))
        with raises(r"max_pool2d: kernel 4×4 is larger than the padded input 3×3.*'x' \(m, 2, 3, 3\)"):
            gc.max_pool2d(x, 4)
        with raises(r"avg_pool2d: kernel must be an int ≥ 1 or a pair of them, not 0"):
            gc.avg_pool2d(x, 0)


@pytest.mark.parametrize("kw,match", [({"stride": 0}, r"stride must be an int ≥ 1"),
                                      ({"stride": (1, 2, 3)}, r"stride must be an int ≥ 1 or a pair"),
                                      ({"padding": "full"}, r"padding must be an int, a pair, 'same' or 'valid'"),
                                      ({"padding": -1}, r"padding must be an int ≥ 0")])
def test_bad_stride_and_padding(kw, match):
    with gc.Graph("bad"):
        x = gc.input("x", (m, 1, 6, 6))
        w = gc.param("w", (2, 1, 3, 3))
        with raises(rf"conv2d: {match}.*'x' \(m, 1, 6, 6\)"):
            gc.conv2d(x, w, **kw)


def test_bad_ranks_dtypes_and_symbolic_sizes():
    n = gc.dim("n")
    with gc.Graph("bad"):
        w = gc.param("w", (2, 1, 3, 3))
        with raises(r"conv2d: input must be 4-d \(m, C_in, H, W\), not \(m, 36\).*'x'"):
            gc.conv2d(gc.input("x", (m, 36)), w)
        with raises(r"conv2d: input \(m, 1, n, n\): all dims but the first must be concrete"):
            gc.conv2d(gc.input("img", (m, 1, n, n)), w)
        with raises(r"conv2d: weights must be 4-d \(C_out, C_in, kh, kw\).*not \(2, 3, 3\)"):
            gc.conv2d(gc.input("x4", (m, 1, 6, 6)), gc.param("w3", (2, 3, 3)))
        with raises(r"max_pool2d: input must be a float tensor, not int64"):
            gc.max_pool2d(gc.input("labels", (m, 1, 4, 4), dtype="int64"), 2)
        with raises(r"conv2d: bias must have shape \(2,\).*not \(3,\)"):
            gc.conv2d(gc.input("x5", (m, 1, 6, 6)), w, bias=gc.param("b", (3,)))
        with raises(r"flatten: start_axis 4 is out of range for a 4-d tensor"):
            gc.flatten(gc.input("x6", (m, 1, 6, 6)), 4)
        with raises(r"conv2d: w must be a tensor of the graph, not ndarray \(gc.const holds a fixed array\)"):
            gc.conv2d(gc.input("x7", (m, 1, 6, 6)), np.zeros((2, 1, 3, 3)))
