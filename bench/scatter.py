"""Ways to add rows of a gradient into a table at their ids with NumPy (take's VJP): which the generated code uses.

    python bench/scatter.py [--rounds R]

g (2048, 64) float32 rows (a batch of 64×32 token embeddings), ids uniform in 0 … V − 1, V = 1k, 10k, 50k. Each way
leaves the sums in the (V, 64) table, zeroing it first where it adds (the zeroing is timed too), and is checked
against float64 np.add.at first. Times are
medians of interleaved rounds; allocations are tracemalloc's peak during one steady-state call (arrays it keeps
between calls, such as an index buffer, allocated beforehand as generated code plans them).
"""
import argparse
from pathlib import Path

import numpy as np
from measure import allocated, interleaved

_parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
_parser.add_argument("--rounds", type=int, default=9)
ARGS = _parser.parse_args()
ROWS, WIDTH = 64 * 32, 64


def ways(table, ids, g):
    """name -> a function adding g's rows into ``table`` at ``ids``."""
    flat_ids, position, sorted_rows = np.empty(ROWS, np.int64), np.empty((ROWS, WIDTH), np.int64), np.empty_like(g)
    row, element = np.arange(ROWS), np.arange(ROWS * WIDTH).reshape(ROWS, WIDTH)  # helpers planned with the buffers

    def add_at_rows():
        table.fill(0)
        np.add.at(table, ids, g)

    def add_at_flat():  # the generated code's: flat positions id·W + j, built without a broadcasting ufunc call
        table.fill(0)
        np.subtract(ids, row, out=flat_ids)
        np.multiply(flat_ids, WIDTH, out=flat_ids)
        np.copyto(position, flat_ids.reshape(ROWS, 1))
        np.add(position, element, out=position)
        np.add.at(table.reshape(-1), position.reshape(-1), g.reshape(-1))

    def bincount_columns():
        for j in range(WIDTH):
            table[:, j] = np.bincount(ids, weights=g[:, j], minlength=len(table))

    def bincount_flat():
        positions = (ids[:, None] * WIDTH + np.arange(WIDTH)).reshape(-1)
        table.reshape(-1)[:] = np.bincount(positions, weights=g.reshape(-1), minlength=table.size)

    def sort_reduceat():
        table.fill(0)
        order = np.argsort(ids, kind="stable")
        ordered = ids[order]
        np.take(g, order, axis=0, out=sorted_rows)
        starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
        table[ordered[starts]] = np.add.reduceat(sorted_rows, starts, axis=0)

    return {"np.add.at, rows": add_at_rows, "np.add.at, flat positions": add_at_flat,
            "np.bincount per column": bincount_columns, "np.bincount, flat positions": bincount_flat,
            "argsort + np.add.reduceat": sort_reduceat}


def main():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(ROWS, WIDTH)).astype(np.float32)
    lines = ["# Scatter-add of embedding gradients with NumPy", "", __doc__.split("\n\n")[2].replace("\n", " "), "",
             f"`python bench/scatter.py` — NumPy {np.__version__}.", "",
             "| V | way | ms | allocated per call |", "|---:|---|---:|---:|"]
    for vocab in (1_000, 10_000, 50_000):
        ids = rng.integers(0, vocab, ROWS)
        expected = np.zeros((vocab, WIDTH))
        np.add.at(expected, ids, g.astype(np.float64))
        table = np.empty((vocab, WIDTH), np.float32)
        runs = ways(table, ids, g)
        for name, f in runs.items():
            f()
            assert np.allclose(table, expected, atol=1e-4), name
        times = interleaved(runs, ARGS.rounds, burst=5)
        for name, f in runs.items():
            ms, kib = np.median(times[name]) * 1e3, allocated(f) / 1024
            lines.append(f"| {vocab:,} | {name} | {ms:.2f} | {kib:,.0f} KiB |")
            print(lines[-1], flush=True)
    out = Path(__file__).resolve().parent / "results" / "scatter.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
