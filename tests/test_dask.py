"""Data-parallel training on a Dask cluster (graphc.dask, graphc train): one LocalCluster of 2 worker processes on
loopback for the whole module, float64, the data in 4 chunks of unequal sizes.

The expected values come from one process: the reference interpreter on the whole batch, or train_step on the
same batches.
"""
import signal

import numpy as np
import pytest

import graphc as gc
from graphc.cli import main

from models import mlp

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
gd = pytest.importorskip("graphc.dask")

CHUNKS = (7, 13, 1, 43)  # 64 rows


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        yield client


@pytest.fixture(scope="module")
def data():
    g, feeds = mlp(batch=64)
    return g, feeds["x"], feeds["t"]


def emit(g, optimizer, path):
    return gc.compile(g, loss="loss", optimizer=optimizer).emit(path)


def on_cluster(X, T):
    return da.from_array(X, chunks=(CHUNKS, X.shape[1])), da.from_array(T, chunks=(CHUNKS,))


def one_process(module, X, T, batch_size, epochs, shuffle=False, seed=0):
    """train_step on the batches fit takes."""
    params = module.init_params(seed)
    state = module.init_state(params)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(X)) if shuffle else np.arange(len(X))
        for start in range(0, len(X), batch_size):
            rows = order[start:start + batch_size]
            module.train_step(params, {"x": X[rows], "t": T[rows]}, state)
    return params, state


def test_the_summed_gradient_is_the_full_batch_gradient(client, data, tmp_path):
    g, X, T = data
    path = emit(g, gc.SGD(lr=0.1), tmp_path / "mlp_numpy.py")
    params = gc.load_module(path).init_params(seed=3)
    data = gd.Sharded(client, path, *on_cluster(X, T))
    holders = {w for ws in client.who_has(data.x).values() for w in ws}
    assert len(holders) == 2  # the chunks are spread over both workers, so are the shards
    grads, loss = data.gradients(params, np.arange(64))
    want = g.evaluate({"x": X, "t": T, **params})
    assert abs(loss - float(want["loss"])) <= 1e-12
    for p in params:
        np.testing.assert_allclose(grads[p], want[f"d{p}"], rtol=1e-12, atol=1e-12, err_msg=p)
    again, _ = gd.gradients(path, *on_cluster(X, T), params, client=client)
    for p in params:
        np.testing.assert_array_equal(again[p], grads[p])  # the same additions in the same order


@pytest.mark.parametrize("optimizer, shuffle", [(gc.SGD(lr=0.2, momentum=0.9), False), (gc.Adam(lr=0.01), True)],
                         ids=["sgd", "adam-shuffled"])
def test_twenty_steps_on_the_cluster_are_twenty_train_steps(client, data, tmp_path, optimizer, shuffle):
    g, X, T = data
    path = emit(g, optimizer, tmp_path / "mlp_numpy.py")
    params, state = gd.fit(path, *on_cluster(X, T), client=client, batch_size=16, epochs=5, shuffle=shuffle,
                           progress=False)  # batches across chunk boundaries, 4 steps an epoch
    want, want_state = one_process(gc.load_module(path), X, T, 16, 5, shuffle)
    for k in want:
        np.testing.assert_allclose(params[k], want[k], rtol=1e-10, atol=1e-12, err_msg=k)
    for k in want_state:
        np.testing.assert_allclose(state[k], want_state[k], rtol=1e-10, atol=1e-12, err_msg=k)


DIE_ONCE = '''

_grad_step = grad_step


def grad_step(params, shard, m_total):
    """The process dies in its {n}th shard, the first process of the cluster to get there."""
    global _calls
    _calls = globals().get("_calls", 0) + 1
    if _calls == {n}:
        try:
            os.close(os.open({marker!r}, os.O_CREAT | os.O_EXCL))  # one process only
        except FileExistsError:
            pass
        else:
            os.kill(os.getpid(), {signal})
    return _grad_step(params, shard, m_total)
'''


def test_a_worker_killed_during_a_step_leaves_the_result_unchanged(client, data, tmp_path):
    g, X, T = data
    path = emit(g, gc.Adam(lr=0.01), tmp_path / "mlp_numpy.py")
    undisturbed, _ = gd.fit(path, *on_cluster(X, T), client=client, batch_size=16, epochs=3, progress=False)
    marker = tmp_path / "killed"
    doomed = tmp_path / "doomed_numpy.py"
    doomed.write_text(path.read_text() + DIE_ONCE.format(n=6, marker=str(marker), signal=int(signal.SIGKILL)))
    params, _ = gd.fit(doomed, *on_cluster(X, T), client=client, batch_size=16, epochs=3, progress=False)
    assert marker.exists()  # a worker died mid-step; Dask ran its shard again elsewhere
    for k in params:
        np.testing.assert_array_equal(params[k], undisturbed[k])
    client.wait_for_workers(2, timeout=60)


def test_nan_inputs_stop_the_run_naming_the_chunk_and_keep_the_last_checkpoint(client, data, tmp_path):
    g, X, T = data
    path = emit(g, gc.SGD(lr=0.1, momentum=0.9), tmp_path / "mlp_numpy.py")
    bad = X.copy()
    bad[40, 3] = np.nan  # chunk 3 holds rows 21..63; the third batch of 16 reaches row 40
    checkpoint = tmp_path / "ckpt.npz"
    module = gc.load_module(path)
    params = module.init_params(0)
    with pytest.raises(FloatingPointError) as caught:
        gd.fit(path, *on_cluster(bad, T), client=client, batch_size=16, epochs=2, params=params,
               checkpoint=checkpoint, checkpoint_every=1, progress=False)
    message = str(caught.value)
    assert "step 3 (epoch 1): chunk 3 (rows 32..47 of the data)" in message and "x holds NaN at row 40" in message
    assert "after step 2" in message and str(checkpoint) in message
    want, want_state = one_process(module, X[:32], T[:32], 16, 1)  # the two good steps
    saved, saved_state = module.load(checkpoint)
    for k in want:
        np.testing.assert_allclose(saved[k], want[k], rtol=1e-10, atol=1e-12, err_msg=k)
        np.testing.assert_array_equal(params[k], saved[k])  # the bad step changed nothing
    for k in want_state:
        np.testing.assert_allclose(saved_state[k], want_state[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_a_refused_module_says_why_before_touching_the_cluster(client, data, tmp_path):
    _, X, T = data
    m = gc.dim("m")
    with gc.Graph("coupled") as g:
        x = gc.input("x", (m, 12), dtype="float64")
        t = gc.input("t", (m,), dtype="int64")
        W = gc.param("W", (12, 5), dtype="float64")
        g.output(loss=gc.mean(gc.softmax_cross_entropy(gc.softmax(x @ W, axis=0), t)))
    path = emit(g, gc.SGD(lr=0.1), tmp_path / "coupled_numpy.py")
    with pytest.raises(gc.GraphError, match="has no grad_step: .*normalizes along the batch axis"):
        gd.fit(path, *on_cluster(X, T), client=client, batch_size=16, epochs=1, progress=False)


MODEL = '''
import graphc as gc
m = gc.dim("m")
with gc.Graph("tiny") as g:
    x = gc.input("x", (m, 12), dtype="float64")
    t = gc.input("t", (m,), dtype="int64")
    W = gc.param("W", (12, 5), dtype="float64", init="glorot_uniform")
    b = gc.param("b", (5,), dtype="float64")
    g.output(loss=gc.mean(gc.softmax_cross_entropy(x @ W + b, t)))
'''


def test_graphc_train_on_a_scheduler(client, data, tmp_path, capsys):
    _, X, T = data
    (tmp_path / "tiny.py").write_text(MODEL)
    np.savez(tmp_path / "data.npz", x=X, t=T)
    args = ["train", str(tmp_path / "tiny.py"), "--data", str(tmp_path / "data.npz"), "--scheduler",
            client.scheduler.address, "-o", str(tmp_path), "--batch-size", "16", "--epochs", "2", "--chunks", "3",
            "--optimizer", "adam", "--lr", "0.05"]
    assert main(args) == 0
    checkpoint = tmp_path / "tiny_checkpoint.npz"
    assert f"wrote {checkpoint}" in capsys.readouterr().out
    module = gc.load_module(tmp_path / "tiny_numpy.py")
    want, _ = one_process(module, X, T, 16, 2)
    got, state = module.load(checkpoint)
    assert int(state["step"]) == 8
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-12, err_msg=k)
    assert main([*args, "--resume", "--epochs", "1"]) == 0  # one more epoch, from the checkpoint
    assert int(module.load(checkpoint)[1]["step"]) == 12


@pytest.mark.parametrize("mistake", ["float32 data", "labels out of range", "no such file", "not an npz",
                                     "zero workers", "resume without a checkpoint"])
def test_graphc_train_says_a_data_mistake_in_one_line(client, data, tmp_path, capsys, mistake):
    """Mistakes in the data or the flags end ``graphc train`` with one line and status 2, whichever worker met them
    (they printed a traceback through the cluster's code)."""
    _, X, T = data
    (tmp_path / "tiny.py").write_text(MODEL)
    path = tmp_path / "data.npz"
    arrays = {"x": X.astype(np.float32) if mistake == "float32 data" else X,
              "t": T + 10 if mistake == "labels out of range" else T}
    np.savez(path, **arrays)
    if mistake == "not an npz":
        path.write_bytes(b"not a zip file")
    flags = {"zero workers": ["--workers", "0"], "resume without a checkpoint": ["--resume"]}.get(mistake, [])
    data_path = tmp_path / "missing.npz" if mistake == "no such file" else path
    args = ["train", str(tmp_path / "tiny.py"), "--data", str(data_path), "-o", str(tmp_path), "--batch-size", "16",
            *(flags or ["--scheduler", client.scheduler.address])]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()  # after the progress bar, if training started
    assert err.splitlines()[-1].startswith("graphc train: ") and "Traceback" not in err, err
