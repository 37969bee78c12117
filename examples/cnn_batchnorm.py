"""A CNN with batch normalization and dropout on the scikit-learn digits (8×8 images, no download).

Each conv block is conv → batch_norm → relu → 2×2 max-pool; the hidden dense layer is batch-normalized too, then
dropped out. Batch norm keeps running means and variances as state (``gc.state``): the generated ``train_step``
normalizes by the batch's statistics and updates the running ones in place, ``predict`` normalizes by the running
ones and drops nothing out, so the test accuracy below comes from ``predict`` on the whole test set at once.
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
EPOCHS, BATCH = 12, 32


def normalized(h, name: str, channels: int):
    """batch_norm with a learned scale and shift, and running statistics the training step keeps."""
    return gc.batch_norm(h, gc.param(f"{name}_gamma", (channels,), init="ones"),
                         gc.param(f"{name}_beta", (channels,), init="zeros"),
                         gc.state(f"{name}_mean", (channels,), init="zeros"),
                         gc.state(f"{name}_var", (channels,), init="ones"), momentum=0.1)


# The model, NCHW: 1×8×8 -> conv 32 -> 32×4×4 -> conv 64 -> 64×2×2 -> 256 -> 128 -> 10 logits.
m = gc.dim("m")
with gc.Graph("cnn_batchnorm") as g:
    x = gc.input("x", (m, 1, 8, 8))
    t = gc.input("t", (m,), dtype="int64")
    w1 = gc.param("w1", (32, 1, 3, 3), init="he_normal")
    w2 = gc.param("w2", (64, 32, 3, 3), init="he_normal")
    W3 = gc.param("W3", (64 * 2 * 2, 128), init="he_normal")
    W4 = gc.param("W4", (128, 10), init="glorot_uniform")
    b4 = gc.param("b4", (10,), init="zeros")
    h1 = gc.max_pool2d(gc.relu(normalized(gc.conv2d(x, w1, padding="same"), "bn1", 32)), 2).named("h1")
    h2 = gc.max_pool2d(gc.relu(normalized(gc.conv2d(h1, w2, padding="same"), "bn2", 64)), 2).named("h2")
    h3 = gc.dropout(gc.relu(normalized(gc.flatten(h2) @ W3, "bn3", 128)), 0.2, seed=0).named("h3")
    logits = (h3 @ W4 + b4).named("logits")
    loss = gc.mean(gc.softmax_cross_entropy(logits, t))
    g.output(loss=loss, logits=logits)


def main():
    # The data: 1797 images of 8×8 pixels with values 0..16, as (n, 1, 8, 8) float32 in [0, 1]; a fixed 75/25 split.
    digits = load_digits()
    X = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0)

    # One file with run(), predict(), init_params(), init_state() and train_step(params, batch, state).
    cnn = gc.load_module(gc.compile(g, backend="numpy", loss="loss", optimizer=gc.Adam(lr=1e-3))
                         .emit(BUILD / "cnn_batchnorm_numpy.py"))
    params = cnn.init_params(seed=0)
    state = cnn.init_state(params)  # the running statistics and Adam's moments
    rng = np.random.default_rng(0)
    bar = tqdm(range(EPOCHS), desc="training", unit="epoch", disable=not sys.stderr.isatty())
    for _ in bar:
        order = rng.permutation(len(X_train))
        total, count = 0.0, 0
        for start in range(0, len(order) - BATCH + 1, BATCH):  # full minibatches: one set of buffers
            idx = order[start:start + BATCH]
            out = cnn.train_step(params, {"x": X_train[idx], "t": y_train[idx]}, state)
            total, count = total + float(out["loss"]) * len(idx), count + len(idx)
        bar.set_postfix(loss=f"{total / count:.4f}")
    print(f"training loss of the last epoch: {total / count:.4f}")
    print("running mean of the first 4 channels of bn1:", np.round(state["bn1_mean"][:4], 3))

    # predict: inference mode (running statistics, no dropout), no labels needed, any batch size.
    logits = cnn.predict({"x": X_test, **params, **state})["logits"]
    print(f"test accuracy: {(logits.argmax(axis=1) == y_test).mean():.4f}")


if __name__ == "__main__":  # `graphc build|show|explore` load the model without training it
    main()
