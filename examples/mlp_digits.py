"""A 64-128-10 MLP on the handwritten digits that ship with scikit-learn (8×8 images, no download).

The model is declared with graphc, built into build/mlp_digits_numpy.py, and trained with that file's train_step on
minibatches; predictions come from the same file's run(). Needs the examples extra: pip install "graphc[examples]".
`python examples/mlp_digits.py --optimizer adam` trains with Adam instead of plain SGD.
"""
import argparse
import os
import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import graphc as gc

BUILD = Path(os.environ.get("GRAPHC_BUILD_DIR", "build"))
EPOCHS, BATCH = 20, 16
OPTIMIZERS = {"sgd": gc.SGD(lr=0.3), "adam": gc.Adam(lr=0.003)}
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default="sgd")
args = parser.parse_args()


# The data: 1797 images of 8×8 pixels with values 0..16, scaled to [0, 1] float32; a fixed 75/25 split.
digits = load_digits()
X = (digits.data / 16.0).astype(np.float32)
y = digits.target.astype(np.int64)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0)

# The model: relu hidden layer, mean softmax cross-entropy. logits is a second output, used for prediction.
m = gc.dim("m")
with gc.Graph("mlp_digits") as g:
    x = gc.input("x", (m, 64))
    t = gc.input("t", (m,), dtype="int64")
    W1 = gc.param("W1", (64, 128), init="he_normal")
    b1 = gc.param("b1", (128,), init="zeros")
    W2 = gc.param("W2", (128, 10), init="glorot_uniform")
    b2 = gc.param("b2", (10,), init="zeros")
    h = gc.relu(x @ W1 + b1).named("h")
    logits = (h @ W2 + b2).named("logits")
    loss = gc.mean(gc.softmax_cross_entropy(logits, t))
    g.output(loss=loss, logits=logits)

# Build: the generated file has run(), init_params(), init_state() and train_step() (the update rule baked in).
prog = gc.compile(g, backend="numpy", loss="loss", optimizer=OPTIMIZERS[args.optimizer])
model = gc.load_module(prog.emit(BUILD / "mlp_digits_numpy.py"))

params = model.init_params(seed=0)
state = model.init_state(params)  # Adam's moments and step counter; nothing for plain SGD
rng = np.random.default_rng(0)
bar = tqdm(range(EPOCHS), desc="training", unit="epoch", disable=not sys.stderr.isatty())
for _ in bar:
    order = rng.permutation(len(X_train))
    total, count = 0.0, 0
    # Full minibatches only: a tiny leftover batch would get a whole step's weight and make plain SGD jumpy.
    for start in range(0, len(order) - BATCH + 1, BATCH):
        idx = order[start:start + BATCH]
        out = model.train_step(params, {"x": X_train[idx], "t": y_train[idx]}, state)
        total, count = total + float(out["loss"]) * len(idx), count + len(idx)
    bar.set_postfix(loss=f"{total / count:.4f}")
print(f"training loss of the last epoch: {total / count:.4f}")

# run() takes inputs and params together and works for any batch size m: here the whole test set at once.
out = model.run({"x": X_test, "t": y_test, **params})
accuracy = (out["logits"].argmax(axis=1) == y_test).mean()
print(f"test loss: {float(out['loss']):.4f}")
print(f"test accuracy: {accuracy:.4f}")
