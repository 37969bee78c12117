"""The README MLP (examples/mlp_model.py) trained on a local Dask cluster, data-parallel, on the scikit-learn digits.

The training rows are a dask array in 2 chunks, one on each of 2 worker processes; each step's global batch of 128
is cut along the chunks, every shard's gradient computed by the worker holding it (grad_step, the batch's 1/m exact) and
summed, and the client applies the update (apply_update). The same steps in one process (train_step on the same
batches) give the same params up to float32 rounding, hence the same test accuracy, which is printed last.
Needs the examples and dask extras: pip install "graphc[examples,dask]". On a real cluster, pass the scheduler's
address to Client() instead of the LocalCluster.
"""
# ruff: noqa: E402 - the BLAS thread count must be set before NumPy is imported
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small matrices: BLAS threads cost more than they save
os.environ.setdefault("OMP_NUM_THREADS", "1")

import sys
from pathlib import Path

import dask.array as da
import numpy as np
from distributed import Client, LocalCluster
from mlp_model import g  # the README MLP: 64-128-10, relu, mean softmax cross-entropy

import graphc as gc
import graphc.dask

BUILD = Path(os.environ.get("GRAPHC_BUILD_DIR", "build"))
EPOCHS, BATCH, OPTIMIZER = 10, 128, gc.SGD(lr=0.5, momentum=0.9)


def accuracy(model, params, X, y):
    return (model.run({"x": X, "t": y, **params})["logits"].argmax(axis=1) == y).mean()


def main():
    from sklearn.datasets import load_digits  # here: the workers import this file, and need no scikit-learn
    from sklearn.model_selection import train_test_split

    digits = load_digits()  # 1797 images of 8×8 pixels, scaled to [0, 1]; the split of examples/mlp_digits.py
    X_train, X_test, y_train, y_test = train_test_split((digits.data / 16.0).astype(np.float32),
                                                        digits.target.astype(np.int64), test_size=0.25, random_state=0)
    path = gc.compile(g, loss="loss", optimizer=OPTIMIZER).emit(BUILD / "mlp_numpy.py")
    model = gc.load_module(path)

    # One process: train_step on the batches fit takes (rows shuffled by default_rng(seed), a new order each epoch).
    params, rng = model.init_params(seed=0), np.random.default_rng(0)
    state = model.init_state(params)
    for _ in range(EPOCHS):
        order = rng.permutation(len(X_train))
        for start in range(0, len(order), BATCH):
            rows = order[start:start + BATCH]
            model.train_step(params, {"x": X_train[rows], "t": y_train[rows]}, state)
    print(f"one process, the same steps: test accuracy {accuracy(model, params, X_test, y_test):.4f}")

    chunks = -(-len(X_train) // 2)  # a chunk per worker: each step's shuffled batch has a shard on each
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster) as client:
        X, t = da.from_array(X_train, chunks=(chunks, 64)), da.from_array(y_train, chunks=chunks)
        trained, _ = graphc.dask.fit(path, X, t, client=client, batch_size=BATCH, epochs=EPOCHS, shuffle=True,
                                     checkpoint=BUILD / "mlp_checkpoint.npz", progress=sys.stderr.isatty())
    largest = max(float(np.abs(trained[k] - params[k]).max()) for k in params)
    print(f"cluster vs one process: largest difference of a param {largest:.1e} (float32)")
    print(f"test accuracy: {accuracy(model, trained, X_test, y_test):.4f}")


if __name__ == "__main__":  # the cluster's worker processes import this file; only the client trains
    main()
