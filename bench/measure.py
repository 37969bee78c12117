"""What the benchmarks share: interleaved timing (each implementation runs a short burst in turn, round after round,
the order reversed every other round, so drifts of the machine's speed hit all of them alike) and the memory a
steady-state call allocates."""
import ast
import time
import tracemalloc

import numpy as np


def interleaved(runs: dict, rounds: int, burst: int = 10, warmup: int = 3) -> dict:
    """name -> the median seconds of one call in each round."""
    for _ in range(warmup):
        for f in runs.values():
            f()
    times = {name: [] for name in runs}
    for r in range(rounds):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            per = []
            for _ in range(burst):
                start = time.perf_counter()
                runs[name]()
                per.append(time.perf_counter() - start)
            times[name].append(float(np.median(per)))
    return times


def allocated(f) -> int:
    """The most bytes allocated during one steady-state call of ``f`` (tracemalloc; NumPy reports its arrays)."""
    f()
    tracemalloc.start()
    f()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def profile_statements(program, params, batch, steps):
    """Seconds per call spent in each statement of the generated _train function (timers between statements)."""
    tree = ast.parse(program.source)
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_train")
    lines = program.source.splitlines()
    body, labels = [], []
    for i, stmt in enumerate(fn.body):
        labels.append(lines[stmt.lineno - 1].strip())
        body.append(stmt)
        if not isinstance(stmt, ast.Return):
            body += ast.parse(f"_T[{i}] += _pc() - _t0\n_t0 = _pc()").body
    fn.body = ast.parse("_t0 = _pc()").body + body
    namespace = {"_pc": time.perf_counter, "_T": [0.0] * len(labels)}
    exec(compile(ast.fix_missing_locations(tree), "<graphc profiled>", "exec"), namespace)  # noqa: S102
    p = {k: v.copy() for k, v in params.items()}
    for _ in range(3):
        namespace["train_step"](p, batch)
    namespace["_T"][:] = [0.0] * len(labels)
    for _ in range(steps):
        namespace["train_step"](p, batch)
    return [(t / steps, label) for t, label in zip(namespace["_T"], labels)]
