"""CuPy modules at run time, beyond matching the reference: what kernels take as parameters (symbolic dims, the
learning rate) and what one training step costs on the device.

All marked ``gpu``: they run on a GPU or on the emulated one (tests/emulated_gpu); the cost tests read the
emulation's counters and skip on real CuPy, which has none.
"""
import numpy as np
import pytest

import graphc as gc
from graphc.optim import training_graph
from graphc.passes import optimize
from graphc.transforms.gradcheck import rel_error

from helpers import cupy_or_skip
from models import MODELS

m = gc.dim("m")


@pytest.mark.gpu
def test_gpu_dims_divide_as_numbers_not_as_c_integers():
    cp = cupy_or_skip()
    with gc.Graph("ratio") as g:
        x = gc.input("x", (m, 3), dtype="float64")
        g.output(y=x * (1 - 1 / m))
    feeds = {"x": np.ones((4, 3))}
    got = gc.compile(g, backend="cupy")(feeds)["y"]
    np.testing.assert_allclose(cp.asnumpy(got), g.evaluate(feeds)["y"])  # 0.75 everywhere


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["i", "y", "x0", "int", "exp"])
def test_gpu_any_dim_name_can_reach_a_kernel(name):
    cp = cupy_or_skip()
    n = gc.dim(name)
    with gc.Graph("named_dim") as g:
        x = gc.input("x", (n, 3), dtype="float64")
        g.output(out=gc.exp(x) / n)
    feeds = {"x": np.full((4, 3), 0.5)}
    got = gc.compile(g, backend="cupy")(feeds)["out"]
    np.testing.assert_allclose(cp.asnumpy(got), g.evaluate(feeds)["out"])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gpu_train_step_takes_the_learning_rate_as_a_device_scalar(dtype):
    cp = cupy_or_skip()
    g, feeds = MODELS["mlp"](dtype="float32")
    cpu, gpu = (gc.compile(g, backend=b, loss="loss") for b in ("numpy", "cupy"))
    host, device = cpu.init_params(seed=1), gpu.init_params(seed=1)
    batch = {k: v for k, v in feeds.items() if k in g.inputs}
    cpu.train_step(host, batch, lr=0.1)
    gpu.train_step(device, batch, lr=cp.asarray(np.array(0.1, dtype)))
    for k in host:
        assert rel_error(cp.asnumpy(device[k]), host[k]) <= 1e-5, k


# -- what a training step costs: the README's MLP, the CNN of examples/cnn_digits.py, a DP-SGD MLP ------------
def readme_mlp():
    with gc.Graph("mlp") as g:
        x, t = gc.input("x", (m, 64)), gc.input("t", (m,), dtype="int64")
        W1, b1 = gc.param("W1", (64, 128), init="he_normal"), gc.param("b1", (128,), init="zeros")
        W2, b2 = gc.param("W2", (128, 10), init="glorot_uniform"), gc.param("b2", (10,), init="zeros")
        h = gc.relu(x @ W1 + b1)
        g.output(loss=gc.mean(gc.softmax_cross_entropy(h @ W2 + b2, t)))
    return g, gc.SGD(lr=0.3), {"x": (8, 64)}


def cnn_digits():
    with gc.Graph("cnn_digits") as g:
        x, t = gc.input("x", (m, 1, 8, 8)), gc.input("t", (m,), dtype="int64")
        w1, b1 = gc.param("w1", (32, 1, 3, 3), init="he_normal"), gc.param("b1", (32,), init="zeros")
        w2, b2 = gc.param("w2", (64, 32, 3, 3), init="he_normal"), gc.param("b2", (64,), init="zeros")
        W3, b3 = gc.param("W3", (256, 128), init="he_normal"), gc.param("b3", (128,), init="zeros")
        W4, b4 = gc.param("W4", (128, 10), init="glorot_uniform"), gc.param("b4", (10,), init="zeros")
        h1 = gc.max_pool2d(gc.relu(gc.conv2d(x, w1, padding="same", bias=b1)), 2)
        h2 = gc.max_pool2d(gc.relu(gc.conv2d(h1, w2, padding="same", bias=b2)), 2)
        h3 = gc.relu(gc.flatten(h2) @ W3 + b3)
        g.output(loss=gc.mean(gc.softmax_cross_entropy(h3 @ W4 + b4, t)))
    return g, gc.SGD(lr=0.1), {"x": (8, 1, 8, 8)}


def dp_sgd_mlp():
    g, _, shapes = readme_mlp()
    return g, gc.SGD(lr=0.1, clip_per_example=1.0, noise=0.5), shapes


STEPS = {"mlp": readme_mlp, "cnn": cnn_digits, "dp_sgd": dp_sgd_mlp}


def step_costs(cp, name):
    """The device counters over one steady-state training step (buffers allocated and kernels built by a first
    step, params and batch already on the device), and the node count of the optimized training graph."""
    if not hasattr(cp, "emulation"):
        pytest.skip("device counters exist on the emulated GPU only")
    g, optimizer, shapes = STEPS[name]()
    rng = np.random.default_rng(0)
    batch = {"x": cp.asarray(rng.random(shapes["x"], dtype=np.float32)), "t": cp.arange(shapes["x"][0]) % 10}
    program = gc.compile(g, backend="cupy", loss="loss", optimizer=optimizer)
    params = program.init_params(seed=0)
    program.train_step(params, batch)
    with cp.emulation.counting() as step:
        program.train_step(params, batch)
    trained, _ = optimize(training_graph(g, "loss", optimizer), backend="cupy")
    step["class_checks"] = program.source.split("def _train(")[1].split("\ndef ")[0].count("_count_outside(")
    return step, len(trained.needed(trained.roots()))


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(STEPS))
def test_gpu_steady_state_step_allocates_nothing_and_never_waits_on_the_host(name):
    """Nothing but each check of the class ids: their count of ids out of range (8 bytes), read back."""
    step, _ = step_costs(cupy_or_skip(), name)
    checks = step["class_checks"]
    assert checks == 1
    assert (step["allocations"], step["allocated_bytes"], step["host_to_device"], step["device_to_host"]) == (
        checks, 8 * checks, 0, checks), step


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(STEPS))
def test_gpu_step_runs_at_most_one_device_operation_per_graph_node(name):
    step, nodes = step_costs(cupy_or_skip(), name)
    assert step["device_ops"] <= nodes, f"{step['device_ops']} device operations for {nodes} nodes: {step}"


def xent_step(cp, per_example: bool):
    """A training step of softmax cross-entropy on linear logits, traced on the emulated GPU (None on a real one):
    (trace, graph, program)."""
    with gc.Graph("xent") as g:
        x, t = gc.input("x", (m, 5), dtype="float32"), gc.input("t", (m,), dtype="int64")
        W = gc.param("W", (5, 7), dtype="float32", init="glorot_uniform")
        losses = gc.softmax_cross_entropy(x @ W, t)
        g.output(loss=gc.mean(losses), **({"losses": losses} if per_example else {}))
    program = gc.compile(g, backend="cupy", loss="loss", optimizer=gc.SGD(0.1))
    params = program.init_params(seed=0)
    batch = {"x": cp.asarray(np.random.default_rng(0).random((6, 5), dtype=np.float32)), "t": cp.arange(6) % 7}
    program.train_step(params, batch)
    if not hasattr(cp, "emulation"):
        return None, g, program
    with cp.emulation.counting(trace=True) as step:
        program.train_step(params, batch)
    return step["trace"], g, program


@pytest.mark.gpu
def test_gpu_softmax_cross_entropy_forward_and_backward_take_three_kernels():
    """A row-wise log-sum-exp, the mean of lse − z[t] (the label's logit read inside it), the gradient
    exp(z − lse) − onehot(t): besides them the step runs its two matmuls, the update and the check of the labels."""
    cp = cupy_or_skip()
    if not hasattr(cp, "emulation"):
        pytest.skip("device counters exist on the emulated GPU only")
    trace, _, program = xent_step(cp, per_example=False)
    ops = [e.split(": ", 1)[1] for e in trace if e.split(":")[0] in cp.emulation.OPS]
    others = [op for op in ops if op not in ("matmul", "_count_outside") and "update" not in op]
    assert len(ops) == len(others) + 4 and len(others) == 3, ops
    assert "_pick(" not in program.source.split("def _train(")[1]


@pytest.mark.gpu
def test_gpu_per_example_losses_read_the_labels_logits_inside_their_kernel():
    cp = cupy_or_skip()
    _, g, program = xent_step(cp, per_example=True)
    feeds = {"x": np.random.default_rng(1).random((6, 5), dtype=np.float32), "t": np.arange(6) % 7,
             "W": program.init_params(seed=3)["W"]}
    got = program({k: cp.asarray(v) for k, v in feeds.items()})
    want = g.evaluate({k: cp.asnumpy(v) for k, v in feeds.items()})
    for name in ("loss", "losses"):
        np.testing.assert_allclose(cp.asnumpy(got[name]), want[name], rtol=1e-5)
    with pytest.raises(ValueError, match="outside 0..6"):
        program({**{k: cp.asarray(v) for k, v in feeds.items()}, "t": cp.asarray(np.arange(6) + 3)})


@pytest.mark.gpu
def test_gpu_labels_logits_are_gathered_for_a_symbolic_class_count():
    cp = cupy_or_skip()
    k = gc.dim("k")
    with gc.Graph("classes") as g:
        z, t = gc.input("z", (m, k), dtype="float32"), gc.input("t", (m,), dtype="int64")
        loss = gc.mean(gc.softmax_cross_entropy(z, t))
        g.output(loss=loss, dz=gc.grad(loss, z))
    program = gc.compile(g, backend="cupy")
    assert "_pick(" not in program.source
    feeds = {"z": np.random.default_rng(0).normal(size=(4, 6)).astype("float32"), "t": np.array([0, 5, 2, 3])}
    got, want = program({n: cp.asarray(v) for n, v in feeds.items()}), g.evaluate(feeds)
    for name in want:
        np.testing.assert_allclose(cp.asnumpy(got[name]), want[name], rtol=1e-6, atol=1e-7)


@pytest.mark.gpu
def test_gpu_cross_entropy_weighted_per_example_scales_each_rows_gradient():
    """The gradient kernel's scale reads the weights (inputs after the labels), not the logits."""
    cp = cupy_or_skip()
    with gc.Graph("weighted") as g:
        z, t = gc.input("z", (m, 3), dtype="float64"), gc.input("t", (m,), dtype="int64")
        w = gc.input("w", (m,), dtype="float64")
        loss = gc.sum(gc.softmax_cross_entropy(z, t) * w)
        g.output(loss=loss, dz=gc.grad(loss, z))
    rng = np.random.default_rng(0)
    feeds = {"z": rng.normal(size=(4, 3)), "t": np.array([0, 2, 1, 2]), "w": rng.normal(size=4)}
    got = gc.compile(g, backend="cupy")({k: cp.asarray(v) for k, v in feeds.items()})
    np.testing.assert_allclose(cp.asnumpy(got["dz"]), g.evaluate(feeds)["dz"], rtol=1e-12)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gpu_logsumexp_is_one_pass_and_agrees_at_the_extremes(dtype):
    """Rows of huge, tiny, equal, infinite and NaN values against the evaluator (itself checked against SciPy's
    definition in test_extremes)."""
    cp = cupy_or_skip()
    rows = np.array([[1e30, -1e30, 0, 3], [-1e30, -1e30, -1e30, -1e30], [5, 5, 5, 5], [np.inf, 1, 2, 3],
                     [-np.inf, -np.inf, -np.inf, -np.inf], [np.nan, 1, 2, 3], [88, 89, 90, -90], [-3, 0.5, 2, 1e-8]],
                    dtype=dtype)
    with gc.Graph("lse") as g:
        x = gc.input("x", (m, 4), dtype=dtype)
        g.output(rows=gc.logsumexp(x, axis=1), cols=gc.logsumexp(x[:, 1:], axis=0, keepdims=True))
    program = gc.compile(g, backend="cupy")
    assert program.source.split("def _compute(")[1].split("\ndef ")[0].count("_logsumexp(") == 2
    with np.errstate(divide="ignore"):  # log 0 of the row of -inf
        got, want = program({"x": cp.asarray(rows)}), g.evaluate({"x": rows})
    for name in want:
        np.testing.assert_allclose(cp.asnumpy(got[name]), want[name], rtol=1e-6 if dtype == "float32" else 1e-13)


@pytest.mark.gpu
def test_gpu_check_numerics_names_the_value_and_writes_no_param():
    cp = cupy_or_skip()
    with gc.Graph("fit") as g:
        x = gc.input("x", (m, 2), dtype="float64")
        w = gc.param("w", (2,), dtype="float64", init="ones")
        g.output(loss=gc.mean(gc.log(x * w)))
    prog = gc.compile(g, backend="cupy", loss="loss", check_numerics=True)
    params = prog.init_params()
    prog.train_step(params, {"x": np.ones((3, 2))})
    before = cp.asnumpy(params["w"]).copy()
    with pytest.raises(FloatingPointError, match=r"log\(.*produced NaN or Inf"):
        prog.train_step(params, {"x": -np.ones((3, 2))})
    np.testing.assert_array_equal(cp.asnumpy(params["w"]), before)
