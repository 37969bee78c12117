"""``graphc train MODEL.py --data DATA.npz``: build the model's module and train it on a Dask cluster
(``--scheduler ADDRESS``, else a LocalCluster on this machine), checkpointing with the module's ``save``."""
from __future__ import annotations

import math
import zipfile
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from graphc.core.errors import GraphError
from graphc.core.files import load_module


def add_arguments(p) -> None:
    p.add_argument("--data", required=True, metavar="DATA.npz",
                   help="the training data: an array per input of the graph, by its name, one row per example")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="the Dask scheduler, e.g. tcp://host:8786 (default: a LocalCluster on this machine)")
    p.add_argument("--workers", type=int, default=2, help="without --scheduler: the LocalCluster's worker processes")
    p.add_argument("--chunks", type=int, help="pieces the data is cut into along the rows (default: one per worker "
                   "with --shuffle, else pieces of batch-size/workers rows, so that every batch has one on each)")
    p.add_argument("--batch-size", type=int, default=64, help="examples per step, over all workers (default: 64)")
    p.add_argument("--epochs", type=int, default=1, help="passes over the data (default: 1)")
    p.add_argument("--shuffle", action="store_true", help="a new order of the rows each epoch")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial params and of --shuffle")
    p.add_argument("--checkpoint", metavar="PATH", help="where save() writes params and state "
                   "(default: DIR/<graph>_checkpoint.npz)")
    p.add_argument("--checkpoint-every", type=int, metavar="STEPS", help="checkpoint interval (default: each epoch)")
    p.add_argument("--resume", action="store_true", help="start from the params and state of --checkpoint")


def dask_arrays(args, names, workers: int) -> list:
    """The arrays of ``--data`` named ``names``, as dask arrays cut into pieces along the rows (``--chunks``)."""
    import dask.array as da

    try:
        data = np.load(args.data, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise GraphError(f"--data {args.data}: not an .npz of arrays written by np.savez ({exc})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise GraphError(f"--data {args.data}: one array, not an .npz of arrays by input name (np.savez)")
    with data:
        missing = [n for n in names if n not in data.files]
        if missing:
            raise GraphError(f"--data {args.data}: no array named {', '.join(missing)} (it has "
                             f"{', '.join(data.files)})")
        arrays = [data[n] for n in names]
    if args.chunks:
        rows = math.ceil(len(arrays[0]) / args.chunks)
    else:  # shuffled batches draw from every piece; batches in order need a piece on each worker
        rows = math.ceil((len(arrays[0]) if args.shuffle else args.batch_size) / workers)
    return [da.from_array(a, chunks=(max(rows, 1), *a.shape[1:])) for a in arrays]


def check_arguments(args, checkpoint: Path) -> None:
    """The flags' mistakes, said before a cluster starts."""
    for flag, value in (("--batch-size", args.batch_size), ("--workers", args.workers), ("--epochs", args.epochs),
                        ("--chunks", args.chunks or 1), ("--checkpoint-every", args.checkpoint_every or 1)):
        if value < 1:
            raise GraphError(f"{flag} {value}: must be at least 1")
    if not Path(args.data).is_file():
        raise GraphError(f"--data {args.data}: no such file")
    if args.resume and not checkpoint.is_file():
        raise GraphError(f"--resume: no checkpoint at {checkpoint} yet (train once without --resume)")


def train(args, module_path: Path, name: str) -> int:
    """Train the module of graph ``name`` at ``module_path`` with the flags of ``graphc train``; say what it did.
    A mistake in the data (a dtype, a shape, a label out of range, NaN, a file that is not an .npz) is said in one
    line, whichever worker met it."""
    checkpoint = Path(args.checkpoint or module_path.with_name(f"{name}_checkpoint.npz"))
    check_arguments(args, checkpoint)
    try:
        return _train(args, module_path, checkpoint)
    except GraphError:
        raise
    except (ValueError, TypeError, OSError, FloatingPointError, zipfile.BadZipFile) as exc:
        raise GraphError(f"{type(exc).__name__}: {exc}") from None


def _train(args, module_path: Path, checkpoint: Path) -> int:
    try:
        from distributed import Client, LocalCluster

        from graphc.dask import fit
    except ImportError as exc:
        raise GraphError(f"graphc train needs Dask: pip install 'graphc[dask]' ({exc})") from None
    module = load_module(module_path)
    params, state = module.load(checkpoint) if args.resume else (None, None)
    local = None if args.scheduler else LocalCluster(n_workers=args.workers, threads_per_worker=1,
                                                     dashboard_address=None)
    with local or nullcontext(), Client(args.scheduler or local) as client:
        workers = len(client.scheduler_info()["workers"])
        X, t = dask_arrays(args, tuple(module.INPUTS), workers)
        fit(module_path, X, t, client=client, batch_size=args.batch_size, epochs=args.epochs, params=params,
            state=state, seed=args.seed, shuffle=args.shuffle, checkpoint=checkpoint,
            checkpoint_every=args.checkpoint_every)
    print(f"trained {module_path.name} on {workers} workers: {args.epochs} epochs of {X.shape[0]} examples in "
          f"batches of {args.batch_size}; wrote {checkpoint} (params, state = load(path) of the module)")
    return 0
