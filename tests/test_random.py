"""Random ops: dropout, random_normal, random_uniform. Call ``c`` of a fresh NumPy module draws what
``g.evaluate(feeds, call=c)`` draws; the backward pass reuses the forward mask; predict has no dropout."""
import numpy as np
import pytest

import graphc as gc
from graphc.transforms.gradcheck import rel_error

from helpers import cupy_or_skip, m


def noisy(dtype="float64", p=0.25):
    """Dropout of x, uniform noise in [-1, 3), normal noise, and the gradient of their weighted sum w.r.t. x."""
    with gc.Graph("noisy") as g:
        x, w = gc.input("x", (m, 6), dtype=dtype), gc.input("w", (m, 6), dtype=dtype)
        d, u, n = gc.dropout(x, p, seed=3), gc.random_uniform((m, 6), dtype, -1.0, 3.0), gc.random_normal((6,), dtype)
        loss = gc.sum((d + u + n) * w)
        g.output(d=d, u=u, n=n, loss=loss, dx=gc.grad(loss, x))
    return g


def feeds(dtype="float64", batch=4):
    rng = np.random.default_rng(0)
    return {"x": (rng.random((batch, 6)) + 0.5).astype(dtype), "w": rng.normal(size=(batch, 6)).astype(dtype)}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_call_c_of_a_fresh_module_draws_what_the_evaluator_draws_at_call_c(dtype):
    g, f = noisy(dtype), feeds(dtype)
    for level in (0, 2):
        prog = gc.compile(g, opt_level=level)
        for call in range(3):
            got, expected = prog(f), g.evaluate(f, call=call)
            for k in "dun":  # the same draws, bit for bit
                np.testing.assert_array_equal(got[k], expected[k], err_msg=f"{level} {call} {k}")
            for k in ("loss", "dx"):  # sums fused in another order round differently
                assert rel_error(got[k], expected[k]) <= (1e-6 if dtype == "float32" else 1e-14), (level, call, k)


def test_steps_differ_and_a_fresh_module_repeats_them():
    g, f = noisy(), feeds()
    first, again = gc.compile(g), gc.compile(g)
    a = [first(f)["d"] for _ in range(2)]
    b = [again(f)["d"] for _ in range(2)]
    assert not np.array_equal(a[0], a[1])
    assert all(np.array_equal(u, v) for u, v in zip(a, b))


def test_the_backward_pass_reuses_the_forward_mask():
    with gc.Graph("drop") as g:
        x, w = gc.input("x", (m, 50), dtype="float64"), gc.input("w", (m, 50), dtype="float64")
        y = gc.dropout(x, 0.4)
        g.output(y=y, dx=gc.grad(gc.sum(y * w), x))
    f = {"x": np.ones((8, 50)), "w": np.random.default_rng(1).normal(size=(8, 50))}
    out = gc.compile(g)(f)
    kept = out["y"] != 0
    np.testing.assert_array_equal(out["y"], np.where(kept, 1 / 0.6, 0.0))  # inverted dropout: kept ones scaled
    np.testing.assert_allclose(out["dx"], np.where(kept, f["w"] / 0.6, 0.0), rtol=1e-15)
    assert 0.3 < 1 - kept.mean() < 0.5


def test_a_training_step_with_dropout_is_the_evaluators_step_at_its_call():
    with gc.Graph("mlp") as g:
        x, t = gc.input("x", (m, 5), dtype="float64"), gc.input("t", (m,), dtype="int64")
        W1 = gc.param("W1", (5, 8), dtype="float64", init="he_normal")
        W2 = gc.param("W2", (8, 3), dtype="float64", init="glorot_uniform")
        logits = (gc.dropout(gc.relu(x @ W1), 0.5) @ W2).named("logits")
        loss = gc.mean(gc.softmax_cross_entropy(logits, t))
        g.output(loss=loss, logits=logits, dW1=gc.grad(loss, W1), dW2=gc.grad(loss, W2))
    rng = np.random.default_rng(2)
    batch = {"x": rng.normal(size=(6, 5)), "t": rng.integers(0, 3, 6)}
    prog = gc.compile(g, loss="loss", optimizer=gc.SGD(lr=0.1))
    params = gc.init_params(g, seed=0)
    prog(batch | params)  # call 0; the step below is call 1
    for call in (1, 2):
        expected = g.evaluate({**batch, **params}, call=call)
        before = {k: v.copy() for k, v in params.items()}
        out = prog.train_step(params, batch)
        assert rel_error(out["loss"], expected["loss"]) <= 1e-12
        for k in params:
            assert rel_error(params[k], before[k] - 0.1 * expected[f"d{k}"]) <= 1e-12, (call, k)
    predicted = prog.predict({"x": batch["x"], **params})["logits"]  # no dropout: the plain network
    np.testing.assert_allclose(predicted, np.maximum(batch["x"] @ params["W1"], 0) @ params["W2"], rtol=1e-12)


def test_draws_have_their_distributions():
    with gc.Graph("draws") as g:
        x = gc.input("x", (m, 1000), dtype="float32")
        g.output(u=x + gc.random_uniform((m, 1000), "float32", 2.0, 4.0), n=x + gc.random_normal((m, 1000)),
                 d=gc.dropout(x + 1, 0.2))
    out = gc.compile(g)({"x": np.zeros((20, 1000), np.float32)})
    assert 2.0 <= out["u"].min() and out["u"].max() < 4.0 and abs(out["u"].mean() - 3.0) < 0.02
    assert abs(out["n"].mean()) < 0.02 and abs(out["n"].std() - 1.0) < 0.02
    assert abs((out["d"] == 0).mean() - 0.2) < 0.01 and abs(out["d"].mean() - 1.0) < 0.02


def test_random_ops_check_their_arguments():
    with gc.Graph("bad"):
        x = gc.input("x", (m, 3))
        with pytest.raises(gc.GraphError, match=r"p must lie in \[0, 1\)"):
            gc.dropout(x, 1.0)
        with pytest.raises(gc.GraphError, match="dtype must be float32 or float64"):
            gc.random_normal((3,), "int64")
        with pytest.raises(gc.GraphError, match="low 1.0 must be below high 1.0"):
            gc.random_uniform((3,), "float32", 1.0, 1.0)
        assert gc.dropout(x, 0.0) is x
        two = [gc.dropout(x, 0.5), gc.dropout(x, 0.5)]
        assert two[0].id != two[1].id  # two dropouts of one tensor draw two masks


@pytest.mark.gpu
def test_gpu_dropout_reuses_its_mask_and_repeats_in_a_fresh_module():
    cp = cupy_or_skip()
    with gc.Graph("drop") as g:
        x, w = gc.input("x", (m, 400), dtype="float32"), gc.input("w", (m, 400), dtype="float32")
        y = gc.dropout(x, 0.25)
        g.output(y=y, dx=gc.grad(gc.sum(y * w), x))
    f = {"x": np.ones((5, 400), np.float32), "w": np.random.default_rng(1).normal(size=(5, 400)).astype(np.float32)}
    runs = []
    for _ in range(2):
        prog = gc.compile(g, backend="cupy")
        runs.append([{k: cp.asnumpy(v) for k, v in prog(f).items()} for _ in range(2)])
    for out in runs[0]:
        kept = out["y"] != 0
        np.testing.assert_allclose(out["y"], np.where(kept, np.float32(1 / 0.75), 0), rtol=1e-6)
        np.testing.assert_allclose(out["dx"], np.where(kept, f["w"] / np.float32(0.75), 0), rtol=1e-6)
        assert abs(1 - kept.mean() - 0.25) < 0.03
    assert not np.array_equal(runs[0][0]["y"], runs[0][1]["y"])
    assert all(np.array_equal(a["y"], b["y"]) for a, b in zip(*runs))
