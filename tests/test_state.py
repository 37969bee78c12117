"""State tensors: kept between training steps but not trained. A graph declares them (``gc.state``) and gives them
new values (``gc.assign``); the generated ``train_step`` writes them in place, ``run`` only reads them, and their
arrays are checked like params'."""
import numpy as np
import pytest

import graphc as gc

m = gc.dim("m")


def running_mean_model():
    """Logistic regression on centred inputs, the centre a running mean of the batches (as batch normalization
    keeps its statistics): ``c ← 0.9·c + 0.1·mean(x)``."""
    with gc.Graph("centred") as g:
        x, t = gc.input("x", (m, 4), dtype="float64"), gc.input("t", (m,), dtype="int64")
        W = gc.param("W", (4, 3), dtype="float64", init=("normal", 0.5))
        centre = gc.state("centre", (4,), dtype="float64")
        gc.assign(centre, 0.9 * centre + 0.1 * gc.mean(x, axis=0))
        logits = ((x - centre) @ W).named("logits")
        g.output(loss=gc.mean(gc.softmax_cross_entropy(logits, t)), logits=logits)
    return g


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_train_step_updates_the_state_in_place_and_reads_its_old_value():
    prog = gc.compile(running_mean_model(), loss="loss", optimizer=gc.SGD(0.5))
    rng = np.random.default_rng(0)
    params = prog.init_params(seed=1)
    state = prog.init_state(params)
    assert set(state) == {"centre"} and not state["centre"].any()
    state["centre"][:] = rng.normal(size=4)
    centre, W = state["centre"], params["W"]
    for _ in range(3):
        x, t = rng.normal(size=(5, 4)), rng.integers(0, 3, 5)
        old_centre, old_W = centre.copy(), W.copy()
        prog.train_step(params, {"x": x, "t": t}, state)
        probs = softmax((x - old_centre) @ old_W)  # the hand-written step: SGD on W, the running mean by its rule
        probs[np.arange(5), t] -= 1
        np.testing.assert_allclose(W, old_W - 0.5 * (x - old_centre).T @ probs / 5, rtol=1e-12)
        np.testing.assert_allclose(centre, 0.9 * old_centre + 0.1 * x.mean(axis=0), rtol=1e-12)
        assert state["centre"] is centre and params["W"] is W  # in place


def test_run_reads_the_state_and_never_writes_it():
    prog = gc.compile(running_mean_model(), loss="loss", optimizer=gc.SGD(0.5))
    rng = np.random.default_rng(1)
    x, t, W = rng.normal(size=(5, 4)), rng.integers(0, 3, 5), rng.normal(size=(4, 3))
    centre = rng.normal(size=4)
    kept = centre.copy()
    logits = prog({"x": x, "t": t, "W": W, "centre": centre})["logits"]
    np.testing.assert_allclose(logits, (x - kept) @ W, rtol=1e-12)
    assert np.array_equal(centre, kept)


def test_state_arrays_are_checked_like_params():
    prog = gc.compile(running_mean_model(), loss="loss", optimizer=gc.SGD(0.5))
    params = prog.init_params()
    batch = {"x": np.zeros((2, 4)), "t": np.zeros(2, dtype=np.int64)}
    with pytest.raises(ValueError, match=r"centre expects float64 with shape \(4,\), got float32"):
        prog.train_step(params, batch, {"centre": np.zeros(4, np.float32)})
    with pytest.raises(ValueError, match=r"centre expects shape \(4,\)"):
        prog.train_step(params, batch, {"centre": np.zeros(5)})
    with pytest.raises(ValueError, match=r"missing state \[.centre.\]"):
        prog.train_step(params, batch, {})
    with pytest.raises(ValueError, match="W expects"):
        prog.init_state({"W": np.zeros((3, 3))})


def test_plain_sgd_keeps_no_state_and_needs_none():
    with gc.Graph("linear") as g:
        x, t = gc.input("x", (m, 2), dtype="float64"), gc.input("t", (m, 1), dtype="float64")
        W = gc.param("W", (2, 1), dtype="float64")
        g.output(loss=gc.mean(gc.square(x @ W - t)))
    prog = gc.compile(g, loss="loss", optimizer=gc.SGD(0.1))
    params = prog.init_params()
    assert prog.init_state(params) == {}
    prog.train_step(params, {"x": np.ones((2, 2)), "t": np.ones((2, 1))})  # no state argument
    np.testing.assert_allclose(params["W"], [[0.2], [0.2]])  # 0 − 0.1·(2/2)·Σ_rows x·(0 − 1) = 0.2
    with pytest.raises(ValueError, match="unknown feeds"):
        prog.train_step(params, {"x": np.ones((2, 2)), "t": np.ones((2, 1))}, {"W": params["W"]})


def test_state_mistakes_are_graph_errors():
    with gc.Graph("bad") as g:
        x = gc.input("x", (m, 3))
        s = gc.state("s", (3,), init="ones")
        with pytest.raises(gc.GraphError, match="training step counter"):
            gc.state("step", ())
        with pytest.raises(gc.GraphError, match="must be concrete"):
            gc.state("r", (m,))
        with pytest.raises(gc.GraphError, match="not a state tensor"):
            gc.assign(x, x)
        with pytest.raises(gc.GraphError, match=r"cannot take .* \(m, 3\)"):
            gc.assign(s, x)
        gc.assign(s, 2 * s)
        with pytest.raises(gc.GraphError, match="assigned twice"):
            gc.assign(s, s + 1)
        g.output(y=x * s)
    assert gc.init_state(g)["s"].tolist() == [1, 1, 1]


def test_an_optimizer_state_name_taken_by_the_graph_is_a_graph_error():
    with gc.Graph("clash") as g:
        x = gc.input("x", (m, 2))
        W = gc.param("W", (2, 2))
        gc.state("m_W", (2, 2))
        g.output(loss=gc.sum(x @ W))
    with pytest.raises(gc.GraphError, match="keeps its state 'm_W' beside param 'W'"):
        gc.compile(g, loss="loss", optimizer=gc.Adam())
