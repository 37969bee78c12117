"""Why a gradient needs a scalar loss, and where the 1/m of a mean goes.

1. The squared error of a batch is an (m, k) matrix; asking for its gradient is an error, with an explanation.
2. With seed= you get the vector-Jacobian product seedᵀ·J instead (what reverse mode computes underneath).
3. The gradient of the mean loss equals the mean of the per-example gradients, to rounding: the 1/m of the mean
   lands in the backward pass, and you can see it in the generated file.
"""
import os
from pathlib import Path

import numpy as np

import graphc as gc

BUILD = Path(os.environ.get("GRAPHC_BUILD_DIR", "build"))


m = gc.dim("m")
with gc.Graph("why_scalar") as g:
    x = gc.input("x", (m, 3), dtype="float64")
    t = gc.input("t", (m, 2), dtype="float64")
    s = gc.input("s", (m, 2), dtype="float64")        # a seed for the vector-Jacobian product
    W = gc.param("W", (3, 2), dtype="float64", init=("normal", 0.5))
    E = ((x @ W - t) ** 2).named("E")                  # (m, 2): not a loss yet

    # 1. grad of a matrix: graphc refuses, and says what to do instead.
    try:
        gc.grad(E, W)
    except gc.GraphError as err:
        print("gc.grad(E, W) raises GraphError:\n   ", err, "\n")

    # 2. seed= gives the vector-Jacobian product sᵀ·∂E/∂W, an array of W's shape.
    vjp = gc.grad(E, W, seed=s)

    # 3. A scalar loss: the mean over the batch of each example's summed squared error.
    loss = gc.mean(gc.sum(E, axis=1))
    dW = gc.grad(loss, W)
    g.output(loss=loss, dW=dW, vjp=vjp)

prog = gc.compile(g)
path = prog.emit(BUILD / "why_scalar_numpy.py")
model = gc.load_module(path)

rng = np.random.default_rng(0)
n = 8
feeds = {"x": rng.normal(size=(n, 3)), "t": rng.normal(size=(n, 2)), "s": rng.normal(size=(n, 2)),
         **model.init_params(seed=0)}
out = model.run(feeds)

# The VJP by hand: ∂E/∂W applied to s is xᵀ·(s ⊙ 2(xW − t)).
r = feeds["x"] @ feeds["W"] - feeds["t"]
print("vjp from the generated code equals xᵀ(s·2(xW − t)):",
      np.allclose(out["vjp"], feeds["x"].T @ (feeds["s"] * 2 * r)))

# The same file, fed one example at a time (m = 1): per-example gradients.
per_example = [model.run({k: (v[i:i + 1] if k in ("x", "t", "s") else v) for k, v in feeds.items()})["dW"]
               for i in range(n)]
mean_of_grads = np.mean(per_example, axis=0)
print("gradient of the mean loss:\n", out["dW"])
print("mean of the per-example gradients:\n", mean_of_grads)
print("max difference:", np.abs(out["dW"] - mean_of_grads).max())

# In the generated file the mean's 1/m appears once in the forward pass (the loss) and once in the backward pass,
# where it has been combined with the 2 of the square into a single factor 2/m.
print(f"\nthe lines of {path} with the 1/m:")
for number, line in enumerate(prog.source.splitlines(), 1):
    if "/m," in line:
        print(f"  {number:4d}: {line.strip()}")
