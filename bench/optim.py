"""One Adam training step of the README MLP 784-512-512-10 (float32): the generated file against PyTorch eager with
``torch.optim.Adam(foreach=True)``.

    python bench/optim.py [--quick] [--threads N]

Both start from the same weights and data and run under the same thread limit; before anything is timed, both take
the same steps and must agree on the losses and params. Timed rounds are interleaved; the table reports medians of
the per-step times and the median over rounds of PyTorch's time divided by graphc's in the same round. Plain SGD
steps of both, timed alongside, show what the update itself costs. Results go to bench/results/optim.md.
"""
from __future__ import annotations

import argparse
import os

from threads import limit

_parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
_parser.add_argument("--quick", action="store_true", help="fewer rounds")
_parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for both")
_parser.add_argument("--batches", type=int, nargs="+", default=[64, 1024])
ARGS = _parser.parse_args()
limit(ARGS.threads)  # before NumPy and PyTorch load their thread pools

import platform  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from mlp import NAMES, RESULTS, make_data, mlp_graph, timed_rounds  # noqa: E402

import graphc as gc  # noqa: E402

LR = 1e-3


class Graphc:
    def __init__(self, params, x, t, optimizer, dtype="float32"):
        self.program = gc.compile(mlp_graph(dtype=dtype), loss="loss", optimizer=optimizer)
        self.p = {k: v.astype(dtype) for k, v in params.items()}
        self.state = self.program.init_state(self.p)
        self.batch = {"x": x.astype(dtype), "t": t}

    def step(self):
        return float(self.program.train_step(self.p, self.batch, self.state)["loss"])

    def params(self):
        return self.p


class Torch:
    def __init__(self, params, x, t, optimizer, dtype="float32"):
        torch.set_num_threads(ARGS.threads)
        self.w = {k: torch.tensor(v.astype(dtype), requires_grad=True) for k, v in params.items()}
        self.x, self.t = torch.tensor(x.astype(dtype)), torch.tensor(t)
        self.optimizer = optimizer(list(self.w.values()))

    def step(self):
        w = self.w
        h = torch.relu(self.x @ w["W1"] + w["b1"])
        h = torch.relu(h @ w["W2"] + w["b2"])
        loss = torch.nn.functional.cross_entropy(h @ w["W3"] + w["b3"], self.t)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def params(self):
        return {k: v.detach().numpy() for k, v in self.w.items()}


def peers(params, x, t, dtype="float32"):
    return {"graphc": Graphc(params, x, t, gc.Adam(LR), dtype),
            "torch": Torch(params, x, t, lambda p: torch.optim.Adam(p, LR, foreach=True), dtype),
            "graphc_sgd": Graphc(params, x, t, gc.SGD(LR), dtype),
            "torch_sgd": Torch(params, x, t, lambda p: torch.optim.SGD(p, LR, foreach=True), dtype)}


NAMES_SHOWN = {"graphc": "graphc Adam (generated NumPy)", "torch": "PyTorch eager, Adam(foreach=True)",
               "graphc_sgd": "graphc SGD", "torch_sgd": "PyTorch eager, SGD(foreach=True)"}


def verify(params, x, t, batch, steps=3):
    """The same steps from the same start: in float64 the losses and params agree to 1e-10, so both compute the same
    thing; in float32 (timed) the losses agree to 1e-5 (Adam turns gradients at rounding level into whole steps, so
    float32 params may differ by a step where a gradient is ~0)."""
    for dtype, tol in (("float64", 1e-10), ("float32", 1e-5)):
        impls = peers(params, x, t, dtype)
        for ours, theirs in (("graphc", "torch"), ("graphc_sgd", "torch_sgd")):
            for _ in range(steps):
                a, b = impls[ours].step(), impls[theirs].step()
                assert abs(a - b) <= tol * max(1.0, abs(b)), f"batch {batch} {dtype}: {ours} loss {a} != {b}"
            for k in NAMES if dtype == "float64" else ():
                gap = np.abs(impls[ours].params()[k] - impls[theirs].params()[k]).max()
                assert gap <= tol * np.abs(impls[theirs].params()[k]).max(), f"{ours} and {theirs} differ on {k}"


def update_blocks(source: str) -> list[tuple[str, list[str]]]:
    """(param, its NumPy calls) of each fused update of the generated ``_train``, in order."""
    rows, calls = [], None
    for line in source[source.index("def _train("):source.index("def train_step(")].splitlines():
        head = re.match(r"    # (\w+(?:, \w+)*) updated in one loop", line)
        if head:
            rows.append((head.group(1).split(", ")[-1], []))
            calls = rows[-1][1]
        elif calls is not None and line.startswith("    np."):
            calls.append(line.strip())
        elif calls is not None and not line.startswith("    # "):
            calls = None
    return rows


def scratch(calls: list[str]) -> set[int]:
    return {int(b) for line in calls for b in re.findall(r"B\[(\d+)\]", line)}


def update_passes(source: str) -> list[tuple[str, int, int]]:
    """(param, NumPy calls, scratch buffers) of each fused update: full-array passes per param."""
    return [(name, len(calls), len(scratch(calls))) for name, calls in update_blocks(source)]


def update_alone(source: str, params: dict, rounds: int) -> tuple[list, list]:
    """Seconds per call of the generated file's Adam update statements alone and of torch's ``Adam(foreach=True)
    .step()``, on the same params and fixed gradients, interleaved: what the update itself costs, without the
    GEMMs around it. The statements are those of the fused updates in ``_train``, run on arrays of their shapes."""
    blocks = update_blocks(source)
    rng = np.random.default_rng(0)
    grads = {k: (1e-2 * rng.normal(size=v.shape)).astype(v.dtype) for k, v in params.items()}
    env = {"np": np, "step_size": LR, "eps_hat": 1e-8, "B": {}}
    for k, v in params.items():
        env.update({k: v.copy(), f"d{k}": grads[k], f"m_{k}": np.zeros_like(v), f"v_{k}": np.zeros_like(v)})
    for name, calls in blocks:
        env["B"].update({n: np.empty_like(params[name]) for n in scratch(calls)})
    code = compile("\n".join(call for _, calls in blocks for call in calls), "<the generated Adam update>", "exec")
    tensors = [torch.from_numpy(v.copy()) for v in params.values()]
    for t, g in zip(tensors, grads.values()):
        t.grad = torch.from_numpy(g)
    step = torch.optim.Adam(tensors, LR, foreach=True).step
    ours, theirs = [], []
    for _ in range(rounds):
        for fn, times in ((lambda: exec(code, env), ours), (step, theirs)):  # noqa: S102 - the file's own statements
            t0 = time.perf_counter()
            for _ in range(10):
                fn()
            times.append((time.perf_counter() - t0) / 10)
    return ours, theirs


def main():
    rounds, burst = (8, 5) if ARGS.quick else (20, 6)
    params = gc.init_params(mlp_graph(), seed=0)
    results = {}
    for batch in ARGS.batches:
        x, t = make_data(batch)
        verify(params, x, t, batch)
        impls = peers(params, x, t)
        for impl in impls.values():
            for _ in range(5):
                impl.step()
        results[batch] = timed_rounds(impls, rounds, burst)
        for key, times in results[batch].items():
            ratio = statistics.median(a / b for a, b in zip(times, results[batch]["graphc"]))
            print(f"  batch {batch:5d} {NAMES_SHOWN[key]:34s} {1e3 * statistics.median(times):8.2f} ms  ×{ratio:.2f}",
                  flush=True)
    passes = update_passes(impls["graphc"].program.source)
    alone = update_alone(impls["graphc"].program.source, params, 3 * rounds)
    print(f"  update alone: graphc {1e3 * statistics.median(alone[0]):.2f} ms, PyTorch "
          f"{1e3 * statistics.median(alone[1]):.2f} ms")
    write_report(results, passes, alone, rounds, burst)
    print(f"wrote {RESULTS}/optim.md")


def write_report(results, passes, alone, rounds, burst):
    env = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {ARGS.threads} threads for both; "
           f"Python {platform.python_version()}, NumPy {np.__version__}, torch {torch.__version__}")
    out = ["# Adam training step of the MLP 784-512-512-10 (float32)", "",
           f"`python bench/optim.py{' --quick' if ARGS.quick else ''}` — {env}.", "",
           f"Median per-step time over {rounds} interleaved rounds of {burst} steps after warm-up; ratio = median over "
           "rounds of (PyTorch ÷ graphc in the same round), so < 1 means PyTorch is faster. Both took the same three "
           "steps first: in float64 they agreed on the losses and params to 1e-10, in float32 on the losses to "
           f"1e-5 (lr = {LR}).", "",
           "| implementation | " + " | ".join(f"batch {b}: ms | ratio" for b in results) + " |",
           "|---|" + "---:|---:|" * len(results)]
    pairs = {"graphc": "graphc", "torch": "graphc", "graphc_sgd": "graphc_sgd", "torch_sgd": "graphc_sgd"}
    for key, base in pairs.items():
        cells = []
        for per_round in results.values():
            ratio = statistics.median(a / b for a, b in zip(per_round[key], per_round[base]))
            cells.append(f"{1e3 * statistics.median(per_round[key]):.2f} | {ratio:.2f}")
        out.append(f"| {NAMES_SHOWN[key]} | " + " | ".join(cells) + " |")
    out += ["", "The SGD rows are ratios to graphc's SGD step. What Adam adds to a step (median over rounds of Adam − "
            "SGD in the same round):", ""]
    for batch, r in results.items():
        ours, theirs = (statistics.median(a - b for a, b in zip(r[adam], r[sgd]))
                        for adam, sgd in (("graphc", "graphc_sgd"), ("torch", "torch_sgd")))
        out.append(f"- batch {batch}: graphc {1e3 * ours:.2f} ms, PyTorch {1e3 * theirs:.2f} ms")
    out += ["", "## NumPy passes of the Adam update", "",
            "Each param's update is one `fused_update` node: on NumPy, consecutive in-place chains over the param and "
            "its moments; each call is one pass over the param's elements (the update is memory-bound). The step is "
            "written `p − step_size·m/(√v + eps_hat)` with both bias corrections folded into two host scalars, "
            "which saves a pass over torch's `p − lr/c₁·m/(√v/√c₂ + eps)`; the operand that reads the array being "
            "updated is computed last, into that array, so each chain needs one scratch buffer and the three chains "
            "share it.", "", "| param | NumPy calls (passes) | scratch buffers |", "|---|---:|---:|"]
    out += [f"| {name} | {calls} | {scratch} |" for name, calls, scratch in passes]
    ours, theirs = alone
    ratio = statistics.median(b / a for a, b in zip(ours, theirs))
    out += ["", "## The update alone", "",
            f"The generated file's update statements (all six params), run by themselves on fixed gradients, against "
            f"`torch.optim.Adam(foreach=True).step()` on the same arrays, interleaved over {len(ours)} rounds of 10 "
            "calls: a measure of the update without the GEMMs and the noise around it.", "",
            "| update | median ms | min ms |", "|---|---:|---:|",
            f"| graphc (NumPy, 12 passes per param) | {1e3 * statistics.median(ours):.2f} | {1e3 * min(ours):.2f} |",
            f"| PyTorch foreach | {1e3 * statistics.median(theirs):.2f} | {1e3 * min(theirs):.2f} |",
            "", f"Median over rounds of PyTorch ÷ graphc: {ratio:.2f}."]
    (RESULTS / "optim.md").write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
