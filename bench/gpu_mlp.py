"""GPU benchmark: one SGD train step of the MLP 784-512-512-10 (float32), graphc/CuPy vs PyTorch.

Times the graphc CuPy train step against PyTorch CUDA eager and torch.compile at batch 1024 and 16384, prints
time ratios (graphc / torch; ≤ 1.0 means graphc is at least as fast) and CUDA kernel launches per step for each.
Exits cleanly (status 0, a message) where CuPy, PyTorch or a GPU is missing.

    python bench/gpu_mlp.py [--steps 50] [--batches 1024 16384]
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import graphc as gc

SIZES = (784, 512, 512, 10)
LR = 0.01


def model():
    m = gc.dim("m")
    with gc.Graph("mlp") as g:
        x = gc.input("x", (m, SIZES[0]), dtype="float32")
        t = gc.input("t", (m,), dtype="int64")
        h = x
        for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:]), start=1):
            W = gc.param(f"W{i}", (a, b), dtype="float32", init="he_normal")
            bias = gc.param(f"b{i}", (b,), dtype="float32", init="zeros")
            h = h @ W + bias
            if i < len(SIZES) - 1:
                h = gc.relu(h)
        g.output(loss=gc.mean(gc.softmax_cross_entropy(h, t)))
    return g


def available():
    try:
        import cupy as cp
        import torch
    except ImportError as exc:
        return f"needs cupy and torch ({exc})"
    try:
        if cp.cuda.runtime.getDeviceCount() < 1 or not torch.cuda.is_available():
            return "no CUDA device"
    except cp.cuda.runtime.CUDARuntimeError:
        return "no CUDA device"
    return None


def timed(step, steps: int, sync) -> float:
    """Median seconds per step after warm-up (the first calls compile kernels)."""
    for _ in range(5):
        step()
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def torch_launches(step) -> int:
    """CUDA kernels launched by one step, counted by torch.profiler (covers cuBLAS and CuPy kernels too)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def graphc_step(batch: int):
    import cupy as cp

    prog = gc.compile(model(), backend="cupy", loss="loss", optimizer=gc.SGD(lr=LR))
    params = prog.init_params(seed=0)
    rng = np.random.default_rng(0)
    data = {"x": cp.asarray(rng.normal(size=(batch, SIZES[0])).astype(np.float32)),
            "t": cp.asarray(rng.integers(0, SIZES[-1], size=batch))}
    return lambda: prog.train_step(params, data)


def torch_step(batch: int, compiled: bool):
    import torch

    layers = []
    for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(SIZES) - 2:
            layers.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*layers).cuda()
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    x = torch.randn(batch, SIZES[0], device="cuda")
    t = torch.randint(0, SIZES[-1], (batch,), device="cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(x), t)
        loss.backward()
        opt.step()
        return loss

    return torch.compile(step) if compiled else step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batches", type=int, nargs="+", default=[1024, 16384])
    args = parser.parse_args(argv)
    missing = available()
    if missing:
        print(f"skipped: {missing}")
        return 0
    import cupy as cp
    import torch

    def sync():
        cp.cuda.Device().synchronize()
        torch.cuda.synchronize()

    print(f"MLP {'-'.join(map(str, SIZES))} float32 SGD train step on {torch.cuda.get_device_name()}")
    print(f"{'batch':>6} {'impl':>14} {'ms/step':>9} {'graphc/x':>9} {'launches':>9}")
    for batch in args.batches:
        steps = {"graphc": graphc_step(batch), "torch eager": torch_step(batch, False),
                 "torch.compile": torch_step(batch, True)}
        times = {name: timed(step, args.steps, sync) for name, step in steps.items()}
        for name, step in steps.items():
            ratio = times["graphc"] / times[name]
            print(f"{batch:>6} {name:>14} {times[name] * 1e3:>9.3f} {ratio:>9.2f} {torch_launches(step):>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
