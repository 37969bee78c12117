"""The gradient of mean softmax cross-entropy w.r.t. the logits is (softmax(z) − onehot(t)) / m.

graphc recognizes softmax followed by cross-entropy and emits a fused, numerically stable gradient instead of
differentiating through exp, sum, log and the division one op at a time. We compare the generated code with the
formula computed in plain NumPy, and print the fused statements from the generated file.
"""
import os
import re
from pathlib import Path

import numpy as np

import graphc as gc

BUILD = Path(os.environ.get("GRAPHC_BUILD_DIR", "build"))


m, k = gc.dim("m"), 5
with gc.Graph("softmax_gradient") as g:
    z = gc.input("z", (m, k), dtype="float64")        # the logits
    t = gc.input("t", (m,), dtype="int64")            # the true classes
    loss = gc.mean(gc.softmax_cross_entropy(z, t))
    dz = gc.grad(loss, z)
    g.output(loss=loss, dz=dz)

prog = gc.compile(g)
path = prog.emit(BUILD / "softmax_gradient_numpy.py")
model = gc.load_module(path)

rng = np.random.default_rng(0)
n = 6
feeds = {"z": rng.normal(scale=3.0, size=(n, k)), "t": rng.integers(0, k, size=n)}
out = model.run(feeds)
np.set_printoptions(precision=4, suppress=True)

# The right-hand side in plain NumPy.
e = np.exp(feeds["z"] - feeds["z"].max(axis=1, keepdims=True))
softmax = e / e.sum(axis=1, keepdims=True)
onehot = np.eye(k)[feeds["t"]]
expected = (softmax - onehot) / n

print("dz from the generated code:\n", out["dz"])
print("(softmax(z) - onehot(t)) / m in NumPy:\n", expected)
print(f"max difference: {np.abs(out['dz'] - expected).max():.2e}")
print("each row sums to 0:", np.allclose(out["dz"].sum(axis=1), 0))

# The fused gradient in the generated file: its header line and the statements that implement it (up to the next
# statement that defines a new value, or the return).
lines = prog.source.splitlines()
start = next(i for i, line in enumerate(lines) if "onehot(t)" in line and "=" in line)
print(f"\nfrom {path}:")
print("   ", lines[start].strip())
for line in lines[start + 1:]:
    if re.match(r"\s+(\w+ = |return )", line):
        break
    print("   ", line.strip())
