"""Data-parallel training of a generated module on a Dask cluster (``pip install "graphc[dask]"``).

The data are ``dask.array``s chunked along the batch axis and kept on the workers. A training step cuts the rows of
one global batch along the chunks' boundaries into shards; each shard's ``grad_step`` runs on the worker holding
its chunk, with ``m_total`` the number of examples of the whole batch, so the shards' gradients add up to the
batch's gradient exactly, whatever their sizes. The gradients are added along a fixed binary tree (the same
additions in the same order on every run, whichever worker computes them, so a run retried after a lost worker
ends bit for bit where an undisturbed one does); the client applies ``apply_update`` and scatters the new params
to every worker once. The generated file is shipped once (``Client.upload_file``); the workers need NumPy, Dask
and graphc installed, the client the same and tqdm.

``LocalCluster`` on one machine, or the same code on a real cluster with ``Client("tcp://scheduler:8786")``.
"""
from __future__ import annotations

import hashlib
import importlib
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from dask import delayed
from dask.core import flatten
from distributed import futures_of
from tqdm import tqdm

from graphc.core.errors import GraphError
from graphc.core.files import load_module


# -- on the workers ----------------------------------------------------------------------------------------
def _shard(module_name, names, params, x, t, rows, m_total, chunk):
    """One shard's ``(gradients, share of the loss)``: rows ``rows`` of one chunk. FloatingPointError naming the
    chunk where they are not finite, so a bad example never reaches the params."""
    module = importlib.import_module(module_name)
    shard = {names[0]: x[rows], names[1]: t[rows]}
    grads, loss = module.grad_step(params, shard, m_total)
    if not (math.isfinite(loss) and all(np.isfinite(g).all() for g in grads.values())):
        raise FloatingPointError(f"{chunk.describe(rows)} gives a non-finite loss or gradient"
                                 f"{chunk.culprit(shard, rows)}")
    return grads, loss


def _add(a, b):
    """The sum of two shards' (or subtrees') ``(gradients, loss)``."""
    (ga, la), (gb, lb) = a, b
    return {k: ga[k] + gb[k] for k in ga}, la + lb


class _Chunk:
    """Chunk ``index`` of the data: its rows ``start`` to ``stop`` (excluded); where a shard comes from."""

    def __init__(self, index: int, start: int, stop: int):
        self.index, self.start, self.stop = index, start, stop

    def rows_of(self, rows) -> np.ndarray:
        return self.start + np.arange(rows.start, rows.stop) if isinstance(rows, slice) else self.start + rows

    def describe(self, rows) -> str:
        numbers = self.rows_of(rows)
        return f"chunk {self.index} (rows {numbers.min()}..{numbers.max()} of the data)"

    def culprit(self, shard: dict, rows) -> str:
        """``: x holds NaN at row 25`` for the first input with a value that is not finite."""
        for name, value in shard.items():
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                bad = np.flatnonzero(~np.isfinite(value.reshape(len(value), -1)).all(axis=1))[0]
                what = "NaN" if np.isnan(value[bad]).any() else "Inf"
                return f": {name} holds {what} at row {self.rows_of(rows)[bad]}"
        return ""


# -- on the client ---------------------------------------------------------------------------------------
def _local_rows(rows: np.ndarray, start: int, stop: int):
    """The rows of ``rows`` in ``[start, stop)``, counted from ``start``: a slice where they are consecutive."""
    local = rows[(rows >= start) & (rows < stop)] - start
    if len(local) and np.array_equal(local, np.arange(local[0], local[0] + len(local))):
        return slice(int(local[0]), int(local[0]) + len(local))
    return local


def _ship(client, module_path) -> str:
    """Upload the generated file to the workers once, under a name made from its content (two files of one name
    never replace each other); returns the module name the workers import it by."""
    path = Path(module_path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    name = f"{path.stem}_{digest}"
    folder = tempfile.mkdtemp()
    try:
        shutil.copyfile(path, Path(folder) / f"{name}.py")
        client.upload_file(str(Path(folder) / f"{name}.py"))  # workers started later get it too
    finally:
        shutil.rmtree(folder)
    return name


def _chunk_futures(client, array) -> list:
    """``array`` (chunked along axis 0 only) persisted on the workers: one future per chunk, in order."""
    array = client.persist(array)
    by_key = {f.key: f for f in futures_of(array)}
    return [by_key[k] for k in flatten(array.__dask_keys__())]


class Sharded:
    """A generated module and its training data on a Dask cluster: the gradients of one global batch at a time.

    ``X`` and ``t`` feed the module's two inputs, in the order of its INPUTS; they are rechunked along axis 0 alike
    (only there) and persisted on the workers.
    """

    def __init__(self, client, module_path, X, t):
        self.client, self.module = client, load_module(module_path)
        if not hasattr(self.module, "grad_step"):
            reason = getattr(self.module, "NO_GRAD_STEP", "it was generated without one")
            raise GraphError(f"{module_path} has no grad_step: {reason}")
        self.names = tuple(self.module.INPUTS)
        if len(self.names) != 2:
            raise GraphError(f"{module_path}: fit feeds X and t to a module of two inputs, not {self.names}")
        if X.shape[0] != t.shape[0]:
            raise ValueError(f"X has {X.shape[0]} rows and t {t.shape[0]}: one row of each per example")
        for name, array in zip(self.names, (X, t)):
            dtype = self.module.INPUTS[name][1]
            if array.dtype != np.dtype(dtype):
                raise ValueError(f"{name} of {module_path} is {dtype}, the data {array.dtype}")
        X = X.rechunk({i: -1 for i in range(1, X.ndim)})
        t = t.rechunk({0: X.chunks[0], **{i: -1 for i in range(1, t.ndim)}})
        self.x, self.t = _chunk_futures(client, X), _chunk_futures(client, t)
        bounds = np.cumsum([0, *X.chunks[0]])
        self.chunks = [_Chunk(k, int(a), int(b)) for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]
        self.rows = int(X.shape[0])
        self.module_name = _ship(client, module_path)

    def gradients(self, params: dict, rows) -> tuple[dict, float]:
        """The gradients and loss of the global batch of ``rows`` (row numbers of the data), summed over its shards;
        FloatingPointError naming the chunk where a shard's are not finite."""
        rows = np.asarray(rows)
        # once per step, a copy to every worker (the step survives the loss of any one); a fresh key each time
        # (a hashed one, the same for equal params, may be released by the last step as this one takes it)
        [shared] = self.client.scatter([params], broadcast=True, hash=False)
        parts = []
        for chunk, x, t in zip(self.chunks, self.x, self.t):
            local = _local_rows(rows, chunk.start, chunk.stop)
            if isinstance(local, slice) or len(local):
                parts.append(delayed(_shard, pure=True)(self.module_name, self.names, shared, x, t, local, len(rows),
                                                        chunk))
        while len(parts) > 1:  # a fixed tree: pairs in order, the odd one carried up
            parts = [delayed(_add, pure=True)(*parts[i:i + 2]) if i + 1 < len(parts) else parts[i]
                     for i in range(0, len(parts), 2)]
        return self.client.compute(parts[0]).result()  # the step's tasks go to the scheduler in one message


def gradients(module_path, X, t, params: dict, *, client) -> tuple[dict, float]:
    """The gradients and loss of the whole of ``X``, ``t`` as one batch, computed chunk by chunk on the cluster."""
    return Sharded(client, module_path, X, t).gradients(params, np.arange(X.shape[0]))


def fit(module_path, X, t, *, client, batch_size: int, epochs: int, lr=None, params=None, state=None, seed=0,
        shuffle=False, checkpoint=None, checkpoint_every=None, progress=True) -> tuple[dict, dict]:
    """Train the params of the generated file ``module_path`` on ``X``, ``t`` (``dask.array``s, one row per example,
    chunked along axis 0) with the cluster of ``client``; returns ``(params, state)``.

    Each epoch takes the rows in order (``shuffle``: in the order of ``np.random.default_rng(seed).permutation``,
    a new one each epoch) in global batches of ``batch_size``, the last one smaller where the rows do not divide:
    the steps ``train_step`` would take on the same batches. ``lr`` overrides the file's learning rate (or
    schedule); ``params`` default to the file's ``init_params(seed)``, ``state`` to its ``init_state(params)``;
    both are updated in place. ``checkpoint``: a path the file's ``save`` writes every ``checkpoint_every`` steps
    (default: at the end of each epoch) and at the end; a step whose loss or gradients are not finite stops the
    run with a FloatingPointError naming the chunk, before it changes the params, leaving the last checkpoint.
    """
    if not (isinstance(batch_size, int) and batch_size > 0 and isinstance(epochs, int) and epochs >= 0):
        raise ValueError(f"batch_size must be a positive int and epochs an int >= 0, not {batch_size!r}, {epochs!r}")
    data = Sharded(client, module_path, X, t)
    module = data.module
    params = module.init_params(seed) if params is None else params
    state = module.init_state(params) if state is None else state
    hypers = {} if lr is None else {"lr": lr}
    steps = math.ceil(data.rows / batch_size)
    rng = np.random.default_rng(seed)
    done, saved = 0, None
    with tqdm(total=epochs * steps, unit="step", disable=not progress, desc="training") as bar:
        for epoch in range(epochs):
            order = rng.permutation(data.rows) if shuffle else np.arange(data.rows)
            for start in range(0, data.rows, batch_size):
                rows = order[start:start + batch_size]
                began = time.perf_counter()
                try:
                    grads, loss = data.gradients(params, rows)
                except FloatingPointError as exc:
                    kept = f"; {checkpoint} holds the last checkpoint (after step {saved})" if saved else ""
                    raise FloatingPointError(f"step {done + 1} (epoch {epoch + 1}): {exc}; stopped before its "
                                             f"update, the params are those after step {done}{kept}") from None
                module.apply_update(params, state, grads, **hypers)
                done += 1
                bar.set_postfix(loss=f"{loss:.4g}", examples_per_s=f"{len(rows) / (time.perf_counter() - began):.0f}")
                bar.update()
                due = done % checkpoint_every == 0 if checkpoint_every else start + batch_size >= data.rows
                if checkpoint and (due or done == epochs * steps):
                    module.save(checkpoint, params, state)
                    saved = done
    return params, state
