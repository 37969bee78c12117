"""Per-example gradients: spot the examples that pull hardest on the model, then train with DP-SGD clipping.

    python examples/per_example_grads.py

Uses scikit-learn's bundled 8×8 digits (no download) with an MLP 64-32-10, trained by the generated NumPy
code. After plain SGD, it prints each example's gradient norm in a batch where a few labels were flipped: the
mislabeled examples stand out. Then it trains with ``gc.SGD(lr, clip_per_example=C, noise=σ)``: every
example's gradient clipped to norm C before averaging, Gaussian noise added (the DP-SGD recipe).
"""
import numpy as np
from sklearn.datasets import load_digits

import graphc as gc

m = gc.dim("m")
BATCH, EPOCHS = 64, 8


def mlp(norms: bool = False) -> gc.Graph:
    with gc.Graph("digits_mlp") as g:
        x = gc.input("x", (m, 64))
        t = gc.input("t", (m,), dtype="int64")
        W1 = gc.param("W1", (64, 32), init="he_normal")
        b1 = gc.param("b1", (32,), init="zeros")
        W2 = gc.param("W2", (32, 10), init="glorot_uniform")
        b2 = gc.param("b2", (10,), init="zeros")
        logits = gc.relu(x @ W1 + b1) @ W2 + b2
        losses = gc.softmax_cross_entropy(logits, t)
        outputs = {"loss": gc.mean(losses), "correct": gc.sum(gc.where(
            gc.equal(logits, gc.max(logits, axis=1, keepdims=True)), gc.one_hot(t, 10), 0.0))}
        if norms:
            outputs.update(losses=losses, norms=gc.per_example_norms(losses, [W1, b1, W2, b2]),
                           dW1_each=gc.per_example_grads(losses, W1))
        g.output(**outputs)
    return g


def data():
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, t = x[order], digits.target[order].astype(np.int64)
    return (x[:1500], t[:1500]), (x[1500:], t[1500:])


def show_norms(train, params):
    """Per-example gradient norms of one batch in which three labels are wrong."""
    x, t = train[0][:16], train[1][:16].copy()
    flipped = [3, 8, 13]
    t[flipped] = (t[flipped] + 5) % 10
    program = gc.compile(mlp(norms=True), backend="numpy")
    out = program({**params, "x": x, "t": t})
    print(f"\nper-example gradient norms of a batch of {len(x)} after training (labels of examples {flipped} "
          f"flipped); per-example dW1: {out['dW1_each'].shape}")
    for i, (loss, norm) in enumerate(zip(out["losses"], out["norms"])):
        bar = "#" * int(round(20 * norm / out["norms"].max()))
        print(f"  example {i:2d}  label {t[i]}  loss {loss:6.3f}  |grad| {norm:7.4f}  {bar}"
              + ("   <- flipped" if i in flipped else ""))


def train(program, params, train_set, test_set, label):
    x, t = train_set
    rng = np.random.default_rng(1)
    for epoch in range(EPOCHS):
        order = rng.permutation(len(x))
        for start in range(0, len(x) - BATCH + 1, BATCH):
            rows = order[start:start + BATCH]
            program.train_step(params, {"x": x[rows], "t": t[rows]})
        out = program({**params, "x": test_set[0], "t": test_set[1]})
        print(f"  {label:>26}  epoch {epoch + 1}  test loss {float(out['loss']):.4f}  "
              f"accuracy {float(out['correct']) / len(test_set[1]):.3f}")


def main():
    train_set, test_set = data()
    g = mlp()
    init = gc.init_params(g, seed=0)
    optimizers = {"plain SGD, lr 0.1": gc.SGD(0.1),
                  "clipped (C=1), lr 0.5": gc.SGD(0.5, clip_per_example=1.0),
                  "DP-SGD (C=1, σ=1), lr 0.5": gc.SGD(0.5, clip_per_example=1.0, noise=1.0, seed=0)}
    print(f"training, batch {BATCH}:")
    for label, optimizer in optimizers.items():
        program = gc.compile(g, backend="numpy", loss="loss", optimizer=optimizer)
        params = {k: v.copy() for k, v in init.items()}
        train(program, params, train_set, test_set, label)
        if optimizer.clip_per_example is None:
            trained = params
    show_norms(train_set, trained)


if __name__ == "__main__":
    main()
