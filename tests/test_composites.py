"""The composite ops (layer_norm, var, std, min), cast, and a transformer block, against PyTorch in float64 (skipped
without PyTorch) and NumPy written by hand."""
import numpy as np
import pytest

import graphc as gc
from graphc.transforms.gradcheck import rel_error

from helpers import m

F64 = "float64"


def compiled(g, feeds):
    """The reference evaluator's outputs, checked equal to the generated module's."""
    expected, got = g.evaluate(feeds), gc.compile(g)(feeds)
    for k in expected:
        assert rel_error(got[k], expected[k]) <= 1e-10, k
    return expected


def test_var_std_and_min_follow_numpy():
    x = np.random.default_rng(0).normal(size=(4, 5))
    with gc.Graph("stats") as g:
        xt = gc.input("x", (m, 5), dtype=F64)
        g.output(var=gc.var(xt), var1=gc.var(xt, axis=1, ddof=1), std=gc.std(xt, axis=0, keepdims=True),
                 min=gc.min(xt, axis=1), tmin=xt.min())
    out = compiled(g, {"x": x})
    np.testing.assert_allclose(out["var"], x.var(), rtol=1e-12)
    np.testing.assert_allclose(out["var1"], x.var(axis=1, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(out["std"], x.std(axis=0, keepdims=True), rtol=1e-12)
    np.testing.assert_array_equal(out["min"], x.min(axis=1))
    assert out["tmin"] == x.min()


def test_cast_rounds_and_truncates_as_astype_and_passes_gradients_between_floats():
    x = np.array([[1.7, -2.5, 0.1 + 1e-12], [3.0, -0.4, 2.0 ** 30 + 0.5]])
    with gc.Graph("casts") as g:
        xt, w = gc.input("x", (m, 3), dtype=F64), gc.input("w", (m, 3), dtype="float32")
        single = gc.cast(xt, "float32")
        loss = gc.sum(gc.cast(single * w, F64))
        g.output(single=single, ints=gc.cast(xt, "int64"), bools=gc.cast(xt, "bool"), dx=gc.grad(loss, xt))
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = compiled(g, {"x": x, "w": w})
    np.testing.assert_array_equal(out["single"], x.astype(np.float32))
    np.testing.assert_array_equal(out["ints"], x.astype(np.int64))  # toward zero: 1, -2, 0, 3, 0, 2**30
    np.testing.assert_array_equal(out["bools"], x != 0)
    np.testing.assert_array_equal(out["dx"], w.astype(np.float64))  # the gradient cast back to float64


def test_layer_norm_matches_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x, gamma, beta, w = rng.normal(size=(3, 4, 6)), rng.normal(size=6), rng.normal(size=6), rng.normal(size=(3, 4, 6))
    with gc.Graph("ln") as g:
        xt, gt, bt, wt = (gc.input(n, v.shape, dtype=F64) for n, v in zip("xgbw", (x, gamma, beta, w)))
        y = gc.layer_norm(xt, gt, bt, eps=1e-5)
        loss = gc.sum(y * wt)
        g.output(y=y, **dict(zip(("dx", "dg", "db"), gc.grad(loss, [xt, gt, bt]))))
    out = compiled(g, {"x": x, "g": gamma, "b": beta, "w": w})
    xs, gs, bs = (torch.tensor(v, requires_grad=True) for v in (x, gamma, beta))
    y = torch.nn.functional.layer_norm(xs, (6,), gs, bs, eps=1e-5)
    (y * torch.tensor(w)).sum().backward()
    assert rel_error(out["y"], y.detach().numpy()) <= 1e-12
    for name, t in (("dx", xs), ("dg", gs), ("db", bs)):
        assert rel_error(out[name], t.grad.numpy()) <= 1e-12, name


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_matches_pytorch(approximate):
    torch = pytest.importorskip("torch")
    x = np.linspace(-6, 6, 25)
    with gc.Graph("gelu") as g:
        xt = gc.input("x", (25,), dtype=F64)
        y = gc.gelu(xt, approximate=approximate)
        g.output(y=y, dx=gc.grad(gc.sum(y), xt))
    out = compiled(g, {"x": x})
    xs = torch.tensor(x, requires_grad=True)
    y = torch.nn.functional.gelu(xs, approximate=approximate)
    y.sum().backward()
    assert rel_error(out["y"], y.detach().numpy()) <= 1e-12 and rel_error(out["dx"], xs.grad.numpy()) <= 1e-12


def test_a_pre_norm_transformer_block_matches_pytorch():
    """Multi-head causal self-attention and a GELU MLP, pre-norm, with residuals: loss and every gradient."""
    torch = pytest.importorskip("torch")
    T, D, H = 5, 8, 2
    rng = np.random.default_rng(2)
    shapes = {"Wq": (D, D), "Wk": (D, D), "Wv": (D, D), "Wo": (D, D), "g1": (D,), "b1": (D,), "g2": (D,),
              "b2": (D,), "W1": (D, 2 * D), "c1": (2 * D,), "W2": (2 * D, D), "c2": (D,)}
    values = {k: rng.normal(size=s) * (0.5 if len(s) == 2 else 1) for k, s in shapes.items()}
    x, w = rng.normal(size=(3, T, D)), rng.normal(size=(3, T, D))
    mask = np.tril(np.ones((T, T), dtype=bool))
    with gc.Graph("block") as g:
        xt, wt = gc.input("x", (m, T, D), dtype=F64), gc.input("w", (m, T, D), dtype=F64)
        p = {k: gc.param(k, s, dtype=F64) for k, s in shapes.items()}

        def heads(t):
            return gc.transpose(gc.reshape(t, (m, T, H, D // H)), (0, 2, 1, 3))
        n = gc.layer_norm(xt, p["g1"], p["b1"])
        q, k, v = heads(n @ p["Wq"]), heads(n @ p["Wk"]), heads(n @ p["Wv"])
        scores = gc.where(gc.const(mask), q @ gc.transpose(k, (0, 1, 3, 2)) / (D // H) ** 0.5, -1e9)
        att = gc.reshape(gc.transpose(gc.softmax(scores) @ v, (0, 2, 1, 3)), (m, T, D)) @ p["Wo"]
        h = xt + att
        y = h + gc.gelu(gc.layer_norm(h, p["g2"], p["b2"]) @ p["W1"] + p["c1"]) @ p["W2"] + p["c2"]
        loss = gc.sum(y * wt)
        g.output(loss=loss, **{f"d{k}": d for k, d in zip(shapes, gc.grad(loss, list(p.values())))})
    out = compiled(g, {"x": x, "w": w, **values})

    F = torch.nn.functional
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in values.items()}
    xs = torch.tensor(x)

    def split(t):
        return t.reshape(3, T, H, D // H).transpose(1, 2)
    n = F.layer_norm(xs, (D,), tp["g1"], tp["b1"])
    q, k, v = split(n @ tp["Wq"]), split(n @ tp["Wk"]), split(n @ tp["Wv"])
    att = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(3, T, D) @ tp["Wo"]
    h = xs + att
    y = h + F.gelu(F.layer_norm(h, (D,), tp["g2"], tp["b2"]) @ tp["W1"] + tp["c1"]) @ tp["W2"] + tp["c2"]
    loss = (y * torch.tensor(w)).sum()
    loss.backward()
    assert rel_error(out["loss"], loss.item()) <= 1e-12
    for name, t in tp.items():
        assert rel_error(out[f"d{name}"], t.grad.numpy()) <= 1e-10, name
