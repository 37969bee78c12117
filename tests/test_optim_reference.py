"""Optimizers in the generated training step against the update rules as torch.optim documents them, written here
in NumPy and fed the reference evaluator's gradients: the check that needs no PyTorch (``test_optim.py`` compares
with torch.optim itself where it is installed)."""
import numpy as np
import pytest

import graphc as gc
from graphc.transforms.gradcheck import rel_error

m = gc.dim("m")
STEPS = 30
NAMES = ("W1", "b1", "W2", "b2")


def mlp():
    """A 6-16-4 tanh MLP, mean softmax cross-entropy, float64, with the gradient of each param as an output."""
    with gc.Graph("mlp") as g:
        x, t = gc.input("x", (m, 6), dtype="float64"), gc.input("t", (m,), dtype="int64")
        W1 = gc.param("W1", (6, 16), dtype="float64", init="glorot_uniform")
        b1 = gc.param("b1", (16,), dtype="float64", init=("normal", 0.1))
        W2 = gc.param("W2", (16, 4), dtype="float64", init="glorot_uniform")
        b2 = gc.param("b2", (4,), dtype="float64", init=("normal", 0.1))
        loss = gc.mean(gc.softmax_cross_entropy(gc.tanh(x @ W1 + b1) @ W2 + b2, t))
        grads = gc.grad(loss, [W1, b1, W2, b2])
        g.output(loss=loss, **{f"d{n}": d for n, d in zip(NAMES, grads)})
    return g


def sgd(lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    """torch.optim.SGD's algorithm (its documentation), one param at a time."""
    def step(p, g, state, t):
        g = g + weight_decay * p
        if momentum:
            state["b"] = g if t == 1 else momentum * state["b"] + (1 - dampening) * g
            g = g + momentum * state["b"] if nesterov else state["b"]
        return p - lr * g
    return step


def adam(lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, decoupled=False):
    """torch.optim.Adam's algorithm (AdamW's with ``decoupled``), one param at a time."""
    (b1, b2) = betas

    def step(p, g, state, t):
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        state["m"] = b1 * state.get("m", 0) + (1 - b1) * g
        state["v"] = b2 * state.get("v", 0) + (1 - b2) * g * g
        v = state["vmax"] = np.maximum(state.get("vmax", 0), state["v"]) if amsgrad else state["v"]
        return p - lr * (state["m"] / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    return step


CASES = {  # name -> (graphc's optimizer, the reference rule, global gradient-norm clipping)
    "sgd": (gc.SGD(0.1), sgd(0.1), None),
    "momentum": (gc.SGD(0.1, momentum=0.9), sgd(0.1, momentum=0.9), None),
    "momentum_dampening_wd": (gc.SGD(0.1, momentum=0.8, dampening=0.3, weight_decay=0.01),
                              sgd(0.1, momentum=0.8, dampening=0.3, weight_decay=0.01), None),
    "nesterov_wd": (gc.SGD(0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
                    sgd(0.05, momentum=0.9, nesterov=True, weight_decay=1e-3), None),
    "sgd_clip": (gc.SGD(0.5, clip_grad_norm=0.3), sgd(0.5), 0.3),
    "adam": (gc.Adam(0.01), adam(0.01), None),
    "adam_wd_amsgrad": (gc.Adam(0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05, amsgrad=True),
                        adam(0.01, (0.8, 0.99), 1e-6, 0.05, amsgrad=True), None),
    "adamw": (gc.AdamW(0.01), adam(0.01, weight_decay=0.01, decoupled=True), None),
    "adamw_amsgrad_clip": (gc.AdamW(0.02, weight_decay=0.1, amsgrad=True, clip_grad_norm=0.5),
                           adam(0.02, weight_decay=0.1, amsgrad=True, decoupled=True), 0.5),
}


def reference_run(graph, rule, params, data, clip):
    """Losses and final params: the evaluator's gradients, clipped as clip_grad_norm_ does, then ``rule``."""
    states, losses = {n: {} for n in NAMES}, []
    for t, batch in enumerate(data, 1):
        out = graph.evaluate({**batch, **params})
        losses.append(float(out["loss"]))
        grads = {n: out[f"d{n}"] for n in NAMES}
        if clip is not None:
            norm = np.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
            grads = {n: g * min(1.0, clip / (norm + 1e-6)) for n, g in grads.items()}
        params = {n: rule(params[n], grads[n], states[n], t) for n in NAMES}
    return np.array(losses), params


@pytest.mark.parametrize("name", CASES)
def test_steps_match_the_documented_update_rules(name):
    optimizer, rule, clip = CASES[name]
    graph = mlp()
    rng = np.random.default_rng(0)
    data = [{"x": rng.normal(size=(8, 6)), "t": rng.integers(0, 4, 8)} for _ in range(STEPS)]
    initial = gc.init_params(graph, seed=3)
    want_losses, want = reference_run(graph, rule, dict(initial), data, clip)
    program = gc.compile(graph, loss="loss", optimizer=optimizer)
    params = {k: v.copy() for k, v in initial.items()}
    state = program.init_state(params)
    losses = np.array([float(program.train_step(params, batch, state)["loss"]) for batch in data])
    assert rel_error(losses, want_losses) <= 1e-10
    for n in NAMES:
        assert rel_error(params[n], want[n]) <= 1e-10, n
