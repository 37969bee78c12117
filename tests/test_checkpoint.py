"""Checkpoints of generated modules: ``save(path, params, state)`` writes a NumPy .npz atomically, ``load(path)``
reads it back (no pickles, every array checked), and training resumed from it continues bit for bit."""
import numpy as np
import pytest

import graphc as gc

from helpers import cupy_or_skip

m = gc.dim("m")


def model():
    with gc.Graph("net") as g:
        x, t = gc.input("x", (m, 5)), gc.input("t", (m,), dtype="int64")
        W1, b1 = gc.param("W1", (5, 8), init="he_normal"), gc.param("b1", (8,))
        W2 = gc.param("W2", (8, 3), init="glorot_uniform")
        centre = gc.state("centre", (5,))  # the graph's own state beside the optimizer's
        gc.assign(centre, 0.5 * centre + 0.5 * gc.mean(x, axis=0))
        h = gc.relu((x - centre) @ W1 + b1)
        g.output(loss=gc.mean(gc.softmax_cross_entropy(h @ W2, t)))
    return g


OPTIMIZER = gc.Adam(0.01, amsgrad=True, schedule=gc.schedules.linear_warmup(3, then=gc.schedules.cosine(10)))


def batches(count):
    rng = np.random.default_rng(0)
    return [{"x": rng.normal(size=(6, 5)).astype(np.float32), "t": rng.integers(0, 3, 6)} for _ in range(count)]


@pytest.fixture(scope="module")
def module(tmp_path_factory):
    path = tmp_path_factory.mktemp("built") / "net_numpy.py"
    return gc.load_module(gc.compile(model(), loss="loss", optimizer=OPTIMIZER).emit(path))


def test_resuming_from_a_checkpoint_continues_bit_for_bit(module, tmp_path):
    data = batches(8)
    params = module.init_params(seed=2)
    state = module.init_state(params)
    straight = [module.train_step(params, b, state)["loss"].item() for b in data]

    params = module.init_params(seed=2)
    state = module.init_state(params)
    resumed = [module.train_step(params, b, state)["loss"].item() for b in data[:5]]
    module.save(tmp_path / "ckpt.npz", params, state)
    fresh = gc.load_module(module.__file__)  # as a new process would: nothing kept in the module
    params, state = fresh.load(tmp_path / "ckpt.npz")
    assert int(state["step"]) == 5
    resumed += [fresh.train_step(params, b, state)["loss"].item() for b in data[5:]]

    assert resumed == straight
    expected_params = module.init_params(seed=2)
    expected_state = module.init_state(expected_params)
    for b in data:
        module.train_step(expected_params, b, expected_state)
    for name, value in {**expected_params, **expected_state}.items():
        got = params.get(name, state.get(name))
        assert got.dtype == value.dtype and np.array_equal(got, value), name


def test_save_replaces_the_file_atomically(module, tmp_path, monkeypatch):
    params = module.init_params()
    state = module.init_state(params)
    path = tmp_path / "ckpt.npz"
    module.save(path, params, state)
    before = path.read_bytes()

    def broken(file, **arrays):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        module.save(path, {k: v + 1 for k, v in params.items()}, state)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.npz"]  # no temporary file left behind


def test_load_refuses_pickles_and_arrays_it_does_not_declare(module, tmp_path):
    params = module.init_params()
    state = module.init_state(params)
    arrays = {**{f"params/{k}": v for k, v in params.items()}, **{f"state/{k}": v for k, v in state.items()}}
    np.savez(tmp_path / "pickled.npz", **{**arrays, "params/W1": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match="allow_pickle"):
        module.load(tmp_path / "pickled.npz")
    np.savez(tmp_path / "extra.npz", **arrays, notes=np.zeros(1))
    with pytest.raises(ValueError, match=r"neither params nor state: \['notes'\]"):
        module.load(tmp_path / "extra.npz")
    np.savez(tmp_path / "short.npz", **{k: v for k, v in arrays.items() if k != "state/m_W1"})
    with pytest.raises(ValueError, match=r"missing state \[.m_W1.\]"):
        module.load(tmp_path / "short.npz")
    np.savez(tmp_path / "wrong.npz", **{**arrays, "state/step": np.zeros(())})
    with pytest.raises(ValueError, match="step expects int64"):
        module.load(tmp_path / "wrong.npz")


@pytest.mark.gpu
def test_gpu_checkpoints_hold_device_arrays_and_a_host_step_counter(tmp_path):
    cp = cupy_or_skip()
    prog = gc.compile(model(), backend="cupy", loss="loss", optimizer=OPTIMIZER)
    params = prog.init_params(seed=2)
    state = prog.init_state(params)
    for batch in batches(2):
        prog.train_step(params, batch, state)
    assert isinstance(state["step"], np.ndarray) and int(state["step"]) == 2  # read without waiting on the GPU
    prog.save(tmp_path / "ckpt.npz", params, state)
    loaded_params, loaded_state = prog.load(tmp_path / "ckpt.npz")
    assert isinstance(loaded_params["W1"], cp.ndarray) and isinstance(loaded_state["step"], np.ndarray)
    for name, value in {**params, **state}.items():
        again = loaded_params.get(name, loaded_state.get(name))
        assert np.array_equal(cp.asnumpy(cp.asarray(again)), cp.asnumpy(cp.asarray(value))), name


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "one array"])
def test_load_of_a_damaged_file_says_it_is_not_a_checkpoint(module, tmp_path, damage):
    """A file save did not write, or one cut short, is a ValueError naming the file (it was zipfile's, NumPy's or
    EOFError, depending on the damage)."""
    params = module.init_params(0)
    path = tmp_path / "ckpt.npz"
    module.save(path, params, module.init_state(params))
    whole = path.read_bytes()
    if damage == "one array":
        np.save(path.with_suffix(".npy"), np.zeros(3))
        path = path.with_suffix(".npy")
    else:
        path.write_bytes({"garbage": b"not a checkpoint at all", "truncated": whole[: len(whole) // 2],
                          "empty": b""}[damage])
    with pytest.raises(ValueError, match=rf"{path.name} is not a checkpoint written by save"):
        module.load(path)
