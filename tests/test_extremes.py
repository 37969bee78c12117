"""Numerical extremes: where the mathematical value is finite, losses and gradients are finite and accurate."""
import numpy as np
import pytest

import graphc as gc

from helpers import m

K = 4
TOL = {"float64": 1e-9, "float32": 2e-4}
BIG_LOGITS = np.array([[1e4, -1e4, 0.0, 1e4 - 1.0], [-1e4, -1e4, -1e4, -1e4 + 2.0], [0.0, 3.0, -1e4, 1e4]])
LABELS = np.array([1, 3, 2])


def _stable_log_softmax(z):
    s = z - z.max(axis=-1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=-1, keepdims=True))


def _stable_sigmoid(x):
    return np.exp(-np.logaddexp(0.0, -x))


def _run_both(g, feeds, reference=True):
    """The reference evaluator's and the compiled (opt level 2) module's outputs."""
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # overflow is a failure; underflow to 0 is fine
        if reference:
            yield "evaluate", g.evaluate(feeds)
        yield "compiled", gc.compile(g, opt_level=2)(feeds)


def _assert_close(got, want, dtype, what, tol=None):
    got = np.asarray(got, dtype=np.float64)
    assert np.all(np.isfinite(got)), f"{what}: not finite: {got}"
    scale = max(float(np.max(np.abs(want))), 1.0)
    err = float(np.max(np.abs(got - want))) / scale
    assert err <= (tol or TOL[dtype]), f"{what}: error {err:.2e}\n got {got}\nwant {want}"


def _xent_graph(dtype, how):
    with gc.Graph(f"xent_{how}") as g:
        z = gc.input("z", (m, K), dtype=dtype)
        t = gc.input("t", (m,), dtype="int64")
        if how == "fused":
            losses = gc.softmax_cross_entropy(z, t)
        elif how == "by_hand":  # the optimizer rewrites log(softmax) and fuses it with the one-hot product
            losses = -gc.sum(gc.one_hot(t, K, dtype=dtype) * gc.log(gc.softmax(z)), axis=-1)
        else:
            losses = -gc.sum(gc.one_hot(t, K, dtype=dtype) * gc.log_softmax(z), axis=-1)
        loss = gc.mean(losses)
        g.output(loss=loss, dz=gc.grad(loss, z))
    return g


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("how", ["fused", "by_hand", "log_softmax"])
def test_cross_entropy_of_huge_logits(dtype, how):
    g = _xent_graph(dtype, how)
    feeds = {"z": BIG_LOGITS.astype(dtype), "t": LABELS}
    onehot = np.eye(K)[LABELS]
    logp = _stable_log_softmax(BIG_LOGITS)
    want_loss = -np.mean(np.sum(onehot * logp, axis=-1))
    want_dz = (np.exp(logp) - onehot) / len(LABELS)
    # unoptimized, the hand-written form is log(0) = -inf for the far-off classes: only the fused form is finite
    for where, out in _run_both(g, feeds, reference=how != "by_hand"):
        _assert_close(out["loss"], want_loss, dtype, f"{where} loss")
        _assert_close(out["dz"], want_dz, dtype, f"{where} dz")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("fn", ["softmax", "log_softmax"])
def test_softmax_of_huge_logits(dtype, fn):
    rng = np.random.default_rng(0)
    weight = rng.normal(size=BIG_LOGITS.shape)
    with gc.Graph(fn) as g:
        z = gc.input("z", (m, K), dtype=dtype)
        w = gc.input("w", (m, K), dtype=dtype)
        y = getattr(gc, fn)(z)
        loss = gc.sum(y * w)
        g.output(y=y, loss=loss, dz=gc.grad(loss, z))
    logp = _stable_log_softmax(BIG_LOGITS)
    p = np.exp(logp)
    if fn == "softmax":
        want_y, want_dz = p, p * (weight - np.sum(weight * p, axis=-1, keepdims=True))
    else:
        want_y, want_dz = logp, weight - p * np.sum(weight, axis=-1, keepdims=True)
    for where, out in _run_both(g, {"z": BIG_LOGITS.astype(dtype), "w": weight.astype(dtype)}):
        _assert_close(out["y"], want_y, dtype, f"{where} {fn}")
        _assert_close(out["loss"], np.sum(want_y * weight), dtype, f"{where} loss")
        _assert_close(out["dz"], want_dz, dtype, f"{where} dz")


X = np.array([-1000.0, -30.0, -1.0, 0.0, 0.5, 30.0, 1000.0])
T = np.array([0.0, 1.0, 1.0, 0.5, 0.0, 0.0, 1.0])
ELEMENTWISE = {
    # name -> (build, value, derivative) with stable NumPy formulas
    "sigmoid": (gc.sigmoid, _stable_sigmoid, lambda x: _stable_sigmoid(x) * _stable_sigmoid(-x)),
    "softplus": (gc.softplus, lambda x: np.logaddexp(0.0, x), _stable_sigmoid),
    "bce": (lambda x, y: gc.binary_cross_entropy_with_logits(x, y),
            lambda x: np.logaddexp(0.0, x) - T * x, lambda x: _stable_sigmoid(x) - T),
    "tanh": (gc.tanh, np.tanh, lambda x: 1.0 - np.tanh(x) ** 2),
    "exp_neg": (lambda x: gc.exp(-gc.abs(x)), lambda x: np.exp(-np.abs(x)), lambda x: -np.sign(x) * np.exp(-np.abs(x))),
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_elementwise_at_plus_minus_1000(dtype, name):
    build, value, deriv = ELEMENTWISE[name]
    x_vals = X[X != 0.0] if name == "exp_neg" else X  # |x| has a kink at 0
    with gc.Graph(name) as g:
        x = gc.input("x", (m,), dtype=dtype)
        y = build(x, gc.input("t", (m,), dtype=dtype)) if name == "bce" else build(x)
        loss = gc.sum(y)
        g.output(y=y, loss=loss, dx=gc.grad(loss, x))
    feeds = {"x": x_vals.astype(dtype)}
    if name == "bce":
        feeds["t"] = T.astype(dtype)
    for where, out in _run_both(g, feeds):
        _assert_close(out["y"], value(x_vals), dtype, f"{where} {name}")
        _assert_close(out["loss"], np.sum(value(x_vals)), dtype, f"{where} loss")
        _assert_close(out["dx"], deriv(x_vals), dtype, f"{where} d{name}")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("axis", [-1, None])
def test_logsumexp_of_large_values(dtype, axis):
    z = np.array([[1e4, 1e4 - 1.0, -1e4], [500.0, 800.0, 700.0]])
    w = np.array([0.5, -2.0]) if axis == -1 else np.array(1.5)
    with gc.Graph("lse") as g:
        zt = gc.input("z", (m, 3), dtype=dtype)
        wt = gc.input("w", (m,) if axis == -1 else (), dtype=dtype)
        y = gc.logsumexp(zt, axis=axis)
        loss = gc.sum(y * wt)
        g.output(y=y, loss=loss, dz=gc.grad(loss, zt))
    top = z.max(axis=axis, keepdims=True)
    want_y = np.squeeze(top + np.log(np.exp(z - top).sum(axis=axis, keepdims=True)), axis=axis)
    soft = np.exp(z - np.expand_dims(want_y, -1) if axis == -1 else z - want_y)
    want_dz = soft * (w[:, None] if axis == -1 else w)
    # in float32 the result near 1e4 is only good to ~1e4·eps, and exp(z - lse) inherits that absolute error
    tol = None if dtype == "float64" else 8 * np.finfo(np.float32).eps * np.max(np.abs(z))
    for where, out in _run_both(g, {"z": z.astype(dtype), "w": w.astype(dtype)}):
        _assert_close(out["y"], want_y, dtype, f"{where} logsumexp")
        _assert_close(out["dz"], want_dz, dtype, f"{where} dz", tol)
