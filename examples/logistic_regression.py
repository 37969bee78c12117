"""Logistic regression: binary classification with gc.binary_cross_entropy_with_logits.

Two Gaussian blobs in the plane, a linear score z = x·w + b, the mean logistic loss, a few hundred full-batch SGD
steps with the generated train_step, then the accuracy from the generated run().
"""
import os
from pathlib import Path

import numpy as np

import graphc as gc

BUILD = Path(os.environ.get("GRAPHC_BUILD_DIR", "build"))


# Synthetic, linearly separable data: label 1 above the line x0 + x1 = 0, with a margin.
rng = np.random.default_rng(0)
X = rng.normal(size=(400, 2)).astype(np.float32)
X += np.sign(X.sum(axis=1, keepdims=True)).astype(np.float32) * 0.5
T = (X.sum(axis=1) > 0).astype(np.float32)

m = gc.dim("m")
with gc.Graph("logistic_regression") as g:
    x = gc.input("x", (m, 2))
    t = gc.input("t", (m,))
    w = gc.param("w", (2,), init="zeros")
    b = gc.param("b", (), init="zeros")
    z = (x @ w + b).named("z")                                    # one score (logit) per example
    loss = gc.mean(gc.binary_cross_entropy_with_logits(z, t))    # stable: never computes log(sigmoid(z))
    g.output(loss=loss, p=gc.sigmoid(z))

prog = gc.compile(g, loss="loss", optimizer=gc.SGD(lr=0.5))
model = gc.load_module(prog.emit(BUILD / "logistic_regression_numpy.py"))

params = model.init_params(seed=0)
batch = {"x": X, "t": T}
for step in range(300):
    out = model.train_step(params, batch)
    if step % 100 == 0:
        print(f"step {step:3d}  loss {float(out['loss']):.4f}")

out = model.run({**batch, **params})
accuracy = ((out["p"] > 0.5) == (T > 0.5)).mean()
print(f"final loss {float(out['loss']):.4f}")
print(f"w = {params['w']}, b = {float(params['b']):.4f}")
print(f"train accuracy: {accuracy:.4f}")
