"""predict: the outputs that need no labels, for their inputs alone, in inference mode, without gradients, with no
allocation in a steady state."""
import tracemalloc

import numpy as np
import pytest

import graphc as gc
from graphc.cli import main
from graphc.transforms.gradcheck import rel_error

from helpers import cupy_or_skip, m


def classifier(labels_first=False, dtype="float64"):
    """An MLP with dropout whose labels may be declared before the images (then they bind m first)."""
    with gc.Graph("clf") as g:
        t = gc.input("t", (m,), dtype="int64") if labels_first else None
        x = gc.input("x", (m, 6), dtype=dtype)
        t = t if labels_first else gc.input("t", (m,), dtype="int64")
        W1 = gc.param("W1", (6, 16), dtype=dtype, init="he_normal")
        W2 = gc.param("W2", (16, 3), dtype=dtype, init="glorot_uniform")
        h = gc.dropout(gc.relu(x @ W1), 0.3).named("h")
        logits = (h @ W2).named("logits")
        losses = gc.softmax_cross_entropy(logits, t)
        loss = gc.mean(losses)
        g.output(loss=loss, losses=losses, logits=logits, probs=gc.softmax(logits), dW1=gc.grad(loss, W1))
    return g


def data(batch=8, dtype="float64"):
    rng = np.random.default_rng(0)
    return rng.normal(size=(batch, 6)).astype(dtype), rng.integers(0, 3, batch)


def plain(x, params):
    """The network without dropout, by hand."""
    logits = np.maximum(x @ params["W1"], 0) @ params["W2"]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return logits, e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("labels_first", [False, True])
def test_predict_computes_the_outputs_the_labels_do_not_reach_without_dropout(labels_first):
    g = classifier(labels_first)
    prog = gc.compile(g, loss="loss", optimizer=gc.SGD(0.1))
    assert prog.module.PREDICTS == ("logits", "probs")
    params = prog.init_params(0)
    x, t = data()
    logits, probs = plain(x, params)
    for fed in ({"x": x, **params}, {"x": x, "t": t, **params}):  # labels, where given, are ignored
        out = prog.predict(fed)
        assert set(out) == {"logits", "probs"}
        assert rel_error(out["logits"], logits) <= 1e-12 and rel_error(out["probs"], probs) <= 1e-12
    with pytest.raises(ValueError, match=r"missing feeds \['x'\]"):
        prog.predict(params)
    with pytest.raises(ValueError, match=r"unknown feeds \['y'\]"):
        prog.predict({"x": x, "y": x, **params})


def test_predict_computes_no_gradient_and_draws_nothing():
    prog = gc.compile(classifier(), loss="loss", optimizer=gc.SGD(0.1))
    body = prog.source.split("def _predict(")[1].split("\ndef ")[0]
    assert body.startswith("B, m, x, W1, W2):")  # no call number: nothing random, no labels
    assert "random" not in body and "dW1" not in body and "xent" not in body


def test_named_predictions_at_compile_time_and_on_the_command_line(tmp_path):
    g = classifier()
    prog = gc.compile(g, predict=["logits"])
    params = prog.init_params(0)
    x, _ = data()
    assert prog.module.PREDICTS == ("logits",)
    assert rel_error(prog.predict({"x": x, **params})["logits"], plain(x, params)[0]) <= 1e-12
    with pytest.raises(gc.GraphError, match="are gradients"):
        gc.compile(g, predict=["dW1"])
    model = tmp_path / "clf_model.py"
    model.write_text("from test_predict import classifier\ng = classifier()\n")
    assert main(["build", str(model), "-o", str(tmp_path), "--predict", "probs"]) == 0
    assert "PREDICTS = ('probs',)" in (tmp_path / "clf_numpy.py").read_text()


def test_a_graph_whose_outputs_all_need_labels_has_a_predict_that_says_so():
    with gc.Graph("grads") as g:
        x = gc.input("x", (m, 2), dtype="float64")
        W = gc.param("W", (2, 2), dtype="float64")
        g.output(dW=gc.grad(gc.sum(x @ W), W))
    prog = gc.compile(g)
    with pytest.raises(ValueError, match="no output that needs no labels"):
        prog.predict({"x": np.ones((3, 2)), **prog.init_params()})


def test_a_steady_state_prediction_allocates_nothing():
    g = classifier(dtype="float32")
    prog = gc.compile(g, loss="loss", optimizer=gc.SGD(0.1))
    feeds = {"x": data(256, "float32")[0], **prog.init_params(0)}
    prog.predict(feeds, copy=False)
    peaks = []
    for _ in range(3):
        tracemalloc.start()
        prog.predict(feeds, copy=False)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert max(peaks) < 2048, peaks  # the returned dict and the dims: no array


@pytest.mark.gpu
def test_gpu_predict_matches_numpy():
    cp = cupy_or_skip()
    g = classifier()
    params = gc.init_params(g, 0)
    x, _ = data()
    expected = gc.compile(g).predict({"x": x, **params})
    got = gc.compile(g, backend="cupy").predict({"x": x, **params})
    for k in expected:
        assert rel_error(cp.asnumpy(got[k]), expected[k]) <= 1e-10, k
