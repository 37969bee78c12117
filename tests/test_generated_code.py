"""The generated file as a product: standalone, deterministic, pinned by a golden file, trains correctly."""
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import graphc as gc
from graphc.cli.explain import random_feeds
from graphc.transforms.gradcheck import rel_error

from models import half_sse, mlp

GOLDEN = Path(__file__).parent / "golden" / "half_sse_numpy.py"

# Run a file in a Python that cannot import graphc, sympy or networkx (numpy only).
BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("graphc", "sympy", "networkx"):
                raise ImportError(f"{name} is not installed here")
    sys.meta_path.insert(0, Block())
    import runpy, numpy as np
    module = runpy.run_path(sys.argv[1])
    params = module["init_params"](0)
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(32, 12)).astype(np.float32), "t": rng.integers(0, 5, 32)}
    first = float(module["train_step"](params, batch)["loss"])
    for _ in range(30):
        last = float(module["train_step"](params, batch)["loss"])
    print(first, last)
""")


def test_generated_file_runs_with_numpy_only(tmp_path):
    g, _ = mlp(dtype="float32")
    path = gc.compile(g, loss="loss", optimizer=gc.SGD(lr=0.5)).emit(tmp_path / "mlp_numpy.py")
    assert "graphc" not in "".join(ln for ln in path.read_text().splitlines() if ln.startswith(("import", "from")))
    result = subprocess.run([sys.executable, "-I", "-c", BLOCKER, str(path)], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    first, last = map(float, result.stdout.split())
    assert last < first


@pytest.mark.parametrize("opt_level", [0, 2])
def test_two_builds_are_byte_identical(opt_level):
    sources = [gc.compile(mlp()[0], loss="loss", optimizer=gc.SGD(0.1), opt_level=opt_level).source
               for _ in range(2)]
    assert sources[0] == sources[1]


def test_golden_file():
    """The emitted code of a small model, pinned: a change to it shows up in review. Regenerate with
    ``python -c "import tests.test_generated_code as t; t.write_golden()"`` from the repo root."""
    source = gc.compile(half_sse()[0], loss="loss", optimizer=gc.SGD(lr=0.1)).source
    assert source == GOLDEN.read_text()


def write_golden():
    GOLDEN.write_text(gc.compile(half_sse()[0], loss="loss", optimizer=gc.SGD(lr=0.1)).source)


def test_half_sse_gradient_has_no_stray_factors():
    """0.5·Σ(y−t)² differentiates to dy = y − t: no 0.5 or 2 touches an array; the ½ only scales the loss."""
    source = gc.compile(half_sse()[0], loss="loss", optimizer=gc.SGD(lr=0.1)).source
    body = source.split("def _train(", 1)[1].split("\n\n", 1)[0]
    assert "dy = np.subtract(y, t, out=B[1])" in body
    code = [ln.split("#")[0] for ln in body.splitlines()]
    factors = [ln.strip() for ln in code if any(f in ln for f in ("1/2", "0.5", ", 2,", " 2)"))]
    assert factors == ["np.multiply(loss, 1/2, out=loss)"]  # on the scalar loss, after its reduction


def test_train_step_applies_sgd_to_the_reference_gradients():
    g, feeds = mlp(dtype="float64")
    prog = gc.compile(g, loss="loss", optimizer=gc.SGD(lr=0.3))
    params = gc.init_params(g, seed=1)
    expected = g.evaluate({**params, **feeds})
    before = {k: v.copy() for k, v in params.items()}
    out = prog.train_step(params, feeds)
    assert rel_error(out["loss"], expected["loss"]) <= 1e-12
    for name in before:
        assert rel_error(params[name], before[name] - 0.3 * expected[f"d{name}"]) <= 1e-12, name


def test_train_step_reduces_the_loss_on_a_fixed_problem():
    g, _ = mlp(dtype="float32", sizes=(12, 32, 3))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 12)).astype(np.float32)
    t = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0).astype(np.int64)
    prog = gc.compile(g, loss="loss", optimizer=gc.SGD(lr=0.5))
    params = prog.init_params(0)
    losses = [float(prog.train_step(params, {"x": x, "t": t})["loss"]) for _ in range(100)]
    assert losses[-1] < 0.5 * losses[0]


def test_generated_init_params_equals_gc_init_params():
    g, _ = mlp(sizes=(30, 20, 4))
    ours, generated = gc.init_params(g, seed=3), gc.compile(g).init_params(3)
    assert all(np.array_equal(ours[k], generated[k]) for k in ours)


@pytest.mark.parametrize("optimizer", [gc.SGD(lr=0.1), gc.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=1e-4),
                                       gc.Adam(schedule=gc.schedules.cosine(100)),
                                       gc.AdamW(amsgrad=True)])
def test_steady_state_train_step_allocates_almost_nothing(optimizer):
    m = gc.dim("m")
    with gc.Graph("mlp") as g:
        x, t = gc.input("x", (m, 784)), gc.input("t", (m,), dtype="int64")
        W1, b1 = gc.param("W1", (784, 128), init="he_normal"), gc.param("b1", (128,))
        W2, b2 = gc.param("W2", (128, 10), init="glorot_uniform"), gc.param("b2", (10,))
        losses = gc.softmax_cross_entropy(gc.relu(x @ W1 + b1) @ W2 + b2, t)
        g.output(loss=gc.mean(losses), losses=losses)
    prog = gc.compile(g, loss="loss", optimizer=optimizer)
    feeds = random_feeds(g, {m: 256})
    params = {k: feeds.pop(k) for k in list(g.params)}
    state = prog.init_state(params)
    prog.train_step(params, feeds, state)  # the first step allocates the buffers
    peaks = []
    for _ in range(3):
        tracemalloc.start()
        prog.train_step(params, feeds, state)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    activation = 256 * 128 * 4
    assert max(peaks) < 0.01 * activation, peaks


def test_generated_module_checks_its_inputs():
    g, feeds = mlp(dtype="float32")
    prog = gc.compile(g)
    params = prog.init_params(0)
    good = {**params, **feeds}
    with pytest.raises(ValueError, match=r"t expects shape \(m,\) = \(8,\), got \(7,\)"):
        prog({**good, "t": feeds["t"][:7]})
    with pytest.raises(ValueError, match=r"x expects float32 with shape \(m, 12\), got float64"):
        prog({**good, "x": feeds["x"].astype(np.float64)})
    with pytest.raises(ValueError, match=r"missing feeds \['t'\]: t \(m,\)"):
        prog({k: v for k, v in good.items() if k != "t"})
    with pytest.raises(ValueError, match=r"unknown feeds \['y'\]"):
        prog({**good, "y": feeds["x"]})


def test_symbolic_dims_appear_by_name():
    source = gc.compile(mlp()[0]).source
    assert "m = _shape_of(feeds, 'x', 0)" in source
    assert "1/m" in source


def test_builds_in_separate_processes_are_byte_identical(tmp_path):
    """Hash randomization must not reach the output: build in two processes with different hash seeds."""
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import graphc as gc; from models import mlp, tanh_net; "
              "print(gc.compile(mlp()[0], loss='loss', optimizer=gc.SGD(0.1)).source + "
              "gc.compile(tanh_net()[0], loss='loss', optimizer=gc.SGD(0.1)).source)")
    outputs = []
    for seed in ("1", "2"):
        env = {**__import__("os").environ, "PYTHONHASHSEED": seed}
        result = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent)], capture_output=True,
                                text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    assert outputs[0] == outputs[1]


def test_learning_rate_is_an_argument_of_train_step():
    g, feeds = mlp(dtype="float64")
    prog = gc.compile(g, loss="loss", optimizer=gc.SGD(lr=0.3))
    assert "def train_step(params, batch, state=None, lr=0.3):" in prog.source
    params = gc.init_params(g, seed=1)
    expected = g.evaluate({**params, **feeds})
    before = {k: v.copy() for k, v in params.items()}
    prog.train_step(params, feeds, lr=0.05)
    for name in before:
        assert rel_error(params[name], before[name] - 0.05 * expected[f"d{name}"]) <= 1e-12, name


@pytest.mark.parametrize("enabled", [True, False])
def test_compile_leaves_the_cyclic_collector_as_it_found_it(enabled):
    """compile pauses Python's cyclic GC while it builds (a third of its time went to it) and restores it, also
    when the build fails."""
    import gc as cyclic_gc
    g, _ = mlp()
    (cyclic_gc.enable if enabled else cyclic_gc.disable)()
    try:
        gc.compile(g, loss="loss")
        assert cyclic_gc.isenabled() == enabled
        with pytest.raises(gc.GraphError):
            gc.compile(g, loss="no such output")
        assert cyclic_gc.isenabled() == enabled
    finally:
        cyclic_gc.enable()
