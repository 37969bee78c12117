"""What one steady-state CuPy training step costs on the device, counted on the emulated GPU of the tests.

For each model: the nodes of its optimized training graph (the ones the step computes), the device operations of
one step (kernel launches, cuBLAS calls, copies, fills, reductions) and its allocations and host↔device transfers,
from the emulation's counters (``tests/emulated_gpu``; needs a C++ compiler, no GPU). Counts, not times: they are
the same on every machine.

    python bench/gpu_counts.py            # writes bench/results/gpu_counts.md
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import graphc as gc  # noqa: E402
from graphc.optim import training_graph  # noqa: E402
from graphc.passes import optimize  # noqa: E402

import emulated_gpu  # noqa: E402

m = gc.dim("m")


def readme_mlp():
    with gc.Graph("mlp") as g:
        x, t = gc.input("x", (m, 64)), gc.input("t", (m,), dtype="int64")
        W1, b1 = gc.param("W1", (64, 128), init="he_normal"), gc.param("b1", (128,), init="zeros")
        W2, b2 = gc.param("W2", (128, 10), init="glorot_uniform"), gc.param("b2", (10,), init="zeros")
        g.output(loss=gc.mean(gc.softmax_cross_entropy(gc.relu(x @ W1 + b1) @ W2 + b2, t)))
    return g, gc.SGD(0.3), {"x": (32, 64), "t": (32,)}


def cnn_digits():
    with gc.Graph("cnn_digits") as g:
        x, t = gc.input("x", (m, 1, 8, 8)), gc.input("t", (m,), dtype="int64")
        w1, b1 = gc.param("w1", (32, 1, 3, 3), init="he_normal"), gc.param("b1", (32,), init="zeros")
        w2, b2 = gc.param("w2", (64, 32, 3, 3), init="he_normal"), gc.param("b2", (64,), init="zeros")
        W3, b3 = gc.param("W3", (256, 128), init="he_normal"), gc.param("b3", (128,), init="zeros")
        W4, b4 = gc.param("W4", (128, 10), init="glorot_uniform"), gc.param("b4", (10,), init="zeros")
        h1 = gc.max_pool2d(gc.relu(gc.conv2d(x, w1, padding="same", bias=b1)), 2)
        h2 = gc.max_pool2d(gc.relu(gc.conv2d(h1, w2, padding="same", bias=b2)), 2)
        h3 = gc.relu(gc.flatten(h2) @ W3 + b3)
        g.output(loss=gc.mean(gc.softmax_cross_entropy(h3 @ W4 + b4, t)))
    return g, gc.SGD(0.1), {"x": (32, 1, 8, 8), "t": (32,)}


def dp_sgd_mlp():
    g, _, shapes = readme_mlp()
    return g, gc.SGD(0.1, clip_per_example=1.0, noise=0.5), shapes


def logistic_regression():
    with gc.Graph("logreg") as g:
        x, t = gc.input("x", (m, 4)), gc.input("t", (m,))
        w, b = gc.param("w", (4,), init="zeros"), gc.param("b", (), init="zeros")
        g.output(loss=gc.mean(gc.binary_cross_entropy_with_logits(x @ w + b, t)))
    return g, gc.SGD(0.5), {"x": (32, 4), "t": (32,)}


def linear_regression():
    with gc.Graph("linreg") as g:
        x, t = gc.input("x", (m, 3)), gc.input("t", (m, 2))
        W, b = gc.param("W", (3, 2), init="zeros"), gc.param("b", (2,), init="zeros")
        g.output(loss=gc.mean(gc.square(x @ W + b - t)))
    return g, gc.SGD(0.1), {"x": (32, 3), "t": (32, 2)}


MODELS = {"README MLP (64-128-10)": readme_mlp, "CNN (examples/cnn_digits.py)": cnn_digits,
          "DP-SGD MLP": dp_sgd_mlp, "logistic regression": logistic_regression,
          "linear regression": linear_regression}


def costs(cp, build) -> dict:
    """Counters over one steady-state step (buffers and kernels made by a first step, data on the device)."""
    g, optimizer, shapes = build()
    rng = np.random.default_rng(0)
    batch = {name: cp.asarray(rng.integers(0, 10, shape) if g.nodes[g.inputs[name]].dtype == "int64"
                              else rng.random(shape, dtype=np.float32)) for name, shape in shapes.items()}
    program = gc.compile(g, backend="cupy", loss="loss", optimizer=optimizer)
    params = program.init_params(seed=0)
    program.train_step(params, batch)
    with cp.emulation.counting() as step:
        program.train_step(params, batch)
    trained, _ = optimize(training_graph(g, "loss", optimizer), backend="cupy")
    return {**step, "nodes": len(trained.needed(trained.roots()))}


def main() -> int:
    cp = emulated_gpu.install()
    lines = ["# Device operations per CuPy training step (emulated GPU, counted)", "",
             "`python bench/gpu_counts.py`: one steady-state `train_step` (float32, batch 32), params and batch on the "
             "device. Device operations are kernel launches, cuBLAS calls, copies, fills and reductions.", "",
             "| model | graph nodes | device operations | kernels | cuBLAS | allocations | host→device | "
             "device→host |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, build in MODELS.items():
        c = costs(cp, build)
        lines.append(f"| {name} | {c['nodes']} | {c['device_ops']} | {c['kernel_launches']} | {c['matmuls']} | "
                     f"{c['allocations']} | {c['host_to_device']} | {c['device_to_host']} |")
    lines += ["", "The one allocation and device→host read of a step with labels is the check of the class ids: one "
              "reduction counts the ids out of range and only that count comes back."]
    text = "\n".join(lines) + "\n"
    print(text)
    (ROOT / "bench" / "results" / "gpu_counts.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
