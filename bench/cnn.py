"""One SGD training step of a small CNN on 8×8 images (the scikit-learn digits' size): graphc against PyTorch eager
and a hand-written im2col NumPy step.

    python bench/cnn.py [--threads N] [--batch B] [--rounds R]

conv 3×3 (1→16, same) → relu → max-pool 2 → conv 3×3 (16→32, same) → relu → max-pool 2 → dense 128→10, mean softmax
cross-entropy, float32. Same initial weights and data for all; losses and updated weights checked equal after one
step before timing; runs interleaved, medians of per-round medians, ratio = peer time ÷ graphc time in each round
(below 1: the peer is faster). Writes bench/results/cnn.md with the per-statement profile of graphc's step.
"""
import argparse
import os
from pathlib import Path

_parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
_parser.add_argument("--threads", type=int, default=1, help="threads for both (default 1)")
_parser.add_argument("--batch", type=int, default=64)
_parser.add_argument("--rounds", type=int, default=15)
ARGS = _parser.parse_args()
from threads import limit  # noqa: E402 - bench/ is the script's folder

limit(ARGS.threads)  # before NumPy and PyTorch start their thread pools

import numpy as np  # noqa: E402
from measure import interleaved, profile_statements  # noqa: E402 - bench/ is the script's folder

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


def numpy_step(params, x, t):
    """The textbook im2col CNN step in NumPy: windows as rows of a matrix, one GEMM per conv and per gradient,
    col2im as one add per kernel offset, pooling masks by comparison with the window's max."""
    p = {k: v.copy() for k, v in params.items()}
    m = x.shape[0]
    onehot = np.eye(10, dtype=np.float32)[t]
    windows = np.lib.stride_tricks.sliding_window_view

    def conv(h, w, b):
        n, c, hh, ww = h.shape
        cols = windows(np.pad(h, ((0, 0), (0, 0), (1, 1), (1, 1))), (3, 3), axis=(2, 3))
        cols = cols.transpose(0, 2, 3, 1, 4, 5).reshape(n * hh * ww, c * 9)
        out = (cols @ w.reshape(len(w), -1).T).reshape(n, hh, ww, -1).transpose(0, 3, 1, 2) + b[:, None, None]
        return out, cols

    def pool(a):
        n, c, hh, ww = a.shape
        r = a.reshape(n, c, hh // 2, 2, ww // 2, 2)
        y = r.max(axis=(3, 5))
        return y, r == y[:, :, :, None, :, None]

    def unpool(g, mask):
        return (mask * g[:, :, :, None, :, None]).reshape(*g.shape[:2], g.shape[2] * 2, g.shape[3] * 2)

    def conv_input_grad(g, w, shape):
        n, c, hh, ww = shape
        dcols = (g.transpose(0, 2, 3, 1).reshape(-1, len(w)) @ w.reshape(len(w), -1)).reshape(n, hh, ww, c, 3, 3)
        dx = np.zeros((n, c, hh + 2, ww + 2), np.float32)
        for a in range(3):
            for b in range(3):
                dx[:, :, a:a + hh, b:b + ww] += dcols[..., a, b].transpose(0, 3, 1, 2)
        return dx[:, :, 1:-1, 1:-1]

    def step():
        a1, cols1 = conv(x, p["w1"], p["b1"])
        h1, mask1 = pool(np.maximum(a1, 0))
        a2, cols2 = conv(h1, p["w2"], p["b2"])
        h2, mask2 = pool(np.maximum(a2, 0))
        z = h2.reshape(m, -1) @ p["W3"] + p["b3"]
        e = np.exp(z - z.max(axis=1, keepdims=True))
        s = e.sum(axis=1, keepdims=True)
        loss = float(np.mean(np.log(s[:, 0]) + z.max(axis=1) - (z * onehot).sum(axis=1)))
        dz = (e / s - onehot) / m
        grads = {"W3": h2.reshape(m, -1).T @ dz, "b3": dz.sum(axis=0)}
        da2 = unpool((dz @ p["W3"].T).reshape(h2.shape), mask2) * (a2 > 0)
        g2 = da2.transpose(0, 2, 3, 1).reshape(-1, da2.shape[1])
        grads["w2"], grads["b2"] = (g2.T @ cols2).reshape(p["w2"].shape), g2.sum(axis=0)
        da1 = unpool(conv_input_grad(da2, p["w2"], h1.shape), mask1) * (a1 > 0)
        g1 = da1.transpose(0, 2, 3, 1).reshape(-1, da1.shape[1])
        grads["w1"], grads["b1"] = (g1.T @ cols1).reshape(p["w1"].shape), g1.sum(axis=0)
        for k, g in grads.items():
            p[k] -= np.float32(LR) * g
        return loss
    return step, p


def main():
    try:
        import torch
    except ImportError:
        print("skipped: PyTorch is not installed (pip install torch==2.13.0, or the bench extra)")
        return
    import platform

    import threadpoolctl
    rng = np.random.default_rng(0)
    x = rng.random((ARGS.batch, 1, 8, 8), dtype=np.float32)
    t = rng.integers(0, 10, ARGS.batch)
    prog = gc.compile(cnn(), loss="loss", optimizer=gc.SGD(lr=LR))
    params = prog.init_params(0)
    ours = {k: v.copy() for k, v in params.items()}
    theirs, tp = torch_step(params, x, t)
    hand, hp = numpy_step(params, x, t)
    batch = {"x": x, "t": t}
    a, b, c = float(prog.train_step(ours, batch)["loss"]), theirs(), hand()
    assert abs(a - b) <= 1e-5 * max(1.0, abs(b)) and abs(a - c) <= 1e-5 * max(1.0, abs(c)), (a, b, c)
    for k in ours:
        assert np.allclose(ours[k], tp[k].detach().numpy(), rtol=1e-4, atol=1e-6), k
        assert np.allclose(ours[k], hp[k], rtol=1e-4, atol=1e-6), k
    runs = {"graphc": lambda: prog.train_step(ours, batch), "PyTorch eager": theirs, "NumPy im2col, by hand": hand}
    times = interleaved(runs, ARGS.rounds, warmup=5)
    ratio = {n: float(np.median([p / g for p, g in zip(times[n], times["graphc"])])) for n in runs}
    profile = profile_statements(prog, params, batch, 100)
    blas = ", ".join(f"{p['internal_api']} {p['num_threads']}" for p in threadpoolctl.threadpool_info())
    env = (f"{platform.machine()}, {os.cpu_count()} cores; NumPy {np.__version__} ({blas} threads), "
           f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    lines = [f"# Small CNN training step (float32, SGD, batch {ARGS.batch})", "",
             f"`python bench/cnn.py --threads {ARGS.threads}` — {env}.", "",
             "conv 3×3 (1→16, same) → relu → max-pool 2 → conv 3×3 (16→32, same) → relu → max-pool 2 → dense "
             "128→10, mean softmax cross-entropy. Median per-step time over "
             f"{ARGS.rounds} interleaved rounds; peer ÷ graphc is the median over rounds of the two times in the same "
             "round (below 1: the peer is faster). Losses and updated weights of all three checked equal first.", "",
             "| implementation | ms | peer ÷ graphc |", "|---|---:|---:|"]
    lines += [f"| {n} | {np.median(times[n]) * 1e3:.2f} | {ratio[n]:.2f} |" for n in runs]
    total = sum(s for s, _ in profile)
    lines += ["", "## Where graphc's step goes", "",
              f"Statement timers in the generated `_train` (they add overhead per statement): total "
              f"{total * 1e3:.2f} ms. Top statements:", "", "| ms | share | statement |", "|---:|---:|---|"]
    for sec, label in sorted(profile, reverse=True)[:15]:
        lines.append(f"| {sec * 1e3:.3f} | {sec / total:.0%} | `{label[:110]}` |")
    report = "\n".join(lines) + "\n"
    print(report)
    (Path(__file__).resolve().parent / "results" / "cnn.md").write_text(report)


if __name__ == "__main__":
    main()
