"""grad_step and apply_update, the training step cut in two for data-parallel training (one process, no cluster).

The shards of a batch take ``m_total``, the batch's size, in place of their own: their gradients then add up to the
batch's, whatever their sizes; apply_update takes the same step train_step does. Expected values come from the
reference interpreter (``g.evaluate``) on the whole batch.
"""
import numpy as np
import pytest

import graphc as gc

from helpers import cupy_or_skip
from models import MODELS, mlp, transformer

SIZES = (7, 13, 1, 43)  # unequal shards of a batch of 64
m = gc.dim("m")


def shards(feeds, sizes=SIZES):
    bounds = np.cumsum([0, *sizes])
    return [{k: v[a:b] for k, v in feeds.items()} for a, b in zip(bounds[:-1], bounds[1:])]


def summed(module, params, parts, m_total):
    """The shards' gradients and losses, added."""
    results = [module.grad_step(params, part, m_total) for part in parts]
    grads = {k: sum(r[0][k] for r in results) for k in results[0][0]}
    return grads, sum(r[1] for r in results)


def batch_of(g, feeds):
    return {k: v for k, v in feeds.items() if k in g.inputs}


@pytest.mark.parametrize("name", [*MODELS, "transformer"])
def test_the_shards_gradients_add_up_to_the_batch_gradient(name):
    """Means over the batch (mlp, 1/m), over batch and features (linear_regression, 1/(2m)), sums (half_sse), means
    of sums (tanh_net) and means over features and a sequence inside the model (transformer) alike."""
    g, feeds = (transformer(dtype="float64", batch=64) if name == "transformer" else MODELS[name](batch=64))
    module = gc.compile(g, loss="loss", optimizer=gc.SGD(lr=0.1)).module
    params = module.init_params(seed=1)
    want = g.evaluate({**feeds, **params})
    grads, loss = summed(module, params, shards(batch_of(g, feeds)), 64)
    assert abs(loss - float(want["loss"])) <= 1e-12 * max(1.0, abs(float(want["loss"])))
    for p in params:
        np.testing.assert_allclose(grads[p], want[f"d{p}"], rtol=1e-12, atol=1e-12, err_msg=p)


def test_averaging_each_shards_own_mean_is_not_the_batch_mean():
    """Why m_total: the mean of the shards' mean gradients weighs an example of the 1-example shard 43 times as
    much as one of the 43-example shard."""
    g, feeds = mlp(batch=64)
    params = gc.init_params(g, 1)
    want = g.evaluate({**feeds, **params})["dW1"]
    means = [g.evaluate({**part, **params})["dW1"] for part in shards(batch_of(g, feeds))]
    naive = sum(means) / len(means)
    weighted = sum(n * mean for n, mean in zip(SIZES, means)) / 64
    assert np.abs(naive - want).max() > 1e-2 * np.abs(want).max()
    np.testing.assert_allclose(weighted, want, rtol=1e-12, atol=1e-14)


OPTIMIZERS = [gc.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
              gc.Adam(lr=0.01, schedule=gc.schedules.linear_warmup(2, then=gc.schedules.cosine(5))),
              gc.AdamW(lr=0.01, amsgrad=True, clip_grad_norm=0.5)]


@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=lambda o: type(o).__name__)
def test_apply_update_takes_train_steps_step(optimizer):
    """The same rule, state, schedule and step counter: five steps alike to float64 rounding."""
    g, feeds = mlp(batch=64)
    module = gc.compile(g, loss="loss", optimizer=optimizer).module
    one, two = module.init_params(seed=2), module.init_params(seed=2)
    s1, s2 = module.init_state(one), module.init_state(two)
    batch = batch_of(g, feeds)
    for _ in range(5):
        module.train_step(one, batch, s1)
        grads, _ = summed(module, two, shards(batch), 64)
        module.apply_update(two, s2, grads)
    for k in one:
        np.testing.assert_allclose(two[k], one[k], rtol=1e-11, atol=1e-13, err_msg=k)
    for k in s1:
        np.testing.assert_allclose(s2[k], s1[k], rtol=1e-11, atol=1e-13, err_msg=k)


def test_grad_step_returns_fresh_arrays_and_needs_the_batch_size():
    g, feeds = mlp(batch=64)
    module = gc.compile(g, loss="loss").module
    params = module.init_params(seed=0)
    a, b = shards(batch_of(g, feeds), (32, 32))
    first, _ = module.grad_step(params, a, 64)
    kept = {k: v.copy() for k, v in first.items()}
    module.grad_step(params, b, 64)
    for k in first:
        np.testing.assert_array_equal(first[k], kept[k])  # not a buffer the next call writes
    with pytest.raises(ValueError, match="m_total"):
        module.grad_step(params, a, 0)


def test_a_cnn_is_sharded_too():
    """Convolutions and pooling keep the examples apart (their batch rules), so a CNN's shards add up."""
    with gc.Graph("cnn") as g:
        x = gc.input("x", (m, 1, 6, 6), dtype="float64")
        t = gc.input("t", (m,), dtype="int64")
        w = gc.param("w", (3, 1, 3, 3), dtype="float64", init="he_normal")
        W = gc.param("W", (12, 4), dtype="float64", init="glorot_uniform")
        h = gc.avg_pool2d(gc.max_pool2d(gc.relu(gc.conv2d(x, w, padding="same")), 2), 2, stride=1)
        g.output(loss=gc.mean(gc.softmax_cross_entropy(gc.flatten(h) @ W, t)))
    with g:
        dw, dW = gc.grad(gc.Tensor(g, g.outputs["loss"]), [w, W])
        g.output(dw=dw, dW=dW)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(size=(64, 1, 6, 6)), "t": rng.integers(0, 4, 64)}
    module = gc.compile(g, loss="loss").module
    params = module.init_params(seed=0)
    want = g.evaluate({**feeds, **params})
    grads, _ = summed(module, params, shards(feeds), 64)
    for p in params:
        np.testing.assert_allclose(grads[p], want[f"d{p}"], rtol=1e-12, atol=1e-13)


# -- what is refused, and why -----------------------------------------------------------------------------
def model(loss_of, state=False):
    with gc.Graph("refused") as g:
        x = gc.input("x", (m, 4), dtype="float64")
        t = gc.input("t", (m, 2), dtype="float64")
        W = gc.param("W", (4, 2), dtype="float64", init="he_normal")
        y = x @ W
        if state:
            s = gc.state("seen", (), dtype="float64")
            gc.assign(s, s + 1)
        g.output(loss=loss_of(y, t, W))
    return g


REFUSED = {
    "softmax over the batch": (lambda y, t, W: gc.mean(gc.softmax(y, axis=0) * t), "normalizes along the batch axis"),
    "a batch mean inside": (lambda y, t, W: gc.mean(gc.square(y - gc.mean(y, axis=0) - t)),
                            "reduces over the batch axis"),
    "a penalty on the params": (lambda y, t, W: gc.mean(gc.square(y - t)) + gc.sum(W * W), "weight_decay"),
    "the largest loss": (lambda y, t, W: gc.max(gc.square(y - t)), "is a max, not a scaled sum"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_loss_that_is_not_a_sum_over_examples_is_refused_with_why(case):
    loss_of, why = REFUSED[case]
    prog = gc.compile(model(loss_of), loss="loss", optimizer=gc.SGD(lr=0.1))
    assert why in str(prog.refused) and "a sum over the examples" in str(prog.refused)
    with pytest.raises(gc.GraphError, match="sum over the examples"):
        prog.grad_step({}, {}, 1)
    module = prog.module
    assert not hasattr(module, "grad_step") and module.NO_GRAD_STEP == str(prog.refused)
    assert "No grad_step:" in module.__doc__ and hasattr(module, "train_step") and hasattr(module, "apply_update")


def test_own_state_and_dp_sgd_are_refused():
    square = lambda y, t, W: gc.mean(gc.sum(gc.square(y - t), axis=1))  # noqa: E731
    assert "keeps state of its own (seen)" in str(gc.compile(model(square, state=True), loss="loss").refused)
    dp = gc.compile(model(square), loss="loss", optimizer=gc.SGD(lr=0.1, clip_per_example=1.0, noise=1.0))
    assert "DP-SGD" in str(dp.refused)
    assert gc.compile(model(square), loss="loss").refused is None


@pytest.mark.gpu
def test_grad_step_and_apply_update_on_the_gpu():
    cp = cupy_or_skip()
    g, feeds = mlp(batch=64)
    cpu, gpu = (gc.compile(g, backend=b, loss="loss", optimizer=gc.Adam(lr=0.01)) for b in ("numpy", "cupy"))
    host, device = cpu.init_params(seed=1), gpu.init_params(seed=1)
    hs, ds = cpu.init_state(host), gpu.init_state(device)
    for prog, params, state in ((cpu, host, hs), (gpu, device, ds)):
        grads, loss = summed(prog.module, params, shards(batch_of(g, feeds)), 64)
        prog.apply_update(params, state, grads)
    for k in host:
        np.testing.assert_allclose(cp.asnumpy(device[k]), host[k], rtol=1e-10, atol=1e-12, err_msg=k)
