"""Data-parallel training on Dask: examples/s of one process against a LocalCluster, and the bytes a step moves.

    python bench/dask_scaling.py [--workers 2] [--batch 4096] [--steps 15] [--out bench/results/dask.md]

For the README MLP (examples/mlp_model.py) and the CNN (examples/cnn_digits.py), float32, SGD, a global batch of
4096 random examples: the generated train_step in this process (1 BLAS thread, then 2), and graphc.dask's step on a
LocalCluster of ``--workers`` processes of 1 thread each (the rows in chunks of batch/workers, so each batch has a
shard on every worker; the step as fit takes it: scatter the params, grad_step per shard, tree sum, apply_update
on the client). Medians over ``--steps`` steps after 2 of warm-up, the two kinds of step interleaved. Bytes per
step: the params scattered to every worker, the gradients summed up the tree and brought to the client, as a model
and as counted by the workers (bytes they served to peers and to the client).
"""
import argparse
import math
import os
import platform
import runpy
import statistics
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before NumPy loads: one BLAS thread unless threadpool_limits says otherwise

import dask  # noqa: E402
import dask.array as da  # noqa: E402
import distributed  # noqa: E402
import numpy as np  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import graphc as gc  # noqa: E402
from graphc.dask import Sharded  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"README MLP (examples/mlp_model.py)": ("mlp_model.py", (64,)),
          "CNN (examples/cnn_digits.py)": ("cnn_digits.py", (1, 8, 8))}


def served(client) -> int:
    """Bytes the workers have sent so far, to peers and to the client."""
    return sum(client.run(lambda dask_worker: dask_worker.transfer_outgoing_bytes_total).values())


def worker_cpu(client) -> list[float]:
    """CPU seconds each worker process has used so far."""
    import psutil  # a dependency of distributed

    return list(client.run(lambda: sum(psutil.Process().cpu_times()[:2])).values())


def median_ms(times) -> float:
    return 1e3 * statistics.median(times)


def measure(client, path, shape, args) -> dict:
    module = gc.load_module(path)
    rng = np.random.default_rng(0)
    rows = args.batch * 2
    X = rng.random((rows, *shape), dtype=np.float32)
    t = rng.integers(0, 10, rows)
    chunk = args.batch // args.workers
    data = Sharded(client, path, da.from_array(X, chunks=(chunk, *shape)), da.from_array(t, chunks=chunk))
    local, cluster = module.init_params(0), module.init_params(0)
    state, cluster_state = module.init_state(local), module.init_state(cluster)
    times = {"one thread": [], "two threads": [], "cluster": []}
    cpu = {"one thread": 0.0, "client": 0.0}
    for step in range(args.steps + 2):
        if step == 2:  # after the warm-up: count from here
            before, workers_before, cpu = served(client), worker_cpu(client), dict.fromkeys(cpu, 0.0)
        batch = np.arange(args.batch) + (step % 2) * args.batch
        for label, threads in (("one thread", 1), ("two threads", 2)):
            with threadpool_limits(threads):
                began, began_cpu = time.perf_counter(), time.process_time()
                module.train_step(local, {"x": X[batch], "t": t[batch]}, state)
                times[label].append(time.perf_counter() - began)
                if label == "one thread":
                    cpu[label] += time.process_time() - began_cpu
        began, began_cpu = time.perf_counter(), time.process_time()
        grads, _ = data.gradients(cluster, batch)
        module.apply_update(cluster, cluster_state, grads)
        times["cluster"].append(time.perf_counter() - began)
        cpu["client"] += time.process_time() - began_cpu
    counted = (served(client) - before) / args.steps
    workers = [(b - a) / args.steps for a, b in zip(workers_before, worker_cpu(client))]
    began = time.perf_counter()
    for _ in range(5):
        data.gradients(cluster, [0, chunk])  # one example per worker: the step's fixed cost
    overhead = (time.perf_counter() - began) / 5
    params = sum(v.nbytes for v in cluster.values())
    return {"ms": {k: median_ms(v[2:]) for k, v in times.items()}, "params": params, "counted": counted,
            "overhead_ms": 1e3 * overhead, "broadcast": args.workers * params, "reduced": args.workers * params,
            "cpu_ms": {"one thread": 1e3 * cpu["one thread"] / args.steps, "workers": [1e3 * w for w in workers],
                       "client": 1e3 * cpu["client"] / args.steps}}


BANDWIDTH = 1.25e9  # bytes/s: 10 Gbit/s Ethernet, for the estimate
TASK_COST = 1e-3  # s: the scheduler's cost per task, the order of magnitude Dask documents


def estimate(r, workers: int) -> tuple[float, float, float]:
    """(compute, communication, scheduling) of one step on ``workers`` workers, s: the one-thread step's CPU time
    split evenly; the scatter leaving the client once per worker, then the tree's log2(W) levels and the sum to the
    client, one param-sized message each; 2W tasks (W shards, W − 1 additions, the scatter)."""
    compute = r["cpu_ms"]["one thread"] / 1e3 / workers
    messages = workers + math.ceil(math.log2(workers)) + 1
    return compute, messages * r["params"] / BANDWIDTH, 2 * workers * TASK_COST


def report(results, args) -> str:
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    lines = [f"# Data-parallel training on Dask (global batch {args.batch}, float32, SGD)", "",
             f"`python bench/dask_scaling.py` — {platform.machine()}, {os.cpu_count()} cores (load average {load} "
             f"at the end of the run), Python {platform.python_version()}, NumPy {np.__version__}, Dask "
             f"{dask.__version__}, distributed {distributed.__version__}.", "",
             f"LocalCluster of {args.workers} worker processes × 1 thread on loopback, the client (scheduler, "
             f"apply_update) in a third process. Medians of {args.steps} steps after 2 of warm-up, one-process and "
             "cluster steps interleaved; examples/s in parentheses.", "",
             "| model | params | one process, 1 thread: ms | one process, 2 threads: ms | "
             f"cluster {args.workers}×1: ms | cluster ÷ 1 thread | fixed cost of a cluster step: ms |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        ms = r["ms"]
        cells = [f"{ms[k]:.1f} ({args.batch / ms[k] * 1e3:,.0f})" for k in ("one thread", "two threads", "cluster")]
        lines.append(f"| {name} | {r['params'] / 1e3:.1f} kB | {' | '.join(cells)} | "
                     f"{ms['one thread'] / ms['cluster']:.2f}× | {r['overhead_ms']:.1f} |")
    lines += ["", "CPU time per step (what each process computed, whatever else ran on the machine): the one-thread "
              "step in one process; each worker (its shards and additions, (de)serializing, the transfers); the "
              "client (the scheduler's thread, the scatter, apply_update). On idle cores, one per process, a step "
              "would take about the busiest worker's plus the client's, as the two alternate.", "",
              "| model | one process: ms | each worker: ms | client: ms | projected cluster step on idle cores: ms "
              "(ex/s) |", "|---|---:|---:|---:|---:|"]
    for name, r in results.items():
        c = r["cpu_ms"]
        projected = max(c["workers"]) + c["client"]
        lines.append(f"| {name} | {c['one thread']:.1f} | {' / '.join(f'{w:.1f}' for w in c['workers'])} | "
                     f"{c['client']:.1f} | {projected:.1f} ({args.batch / projected * 1e3:,.0f}) |")
    lines += ["", "Bytes per step: the params to every worker (one scatter), the gradients up the tree and their sum "
              "to the client (one param-sized message per shard at most); counted: what the workers served, to "
              "peers (the scatter's replication, the tree) and to the client.", "",
              "| model | params broadcast | gradients reduced | counted by the workers |", "|---|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['broadcast'] / 1e3:.0f} kB | ≤ {r['reduced'] / 1e3:.0f} kB | "
                     f"{r['counted'] / 1e3:.0f} kB |")
    lines += ["", "What this machine can and cannot show: its 2 cores hold the client (with the scheduler), both "
              "workers and whatever else runs (the load average above), so a cluster of 2 can at best halve the "
              "compute of a step, and only where a step's compute is much larger than its fixed cost: the "
              "scatter, the scheduling of the tasks, the tree and the gather, a few hundred microseconds of "
              "Dask's work each, paid in processes that wait for a core. The CPU times say what each process "
              "did, whatever else ran; the wall times include the waiting. Scaling past 2 workers, and the "
              "network, are not measured here: see the estimate below.", "",
              "On paper, for more workers: the one-thread step's CPU time split evenly (compute), the scatter "
              "leaving the client once per worker plus log2(W) tree levels and the sum, one param-sized message "
              f"each, at {BANDWIDTH * 8 / 1e9:.0f} Gbit/s (communication), and {TASK_COST * 1e3:.0f} ms per task "
              "for 2W tasks (scheduling).", "",
              "| model | workers | compute: ms | communication: ms | scheduling: ms | communication ÷ compute |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        for workers in (8, 64):
            compute, comm, sched = estimate(r, workers)
            lines.append(f"| {name} | {workers} | {compute * 1e3:.1f} | {comm * 1e3:.2f} | {sched * 1e3:.0f} | "
                         f"{comm / compute:.2f} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--out", help="also write the table to this Markdown file")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    results = {}
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        for name, (example, shape) in MODELS.items():
            g = runpy.run_path(str(ROOT / "examples" / example), run_name="bench")["g"]
            path = gc.compile(g, loss="loss", optimizer=gc.SGD(lr=0.01)).emit(folder / f"{g.name}_numpy.py")
            results[name] = measure(client, path, shape, args)
            print(name, results[name], file=sys.stderr)
    text = report(results, args)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":  # the cluster's worker processes import this file
    main()
