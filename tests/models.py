"""The core models every backend and pass is checked on: builders returning (graph, feeds)."""
from __future__ import annotations

import numpy as np

import graphc as gc

m = gc.dim("m")


def linear_regression(dtype="float64", batch=6):
    with gc.Graph("linreg") as g:
        x = gc.input("x", (m, 3), dtype=dtype)
        t = gc.input("t", (m, 2), dtype=dtype)
        W = gc.param("W", (3, 2), dtype=dtype, init=("normal", 0.5))
        b = gc.param("b", (2,), dtype=dtype, init=("normal", 0.5))
        y = (x @ W + b).named("y")
        loss = gc.mean(gc.square(y - t))
        dW, db = gc.grad(loss, [W, b])
        g.output(loss=loss, y=y, dW=dW, db=db)
    rng = np.random.default_rng(0)
    return g, {"x": rng.normal(size=(batch, 3)).astype(dtype), "t": rng.normal(size=(batch, 2)).astype(dtype)}


def half_sse(dtype="float64", batch=6):
    """``0.5·Σ(y − t)²``: its gradient w.r.t. y is exactly ``y − t``."""
    with gc.Graph("half_sse") as g:
        x = gc.input("x", (m, 3), dtype=dtype)
        t = gc.input("t", (m, 2), dtype=dtype)
        W = gc.param("W", (3, 2), dtype=dtype, init=("normal", 0.5))
        y = (x @ W).named("y")
        loss = 0.5 * gc.sum((y - t) ** 2)
        dW, dy = gc.grad(loss, [W, y])
        g.output(loss=loss, y=y, dW=dW, dy=dy)
    rng = np.random.default_rng(1)
    return g, {"x": rng.normal(size=(batch, 3)).astype(dtype), "t": rng.normal(size=(batch, 2)).astype(dtype)}


def logistic_regression(dtype="float64", batch=8):
    with gc.Graph("logreg") as g:
        x = gc.input("x", (m, 4), dtype=dtype)
        t = gc.input("t", (m,), dtype=dtype)
        w = gc.param("w", (4,), dtype=dtype, init=("normal", 0.5))
        b = gc.param("b", (), dtype=dtype, init="zeros")
        z = (x @ w + b).named("z")
        loss = gc.mean(gc.binary_cross_entropy_with_logits(z, t))
        dw, db = gc.grad(loss, [w, b])
        g.output(loss=loss, p=gc.sigmoid(z), dw=dw, db=db)
    rng = np.random.default_rng(2)
    return g, {"x": rng.normal(size=(batch, 4)).astype(dtype),
               "t": (rng.random(batch) > 0.5).astype(dtype)}


def mlp(dtype="float64", batch=8, sizes=(12, 16, 5)):
    """The MLP of the core issue (scaled down): relu hidden layer, mean softmax cross-entropy."""
    n_in, n_hidden, n_out = sizes
    with gc.Graph("mlp") as g:
        x = gc.input("x", (m, n_in), dtype=dtype)
        t = gc.input("t", (m,), dtype="int64")
        W1 = gc.param("W1", (n_in, n_hidden), dtype=dtype, init="he_normal")
        b1 = gc.param("b1", (n_hidden,), dtype=dtype, init=("normal", 0.1))
        W2 = gc.param("W2", (n_hidden, n_out), dtype=dtype, init="glorot_uniform")
        b2 = gc.param("b2", (n_out,), dtype=dtype, init="zeros")
        h = gc.relu(x @ W1 + b1).named("h")
        logits = (h @ W2 + b2).named("logits")
        losses = gc.softmax_cross_entropy(logits, t)
        loss = gc.mean(losses)
        dW1, db1, dW2, db2 = gc.grad(loss, [W1, b1, W2, b2])
        g.output(loss=loss, losses=losses, dW1=dW1, db1=db1, dW2=dW2, db2=db2)
    rng = np.random.default_rng(3)
    return g, {"x": rng.normal(size=(batch, n_in)).astype(dtype), "t": rng.integers(0, n_out, size=batch)}


def tanh_net(dtype="float64", batch=7):
    """Two tanh hidden layers, mean squared error."""
    with gc.Graph("tanh_net") as g:
        x = gc.input("x", (m, 5), dtype=dtype)
        t = gc.input("t", (m, 2), dtype=dtype)
        W1 = gc.param("W1", (5, 6), dtype=dtype, init="glorot_uniform")
        b1 = gc.param("b1", (6,), dtype=dtype, init=("normal", 0.1))
        W2 = gc.param("W2", (6, 4), dtype=dtype, init="glorot_uniform")
        b2 = gc.param("b2", (4,), dtype=dtype, init=("normal", 0.1))
        W3 = gc.param("W3", (4, 2), dtype=dtype, init="glorot_uniform")
        h1 = gc.tanh(x @ W1 + b1).named("h1")
        h2 = gc.tanh(h1 @ W2 + b2).named("h2")
        y = (h2 @ W3).named("y")
        loss = gc.mean(gc.sum((y - t) ** 2, axis=1))
        grads = gc.grad(loss, [W1, b1, W2, b2, W3])
        g.output(loss=loss, y=y, **{f"d{p}": d for p, d in zip(["W1", "b1", "W2", "b2", "W3"], grads)})
    rng = np.random.default_rng(4)
    return g, {"x": rng.normal(size=(batch, 5)).astype(dtype), "t": rng.normal(size=(batch, 2)).astype(dtype)}


MODELS = {"linear_regression": linear_regression, "half_sse": half_sse, "logistic_regression": logistic_regression,
          "mlp": mlp, "tanh_net": tanh_net}


def feeds_with_params(g, feeds, seed=0):
    return {**gc.init_params(g, seed), **feeds}


def transformer(dtype="float32", batch=2, seq=4, width=8, classes=3):
    """A transformer-like block: single-head attention (softmax of scaled scores), a layer norm written by hand,
    a GELU MLP, mean-pooling over the sequence and softmax cross-entropy."""
    d, T = width, seq
    n = gc.dim("n")  # the sequence length: symbolic, like the batch size
    with gc.Graph("transformer") as g:
        x = gc.input("x", (m, n, d), dtype=dtype)
        t = gc.input("t", (m,), dtype="int64")
        Wq, Wk, Wv = (gc.param(w, (d, d), dtype=dtype, init="glorot_uniform") for w in ("Wq", "Wk", "Wv"))
        gamma = gc.param("gamma", (d,), dtype=dtype, init="ones")
        beta = gc.param("beta", (d,), dtype=dtype, init="zeros")
        W1 = gc.param("W1", (d, 2 * d), dtype=dtype, init="he_normal")
        b1 = gc.param("b1", (2 * d,), dtype=dtype, init="zeros")
        W2 = gc.param("W2", (2 * d, classes), dtype=dtype, init="glorot_uniform")
        q, k, v = (x @ Wq).named("q"), (x @ Wk).named("k"), (x @ Wv).named("v")
        scores = (q @ gc.transpose(k, (0, 2, 1)) * (1 / d ** 0.5)).named("scores")
        att = gc.softmax(scores, axis=-1).named("att")
        h = (x + att @ v).named("h")
        mu = gc.mean(h, axis=-1, keepdims=True).named("mu")
        var = gc.mean(gc.square(h - mu), axis=-1, keepdims=True).named("var")
        hn = ((h - mu) / gc.sqrt(var + 1e-5) * gamma + beta).named("hn")
        f = gc.gelu(hn @ W1 + b1).named("f")
        pooled = gc.mean(f, axis=1).named("pooled")
        logits = (pooled @ W2).named("logits")
        loss = gc.mean(gc.softmax_cross_entropy(logits, t))
        params = [Wq, Wk, Wv, gamma, beta, W1, b1, W2]
        grads = gc.grad(loss, params)
        g.output(loss=loss, logits=logits, **{f"d{p.name}": dp for p, dp in zip(params, grads)})
    rng = np.random.default_rng(5)
    return g, {"x": rng.normal(size=(batch, T, d)).astype(dtype), "t": rng.integers(0, classes, size=batch)}
