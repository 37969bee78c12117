"""Per-example gradients: against one-example-at-a-time gradients, the batch mean, and hand-computed clipping."""
import ast

import numpy as np
import pytest

import graphc as gc
from graphc.dsl import fill
from graphc.ops import random as random_ops
from graphc.passes import optimize
from graphc.transforms.gradcheck import rel_error

from helpers import cupy_or_skip

m = gc.dim("m")
BATCH = 5
F64 = "float64"


def _inputs(x_shape, t_shape=None, labels=None):
    x = gc.input("x", x_shape, dtype=F64)
    if labels:
        return x, gc.input("t", (m,), dtype="int64")
    return x, gc.input("t", t_shape, dtype=F64)


# -- models: each returns (per-example losses, params); the first dim of every input is the batch -----------
def mlp():
    x, t = _inputs((m, 6), labels=True)
    W1 = gc.param("W1", (6, 7), dtype=F64, init="he_normal")
    b1 = gc.param("b1", (7,), dtype=F64, init=("normal", 0.1))
    W2 = gc.param("W2", (7, 4), dtype=F64, init="glorot_uniform")
    b2 = gc.param("b2", (4,), dtype=F64, init=("normal", 0.1))
    h = gc.relu(x @ W1 + b1)
    return gc.softmax_cross_entropy(h @ W2 + b2, t), [W1, b1, W2, b2]


def tanh_mse():
    x, t = _inputs((m, 5), (m, 2))
    W1 = gc.param("W1", (5, 6), dtype=F64, init="glorot_uniform")
    b1 = gc.param("b1", (6,), dtype=F64, init=("normal", 0.1))
    W2 = gc.param("W2", (6, 2), dtype=F64, init="glorot_uniform")
    y = gc.tanh(x @ W1 + b1) @ W2
    return gc.sum((y - t) ** 2, axis=1), [W1, b1, W2]


def logistic():
    """``x @ w`` with a vector ``w`` and a scalar bias."""
    x, t = _inputs((m, 4), (m,))
    w = gc.param("w", (4,), dtype=F64, init=("normal", 0.5))
    b = gc.param("b", (), dtype=F64, init=("normal", 0.5))
    return gc.binary_cross_entropy_with_logits(x @ w + b, t), [w, b]


def sequence():
    """Examples of shape (T, k): the batch sits in the matmuls' leading dims."""
    x, t = _inputs((m, 3, 4), labels=True)
    W = gc.param("W", (4, 5), dtype=F64, init="glorot_uniform")
    b = gc.param("b", (5,), dtype=F64, init=("normal", 0.1))
    U = gc.param("U", (2, 3), dtype=F64, init="glorot_uniform")
    h = gc.tanh(x @ W + b)  # (m, 3, 5)
    mixed = U @ h  # (m, 2, 5): a shared left operand, the batch leading
    return gc.softmax_cross_entropy(gc.mean(mixed, axis=1), t), [W, b, U]


def columns():
    """Examples as columns: ``W @ xᵀ``, a vector times ``hᵀ``."""
    x, t = _inputs((m, 4), (m,))
    W = gc.param("W", (3, 4), dtype=F64, init="glorot_uniform")
    b = gc.param("b", (3,), dtype=F64, init=("normal", 0.1))
    v = gc.param("v", (3,), dtype=F64, init=("normal", 0.5))
    h = gc.sigmoid(W @ x.T + gc.reshape(b, (3, 1)))  # (3, m)
    return gc.square(v @ h - t), [W, b, v]


def weight_norm():
    """``W = v · g / |v|``: the per-example gradients go on through nodes computed from the params alone."""
    x, t = _inputs((m, 4), labels=True)
    v = gc.param("v", (4, 3), dtype=F64, init="glorot_uniform")
    g = gc.param("g", (3,), dtype=F64, init=("uniform", 0.5, 1.5))
    W = v * (g / gc.sqrt(gc.sum(gc.square(v), axis=0)))
    return gc.softmax_cross_entropy(x @ W, t), [v, g]


def tied():
    """An autoencoder with tied weights: ``W`` used as ``x @ W`` and as ``h @ Wᵀ``."""
    x, _ = _inputs((m, 5), (m, 5))
    W = gc.param("W", (5, 3), dtype=F64, init="glorot_uniform")
    c = gc.param("c", (5,), dtype=F64, init=("normal", 0.1))
    h = gc.tanh(x @ W)
    y = h @ W.T + c
    return gc.sum((y - x) ** 2, axis=1), [W, c]


def penalty():
    """Each example's loss carries the same weight penalty: a shared scalar added to a batched vector."""
    x, t = _inputs((m, 4), labels=True)
    W = gc.param("W", (4, 3), dtype=F64, init="glorot_uniform")
    return gc.softmax_cross_entropy(x @ W, t) + 0.1 * gc.sum(W * W), [W]


def class_token():
    """A learned token copied to every example (``broadcast_to``) and concatenated to its sequence."""
    x, t = _inputs((m, 3, 4), labels=True)
    cls = gc.param("cls", (1, 4), dtype=F64, init=("normal", 0.5))
    W = gc.param("W", (4, 4), dtype=F64, init="glorot_uniform")
    V = gc.param("V", (4, 4), dtype=F64, init="glorot_uniform")
    seq = gc.concat([gc.broadcast_to(cls, (m, 1, 4)), x], axis=1)  # (m, 4, 4)
    h = gc.tanh(seq @ W)
    return gc.softmax_cross_entropy(h[:, 0] @ V + gc.mean(h, axis=1), t), [cls, W, V]


MODELS = {f.__name__: f for f in (mlp, tanh_mse, logistic, sequence, columns, weight_norm, tied, penalty,
                                  class_token)}


def build(name, batch=BATCH, seed=0):
    """Graph with ``pe_<p>`` (per-example), ``d<p>`` (gradient of the mean loss) and ``losses`` outputs."""
    with gc.Graph(name) as g:
        losses, params = MODELS[name]()
        loss = gc.mean(losses)
        grads = gc.grad(loss, params)
        per_example = gc.per_example_grads(losses, params)
        g.output(losses=losses, loss=loss, **{f"d{p.name}": d for p, d in zip(params, grads)},
                 **{f"pe_{p.name}": d for p, d in zip(params, per_example)})
    rng = np.random.default_rng(seed)
    feeds = dict(gc.init_params(g, seed))
    for name_, nid in g.inputs.items():
        node = g.nodes[nid]
        shape = tuple(int(d.subs(m, batch)) for d in node.shape)
        if node.dtype == "int64":
            feeds[name_] = rng.integers(0, 4, size=shape)
        elif name_ == "t" and len(shape) == 1 and name in ("logistic",):
            feeds[name_] = (rng.random(shape) > 0.5).astype(F64)
        else:
            feeds[name_] = rng.normal(size=shape)
    return g, feeds, [p.name for p in params]


def one_row(feeds, g, i):
    return {k: (v[i:i + 1] if k in g.inputs else v) for k, v in feeds.items()}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_per_example_grads_equal_one_example_at_a_time(name):
    g, feeds, params = build(name)
    out = g.evaluate(feeds)
    for p in params:
        assert out[f"pe_{p}"].shape == (BATCH, *feeds[p].shape)
        # the oracle: the ordinary gradient of the mean loss of a batch of one row
        expected = np.stack([g.evaluate(one_row(feeds, g, i), [f"d{p}"])[f"d{p}"] for i in range(BATCH)])
        assert rel_error(out[f"pe_{p}"], expected) <= 1e-10, p


@pytest.mark.parametrize("name", sorted(MODELS))
def test_mean_of_per_example_grads_is_the_gradient_of_the_mean_loss(name):
    g, feeds, params = build(name)
    out = g.evaluate(feeds)
    for p in params:
        assert rel_error(out[f"pe_{p}"].mean(axis=0), out[f"d{p}"]) <= 1e-12, p


@pytest.mark.parametrize("name", sorted(MODELS))
def test_optimized_graph_computes_the_same_per_example_grads(name):
    g, feeds, params = build(name)
    before = g.evaluate(feeds)
    after = optimize(g)[0].evaluate(feeds)
    for p in params:
        assert rel_error(after[f"pe_{p}"], before[f"pe_{p}"]) <= 1e-12, p


def test_dense_layer_per_example_grads_are_outer_products_and_biases_reuse_dz():
    g, _, _ = build("mlp")
    pe_W2, pe_b2 = (g.nodes[g.outputs[k]] for k in ("pe_W2", "pe_b2"))
    assert pe_W2.op == "ew" and pe_W2.shape == (m, 7, 4) and pe_W2.phase == "backward"
    assert [g.nodes[i].op for i in pe_W2.inputs] == ["reshape", "reshape"]
    assert pe_b2.shape == (m, 4) and pe_b2.op == "ew"  # dz = softmax(z) − onehot(t): no extra node
    assert not any(n.op == "matmul" and len(n.shape) == 3 for n in g.nodes.values())


def test_param_the_losses_do_not_use_gets_zeros():
    with gc.Graph("unused") as g:
        x, t = _inputs((m, 3), (m,))
        w = gc.param("w", (3,), dtype=F64, init="ones")
        u = gc.param("u", (2, 2), dtype=F64, init="ones")
        g.output(pe=gc.per_example_grads(gc.square(x @ w - t), [w, u])[1])
    out = g.evaluate({"x": np.ones((4, 3)), "t": np.zeros(4), "w": np.ones(3), "u": np.ones((2, 2))})
    assert out["pe"].shape == (4, 2, 2) and not out["pe"].any()


# -- clipping ------------------------------------------------------------------------------------------------
def numpy_mlp_per_example(feeds):
    """The MLP's per-example gradients by hand, in plain NumPy."""
    x, t, W1, b1, W2, b2 = (feeds[k] for k in ("x", "t", "W1", "b1", "W2", "b2"))
    z1 = x @ W1 + b1
    h = np.maximum(z1, 0)
    z2 = h @ W2 + b2
    p = np.exp(z2 - z2.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    dz2 = p - np.eye(W2.shape[1])[t]
    dz1 = (dz2 @ W2.T) * (z1 > 0)
    return {"W1": np.einsum("ik,ic->ikc", x, dz1), "b1": dz1, "W2": np.einsum("ik,ic->ikc", h, dz2), "b2": dz2}


def clipped_graph(clip, noise_multiplier=0.0):
    with gc.Graph("clipped") as g:
        losses, params = mlp()
        noise = [gc.input(f"xi_{p.name}", p.shape, dtype=F64) for p in params] if noise_multiplier else None
        clipped = gc.clipped_mean_grads(losses, params, clip, noise=noise, noise_multiplier=noise_multiplier)
        g.output(norms=gc.per_example_norms(losses, params), **{f"c_{p.name}": c for p, c in zip(params, clipped)})
    return g


def mlp_feeds(g, batch=6, seed=1):
    rng = np.random.default_rng(seed)
    feeds = {**gc.init_params(g, seed), "x": rng.normal(size=(batch, 6)) * 2, "t": rng.integers(0, 4, size=batch)}
    return feeds, rng


@pytest.mark.parametrize("clip", [0.3, 1.0, 100.0])
def test_clipped_mean_grads_equal_a_hand_computed_dp_sgd_step(clip):
    g = clipped_graph(clip)
    feeds, _ = mlp_feeds(g)
    out = g.evaluate(feeds)
    per = numpy_mlp_per_example(feeds)
    norms = np.sqrt(sum((v.reshape(len(v), -1) ** 2).sum(axis=1) for v in per.values()))
    assert rel_error(out["norms"], norms) <= 1e-12
    factor = np.minimum(1.0, clip / norms)
    for p, v in per.items():
        expected = np.mean(factor.reshape(-1, *[1] * (v.ndim - 1)) * v, axis=0)
        assert rel_error(out[f"c_{p}"], expected) <= 1e-12, p
    if clip == 100.0:  # nothing clipped: the plain mean gradient
        assert rel_error(out["c_W1"], per["W1"].mean(axis=0)) <= 1e-12


def test_clipped_mean_grads_add_scaled_gaussian_noise():
    clip, sigma = 0.5, 1.3
    g = clipped_graph(clip, sigma)
    feeds, rng = mlp_feeds(g)
    xi = {p: rng.normal(size=feeds[p].shape) for p in ("W1", "b1", "W2", "b2")}
    out = g.evaluate({**feeds, **{f"xi_{p}": v for p, v in xi.items()}})
    per = numpy_mlp_per_example(feeds)
    norms = np.sqrt(sum((v.reshape(len(v), -1) ** 2).sum(axis=1) for v in per.values()))
    factor = np.minimum(1.0, clip / norms)
    for p, v in per.items():
        summed = np.tensordot(factor, v, axes=1)
        assert rel_error(out[f"c_{p}"], (summed + sigma * clip * xi[p]) / len(v)) <= 1e-12, p


def test_clipping_dense_layers_never_builds_the_per_example_arrays():
    g = clipped_graph(1.0)
    assert not any(len(n.shape) == 3 for n in g.nodes.values()), "an (m, k, c) array was built"
    opt, _ = optimize(g)
    assert not any(len(n.shape) == 3 for n in opt.nodes.values())


def test_clipping_with_a_tied_weight_matches_materialized_norms():
    with gc.Graph("tied_clip") as g:
        losses, params = tied()
        pe = gc.per_example_grads(losses, params)
        clipped = gc.clipped_mean_grads(losses, params, 0.2)
        g.output(norms=gc.per_example_norms(losses, params), pe_W=pe[0], pe_c=pe[1], c_W=clipped[0], c_c=clipped[1])
    rng = np.random.default_rng(2)
    out = g.evaluate({**gc.init_params(g, 2), "x": rng.normal(size=(6, 5)), "t": rng.normal(size=(6, 5))})
    norms = np.sqrt((out["pe_W"] ** 2).sum(axis=(1, 2)) + (out["pe_c"] ** 2).sum(axis=1))
    assert rel_error(out["norms"], norms) <= 1e-12
    factor = np.minimum(1.0, 0.2 / norms)
    assert rel_error(out["c_W"], np.tensordot(factor, out["pe_W"], axes=1) / 6) <= 1e-12


# -- errors --------------------------------------------------------------------------------------------------
def _error(fn):
    with gc.Graph("bad"):
        x = gc.input("x", (m, 4), dtype=F64)
        W = gc.param("W", (4, 4), dtype=F64, init="ones")
        losses, wrt = fn(x, W)
        with pytest.raises(gc.GraphError) as info:
            gc.per_example_grads(losses, wrt)
    return str(info.value)


def test_batch_statistics_are_named():
    def batch_norm(x, W):
        h = x @ W
        centered = h - gc.mean(h, axis=0)
        return gc.sum(centered * centered, axis=1), [W]
    message = _error(batch_norm)
    assert "sum" in message and "reduces over the batch axis" in message and "(m, 4)" in message


def test_matmul_mixing_rows_is_named():
    message = _error(lambda x, W: (gc.sum(gc.softmax(x @ x.T) @ (x @ W), axis=1), [W]))
    assert "matmul" in message and "examples" in message
    message = _error(lambda x, W: (gc.sum(x.T @ x @ W, axis=0), [W]))
    assert "matmul" in message and "contracts the batch axis" in message and "'x'" in message


def test_softmax_along_the_batch_axis_is_named():
    message = _error(lambda x, W: (gc.sum(gc.softmax(x @ W, axis=0), axis=1), [W]))
    assert "softmax" in message and "normalizes along the batch axis" in message


def test_reshape_that_merges_examples_is_named():
    message = _error(lambda x, W: (gc.sum(gc.reshape(x @ W, (4, m)), axis=0), [W]))
    assert "reshape" in message and "(m, 4) to (4, m)" in message


def test_concat_along_the_batch_axis_is_named():
    message = _error(lambda x, W: (gc.sum(gc.concat([x, x @ W], axis=0), axis=1)[:m], [W]))
    assert "concat" in message


def test_losses_must_be_a_per_example_vector():
    message = _error(lambda x, W: (gc.mean(gc.sum(x @ W, axis=1)), [W]))
    assert "vector (m,)" in message and "before gc.mean" in message
    message = _error(lambda x, W: (gc.sum(x @ W, axis=0), [W]))  # (4,): a sum over the batch
    assert "sum" in message and "reduces over the batch axis" in message
    message = _error(lambda x, W: (gc.sum(W, axis=0), [W]))
    assert "do not run over the batch" in message


def test_wrt_must_be_shared_by_the_examples():
    message = _error(lambda x, W: (gc.sum(x @ W, axis=1), [x]))
    assert "'x'" in message and "varies per example" in message


def test_clip_must_be_positive():
    with gc.Graph("bad_clip"):
        losses, params = mlp()
        with pytest.raises(gc.GraphError, match="clip must be a positive number"):
            gc.clipped_mean_grads(losses, params, 0.0)


# -- generated code and the training step --------------------------------------------------------------------
@pytest.mark.parametrize("opt_level", [0, 2])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_numpy_backend_emits_per_example_grads(name, opt_level):
    g, feeds, params = build(name)
    expected = g.evaluate(feeds)
    got = gc.compile(g, backend="numpy", opt_level=opt_level)(feeds)
    for p in params:
        assert rel_error(got[f"pe_{p}"], expected[f"pe_{p}"]) <= 1e-10, p


@pytest.mark.parametrize("dtype", ["float32", F64])
def test_wide_dense_layer_per_example_grads_take_one_blas_product_per_example(dtype):
    # rows of 100·120 elements: the NumPy backend writes them with np.dot per example instead of einsum
    with gc.Graph("wide") as g:
        x, t = gc.input("x", (m, 100), dtype=dtype), gc.input("t", (m, 120), dtype=dtype)
        W = gc.param("W", (100, 120), dtype=dtype)
        g.output(pe_W=gc.per_example_grads(gc.sum(gc.square(x @ W - t), axis=1), [W])[0])
    rng = np.random.default_rng(0)
    feeds = {k: rng.normal(size=s).astype(dtype) for k, s in (("x", (9, 100)), ("t", (9, 120)), ("W", (100, 120)))}
    program = gc.compile(g, backend="numpy")
    assert "for i in range(m):" in program.source and "np.dot(" in program.source
    dz = 2 * (feeds["x"].astype(F64) @ feeds["W"] - feeds["t"])  # d loss_i / d z_i, by hand
    expected = feeds["x"].astype(F64)[:, :, None] * dz[:, None, :]
    assert rel_error(program(feeds)["pe_W"], expected) <= (1e-5 if dtype == "float32" else 1e-12)


def dp_program(**sgd):
    with gc.Graph("dp") as g:
        losses, _ = mlp()
        g.output(loss=gc.mean(losses))
    return g, gc.compile(g, loss="loss", optimizer=gc.SGD(**sgd))


@pytest.mark.parametrize("noise", [0.0, 1.1])
def test_sgd_with_per_example_clipping_takes_a_hand_computed_dp_sgd_step(noise):
    lr, clip, seed = 0.1, 0.5, 3
    g, program = dp_program(lr=lr, clip_per_example=clip, noise=noise, seed=seed)
    feeds, _ = mlp_feeds(g)
    params = {p: feeds[p].copy() for p in g.params}
    program.train_step(params, {"x": feeds["x"], "t": feeds["t"]})
    per = numpy_mlp_per_example(feeds)
    norms = np.sqrt(sum((v.reshape(len(v), -1) ** 2).sum(axis=1) for v in per.values()))
    factor = np.minimum(1.0, clip / norms)
    for k, (p, v) in enumerate(per.items()):
        # the noise stream of param number k: the first draw of default_rng([seed, k])
        xi = np.random.default_rng([seed, k]).standard_normal(v.shape[1:]) if noise else 0.0
        step = (np.tensordot(factor, v, axes=1) + noise * clip * xi) / len(v)
        assert rel_error(params[p], feeds[p] - lr * step) <= 1e-12, p


def test_dp_sgd_noise_is_fresh_each_step_and_seeded():
    g, program = dp_program(lr=0.1, clip_per_example=0.5, noise=1.0, seed=7)
    _, again = dp_program(lr=0.1, clip_per_example=0.5, noise=1.0, seed=7)
    feeds, _ = mlp_feeds(g)
    batch = {"x": feeds["x"], "t": feeds["t"]}
    runs = []
    for prog in (program, again):
        params = {p: feeds[p].copy() for p in g.params}
        steps = []
        for _ in range(2):
            before = params["b2"].copy()
            prog.train_step(params, batch)
            steps.append(params["b2"] - before)
        runs.append(steps)
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][1], runs[1][1])
    assert program.source == again.source
    clean = {p: feeds[p].copy() for p in g.params}
    dp_program(lr=0.1, clip_per_example=0.5)[1].train_step(clean, batch)
    assert not np.allclose(runs[0][0], clean["b2"] - feeds["b2"])  # noise was added


def test_sgd_checks_its_per_example_options():
    with pytest.raises(gc.GraphError, match="clip_per_example must be positive"):
        gc.SGD(0.1, clip_per_example=-1.0)
    with pytest.raises(gc.GraphError, match="needs clip_per_example"):
        gc.SGD(0.1, noise=1.0)
    with gc.Graph("summed") as g:
        losses, _ = mlp()
        g.output(loss=gc.sum(losses))
    with pytest.raises(gc.GraphError, match=r"gc.mean\(losses\)"):
        gc.compile(g, loss="loss", optimizer=gc.SGD(0.1, clip_per_example=1.0))


def test_random_normal_is_the_first_draw_of_its_stream_in_reference_and_generated_code():
    with gc.Graph("noise") as g:
        x = gc.input("x", (m, 3), dtype=F64)
        g.output(y=x + random_ops.noise(g, (m, 3), F64, seed=5), z=random_ops.noise(g, (3,), F64, 5))
    feeds = {"x": np.zeros((4, 3))}
    expected = np.random.default_rng([5, 0]).standard_normal((4, 3))  # seed 5, stream 0, call 0
    assert np.array_equal(g.evaluate(feeds)["y"], expected)
    program = gc.compile(g, backend="numpy")
    assert np.array_equal(program(feeds)["y"], expected)
    assert not np.array_equal(program(feeds)["y"], expected)  # the generator moves on


def test_fills_of_one_value_and_different_shapes_are_different_nodes():
    with gc.Graph("fills") as g:
        assert fill(g, 1, (), F64).id != fill(g, 1, (m,), F64).id != fill(g, 1, (m,), "float32").id


# -- the CuPy backend: the module's source, and its numbers on a GPU or the emulated one (pytest -m gpu) -------
def test_cupy_backend_emits_per_example_grads_and_dp_sgd():
    g, _, _ = build("mlp")
    source = gc.compile(g, backend="cupy").source
    ast.parse(source)
    assert "cp.ElementwiseKernel(" in source
    with gc.Graph("dp") as g:
        losses, _ = mlp()
        g.output(loss=gc.mean(losses))
    sgd = gc.SGD(0.1, clip_per_example=0.5, noise=1.1, seed=3)
    source = gc.compile(g, backend="cupy", loss="loss", optimizer=sgd).source
    ast.parse(source)
    assert source.count("cp.random.default_rng(3)") == 1  # one device generator for every param's noise
    assert ".standard_normal(dtype=cp.float64, out=B[" in source  # drawn into planned buffers
    assert source == gc.compile(g, backend="cupy", loss="loss", optimizer=sgd).source


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(MODELS))
def test_gpu_per_example_grads_match_reference(name):
    cp = cupy_or_skip()
    g, feeds, params = build(name)
    expected = g.evaluate(feeds)
    got = gc.compile(g, backend="cupy")(feeds)
    for p in params:
        assert rel_error(cp.asnumpy(got[f"pe_{p}"]), expected[f"pe_{p}"]) <= 1e-10, p


@pytest.mark.gpu
def test_gpu_dp_sgd_step_matches_numpy_without_noise_and_draws_noise():
    cp = cupy_or_skip()
    for noise in (0.0, 1.0):
        g, cpu = dp_program(lr=0.1, clip_per_example=0.5, noise=noise, seed=3)
        gpu = gc.compile(g, backend="cupy", loss="loss", optimizer=gc.SGD(0.1, clip_per_example=0.5, noise=noise,
                                                                           seed=3))
        feeds, _ = mlp_feeds(g)
        host = {p: feeds[p].copy() for p in g.params}
        device = {p: feeds[p].copy() for p in g.params}
        batch = {"x": feeds["x"], "t": feeds["t"]}
        cpu.train_step(host, batch)
        gpu.train_step(device, batch)
        close = [rel_error(cp.asnumpy(cp.asarray(device[p])), host[p]) <= 1e-10 for p in g.params]
        assert all(close) if not noise else not all(close)  # the GPU draws from a stream of its own
