"""One SGD training step of a small CNN on 8×8 images (the scikit-learn digits' size): graphc against PyTorch.

    python bench/cnn.py [--threads N] [--batch B] [--rounds R]

conv 3×3 (1→16, same) → relu → max-pool 2 → conv 3×3 (16→32, same) → relu → max-pool 2 → dense 128→10, mean softmax
cross-entropy, float32. Same initial weights and data for both; losses and updated weights checked equal after one
step before timing; runs interleaved, medians of per-round medians, ratio = PyTorch time ÷ graphc time.
"""
import argparse
import os

_parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
_parser.add_argument("--threads", type=int, default=1, help="threads for both (default 1)")
_parser.add_argument("--batch", type=int, default=64)
_parser.add_argument("--rounds", type=int, default=15)
ARGS = _parser.parse_args()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402
from measure import interleaved  # noqa: E402 - bench/ is the script's folder

import graphc as gc  # noqa: E402

LR = 0.05


def cnn():
    m = gc.dim("m")
    with gc.Graph("cnn") as g:
        x, t = gc.input("x", (m, 1, 8, 8)), gc.input("t", (m,), dtype="int64")
        w1, b1 = gc.param("w1", (16, 1, 3, 3), init="he_normal"), gc.param("b1", (16,))
        w2, b2 = gc.param("w2", (32, 16, 3, 3), init="he_normal"), gc.param("b2", (32,))
        W3, b3 = gc.param("W3", (128, 10), init="glorot_uniform"), gc.param("b3", (10,))
        h1 = gc.max_pool2d(gc.relu(gc.conv2d(x, w1, padding="same", bias=b1)), 2)
        h2 = gc.max_pool2d(gc.relu(gc.conv2d(h1, w2, padding="same", bias=b2)), 2)
        g.output(loss=gc.mean(gc.softmax_cross_entropy(gc.flatten(h2) @ W3 + b3, t)))
    return g


def torch_step(params, x, t):
    import torch
    torch.set_num_threads(ARGS.threads)
    p = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    xt, tt = torch.tensor(x), torch.tensor(t)
    F = torch.nn.functional

    def step():
        h = F.max_pool2d(F.relu(F.conv2d(xt, p["w1"], p["b1"], padding=1)), 2)
        h = F.max_pool2d(F.relu(F.conv2d(h, p["w2"], p["b2"], padding=1)), 2)
        loss = F.cross_entropy(h.flatten(1) @ p["W3"] + p["b3"], tt)
        for v in p.values():
            v.grad = None
        loss.backward()
        with torch.no_grad():
            for v in p.values():
                v -= LR * v.grad
        return loss.item()
    return step, p


def main():
    try:
        import torch  # noqa: F401
    except ImportError:
        print("skipped: PyTorch is not installed (pip install torch==2.13.0, or the bench extra)")
        return
    rng = np.random.default_rng(0)
    x = rng.random((ARGS.batch, 1, 8, 8), dtype=np.float32)
    t = rng.integers(0, 10, ARGS.batch)
    prog = gc.compile(cnn(), loss="loss", optimizer=gc.SGD(lr=LR))
    params = prog.init_params(0)
    ours = {k: v.copy() for k, v in params.items()}
    theirs, tp = torch_step(params, x, t)
    batch = {"x": x, "t": t}
    a, b = float(prog.train_step(ours, batch)["loss"]), theirs()
    assert abs(a - b) <= 1e-5 * max(1.0, abs(b)), (a, b)
    for k in ours:
        assert np.allclose(ours[k], tp[k].detach().numpy(), rtol=1e-4, atol=1e-6), k
    runs = {"graphc": lambda: prog.train_step(ours, batch), "PyTorch eager": theirs}
    times = interleaved(runs, ARGS.rounds, warmup=5)
    ratios = [p / g for p, g in zip(times["PyTorch eager"], times["graphc"])]
    print(f"small CNN train step, batch {ARGS.batch}, {ARGS.threads} thread(s), {ARGS.rounds} interleaved rounds")
    for name in runs:
        print(f"  {name:14s} {np.median(times[name]) * 1e3:8.3f} ms")
    print(f"  PyTorch eager / graphc: {np.median(ratios):.2f} (above 1: graphc is faster)")


if __name__ == "__main__":
    main()
