"""What the benchmarks share: interleaved timing (each implementation runs a short burst in turn, round after round,
the order reversed every other round, so drifts of the machine's speed hit all of them alike) and the memory a
steady-state call allocates."""
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
