"""A model file for the command line: a 64-128-10 MLP for the 8×8 scikit-learn digits.

    graphc build examples/mlp_model.py -o build --lr 0.3    # writes build/mlp_numpy.py
    python examples/train_built.py                          # trains it on the digits

graphc runs this file and builds every gc.Graph it finds at module level. With a `loss` output and params, the built
file also has train_step(params, batch): one SGD step with the learning rate given by --lr.
"""
import graphc as gc

m = gc.dim("m")                                  # the batch size: symbolic, bound when the file is called

with gc.Graph("mlp") as g:
    x = gc.input("x", (m, 64))                   # 8×8 pixels, scaled to [0, 1], float32
    t = gc.input("t", (m,), dtype="int64")       # the digit, 0..9
    W1 = gc.param("W1", (64, 128), init="he_normal")
    b1 = gc.param("b1", (128,), init="zeros")
    W2 = gc.param("W2", (128, 10), init="glorot_uniform")
    b2 = gc.param("b2", (10,), init="zeros")

    h = gc.relu(x @ W1 + b1).named("h")
    logits = (h @ W2 + b2).named("logits")
    losses = gc.softmax_cross_entropy(logits, t).named("losses")
    loss = gc.mean(losses)
    dW1, db1, dW2, db2 = gc.grad(loss, [W1, b1, W2, b2])

    g.output(loss=loss, losses=losses, logits=logits, dW1=dW1, db1=db1, dW2=dW2, db2=db2)
