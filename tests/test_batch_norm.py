"""batch_norm: batch statistics in training (run, train_step), running ones in inference (predict), the running
averages updated by the training step as PyTorch updates them; checked against a NumPy transcription of PyTorch's
definition, finite differences, and PyTorch itself where it is installed."""
import numpy as np
import pytest

import graphc as gc
from graphc.transforms.gradcheck import fd_grads, rel_error

from helpers import cupy_or_skip, m

MOMENTUM, EPS, LR = 0.2, 1e-5, 0.5
SHAPES = {"(m, C)": (m, 3), "NCHW": (m, 3, 4, 5)}


def bn_graph(shape, dtype="float64"):
    """y = batch_norm(x) with running state; loss = Σ y³ · r / m (r a fixed weight, so no symmetry hides errors)."""
    with gc.Graph("bn") as g:
        x = gc.input("x", shape, dtype=dtype)
        r = gc.input("r", shape, dtype=dtype)
        gamma = gc.param("gamma", (3,), dtype=dtype, init="ones")
        beta = gc.param("beta", (3,), dtype=dtype)
        running_mean = gc.state("running_mean", (3,), dtype=dtype)
        running_var = gc.state("running_var", (3,), dtype=dtype, init="ones")
        y = gc.batch_norm(x, gamma, beta, running_mean, running_var, momentum=MOMENTUM, eps=EPS).named("y")
        loss = gc.sum(y * y * y * r) / m
        g.output(loss=loss, y=y, dx=gc.grad(loss, x))
    return g


def feeds_for(shape, batch=4, seed=0):
    rng = np.random.default_rng(seed)
    size = (batch, *(int(d) for d in shape[1:]))
    return ({"x": rng.normal(size=size) * 2 + 1, "r": rng.normal(size=size)},
            {"gamma": rng.normal(size=3), "beta": rng.normal(size=3)},
            {"running_mean": rng.normal(size=3), "running_var": rng.uniform(1, 2, size=3)})


def reference(x, gamma, beta, mean=None, var=None):
    """PyTorch's batch_norm, written out: batch statistics (biased variance) unless running ones are given."""
    axes = (0, *range(2, x.ndim))
    stat = (1, -1, *[1] * (x.ndim - 2))
    if mean is None:
        mean, var = x.mean(axis=axes), x.var(axis=axes)
    return (x - mean.reshape(stat)) / np.sqrt(var.reshape(stat) + EPS) * gamma.reshape(stat) + beta.reshape(stat)


def reference_step(batch, params, state):
    """One SGD step by hand: the loss, gradients by central differences of the reference, new running stats."""
    x, r = batch["x"], batch["r"]
    axes = (0, *range(2, x.ndim))

    def loss(gamma, beta):
        return float(np.sum(reference(x, gamma, beta) ** 3 * r) / x.shape[0])

    grads = {}
    for name in ("gamma", "beta"):
        grad = np.zeros(3)
        for c in range(3):
            up, down = ({k: v.copy() for k, v in params.items()} for _ in range(2))
            up[name][c] += 1e-6
            down[name][c] -= 1e-6
            grad[c] = (loss(**up) - loss(**down)) / 2e-6
        grads[name] = grad
    count = x.size // 3
    new_state = {"running_mean": (1 - MOMENTUM) * state["running_mean"] + MOMENTUM * x.mean(axis=axes),
                 "running_var": (1 - MOMENTUM) * state["running_var"]
                 + MOMENTUM * x.var(axis=axes) * count / (count - 1)}
    return loss(**params), {k: params[k] - LR * grads[k] for k in params}, new_state


@pytest.mark.parametrize("layout", SHAPES)
def test_the_gradient_through_batch_statistics_matches_finite_differences(layout):
    g = bn_graph(SHAPES[layout])
    batch, params, state = feeds_for(SHAPES[layout])
    feeds = {**batch, **params, **state}
    out = g.evaluate(feeds)
    assert rel_error(out["y"], reference(batch["x"], **params)) <= 1e-12
    assert rel_error(out["dx"], fd_grads(g, "loss", feeds, ["x"])["x"]) <= 1e-6


@pytest.mark.parametrize("backend", ["numpy", "cupy"])
@pytest.mark.parametrize("level", [0, 1, 2])
@pytest.mark.parametrize("layout", SHAPES)
def test_train_step_updates_params_and_running_statistics_as_pytorch(layout, level, backend):
    xp = cupy_or_skip() if backend == "cupy" else np
    host = getattr(xp, "asnumpy", np.asarray)
    batch, params, state = feeds_for(SHAPES[layout])
    want_loss, want_params, want_state = reference_step(batch, params, state)
    prog = gc.compile(bn_graph(SHAPES[layout]), backend=backend, opt_level=level, loss="loss",
                      optimizer=gc.SGD(LR))
    kept = {k: xp.asarray(v) for k, v in params.items()}
    running = prog.init_state(kept)
    running.update({k: xp.asarray(v) for k, v in state.items()})
    out = prog.train_step(kept, {k: xp.asarray(v) for k, v in batch.items()}, running)
    assert rel_error(float(out["loss"]), want_loss) <= 1e-12
    for k, v in want_params.items():
        assert rel_error(host(kept[k]), v) <= 1e-7, k
    for k, v in want_state.items():
        assert rel_error(host(running[k]), v) <= 1e-14, k
    # inference mode: the running statistics the step wrote, whatever the batch
    fed = {k: xp.asarray(v) for k, v in {**batch, **params}.items()}
    fed.update(kept)
    fed.update(running)
    predicted = host(prog.predict(fed)["y"])
    trained = {k: host(v) for k, v in kept.items()}
    want = reference(batch["x"], **trained, mean=want_state["running_mean"], var=want_state["running_var"])
    assert rel_error(predicted, want) <= 1e-12
    # run is training mode: batch statistics, and the running ones are left as they are
    before = {k: host(v).copy() for k, v in running.items()}
    assert rel_error(host(prog(fed)["y"]), reference(batch["x"], **{k: host(v) for k, v in kept.items()})) <= 1e-12
    assert all(np.array_equal(host(running[k]), v) for k, v in before.items())


def test_one_value_per_channel_is_refused_in_training_and_fine_in_inference():
    g = bn_graph(SHAPES["(m, C)"])
    batch, params, state = feeds_for(SHAPES["(m, C)"], batch=1)
    feeds = {**batch, **params, **state}
    with pytest.raises(gc.GraphError, match=r"in_training .* needs m >= 2, but the feeds give m = 1"):
        g.evaluate(feeds)
    prog = gc.compile(g, loss="loss", optimizer=gc.SGD(LR))
    with pytest.raises(ValueError, match=r"needs m >= 2, got \{'m': 1\}"):
        prog(feeds)
    with pytest.raises(ValueError, match=r"needs m >= 2"):
        prog.train_step(params, batch, {**prog.init_state(params), **state})
    y = prog.predict(feeds)["y"]
    assert rel_error(y, reference(batch["x"], **params, mean=state["running_mean"], var=state["running_var"])) <= 1e-12
    # an image has H·W values per channel already: one example is enough
    g = bn_graph(SHAPES["NCHW"])
    batch, params, state = feeds_for(SHAPES["NCHW"], batch=1)
    assert rel_error(g.evaluate({**batch, **params, **state})["y"], reference(batch["x"], **params)) <= 1e-12


def test_without_running_statistics_it_is_batch_statistics_everywhere():
    with gc.Graph("plain") as g:
        x = gc.input("x", (m, 3, 2, 2), dtype="float64")
        g.output(y=gc.batch_norm(x, eps=EPS))
    x = np.random.default_rng(1).normal(size=(2, 3, 2, 2))
    ones, zeros = np.ones(3), np.zeros(3)
    assert rel_error(gc.compile(g).predict({"x": x})["y"], reference(x, ones, zeros)) <= 1e-12


def test_bad_operands_name_the_op_and_shapes():
    with gc.Graph("bad"):
        x = gc.input("x", (m, 3), dtype="float64")
        gamma = gc.param("gamma", (4,), dtype="float64")
        running = gc.state("running", (3,), dtype="float64")
        not_state = gc.param("not_state", (3,), dtype="float64")
        with pytest.raises(gc.GraphError, match=r"batch_norm: gamma must have shape \(3,\).*'gamma' \(4,\)"):
            gc.batch_norm(x, gamma)
        with pytest.raises(gc.GraphError, match="running_mean and running_var come together"):
            gc.batch_norm(x, running_mean=running)
        with pytest.raises(gc.GraphError, match="running_var must be a gc.state tensor"):
            gc.batch_norm(x, running_mean=running, running_var=not_state)
        with pytest.raises(gc.GraphError, match="rank ≥ 2"):
            gc.batch_norm(gc.input("v", (m,), dtype="float64"))
        with pytest.raises(gc.GraphError, match="momentum"):
            gc.batch_norm(x, momentum=1.5)


def test_per_example_gradients_refuse_batch_statistics():
    with gc.Graph("per_example"):
        x = gc.input("x", (m, 3), dtype="float64")
        gamma = gc.param("gamma", (3,), dtype="float64", init="ones")
        losses = gc.sum(gc.batch_norm(x, gamma) ** 2, axis=1)
        with pytest.raises(gc.GraphError, match="per_example_grads: .*batch statistics"):
            gc.per_example_grads(losses, gamma)


def test_matches_pytorch_in_training_and_eval_mode():
    torch = pytest.importorskip("torch")
    batch, params, state = feeds_for(SHAPES["NCHW"])
    prog = gc.compile(bn_graph(SHAPES["NCHW"]), loss="loss", optimizer=gc.SGD(LR))
    kept = {k: v.copy() for k, v in params.items()}
    running = {**prog.init_state(kept), **{k: v.copy() for k, v in state.items()}}
    out = prog.train_step(kept, batch, running)
    x = torch.tensor(batch["x"])
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    ts = {k: torch.tensor(v) for k, v in state.items()}
    y = torch.nn.functional.batch_norm(x, ts["running_mean"], ts["running_var"], tp["gamma"], tp["beta"],
                                       training=True, momentum=MOMENTUM, eps=EPS)
    loss = (y ** 3 * torch.tensor(batch["r"])).sum() / x.shape[0]
    loss.backward()
    assert rel_error(float(out["loss"]), loss.item()) <= 1e-12
    for k in params:
        assert rel_error(kept[k], (tp[k] - LR * tp[k].grad).detach().numpy()) <= 1e-12, k
    for k in state:
        assert rel_error(running[k], ts[k].numpy()) <= 1e-14, k
    y = torch.nn.functional.batch_norm(x, ts["running_mean"], ts["running_var"], torch.tensor(kept["gamma"]),
                                       torch.tensor(kept["beta"]), training=False, eps=EPS)
    assert rel_error(prog.predict({**batch, **kept, **running})["y"], y.numpy()) <= 1e-12
