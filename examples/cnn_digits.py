"""A small CNN on the handwritten digits that ship with scikit-learn (8×8 images, no download).

Two conv + relu + 2×2 max-pool blocks, a hidden dense layer, softmax cross-entropy. The model is declared with
graphc and built into a standalone file under build/; training runs its train_step on minibatches (plain SGD, the
learning rate 0.1, then 0.01 for the last epochs, passed per step), prediction the same file's run().
Needs the examples extra: pip install "graphc[examples]".
"""
# ruff: noqa: E402 - the BLAS thread count must be set before NumPy is imported
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small matrices: BLAS threads cost more than they save
os.environ.setdefault("OMP_NUM_THREADS", "1")

import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import graphc as gc

BUILD = Path(os.environ.get("GRAPHC_BUILD_DIR", "build"))
SCHEDULE, BATCH = [(0.1, 15), (0.01, 5)], 32  # (learning rate, epochs)


# The model, NCHW: 1×8×8 -> conv 32 -> 32×4×4 -> conv 64 -> 64×2×2 -> 256 -> 128 -> 10 logits.
m = gc.dim("m")
with gc.Graph("cnn_digits") as g:
    x = gc.input("x", (m, 1, 8, 8))
    t = gc.input("t", (m,), dtype="int64")
    w1 = gc.param("w1", (32, 1, 3, 3), init="he_normal")
    b1 = gc.param("b1", (32,), init="zeros")
    w2 = gc.param("w2", (64, 32, 3, 3), init="he_normal")
    b2 = gc.param("b2", (64,), init="zeros")
    W3 = gc.param("W3", (64 * 2 * 2, 128), init="he_normal")
    b3 = gc.param("b3", (128,), init="zeros")
    W4 = gc.param("W4", (128, 10), init="glorot_uniform")
    b4 = gc.param("b4", (10,), init="zeros")
    h1 = gc.max_pool2d(gc.relu(gc.conv2d(x, w1, padding="same", bias=b1)), 2).named("h1")
    h2 = gc.max_pool2d(gc.relu(gc.conv2d(h1, w2, padding="same", bias=b2)), 2).named("h2")
    h3 = gc.relu(gc.flatten(h2) @ W3 + b3).named("h3")
    logits = (h3 @ W4 + b4).named("logits")
    loss = gc.mean(gc.softmax_cross_entropy(logits, t))
    g.output(loss=loss, logits=logits)


def main():
    # The data: 1797 images of 8×8 pixels with values 0..16, as (n, 1, 8, 8) float32 in [0, 1]; a fixed 75/25 split.
    digits = load_digits()
    X = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0)

    # Build one file with run(), init_params() and train_step(params, batch, lr=...).
    cnn = gc.load_module(gc.compile(g, backend="numpy", loss="loss", optimizer=gc.SGD(lr=SCHEDULE[0][0]))
                         .emit(BUILD / "cnn_digits_numpy.py"))

    params = cnn.init_params(seed=0)
    rng = np.random.default_rng(0)
    epochs = [lr for lr, n in SCHEDULE for _ in range(n)]
    bar = tqdm(epochs, desc="training", unit="epoch", disable=not sys.stderr.isatty())
    for lr in bar:
        order = rng.permutation(len(X_train))
        total, count = 0.0, 0
        for start in range(0, len(order) - BATCH + 1, BATCH):  # full minibatches: one set of buffers
            idx = order[start:start + BATCH]
            out = cnn.train_step(params, {"x": X_train[idx], "t": y_train[idx]}, lr=lr)
            total, count = total + float(out["loss"]) * len(idx), count + len(idx)
        bar.set_postfix(lr=lr, loss=f"{total / count:.4f}")
    print(f"training loss of the last epoch: {total / count:.4f}")

    # run() takes inputs and params together and works for any batch size m: here the whole test set at once.
    out = cnn.run({"x": X_test, "t": y_test, **params})
    accuracy = (out["logits"].argmax(axis=1) == y_test).mean()
    print(f"test loss: {float(out['loss']):.4f}")
    print(f"test accuracy: {accuracy:.4f}")


if __name__ == "__main__":  # `graphc build|show|explore` load the model without training it
    main()
