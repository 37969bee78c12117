"""Train the file that `graphc build examples/mlp_model.py -o build --lr 0.3` wrote, on the scikit-learn digits.

Nothing here imports graphc: the built file needs only NumPy (scikit-learn is used for the data alone).
"""
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

BUILD = Path(os.environ.get("GRAPHC_BUILD_DIR", "build"))
EPOCHS, BATCH = 20, 16

path = BUILD / "mlp_numpy.py"
if not path.is_file():
    sys.exit(f"{path} not found: run  graphc build examples/mlp_model.py -o {BUILD} --lr 0.3  first")
spec = importlib.util.spec_from_file_location("mlp_numpy", path)
mlp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mlp)
print(f"loaded {path}: inputs {mlp.INPUTS}, outputs {mlp.OUTPUTS}")

digits = load_digits()
X = (digits.data / 16.0).astype(np.float32)
y = digits.target.astype(np.int64)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0)

params = mlp.init_params(seed=0)
rng = np.random.default_rng(0)
for epoch in range(1, EPOCHS + 1):
    order = rng.permutation(len(X_train))
    losses = []
    for start in range(0, len(order) - BATCH + 1, BATCH):
        idx = order[start:start + BATCH]
        out = mlp.train_step(params, {"x": X_train[idx], "t": y_train[idx]})   # updates params in place
        losses.append(float(out["loss"]))
    if epoch % 5 == 0:
        print(f"epoch {epoch:2d}  training loss {np.mean(losses):.4f}")

logits = mlp.predict({"x": X_test, **params})["logits"]  # the outputs that need no labels: no t, no gradients
print(f"test accuracy: {(logits.argmax(axis=1) == y_test).mean():.4f}")
