"""Linear regression: one dense layer, loss 0.5·Σ(y − t)².

The gradient of this loss w.r.t. the prediction y is exactly y − t: the 0.5 and the 2 of the square cancel, and
graphc folds them away, so no stray factor appears in the generated file. We check that, then take one SGD step
with the generated train_step and compare it with W − lr·dW.
"""
import os
from pathlib import Path

import numpy as np

import graphc as gc

BUILD = Path(os.environ.get("GRAPHC_BUILD_DIR", "build"))
LR = 0.1


# 1. Declare the model. m is the symbolic batch size: the generated code works for any m.
m = gc.dim("m")
with gc.Graph("linear_regression") as g:
    x = gc.input("x", (m, 3))
    t = gc.input("t", (m, 2))
    W = gc.param("W", (3, 2), init=("normal", 0.5))
    b = gc.param("b", (2,), init="zeros")
    y = (x @ W + b).named("y")
    loss = 0.5 * gc.sum((y - t) ** 2)
    dy, dW, db = gc.grad(loss, [y, W, b])
    g.output(loss=loss, y=y, dy=dy, dW=dW, db=db)

# 2. Build: optimize, emit a standalone NumPy file, and import it.
prog = gc.compile(g, backend="numpy", loss="loss", optimizer=gc.SGD(lr=LR))
path = prog.emit(BUILD / "linear_regression_numpy.py")
model = gc.load_module(path)
print(f"wrote {path}")

# 3. Run it on a small batch.
rng = np.random.default_rng(0)
# float32 is graphc's default dtype, and the generated file checks dtypes and shapes.
batch = {"x": rng.normal(size=(4, 3)).astype(np.float32), "t": rng.normal(size=(4, 2)).astype(np.float32)}
params = model.init_params(seed=0)
out = model.run({**batch, **params})

print("\ndL/dy from the generated code:")
print(out["dy"])
print("y - t:")
print(out["y"] - batch["t"])
print("max |dL/dy - (y - t)| =", np.abs(out["dy"] - (out["y"] - batch["t"])).max())
line = next(line for line in prog.source.splitlines() if line.strip().startswith("dy ="))
print("the generated line that computes it:\n   ", line.strip())

# 4. One SGD step with the generated train_step: it updates the param arrays in place.
W_before = params["W"].copy()
model.train_step(params, batch)
print("\nW before the step:\n", W_before)
print(f"W after one SGD step (lr={LR}):\n", params["W"])
print("equals W - lr*dW:", np.allclose(params["W"], W_before - LR * out["dW"]))
