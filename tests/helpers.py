"""Shared test helpers: build small graphs over float64 inputs and check them against oracles."""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.transforms.gradcheck import fd_grads, rel_error

M = 3  # the size the symbolic batch dim ``m`` takes in tests
m = gc.dim("m")


def concrete(shape):
    return tuple(int(d.subs(m, M)) for d in shape)


def op_graph(fn, *shapes):
    """Graph ``loss = sum(fn(a0, a1, …) · r)`` (r a fixed random weight) with the gradient of every input."""
    with gc.Graph("case") as g:
        xs = [gc.input(f"a{i}", s, dtype="float64") for i, s in enumerate(shapes)]
        y = fn(*xs)
        weight = gc.input("weight", y.shape, dtype="float64")
        loss = gc.sum(y * weight) if y.ndim else y * weight
        grads = gc.grad(loss, xs)
        g.output(loss=loss, y=y, **{f"g{i}": d for i, d in enumerate(grads)})
    return g


def random_feeds(g, seed=0, low=-2.0, high=2.0, avoid_zero=False):
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, nid in g.inputs.items():
        node = g.nodes[nid]
        shape = concrete(node.shape)
        if node.dtype == "int64":
            feeds[name] = rng.integers(0, 4, size=shape)
        else:
            x = rng.uniform(low, high, size=shape)
            if avoid_zero:
                x = np.where(np.abs(x) < 0.2, 0.5, x)
            feeds[name] = x.astype(node.dtype)
    for name, arr in gc.init_params(g, seed).items():
        feeds[name] = arr
    return feeds


def assert_grads_match_fd(g, feeds, tol=1e-6, names=None):
    """Every ``g<i>`` output equals the finite-difference gradient of ``loss`` w.r.t. input ``a<i>``."""
    out = g.evaluate(feeds)
    names = names or [n for n in g.inputs if n.startswith("a") and g.nodes[g.inputs[n]].dtype.startswith("float")]
    fd = fd_grads(g, "loss", feeds, names)
    for i, name in enumerate(names):
        err = rel_error(out[f"g{i}"], fd[name])
        assert err <= tol, f"gradient w.r.t. {name}: relative error {err:.2e}"
    return out


def cupy_or_skip():
    """CuPy on a CUDA device; without one, the emulated GPU of tests/emulated_gpu (installed as ``cupy``, its
    kernels built with the host C++ compiler); without a C++ compiler either, skip."""
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy
    except (ImportError, RuntimeError):  # no CuPy, or no driver or device (CUDARuntimeError is a RuntimeError)
        pass
    import emulated_gpu
    cp = emulated_gpu.install()
    if cp.emulation.compiler() is None:
        pytest.skip("no CUDA device, and no C++ compiler for the emulated one")
    return cp
