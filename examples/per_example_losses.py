"""Per-example losses: keep the loss vector next to the scalar mean, and look at the hardest examples.

The training step differentiates the scalar mean `loss`; the vector `losses` (one value per example) is just another
output of the same generated file, so it costs nothing extra. Each epoch we rank the training set by it.
"""
import os
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

import graphc as gc

BUILD = Path(os.environ.get("GRAPHC_BUILD_DIR", "build"))
EPOCHS, BATCH, LR = 4, 16, 0.3


digits = load_digits()
X = (digits.data / 16.0).astype(np.float32)
y = digits.target.astype(np.int64)

m = gc.dim("m")
with gc.Graph("per_example") as g:
    x = gc.input("x", (m, 64))
    t = gc.input("t", (m,), dtype="int64")
    W1 = gc.param("W1", (64, 64), init="he_normal")
    b1 = gc.param("b1", (64,), init="zeros")
    W2 = gc.param("W2", (64, 10), init="glorot_uniform")
    b2 = gc.param("b2", (10,), init="zeros")
    logits = (gc.relu(x @ W1 + b1) @ W2 + b2).named("logits")
    losses = gc.softmax_cross_entropy(logits, t).named("losses")   # shape (m,): one loss per example
    loss = gc.mean(losses)                                          # shape (): what training differentiates
    g.output(loss=loss, losses=losses, logits=logits)

prog = gc.compile(g, loss="loss", optimizer=gc.SGD(lr=LR))
model = gc.load_module(prog.emit(BUILD / "per_example_numpy.py"))

params = model.init_params(seed=0)
rng = np.random.default_rng(0)
for epoch in range(1, EPOCHS + 1):
    order = rng.permutation(len(X))
    for start in range(0, len(order) - BATCH + 1, BATCH):
        idx = order[start:start + BATCH]
        model.train_step(params, {"x": X[idx], "t": y[idx]})
    # One pass over the whole set with run(): the mean and the per-example vector come out together.
    out = model.run({"x": X, "t": y, **params})
    predicted = out["logits"].argmax(axis=1)
    hardest = np.argsort(out["losses"])[::-1][:5]
    print(f"epoch {epoch}: mean loss {float(out['loss']):.4f} "
          f"(= losses.mean() {out['losses'].mean():.4f}), accuracy {(predicted == y).mean():.4f}")
    for i in hardest:
        print(f"    example {i:4d}: label {y[i]}, predicted {predicted[i]}, loss {out['losses'][i]:.3f}")

# The hardest example of the last epoch, drawn in text.
i = hardest[0]
print(f"\nexample {i} (label {y[i]}, predicted {predicted[i]}):")
for row in digits.images[i]:
    print("    " + "".join(" .:-=+*#%@"[int(v) * 9 // 16] * 2 for v in row))
