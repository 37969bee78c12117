"""gc.from_onnx on small models built with onnx.helper: names, dims, params, folding, refusals, the CLI."""
from __future__ import annotations

import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import graphc as gc  # noqa: E402
from graphc import api  # noqa: E402 - the namespace the importer builds graphs with
from graphc.cli import main  # noqa: E402
from graphc.transforms.gradcheck import fd_grads, rel_error  # noqa: E402

F32, F64, I64 = TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64


def model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "net", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def tensor(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def dense(batch="batch", dtype=F32, np_dtype=np.float32):
    """input.1 (batch, 4) -> Gemm(W (3, 4), b) -> Relu -> "out:0"."""
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(3, 4)).astype(np_dtype), rng.normal(size=3).astype(np_dtype)
    nodes = [helper.make_node("Gemm", ["input.1", "fc.weight", "fc.bias"], ["/fc/Gemm_output_0"], transB=1),
             helper.make_node("Relu", ["/fc/Gemm_output_0"], ["out:0"])]
    return model(nodes, [tensor("input.1", dtype, [batch, 4])], [tensor("out:0", dtype, [batch, 3])],
                 [init("fc.weight", w), init("fc.bias", b)]), w, b


def test_names_dims_and_initial_params():
    proto, w, b = dense()
    g = gc.from_onnx(proto)
    x = g.nodes[g.inputs["input_1"]]
    assert [str(d) for d in x.shape] == ["m", "4"]
    assert list(g.outputs) == ["out_0"] and list(g.params) == ["fc_weight", "fc_bias"]
    assert np.array_equal(g.initial_params["fc_weight"], w) and np.array_equal(g.initial_params["fc_bias"], b)
    assert any(n.name == "fc_Gemm" for n in g.nodes.values())  # intermediate values keep readable names
    feeds = {"input_1": np.ones((5, 4), np.float32), **g.initial_params}
    want = np.maximum(feeds["input_1"] @ w.T + b, 0)
    assert np.allclose(g.evaluate(feeds)["out_0"], want, rtol=1e-6)
    assert np.allclose(gc.compile(g).run(feeds)["out_0"], want, rtol=1e-6)


def test_same_model_same_graph():
    proto, _, _ = dense()
    assert gc.compile(gc.from_onnx(proto)).source == gc.compile(gc.from_onnx(proto)).source


def test_dynamic_dims():
    nodes = [helper.make_node("Add", ["a", "b"], ["y"])]
    proto = model(nodes, [tensor("a", F32, [None, "seq", 2]), tensor("b", F32, ["N", "seq", 2])],
                  [tensor("y", F32, None)])
    g = gc.from_onnx(proto)
    assert [str(d) for d in g.nodes[g.inputs["a"]].shape] == ["m", "seq", "2"]
    assert [str(d) for d in g.nodes[g.inputs["b"]].shape] == ["m", "seq", "2"]  # a dynamic leading dim is m


def test_reserved_and_clashing_names():
    nodes = [helper.make_node("Add", ["B", "m"], ["np"])]
    g = gc.from_onnx(model(nodes, [tensor("B", F32, ["batch", 2]), tensor("m", F32, ["batch", 2])],
                           [tensor("np", F32, None)]))
    assert list(g.inputs) == ["B_2", "m_2"] and list(g.outputs) == ["np"]  # only inputs name module variables
    feeds = {"B_2": np.ones((3, 2), np.float32), "m_2": np.ones((3, 2), np.float32)}
    assert np.array_equal(gc.compile(g).run(feeds)["np"], np.full((3, 2), 2, np.float32))


def test_shape_arithmetic_folds_with_the_batch_dim():
    """x.view(x.size(0), -1) as PyTorch exports it: Shape, Gather, Unsqueeze, Concat, Reshape."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0))),
             helper.make_node("Gather", ["s", "zero"], ["n"]),
             helper.make_node("Constant", [], ["ax"], value=numpy_helper.from_array(np.array([0]))),
             helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
             helper.make_node("Constant", [], ["rest"], value=numpy_helper.from_array(np.array([-1]))),
             helper.make_node("Concat", ["n1", "rest"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"])]
    g = gc.from_onnx(model(nodes, [tensor("x", F32, ["batch", 2, 3])], [tensor("y", F32, None)]))
    assert [str(d) for d in g.nodes[g.outputs["y"]].shape] == ["m", "6"]
    x = np.arange(24, dtype=np.float32).reshape(4, 2, 3)
    assert np.array_equal(gc.compile(g).run({"x": x})["y"], x.reshape(4, 6))


def test_initializers_read_as_shapes_or_statistics_are_constants():
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]),
             helper.make_node("BatchNormalization", ["r", "scale", "bias", "mean", "var"], ["y"])]
    inits = [init("shape", np.array([0, 2, 2])), init("scale", np.ones(2, np.float32) * 2),
             init("bias", np.zeros(2, np.float32)), init("mean", np.ones(2, np.float32)),
             init("var", np.full(2, 4.0, np.float32))]
    g = gc.from_onnx(model(nodes, [tensor("x", F32, ["n", 4])], [tensor("y", F32, None)], inits))
    assert list(g.params) == ["scale", "bias"]
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    want = (x.reshape(2, 2, 2) - 1) / np.sqrt(4 + 1e-5) * 2
    assert np.allclose(gc.compile(g).run({"x": x, **g.initial_params})["y"], want, rtol=1e-6)


def test_constants_fix_graph_inputs():
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"])]
    proto = model(nodes, [tensor("x", F32, [2, 3]), tensor("shape", I64, [2])], [tensor("y", F32, None)])
    with pytest.raises(gc.GraphError, match=r"\(Reshape\): the target shape must be known .* constants="):
        gc.from_onnx(proto)
    g = gc.from_onnx(proto, constants={"shape": np.array([3, 2])})
    assert list(g.inputs) == ["x"] and tuple(g.nodes[g.outputs["y"]].shape) == (3, 2)
    with pytest.raises(gc.GraphError, match="not inputs of the ONNX graph"):
        gc.from_onnx(proto, constants={"nope": 1})


def test_gradients_of_an_imported_model():
    proto, w, b = dense(dtype=F64, np_dtype=np.float64)
    g = gc.from_onnx(proto)
    m = gc.dim("m")
    with g:
        t = gc.input("t", (m,), dtype="int64")
        out = gc.Tensor(g, g.outputs["out_0"])
        loss = gc.mean(gc.softmax_cross_entropy(out, t))
        params = [gc.Tensor(g, g.params[n]) for n in g.params]
        g.output(loss=loss, **{f"d_{n}": d for n, d in zip(g.params, gc.grad(loss, params))})
    rng = np.random.default_rng(1)
    feeds = {"input_1": rng.normal(size=(6, 4)), "t": rng.integers(0, 3, 6), **g.initial_params}
    got = gc.compile(g).run(feeds)
    fd = fd_grads(g, "loss", feeds, list(g.params))
    for name in g.params:
        assert rel_error(got[f"d_{name}"], fd[name]) < 1e-6


@pytest.mark.parametrize("pads, out", [([1, 1, 1, 1], (3, 3)), ([0, 1, 2, 0], (3, 2))])
def test_padded_max_pool_routes_gradients_to_the_input(pads, out):
    nodes = [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=pads)]
    g = gc.from_onnx(model(nodes, [tensor("x", F64, ["n", 2, 5, 5])], [tensor("y", F64, None)]))
    with g:
        x, y = gc.Tensor(g, g.inputs["x"]), gc.Tensor(g, g.outputs["y"])
        r = gc.input("r", y.shape, dtype="float64")
        loss = gc.sum(y * r)
        g.output(loss=loss, dx=gc.grad(loss, [x])[0])
    rng = np.random.default_rng(2)
    feeds = {"x": rng.normal(size=(2, 2, 5, 5)), "r": rng.normal(size=(2, 2, *out))}
    assert rel_error(gc.compile(g).run(feeds)["dx"], fd_grads(g, "loss", feeds, ["x"])["x"]) < 1e-6


def test_casts_that_are_exact():
    nodes = [helper.make_node("Cast", ["x"], ["y"], to=F64)]
    g = gc.from_onnx(model(nodes, [tensor("x", F32, [3])], [tensor("y", F64, [3])]))
    x = np.array([0.1, -0.0, 3e38], np.float32)
    y = gc.compile(g).run({"x": x})["y"]
    assert y.dtype == np.float64 and np.array_equal(y, x.astype(np.float64))
    nodes = [helper.make_node("Cast", ["x"], ["y"], to=F32)]
    with pytest.raises(gc.GraphError, match=r"\(Cast\): a cast from float64 to float32"):
        gc.from_onnx(model(nodes, [tensor("x", F64, [3])], [tensor("y", F32, [3])]))


@pytest.mark.parametrize("node, inputs, message", [
    (helper.make_node("Conv", ["x", "w"], ["y"], group=2, name="conv7"), [("x", F32, [1, 4, 5, 5]),
                                                                         ("w", F32, [4, 2, 3, 3])],
     r"ONNX node 'conv7' \(Conv\): group=2 is not supported"),
    (helper.make_node("Det", ["x"], ["y"]), [("x", F32, [2, 2])],
     r"ONNX node with output 'y' \(Det\): this op is not supported"),
    (helper.make_node("Relu", ["x"], ["y"]), [("x", TensorProto.FLOAT16, [2])], r"input 'x' has dtype float16"),
    (helper.make_node("Dropout", ["x", "r", "t"], ["y"]),
     [("x", F32, [2]), ("r", F32, []), ("t", TensorProto.BOOL, [])], r"\(Dropout\): .*must be known"),
    (helper.make_node("Add", ["x", "x"], ["y"], domain="com.example"), [("x", F32, [2])],
     r"\(Add\): ops of domain 'com.example'"),
])
def test_refusals_name_the_node_its_op_and_the_reason(node, inputs, message):
    proto = model([node], [tensor(*i) for i in inputs], [tensor("y", F32, None)])
    if node.domain:
        proto.opset_import.append(helper.make_opsetid(node.domain, 1))
    with pytest.raises(gc.GraphError, match=message):
        gc.from_onnx(proto)


def test_negative_slice_steps_and_old_opsets_are_refused():
    consts = [init("s", np.array([-1])), init("e", np.array([-10])), init("a", np.array([0])),
              init("st", np.array([-1]))]
    nodes = [helper.make_node("Slice", ["x", "s", "e", "a", "st"], ["y"])]
    with pytest.raises(gc.GraphError, match=r"\(Slice\): step -1 on axis 0: only positive steps"):
        gc.from_onnx(model(nodes, [tensor("x", F32, [4])], [tensor("y", F32, None)], consts))
    with pytest.raises(gc.GraphError, match="opset 12 .* opsets 13 to 27"):
        gc.from_onnx(model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", F32, [2])],
                           [tensor("y", F32, None)], opset=12))


def test_ops_graphc_gets_later(monkeypatch):
    """Gather with tensor indices maps to gc.take, Gelu to gc.gelu, once graphc has them."""
    nodes = [helper.make_node("Gather", ["table", "ids"], ["y"], axis=1)]
    proto = model(nodes, [tensor("table", F32, [3, 5]), tensor("ids", I64, ["n"])], [tensor("y", F32, None)])
    if not hasattr(gc, "take"):
        with pytest.raises(gc.GraphError, match=r"\(Gather\): needs gc.take"):
            gc.from_onnx(proto)
    calls = []

    def take(table, ids, axis=0):  # a stand-in with take's shape: one_hot(ids) contracted with the table's axis
        calls.append(axis)
        return gc.transpose(gc.matmul(gc.one_hot(ids, table.shape[axis]), gc.transpose(table)), (1, 0))

    monkeypatch.setattr(api, "take", take, raising=False)
    g = gc.from_onnx(proto)
    table, ids = np.arange(15, dtype=np.float32).reshape(3, 5), np.array([4, -1, 0])
    assert calls == [1]
    assert np.array_equal(g.evaluate({"table": table, "ids": ids})["y"], table[:, ids])  # -1 counts from the end

    gelu_calls = []
    monkeypatch.setattr(api, "gelu", lambda x, approximate: gelu_calls.append(approximate) or x, raising=False)
    gc.from_onnx(model([helper.make_node("Gelu", ["x"], ["y"], approximate="tanh")], [tensor("x", F32, [2])],
                       [tensor("y", F32, None)], opset=20))
    assert gelu_calls == ["tanh"]


def test_missing_onnx_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(gc.GraphError, match=r"pip install graphc\[onnx\]"):
        gc.from_onnx("model.onnx")


def test_cli_builds_an_onnx_model_and_its_parameters(tmp_path, capsys):
    proto, w, b = dense()
    path = tmp_path / "dense.onnx"
    onnx.save(proto, path)
    assert main(["build", str(path), "-o", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "dense_numpy.py (run, predict, init_params)" in printed and "dense_params.npz" in printed
    module = gc.load_module(tmp_path / "out" / "dense_numpy.py")
    params = dict(np.load(tmp_path / "out" / "dense_params.npz"))
    x = np.ones((2, 4), np.float32)
    assert np.allclose(module.run({"input_1": x, **params})["out_0"], np.maximum(x @ w.T + b, 0), rtol=1e-6)
    assert main(["show", str(path), "-o", str(tmp_path / "d.mmd")]) == 0
    assert "fc_weight" in (tmp_path / "d.mmd").read_text()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    assert main(["build", str(bad)]) == 2
    assert f"graphc build: {bad}: not a readable ONNX model" in capsys.readouterr().err


@pytest.mark.parametrize("op, fn", [("And", np.logical_and), ("Or", np.logical_or), ("Xor", np.logical_xor)])
def test_logical_ops(op, fn):
    nodes = [helper.make_node(op, ["a", "b"], ["y"]), helper.make_node("Not", ["y"], ["z"])]
    bools = [tensor("a", TensorProto.BOOL, [2, 2]), tensor("b", TensorProto.BOOL, [2])]
    g = gc.from_onnx(model(nodes, bools, [tensor("y", TensorProto.BOOL, None), tensor("z", TensorProto.BOOL, None)]))
    a, b = np.array([[0, 1], [1, 1]], bool), np.array([0, 1], bool)
    out = gc.compile(g).run({"a": a, "b": b})
    assert out["y"].dtype == bool and np.array_equal(out["y"], fn(a, b)) and np.array_equal(out["z"], ~fn(a, b))


def test_dim_arithmetic_folds():
    """x.view(x.size(0) * x.size(1), -1): a product of the batch dim and a known dim."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], end=2),
             helper.make_node("Slice", ["s", "zero", "one"], ["n"]),
             helper.make_node("Slice", ["s", "one", "two"], ["c"]),
             helper.make_node("Mul", ["n", "c"], ["rows"]),
             helper.make_node("Concat", ["rows", "minus_one"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"])]
    consts = [init("zero", [0]), init("one", [1]), init("two", [2]), init("minus_one", [-1])]
    g = gc.from_onnx(model(nodes, [tensor("x", F32, ["batch", 3, 4])], [tensor("y", F32, None)], consts))
    assert [str(d) for d in g.nodes[g.outputs["y"]].shape] == ["3*m", "4"]


# -- convolution and pooling geometry against a loop-by-loop reading of the ONNX spec --------------------------------
def spec_pads(n, span, strides, auto, pads):
    """((lo, hi), …) per axis; SAME gives ceil(n / s) outputs, the odd pixel after (UPPER) or before (LOWER)."""
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        totals = [max((-(-size // s) - 1) * s + k - size, 0) for size, k, s in zip(n, span, strides)]
        return [(t // 2, t - t // 2) if auto == "SAME_UPPER" else (t - t // 2, t // 2) for t in totals]
    r = len(n)
    return [(0, 0)] * r if auto == "VALID" else [(pads[i], pads[i + r]) for i in range(r)]


def spec_pool(x, op, kernel, strides, dilations, pads, ceil, include_pad):
    """Each output: max or mean over its window's elements in the input; windows starting in the padding after
    the input are dropped (ceil_mode); count_include_pad counts the explicit padding, not ceil_mode's overhang."""
    n = x.shape[2:]
    out = []
    for size, k, s, d, (lo, hi) in zip(n, kernel, strides, dilations, pads):
        count = (size + lo + hi - (k - 1) * d - 1) / s + 1
        o = int(np.ceil(count) if ceil else np.floor(count))
        out.append(o - 1 if ceil and (o - 1) * s >= size + lo else o)
    y = np.zeros(x.shape[:2] + tuple(out))
    for pos in np.ndindex(*out):
        vals, padded = [], 0
        for offset in np.ndindex(*kernel):
            idx = [p * s - lo + o * d for p, s, (lo, _), o, d in zip(pos, strides, pads, offset, dilations)]
            padded += all(-lo <= i < size + hi for i, size, (lo, hi) in zip(idx, n, pads))
            if all(0 <= i < size for i, size in zip(idx, n)):
                vals.append(x[(slice(None), slice(None), *idx)])
        v = np.stack(vals, -1)
        y[(..., *pos)] = v.max(-1) if op == "MaxPool" else v.sum(-1) / (padded if include_pad else len(vals))
    return y


def spec_conv(x, w, strides, pads):
    xp = np.pad(x, [(0, 0), (0, 0), *pads])
    k = w.shape[2:]
    out = [(size - kk) // s + 1 for size, kk, s in zip(xp.shape[2:], k, strides)]
    y = np.zeros((x.shape[0], w.shape[0], *out))
    for pos in np.ndindex(*out):
        window = xp[(slice(None), slice(None), *[slice(p * s, p * s + kk) for p, s, kk in zip(pos, strides, k)])]
        y[(..., *pos)] = np.tensordot(window, w, axes=(list(range(1, x.ndim)), list(range(1, x.ndim))))
    return y


def random_window_op(rng):
    """A random MaxPool, AveragePool or Conv over 1 to 3 spatial axes, its attributes and its spec pads."""
    op = str(rng.choice(["MaxPool", "AveragePool", "Conv"]))
    r = int(rng.integers(1, 3 if op == "Conv" else 4))
    n, k = [int(v) for v in rng.integers(3, 8, r)], [int(v) for v in rng.integers(1, 4, r)]
    s = [int(v) for v in rng.integers(1, 4, r)] if rng.random() < 0.6 else [1] * r
    d = [int(v) for v in rng.integers(1, 3, r)] if op != "Conv" and rng.random() < 0.3 else [1] * r
    auto = str(rng.choice(["NOTSET", "NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    attrs = {"strides": s, "auto_pad": auto}
    if auto == "NOTSET":
        attrs["pads"] = [int(v) for v in rng.integers(0, 3, 2 * r)]
    if op != "Conv":
        attrs.update(kernel_shape=k, dilations=d, ceil_mode=int(auto == "NOTSET" and rng.random() < 0.4))
    if op == "AveragePool":
        attrs["count_include_pad"] = int(rng.random() < 0.5)
    span = [(kk - 1) * dd + 1 for kk, dd in zip(k, d)]
    pads = spec_pads(n, span, s, auto, attrs.get("pads"))
    valid = all(size + lo + hi >= sp and max(lo, hi) < sp for size, sp, (lo, hi) in zip(n, span, pads))
    return op, n, k, attrs, pads, valid


def test_window_geometry_against_the_spec():
    rng = np.random.default_rng(7)
    outcomes = []
    while len(outcomes) < 60:
        op, n, k, attrs, pads, valid = random_window_op(rng)
        if not valid:  # a window over padding only, or none at all
            continue
        x = rng.normal(size=(2, 2, *n)).astype(np.float32)
        feeds, inputs = {"x": x}, [tensor("x", F32, [2, 2, *n])]
        if op == "Conv":
            feeds["w"] = rng.normal(size=(3, 2, *k)).astype(np.float32)
            inputs.append(tensor("w", F32, [3, 2, *k]))
            want = spec_conv(x.astype(np.float64), feeds["w"].astype(np.float64), attrs["strides"], pads)
        else:
            want = spec_pool(x.astype(np.float64), op, k, attrs["strides"], attrs["dilations"], pads,
                             attrs["ceil_mode"], attrs.get("count_include_pad"))
        proto = model([helper.make_node(op, list(feeds), ["y"], **attrs)], inputs, [tensor("y", F32, None)], opset=22)
        try:
            g = gc.from_onnx(proto)
        except gc.GraphError as exc:  # dilated MaxPool over padding, ceil_mode far past it
            assert op == "MaxPool" or "ceil_mode" in str(exc), exc
            outcomes.append("refused")
            continue
        for got in (g.evaluate(feeds)["y"], gc.compile(g).run(feeds)["y"]):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=f"{op} {n} {attrs}")
        outcomes.append("ok")
    assert outcomes.count("ok") >= 50
