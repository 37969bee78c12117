"""One SGD training step of an MLP 784-512-512-10 (ReLU, mean softmax cross-entropy, float32): graphc against peers.

    python bench/mlp.py [--quick] [--threads N]

Every implementation starts from the same weights and data, runs under the same thread limit, and is checked to
produce the same loss and gradients before anything is timed. Timed rounds are interleaved (each implementation runs
a short burst in turn, round after round); the table reports medians of the per-step times and the median over
rounds of each peer's time divided by graphc's time in the same round. Results go to bench/results/.
"""
from __future__ import annotations

import argparse
import os
import sys

# Thread limits must be in place before NumPy, PyTorch or JAX load their thread pools.
_parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
_parser.add_argument("--quick", action="store_true", help="fewer rounds and depths (about a minute)")
_parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for every implementation")
_parser.add_argument("--batches", type=int, nargs="+", default=[64, 1024])
_parser.add_argument("--rss", nargs=2, metavar=("IMPL", "BATCH"), help=argparse.SUPPRESS)  # child process mode
ARGS = _parser.parse_args() if __name__ == "__main__" else _parser.parse_args([])
if __name__ == "__main__":  # a benchmark importing this one's helpers has set its own limits
    from threads import limit
    limit(ARGS.threads)

import importlib.util  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from measure import profile_statements  # noqa: E402 - bench/ is the script's folder

import graphc as gc  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (784, 512, 512, 10)
LR = 0.01
NAMES = ("W1", "b1", "W2", "b2", "W3", "b3")


def mlp_graph(sizes=SIZES, dtype="float32"):
    """The benchmark MLP as a graphc graph: ReLU hidden layers, linear output, mean softmax cross-entropy."""
    m = gc.dim("m")
    with gc.Graph(f"mlp{len(sizes) - 1}") as g:
        h = gc.input("x", (m, sizes[0]), dtype=dtype)
        t = gc.input("t", (m,), dtype="int64")
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]), 1):
            W = gc.param(f"W{i}", (n_in, n_out), dtype=dtype, init="he_normal")
            b = gc.param(f"b{i}", (n_out,), dtype=dtype, init=("normal", 0.1))
            h = h @ W + b
            if i < len(sizes) - 1:
                h = gc.relu(h)
        g.output(loss=gc.mean(gc.softmax_cross_entropy(h, t)))
    return g


def make_data(batch, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, SIZES[0])).astype(np.float32), rng.integers(0, SIZES[-1], size=batch)


# ---------------------------------------------------------------------------------------------------- implementations
# Each takes (params, x, t), keeps its own copy of the params, and has step() -> loss (a float) and params() -> dict.

class Graphc:
    name = "graphc -O2"

    def __init__(self, params, x, t):
        self.program = gc.compile(mlp_graph(), backend="numpy", opt_level=2, loss="loss", optimizer=gc.SGD(lr=LR))
        self.p = {k: v.copy() for k, v in params.items()}
        self.batch = {"x": x, "t": t}

    def step(self):
        return float(self.program.train_step(self.p, self.batch)["loss"])

    def params(self):
        return self.p


class NumpyTextbook:
    """Backprop as written in a course: fresh temporaries everywhere, dz = (softmax − onehot)/m."""
    name = "NumPy textbook"

    def __init__(self, params, x, t):
        self.p = {k: v.copy() for k, v in params.items()}
        self.x, self.t = x, t
        self.onehot = np.eye(SIZES[-1], dtype=np.float32)[t]

    def step(self):
        p, x, m = self.p, self.x, len(self.x)
        z1 = x @ p["W1"] + p["b1"]
        h1 = np.maximum(z1, 0)
        z2 = h1 @ p["W2"] + p["b2"]
        h2 = np.maximum(z2, 0)
        z3 = h2 @ p["W3"] + p["b3"]
        z3 = z3 - z3.max(axis=1, keepdims=True)
        e = np.exp(z3)
        s = e.sum(axis=1, keepdims=True)
        loss = np.mean(np.log(s[:, 0]) - z3[np.arange(m), self.t])
        dz3 = (e / s - self.onehot) / m
        dW3, db3 = h2.T @ dz3, dz3.sum(axis=0)
        dz2 = (dz3 @ p["W3"].T) * (z2 > 0)
        dW2, db2 = h1.T @ dz2, dz2.sum(axis=0)
        dz1 = (dz2 @ p["W2"].T) * (z1 > 0)
        dW1, db1 = x.T @ dz1, dz1.sum(axis=0)
        for k, g in zip(NAMES, (dW1, db1, dW2, db2, dW3, db3)):
            p[k] -= LR * g
        return float(loss)

    def params(self):
        return self.p


class NumpyInplace:
    """The same backprop with every buffer allocated once and every operation writing through out=."""
    name = "NumPy in-place"

    def __init__(self, params, x, t):
        self.p = {k: v.copy() for k, v in params.items()}
        self.x, self.t = x, t
        m, (_, n1, n2, n3) = len(x), SIZES
        f = np.float32
        self.rows = np.arange(m) * n3 + t  # flat index of each row's true class
        self.h1, self.h2, self.z3 = np.empty((m, n1), f), np.empty((m, n2), f), np.empty((m, n3), f)
        self.d1, self.d2 = np.empty((m, n1), f), np.empty((m, n2), f)
        self.col, self.picked = np.empty((m, 1), f), np.empty(m, f)
        self.g = {k: np.empty_like(v) for k, v in self.p.items()}

    def exp_and_loss(self, z3, col):
        """The mean cross-entropy of logits ``z3``, leaving exp(z3 − row max) in ``z3`` and its row sums in ``col``."""
        np.max(z3, axis=1, keepdims=True, out=col)
        np.subtract(z3, col, out=z3)
        np.take(z3.reshape(-1), self.rows, out=self.picked)
        np.exp(z3, out=z3)
        np.sum(z3, axis=1, keepdims=True, out=col)
        return (np.log(col).sum() - self.picked.sum()) / len(z3)

    def step(self):
        p, g, x, m = self.p, self.g, self.x, len(self.x)
        h1, h2, z3, d1, d2, col = self.h1, self.h2, self.z3, self.d1, self.d2, self.col
        np.matmul(x, p["W1"], out=h1)
        np.add(h1, p["b1"], out=h1)
        np.maximum(h1, 0, out=h1)
        np.matmul(h1, p["W2"], out=h2)
        np.add(h2, p["b2"], out=h2)
        np.maximum(h2, 0, out=h2)
        np.matmul(h2, p["W3"], out=z3)
        np.add(z3, p["b3"], out=z3)
        loss = self.exp_and_loss(z3, col)
        np.multiply(col, m, out=col)
        np.divide(z3, col, out=z3)  # softmax / m
        z3.reshape(-1)[self.rows] -= 1.0 / m  # dz3 = (softmax − onehot) / m
        np.matmul(h2.T, z3, out=g["W3"])
        np.sum(z3, axis=0, out=g["b3"])
        np.matmul(z3, p["W3"].T, out=d2)
        d2 *= h2 > 0
        np.matmul(h1.T, d2, out=g["W2"])
        np.sum(d2, axis=0, out=g["b2"])
        np.matmul(d2, p["W2"].T, out=d1)
        d1 *= h1 > 0
        np.matmul(x.T, d1, out=g["W1"])
        np.sum(d1, axis=0, out=g["b1"])
        for k in NAMES:
            g[k] *= LR
            p[k] -= g[k]
        return float(loss)

    def params(self):
        return self.p


class NumpyFewestPasses(NumpyInplace):
    """The fewest NumPy calls a step can make, allocations allowed: the bias added in place (NumPy takes a 32 KiB
    iteration buffer for the broadcast), relu′ as one multiply by a bool mask (a cast buffer), bias gradients as
    GEMVs, −lr/m folded into dz3 so each update is one add. What any NumPy file would pay beyond the GEMMs."""
    name = "NumPy fewest passes"
    threaded = False

    def __init__(self, params, x, t):
        super().__init__(params, x, t)
        m, n1 = len(x), SIZES[1]
        self.ones, self.mask = np.ones(m, np.float32), np.empty((m, n1), bool)
        self.split = _RowSplit() if self.threaded else None

    def passes(self, fn, n):
        """fn(lo, hi) over rows [0, n): here, or half here and half on a worker thread."""
        if self.split is None:
            fn(0, n)
        else:
            self.split(fn, n)

    def step(self):
        p, g, x, m, ones = self.p, self.g, self.x, len(self.x), self.ones
        h1, h2, z3, d1, d2, col, mask = self.h1, self.h2, self.z3, self.d1, self.d2, self.col, self.mask

        def bias_relu(h, b):
            return lambda lo, hi: (np.add(h[lo:hi], b, out=h[lo:hi]), np.maximum(h[lo:hi], 0, out=h[lo:hi]))

        def relu_grad(d, h):
            return lambda lo, hi: (np.greater(h[lo:hi], 0, out=mask[lo:hi]),
                                   np.multiply(d[lo:hi], mask[lo:hi], out=d[lo:hi]))

        np.matmul(x, p["W1"], out=h1)
        self.passes(bias_relu(h1, p["b1"]), m)
        np.matmul(h1, p["W2"], out=h2)
        self.passes(bias_relu(h2, p["b2"]), m)
        np.matmul(h2, p["W3"], out=z3)
        np.add(z3, p["b3"], out=z3)
        loss = self.exp_and_loss(z3, col)
        np.divide(-LR / m, col, out=col)
        np.multiply(z3, col, out=z3)  # −lr·softmax/m
        z3.reshape(-1)[self.rows] += LR / m  # dz3·(−lr)
        np.matmul(h2.T, z3, out=g["W3"])
        np.matmul(ones, z3, out=g["b3"])
        np.matmul(z3, p["W3"].T, out=d2)
        self.passes(relu_grad(d2, h2), m)
        np.matmul(h1.T, d2, out=g["W2"])
        np.matmul(ones, d2, out=g["b2"])
        np.matmul(d2, p["W2"].T, out=d1)
        self.passes(relu_grad(d1, h1), m)
        np.matmul(x.T, d1, out=g["W1"])
        np.matmul(ones, d1, out=g["b1"])
        def update(w, d):
            return lambda lo, hi: np.add(w[lo:hi], d[lo:hi], out=w[lo:hi])

        for k in NAMES:
            self.passes(update(p[k], g[k]), len(p[k]))
        return float(loss)


class NumpyFewestPassesThreaded(NumpyFewestPasses):
    """The same calls with every elementwise pass split by rows between two threads (NumPy lets go of the GIL)."""
    name = "fewest passes, 2 threads"
    threaded = True


class _RowSplit:
    """Runs fn(0, n/2) on the calling thread and fn(n/2, n) on one worker thread, and waits for both."""

    def __init__(self):
        import threading
        self.go, self.done, self.job = threading.Semaphore(0), threading.Semaphore(0), None
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            self.go.acquire()
            self.job()
            self.done.release()

    def __call__(self, fn, n):
        half = n // 2
        self.job = lambda: fn(half, n)
        self.go.release()
        fn(0, half)
        self.done.acquire()


class GemmFloor:
    """Only the step's matrix products (3 forward, 2 input-gradient, 3 weight-gradient) into preallocated outputs."""
    name = "GEMM-only floor"

    def __init__(self, params, x, t):
        self.p, self.x = {k: v.copy() for k, v in params.items()}, x
        m, (_, n1, n2, n3) = len(x), SIZES
        self.h1, self.h2, self.z3 = (np.empty((m, n), np.float32) for n in (n1, n2, n3))
        self.d1, self.d2 = np.empty((m, n1), np.float32), np.empty((m, n2), np.float32)
        self.g = {k: np.empty_like(v) for k, v in self.p.items()}

    def step(self):
        p, g, x = self.p, self.g, self.x
        np.matmul(x, p["W1"], out=self.h1)
        np.matmul(self.h1, p["W2"], out=self.h2)
        np.matmul(self.h2, p["W3"], out=self.z3)
        np.matmul(self.h2.T, self.z3, out=g["W3"])
        np.matmul(self.z3, p["W3"].T, out=self.d2)
        np.matmul(self.h1.T, self.d2, out=g["W2"])
        np.matmul(self.d2, p["W2"].T, out=self.d1)
        np.matmul(x.T, self.d1, out=g["W1"])
        return float("nan")


class Torch:
    name = "PyTorch eager"

    def __init__(self, params, x, t):
        import torch
        self.torch = torch
        torch.set_num_threads(ARGS.threads)
        self.w = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
        self.x, self.t = torch.tensor(x), torch.tensor(t)

    def step(self):
        torch, w = self.torch, self.w
        h = torch.relu(self.x @ w["W1"] + w["b1"])
        h = torch.relu(h @ w["W2"] + w["b2"])
        loss = torch.nn.functional.cross_entropy(h @ w["W3"] + w["b3"], self.t)
        loss.backward()
        with torch.no_grad():
            for v in w.values():
                v.add_(v.grad, alpha=-LR)
                v.grad = None
        return loss.item()

    def params(self):
        return {k: v.detach().numpy() for k, v in self.w.items()}


class Jax:
    name = "JAX jit"

    def __init__(self, params, x, t):
        import jax
        import jax.numpy as jnp

        def loss_fn(w, x, t):
            h = jax.nn.relu(x @ w["W1"] + w["b1"])
            h = jax.nn.relu(h @ w["W2"] + w["b2"])
            logp = jax.nn.log_softmax(h @ w["W3"] + w["b3"])
            return -jnp.mean(jnp.take_along_axis(logp, t[:, None], axis=1))

        def step(w, x, t):
            loss, grads = jax.value_and_grad(loss_fn)(w, x, t)
            return jax.tree_util.tree_map(lambda v, d: v - LR * d, w, grads), loss

        self.fn = jax.jit(step, donate_argnums=0)
        self.w = {k: jnp.asarray(v) for k, v in params.items()}
        self.x, self.t = jnp.asarray(x), jnp.asarray(t, dtype=jnp.int32)

    def step(self):
        self.w, loss = self.fn(self.w, self.x, self.t)
        return float(loss)  # waits for the result

    def params(self):
        return {k: np.asarray(v) for k, v in self.w.items()}


PEERS = {"graphc": Graphc, "textbook": NumpyTextbook, "inplace": NumpyInplace, "fewest": NumpyFewestPasses,
         "fewest2": NumpyFewestPassesThreaded, "torch": Torch, "jax": Jax, "floor": GemmFloor}
MODULES = {"torch": "torch", "jax": "jax"}


def available():
    impls, notes = {}, []
    for key, cls in PEERS.items():
        module = MODULES.get(key)
        if module and importlib.util.find_spec(module) is None:
            notes.append(f"{cls.name} skipped: `{module}` is not installed (pip install -e '.[bench]')")
        else:
            impls[key] = cls
    return impls, notes


# ------------------------------------------------------------------------------------------------------------ checks
def verify(impls, params, batch):
    """One step each from the same start: losses and gradients ((before − after)/lr) must agree with graphc's."""
    ref_loss, ref_grads = None, None
    for key, impl in impls.items():
        if key == "floor":
            continue
        loss = impl.step()
        grads = {k: (params[k].astype(np.float64) - impl.params()[k]) / LR for k in NAMES}
        if ref_grads is None:
            ref_loss, ref_grads = loss, grads
            continue
        assert abs(loss - ref_loss) <= 1e-5 * max(1.0, abs(ref_loss)), f"batch {batch}: {impl.name} loss {loss} " \
                                                                          f"!= graphc {ref_loss}"
        for k in NAMES:
            # Gradients are recovered from float32 params: their error is ~eps·|param|/lr.
            tol = 2e-2 * np.abs(ref_grads[k]).max() + 4 * np.finfo(np.float32).eps * np.abs(params[k]).max() / LR
            err = np.abs(grads[k] - ref_grads[k]).max()
            assert err <= tol, f"batch {batch}: {impl.name} d{k} differs from graphc's by {err:.3g} (tol {tol:.3g})"


def timed_rounds(impls, rounds, burst):
    """Interleaved bursts; returns per-impl lists of per-round medians."""
    per_round = {key: [] for key in impls}
    for r in range(rounds):
        order = list(impls) if r % 2 == 0 else list(reversed(impls))  # neither end always runs first
        for key in order:
            step, times = impls[key].step, []
            for _ in range(burst):
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
            per_round[key].append(statistics.median(times))
    return per_round


def allocations(impl, steps=5):
    """Peak bytes live above the steady state during one step, and bytes left behind, under tracemalloc."""
    impl.step()
    tracemalloc.start()
    peaks, kept = [], []
    for _ in range(steps):
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        impl.step()
        current, peak = tracemalloc.get_traced_memory()
        peaks.append(peak - before)
        kept.append(current - before)
    tracemalloc.stop()
    return max(peaks), max(kept)


def peak_rss(key, batch):
    """Peak RSS (MiB) of a fresh process that builds ``key`` and runs 20 steps at ``batch``, and its growth over
    the process's peak before the implementation was built (imports, data, initial weights)."""
    cmd = [sys.executable, __file__, "--threads", str(ARGS.threads), "--rss", key, str(batch)]
    before, after = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()[-2:]
    return float(after), float(after) - float(before)


def rss_child(key, batch):
    x, t = make_data(batch)
    params = gc.compile(mlp_graph(), loss="loss", optimizer=gc.SGD(lr=LR)).init_params(0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    impl = PEERS[key](params, x, t)
    for _ in range(20):
        impl.step()
    print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


# ------------------------------------------------------------------------------------------------ fixed costs, memory
def thread_setup(impls) -> str:
    """Each library's thread pools as they run here: the comparison is fair only if they agree."""
    parts = []
    try:
        from threadpoolctl import threadpool_info
        parts += [f"{p['internal_api']} {p['num_threads']} threads ({p.get('prefix', '')})" for p in threadpool_info()]
    except ImportError:
        parts.append("threadpoolctl not installed: BLAS threads unknown")
    if "torch" in impls:
        import torch
        parts.append(f"torch.get_num_threads() = {torch.get_num_threads()}")
    return "; ".join(parts)


def call_overhead(params, rounds):
    """µs per step at batch 1, where the fixed costs of a call (checks, buffer look-up) weigh most: graphc's
    generated step against the hand-written in-place step, interleaved."""
    x, t = make_data(1)
    impls = {"graphc": Graphc(params, x, t), "inplace": NumpyInplace(params, x, t)}
    for impl in impls.values():
        for _ in range(20):
            impl.step()
    per_round = timed_rounds(impls, rounds, 50)
    g = per_round["graphc"]
    return {key: (statistics.median(times), statistics.median(a / b for a, b in zip(g, times)))
            for key, times in per_round.items()}


def memory_ratio(program, batch) -> tuple[int, int]:
    """(bytes of the training step's planned buffers, bytes of the activations its backward pass reads)."""
    from graphc.optim import training_graph
    from graphc.passes import optimize
    trained, _ = optimize(training_graph(mlp_graph(), "loss", gc.SGD(lr=LR)))
    kept = {i for n in trained.nodes.values() if n.phase != "forward" for i in n.inputs
            if trained.nodes[i].phase == "forward" and trained.nodes[i].op not in ("input", "param")}
    sizes = {d: batch for d in trained.dims()}
    activations = sum(int(np.prod([int(d.subs(sizes)) for d in trained.nodes[i].shape])) * 4 for i in kept)
    cache = program.module._train_cache.sizes
    planned = sum(b.nbytes for b in cache[(batch,)] if hasattr(b, "nbytes"))
    return planned, activations


# ----------------------------------------------------------------------------------------------------- compile time
def deep_mlp(depth, width=64):
    return mlp_graph((width,) * depth + (10,))


def compile_times(depths):
    rows = []
    for depth in depths:
        t0 = time.perf_counter()
        gc.compile(deep_mlp(depth), backend="numpy", opt_level=2, loss="loss", optimizer=gc.SGD(lr=LR))
        rows.append((depth, time.perf_counter() - t0))
        print(f"  compile depth {depth:4d}: {rows[-1][1]:.2f} s", flush=True)
    return rows


# ------------------------------------------------------------------------------------------------------------ report
def fmt_ms(s):
    return f"{s * 1e3:.2f}"


def main():
    if ARGS.rss:
        return rss_child(ARGS.rss[0], int(ARGS.rss[1]))
    RESULTS.mkdir(exist_ok=True)
    rounds, burst = (8, 5) if ARGS.quick else (20, 6)
    depths = [2, 4, 8, 16, 32, 64] if ARGS.quick else [2, 4, 8, 16, 32, 64, 128, 256]
    impls_avail, notes = available()
    import platform
    env = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {ARGS.threads} threads for all; "
           f"Python {platform.python_version()}, NumPy {np.__version__}")
    for key, module in MODULES.items():
        if key in impls_avail:
            env += f", {module} {__import__(module).__version__}"
    for note in notes:
        print(note)

    t0 = time.perf_counter()
    params = gc.compile(mlp_graph(), loss="loss", optimizer=gc.SGD(lr=LR)).init_params(0)
    results, allocs, profiles, memory = {}, {}, {}, {}
    for batch in ARGS.batches:
        x, t = make_data(batch)
        impls = {key: cls(params, x, t) for key, cls in impls_avail.items()}
        verify(impls, params, batch)
        for impl in impls.values():  # warm-up (and JAX's compilation)
            for _ in range(5):
                impl.step()
        per_round = timed_rounds(impls, rounds, burst)
        results[batch] = per_round
        g = per_round["graphc"]
        for key, times in per_round.items():
            ratio = statistics.median(a / b for a, b in zip(times, g))
            print(f"  batch {batch:5d} {impls[key].name:16s} {fmt_ms(statistics.median(times)):>8s} ms  ×{ratio:.2f}",
                  flush=True)
        for key in ("graphc", "textbook", "inplace", "fewest"):
            allocs[key, batch] = allocations(impls[key]) + peak_rss(key, batch)
        profiles[batch] = profile_statements(impls["graphc"].program, params, {"x": x, "t": t}, 10 * burst)
        memory[batch] = memory_ratio(impls["graphc"].program, batch)
        threads = thread_setup(impls)
    overhead = call_overhead(params, rounds)
    print(f"  batch 1: graphc {overhead['graphc'][0] * 1e6:.0f} µs, in-place NumPy "
          f"{overhead['inplace'][0] * 1e6:.0f} µs, ratio {overhead['inplace'][1]:.2f}", flush=True)
    ctimes = compile_times(depths)
    write_report(results, allocs, profiles, ctimes, notes, env, impls_avail, rounds, burst,
                 extra=(threads, overhead, memory))
    print(f"total {time.perf_counter() - t0:.0f} s; wrote {RESULTS}/mlp.md, mlp.png, compile_time.png")


def write_report(results, allocs, profiles, ctimes, notes, env, impls_avail, rounds, burst, extra):
    threads, overhead, memory = extra
    names = {key: cls.name for key, cls in impls_avail.items()}
    out = ["# MLP 784-512-512-10 training step (float32, SGD)", "",
           f"`python bench/mlp.py{' --quick' if ARGS.quick else ''}` — {env}.", "",
           f"Median per-step time over {rounds} interleaved rounds of {burst} steps after warm-up; "
           "ratio = median over rounds of (peer ÷ graphc in the same round), so < 1 means faster than graphc. "
           "Losses and gradients of every implementation were checked against graphc's before timing.", "",
           f"Thread pools as they ran: {threads}.", ""]
    out += [f"> {note}" for note in notes] + ([""] if notes else [])
    head = "| implementation | " + " | ".join(f"batch {b}: ms | ratio" for b in results) + " |"
    out += [head, "|---|" + "---:|---:|" * len(results)]
    for key in results[next(iter(results))]:
        cells = []
        for per_round in results.values():
            med = statistics.median(per_round[key])
            ratio = statistics.median(a / b for a, b in zip(per_round[key], per_round["graphc"]))
            cells.append(f"{fmt_ms(med)} | {ratio:.2f}")
        out.append(f"| {names[key]} | " + " | ".join(cells) + " |")
    out += against_the_floor(results, names)

    out += ["", "## Memory", "",
            "Transient: the most bytes live above the steady state during one step (tracemalloc; NumPy reports its "
            "array buffers to it). Kept: bytes still held after the step. Peak RSS: a fresh process that builds the "
            "implementation and runs 20 steps; growth: over that process's peak before the implementation was built "
            "(imports, data, a compile for the initial weights).", "",
            "| implementation | batch | transient | kept | peak RSS | growth |", "|---|---:|---:|---:|---:|---:|"]
    for (key, batch), (peak, kept, rss, grow) in allocs.items():
        out.append(f"| {names[key]} | {batch} | {peak / 1024:,.1f} KiB | {kept / 1024:,.1f} KiB | {rss:.0f} MiB "
                   f"| {grow:.1f} MiB |")

    out += ["", "Planned buffers of graphc's training step against the activations its backward pass reads (what any "
            "implementation must keep from the forward pass): " + ", ".join(
                f"batch {b}: {p / 2**20:.1f} MiB for {a / 2**20:.1f} MiB, ×{p / a:.2f}" for b, (p, a) in memory.items())
            + "."]
    out += ["", "## Fixed costs of a call", "",
            f"Batch 1, where checking the feeds and finding the buffers weigh most ({rounds} interleaved rounds of 50 "
            f"steps): graphc {overhead['graphc'][0] * 1e6:.0f} µs per step, the hand-written in-place NumPy step "
            f"{overhead['inplace'][0] * 1e6:.0f} µs; graphc ÷ hand-written {overhead['inplace'][1]:.2f}."]
    out += ["", "## Compile time against depth", "",
            "`gc.compile` of an MLP with `depth` layers of width 64 (graph construction, training graph, optimization "
            "and emission), timed once each.", "", "| depth | seconds | ms per layer |", "|---:|---:|---:|"]
    out += [f"| {d} | {s:.2f} | {1e3 * s / d:.0f} |" for d, s in ctimes]
    if len(ctimes) >= 3:
        slope = np.polyfit(np.log([d for d, _ in ctimes[2:]]), np.log([s for _, s in ctimes[2:]]), 1)[0]
        out += ["", f"Log-log slope from depth {ctimes[2][0]} on: {slope:.2f} (1 is linear)."]

    for batch, prof in profiles.items():
        total = sum(s for s, _ in prof)
        floor = statistics.median(results[batch]["floor"]) if "floor" in results[batch] else float("nan")
        mm = sum(s for s, label in prof if "matmul" in label and "_ones" not in label)  # GEMMs, not the sums
        out += ["", f"## Where graphc's step goes, batch {batch}", "",
                f"Statement timers in the generated `_train` (adds overhead per statement): total {fmt_ms(total)} ms, "
                f"matmuls {fmt_ms(mm)} ms ({100 * mm / total:.0f}%), GEMM-only floor {fmt_ms(floor)} ms. "
                "Top statements:", "", "| ms | share | statement |", "|---:|---:|---|"]
        for s, label in sorted(prof, reverse=True)[:12]:
            out.append(f"| {fmt_ms(s)} | {100 * s / total:.0f}% | `{label[:110]}` |")
    (RESULTS / "mlp.md").write_text("\n".join(out) + "\n")
    (RESULTS / "mlp.json").write_text(json.dumps(
        {"env": env, "times": {str(b): r for b, r in results.items()}, "compile": ctimes}, indent=1))
    plot(results, names, ctimes)


def against_the_floor(results, names) -> list[str]:
    """Each NumPy step's time over the GEMMs' alone, in the same rounds: what its elementwise work costs."""
    keys = [k for k in ("graphc", "inplace", "fewest", "fewest2") if k in names]
    if "floor" not in names:
        return []
    out = ["", "## Against the GEMM floor", "",
           "Each step's time ÷ the GEMM-only floor's in the same round (median over rounds): the share its "
           "elementwise passes add. The fewest-passes step is what any NumPy file pays beyond the GEMMs (allocations "
           "allowed); its 2-thread variant splits every pass by rows between two threads.", "",
           "| implementation | " + " | ".join(f"batch {b}" for b in results) + " |", "|---|" + "---:|" * len(results)]
    for key in keys:
        ratios = [statistics.median(a / b for a, b in zip(r[key], r["floor"])) for r in results.values()]
        out.append(f"| {names[key]} | " + " | ".join(f"{x:.2f}" for x in ratios) + " |")
    return out


def plot(results, names, ctimes):
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plots")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4))
    for ax, (batch, per_round) in zip(np.atleast_1d(axes), results.items()):
        keys = list(per_round)
        meds = [1e3 * statistics.median(per_round[k]) for k in keys]
        colors = ["tab:green" if k == "graphc" else "tab:gray" if k == "floor" else "tab:blue" for k in keys]
        ax.barh([names[k] for k in keys], meds, color=colors)
        ax.invert_yaxis()
        ax.set_xlabel("ms per training step (median)")
        ax.set_title(f"MLP 784-512-512-10, batch {batch}")
    fig.tight_layout()
    fig.savefig(RESULTS / "mlp.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    d, s = zip(*ctimes)
    ax.loglog(d, s, "o-", label="gc.compile")
    ax.loglog(d, [s[-1] * x / d[-1] for x in d], ":", color="gray", label="linear")
    ax.set_xlabel("layers (width 64)")
    ax.set_ylabel("seconds")
    ax.set_title("Compile time against depth")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "compile_time.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
