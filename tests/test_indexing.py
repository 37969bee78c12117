"""gc.take and table[ids]: lookups with fed ids, their scatter-add gradient, bounds checks, per-example gradients,
the emulated GPU, and PyTorch's embedding as a second oracle."""
import tracemalloc

import numpy as np
import pytest

import graphc as gc
from graphc.transforms.gradcheck import rel_error

from helpers import cupy_or_skip, m

F64 = "float64"


def embedding(dtype=F64, vocab=7, tokens=4, width=3, classes=2, positions=True):
    """Token embeddings plus a learned position table (read at fixed positions), mean-pooled, a linear classifier."""
    with gc.Graph("embedding") as g:
        ids, t = gc.input("ids", (m, tokens), dtype="int64"), gc.input("t", (m,), dtype="int64")
        params = [gc.param("E", (vocab, width), dtype=dtype, init="normal")]
        rows = params[0][ids]
        if positions:
            params.append(gc.param("P", (tokens, width), dtype=dtype, init="normal"))
            rows = rows + params[1][gc.const(np.arange(tokens))]
        params.append(gc.param("W", (width, classes), dtype=dtype, init="glorot_uniform"))
        losses = gc.softmax_cross_entropy(gc.mean(rows, axis=1) @ params[-1], t)
        loss = gc.mean(losses)
        g.output(loss=loss, losses=losses, **{f"d{p.name}": d for p, d in zip(params, gc.grad(loss, params))})
    return g


def feeds_of(g, batch=5, seed=0):
    rng = np.random.default_rng(seed)
    vocab, tokens = int(g["E"].shape[0]), int(g["ids"].shape[1])
    return {"ids": rng.integers(0, vocab, (batch, tokens)), "t": rng.integers(0, 2, batch), **gc.init_params(g, seed)}


def test_take_picks_rows_on_any_axis_with_ids_of_any_shape():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 5, 3))
    for axis in (0, 1, 2, -1):
        for ids in (np.array(2), np.array([2, 0, 2]), np.array([[1, 1], [0, 2]])):
            with gc.Graph("take") as g:
                xt, it = gc.input("x", x.shape, dtype=F64), gc.input("ids", ids.shape, dtype="int64")
                g.output(y=gc.take(xt, it, axis=axis))
            expected = np.take(x, ids, axis=axis)
            assert g.nodes[g.outputs["y"]].shape == expected.shape
            for level in (0, 2):
                np.testing.assert_array_equal(gc.compile(g, opt_level=level)({"x": x, "ids": ids})["y"], expected)


def test_indexing_with_a_tensor_is_take():
    with gc.Graph("index") as g:
        x, ids = gc.input("x", (m, 5), dtype=F64), gc.input("ids", (3,), dtype="int64")
        g.output(rows=x[ids], cols=x[:, ids], last=x[..., ids][1:])
        with pytest.raises(gc.GraphError, match="use gc.take"):
            x[ids, ids]
    X, I = np.arange(20.0).reshape(4, 5), np.array([0, 3, 3])
    out = gc.compile(g)({"x": X, "ids": I})
    np.testing.assert_array_equal(out["rows"], X[I])
    np.testing.assert_array_equal(out["cols"], X[:, I])
    np.testing.assert_array_equal(out["last"], X[..., I][1:])


@pytest.mark.parametrize("bad", [7, -1])
def test_ids_out_of_range_are_refused_by_the_module_and_the_evaluator(bad):
    """Negative ids are refused too (PyTorch's embedding refuses them); np.take would count them from the end."""
    g = embedding()
    feeds = feeds_of(g)
    feeds["ids"][2, 1] = bad
    with pytest.raises(gc.GraphError, match=f"ids holds the id {bad}, outside 0..6"):
        g.evaluate(feeds)
    prog = gc.compile(g, loss="loss", optimizer=gc.SGD(0.1))
    for call in (lambda: prog(feeds), lambda: prog.predict(feeds),
                 lambda: prog.train_step({k: feeds[k] for k in g.params}, {"ids": feeds["ids"], "t": feeds["t"]})):
        with pytest.raises(ValueError, match=f"ids holds the id {bad}, outside 0..6"):
            call()


def test_the_gradient_is_a_scatter_add_without_a_one_hot_and_matches_the_reference():
    g = embedding()
    feeds = feeds_of(g)
    feeds["ids"][:, :2] = 3  # repeated ids: their gradients add up
    expected = g.evaluate(feeds)
    for level in (0, 1, 2):
        prog = gc.compile(g, opt_level=level)
        assert "one_hot" not in prog.source.split("def _compute(")[1].split("E.take")[0]
        assert "np.add.at(dE.reshape(-1)" in prog.source
        got = prog(feeds)
        for k in expected:
            assert rel_error(got[k], expected[k]) <= 1e-10, (level, k)


def test_per_example_gradients_through_take_are_each_examples_own():
    """Against the gradient of a batch of one, example by example; ids used as they are, transposed (the examples
    on another axis of the ids), and a position table read at fixed ids (shared by all examples)."""
    for transposed in (False, True):
        with gc.Graph("pe") as g:
            ids, t = gc.input("ids", (m, 4), dtype="int64"), gc.input("t", (m,), dtype="int64")
            E, P = gc.param("E", (6, 3), dtype=F64, init="normal"), gc.param("P", (4, 3), dtype=F64, init="normal")
            W = gc.param("W", (3, 2), dtype=F64, init="normal")
            rows = gc.mean(E[ids.T], axis=0) if transposed else gc.mean(E[ids], axis=1)
            h = rows + gc.mean(P[gc.const([0, 1, 2, 3])], axis=0)
            losses = gc.softmax_cross_entropy(h @ W, t)
            per = gc.per_example_grads(losses, [E, P, W])
            g.output(**{f"pe_{p}": v for p, v in zip("EPW", per)},
                     **{f"d{p}": v for p, v in zip("EPW", gc.grad(gc.sum(losses), [E, P, W]))})
        rng = np.random.default_rng(1)
        feeds = {"ids": rng.integers(0, 6, (5, 4)), "t": rng.integers(0, 2, 5), **gc.init_params(g, 0)}
        got = gc.compile(g)(feeds)
        for i in range(5):
            one = g.evaluate({**feeds, "ids": feeds["ids"][i:i + 1], "t": feeds["t"][i:i + 1]})
            for p in "EPW":
                assert rel_error(got[f"pe_{p}"][i], one[f"d{p}"]) <= 1e-10, (transposed, i, p)


def test_an_embedding_training_step_allocates_almost_nothing():
    g = embedding(dtype="float32", vocab=1000, tokens=32, width=64, positions=False)
    prog = gc.compile(g, loss="loss", optimizer=gc.SGD(0.1))
    feeds = feeds_of(g, batch=64)
    params, batch = {k: feeds[k] for k in g.params}, {"ids": feeds["ids"], "t": feeds["t"]}
    prog.train_step(params, batch)
    tracemalloc.start()
    prog.train_step(params, batch)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 0.02 * 64 * 32 * 64 * 4, peak  # what add.at takes for itself: no array of the batch's size


def test_embedding_gradients_match_pytorch():
    torch = pytest.importorskip("torch")
    g = embedding()
    feeds = feeds_of(g)
    E, P, W = (torch.tensor(feeds[k], requires_grad=True) for k in ("E", "P", "W"))
    ids, t = torch.tensor(feeds["ids"]), torch.tensor(feeds["t"])
    h = (torch.nn.functional.embedding(ids, E) + P[torch.arange(4)]).mean(1)
    loss = torch.nn.functional.cross_entropy(h @ W, t)
    loss.backward()
    got = gc.compile(g)(feeds)
    assert rel_error(got["loss"], loss.item()) <= 1e-12
    for name, p in (("E", E), ("P", P), ("W", W)):
        assert rel_error(got[f"d{name}"], p.grad.numpy()) <= 1e-12, name


@pytest.mark.gpu
def test_gpu_embedding_step_and_per_example_gradients_match_numpy():
    cp = cupy_or_skip()
    g = embedding()
    feeds = feeds_of(g)
    feeds["ids"][:, 1] = 2  # ids hit twice: the atomic adds must add up
    expected = g.evaluate(feeds)
    got = gc.compile(g, backend="cupy")(feeds)
    for k in expected:
        assert rel_error(cp.asnumpy(got[k]), expected[k]) <= 1e-10, k
    with gc.Graph("pe") as pe:
        ids, t = gc.input("ids", (m, 4), dtype="int64"), gc.input("t", (m,), dtype="int64")
        E, W = gc.param("E", (7, 3), dtype=F64, init="normal"), gc.param("W", (3, 2), dtype=F64, init="normal")
        losses = gc.softmax_cross_entropy(gc.mean(E[ids], axis=1) @ W, t)
        pe.output(pe_E=gc.per_example_grads(losses, E))
    feeds = {"ids": feeds["ids"], "t": feeds["t"], **gc.init_params(pe, 0)}
    assert rel_error(cp.asnumpy(gc.compile(pe, backend="cupy")(feeds)["pe_E"]), pe.evaluate(feeds)["pe_E"]) <= 1e-10
