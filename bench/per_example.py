"""Cost of per-example gradients of the MLP 784-128-10 (float32) against ordinary backward passes.

    python bench/per_example.py [--batch 256] [--repeat 20]

Times the generated NumPy module (``gc.compile(g, backend="numpy")``) for: one ordinary forward+backward pass
of the batch; the per-example gradients of the batch (``gc.per_example_grads``); DP-SGD's clipped mean gradient
(``gc.clipped_mean_grads``) and the per-example gradient norms (``gc.per_example_norms``), neither of which
builds the per-example arrays of a dense layer; and ``batch``
single-example forward+backward passes; and, as the floor of any materialized result, filling an array of the
per-example gradients' size. With PyTorch installed, ``torch.func.vmap(grad)`` is timed too.
Ratios are to the ordinary pass.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import graphc as gc

SIZES = (784, 128, 10)
PARAMS = ("W1", "b1", "W2", "b2")


def mlp(what: str) -> gc.Graph:
    """The MLP with outputs: ``grads`` (of the mean loss), ``per_example`` or ``clipped`` gradients, or ``norms``."""
    m = gc.dim("m")
    n_in, n_hidden, n_out = SIZES
    with gc.Graph(f"mlp_{what}") as g:
        x = gc.input("x", (m, n_in))
        t = gc.input("t", (m,), dtype="int64")
        W1 = gc.param("W1", (n_in, n_hidden), init="he_normal")
        b1 = gc.param("b1", (n_hidden,), init="zeros")
        W2 = gc.param("W2", (n_hidden, n_out), init="glorot_uniform")
        b2 = gc.param("b2", (n_out,), init="zeros")
        losses = gc.softmax_cross_entropy(gc.relu(x @ W1 + b1) @ W2 + b2, t)
        params = [W1, b1, W2, b2]
        if what == "grads":
            grads = gc.grad(gc.mean(losses), params)
        elif what == "per_example":
            grads = gc.per_example_grads(losses, params)
        elif what == "norms":
            g.output(norms=gc.per_example_norms(losses, params))
            return g
        else:
            grads = gc.clipped_mean_grads(losses, params, clip=1.0)
        g.output(**{f"d{p}": d for p, d in zip(PARAMS, grads)})
    return g


def best_time(fn, repeat: int) -> float:
    """Median seconds of ``repeat`` calls after one warm-up call (which allocates the buffers)."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def torch_vmap(feeds, repeat: int):
    """``torch.func.vmap(grad(loss of one example))`` on the same arrays, or None without PyTorch."""
    try:
        import torch
        from torch.func import functional_call, grad, vmap
    except ImportError:
        return None
    torch.set_grad_enabled(False)
    model = torch.nn.Sequential(torch.nn.Linear(SIZES[0], SIZES[1]), torch.nn.ReLU(),
                                torch.nn.Linear(SIZES[1], SIZES[2]))
    params = {k: v.detach() for k, v in model.named_parameters()}
    x, t = torch.from_numpy(feeds["x"]), torch.from_numpy(feeds["t"])

    def loss(p, xi, ti):
        return torch.nn.functional.cross_entropy(functional_call(model, p, (xi[None],)), ti[None])

    per_example = vmap(grad(loss), in_dims=(None, 0, 0))
    return best_time(lambda: per_example(params, x, t), repeat)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(size=(args.batch, SIZES[0])).astype(np.float32),
             "t": rng.integers(0, SIZES[2], size=args.batch)}
    programs = {what: gc.compile(mlp(what), backend="numpy") for what in ("grads", "per_example", "clipped", "norms")}
    params = programs["grads"].init_params(0)
    full = {**params, **feeds}
    rows = [(what, best_time(lambda p=p: p(full, copy=False), args.repeat)) for what, p in programs.items()]
    one_rows = [{**params, "x": feeds["x"][i:i + 1], "t": feeds["t"][i:i + 1]} for i in range(args.batch)]
    ordinary = programs["grads"]
    rows.append((f"{args.batch} single-example passes",
                 best_time(lambda: [ordinary(f, copy=False) for f in one_rows], max(3, args.repeat // 5))))
    n_params = sum(int(np.prod(v.shape)) for v in params.values())
    result = np.empty(args.batch * n_params, np.float32)
    rows.append((f"writing {args.batch} × {n_params} float32 once (fill: the memory floor)",
                 best_time(lambda: result.fill(1.0), args.repeat)))
    peer = torch_vmap(feeds, args.repeat)
    if peer is not None:
        rows.append(("torch.func vmap(grad) per-example", peer))
    labels = {"grads": "one ordinary backward pass (mean loss)", "per_example": "gc.per_example_grads",
              "clipped": "gc.clipped_mean_grads (clip 1.0)", "norms": "gc.per_example_norms"}
    base = rows[0][1]
    print(f"MLP {'-'.join(map(str, SIZES))} float32, batch {args.batch}, generated NumPy code "
          f"(median of {args.repeat})\n")
    print("| what | time (ms) | × one backward pass |")
    print("|---|---:|---:|")
    for what, seconds in rows:
        print(f"| {labels.get(what, what)} | {seconds * 1e3:.2f} | {seconds / base:.1f} |")
    per_example, clipped, singles, floor = rows[1][1], rows[2][1], rows[4][1], rows[5][1]
    print(f"\nthe per-example gradients are {args.batch} × {n_params} float32 = "
          f"{args.batch * n_params * 4 / 1e6:.0f} MB (timed with run(copy=False)): writing them dominates; the "
          "norms and the clipped mean never build them.")
    print(f"per-example gradients: {per_example / base:.1f}× one backward pass ({per_example / floor:.1f}× the "
          f"memory floor), {per_example / singles:.2f}× the time of {args.batch} single-example passes, "
          f"{per_example / (args.batch * base):.3f}× {args.batch} ordinary backward passes (one per example's loss); "
          f"clipped mean gradients: {clipped / base:.1f}× one backward pass, {clipped / singles:.3f}× the time of "
          f"{args.batch} single-example passes.")

if __name__ == "__main__":
    main()
