"""Deep graphs build, differentiate, optimize and emit without recursion (1000 layers under ``-m slow``)."""
import sys

import numpy as np
import pytest

import graphc as gc

from helpers import m


def deep_graph(layers):
    with gc.Graph("deep") as g:
        h = gc.input("x", (m, 4), dtype="float64")
        weights = []
        for i in range(layers):
            w = gc.param(f"w{i}", (4,), dtype="float64", init="ones")
            h = gc.tanh(h * w + gc.param(f"b{i}", (4,), dtype="float64"))
            weights.append(w)
        loss = gc.mean(h)
        g.output(loss=loss, **{f"d{i}": d for i, d in enumerate(gc.grad(loss, weights))})
    return g


def check_deep(layers):
    g = deep_graph(layers)
    limit = sys.getrecursionlimit()
    prog = gc.compile(g, opt_level=2)
    assert sys.getrecursionlimit() == limit  # nothing raised the limit to get through
    feeds = {"x": np.random.default_rng(0).normal(size=(3, 4)), **gc.init_params(g)}
    got, want = prog(feeds), g.evaluate(feeds)
    assert np.allclose(got["loss"], want["loss"], rtol=1e-10) and np.allclose(got["d0"], want["d0"], rtol=1e-8)


def test_deep_graph_compiles():
    check_deep(40)


@pytest.mark.slow
def test_thousand_layers_compile():
    check_deep(1000)
