"""Random draws: sources whose values change from call to call of the generated code (dropout masks, noise).

Each random node has a seed and a stream (its number among the graph's random nodes, so two draws of one
shape stay two nodes). Call ``c`` of a NumPy module draws stream ``k`` of seed ``s`` from
``np.random.default_rng([s, k, c])``: the steps differ, a fresh module repeats them, and
``g.evaluate(feeds, call=c)`` draws the same values. A CuPy module draws from one device generator per seed,
advancing in statement order. A node is drawn once per call: the backward pass reads the mask the forward pass
used. In inference mode (``predict``) a dropout mask is 1 (the op's ``inference`` value).
"""
from __future__ import annotations

import numpy as np

from graphc.core import shapes
from graphc.core.dtypes import is_float
from graphc.core.errors import GraphError
from graphc.core.evaluate import CALL
from graphc.core.ir import active_graph
from graphc.core.registry import OPS, defop
from graphc.dsl import Tensor
from graphc.ops.elementwise import arg, ew


def _declared(nodes, attrs):  # sources are added with their shape; never inferred
    raise RuntimeError("random nodes are declared, not inferred")


def generator(node, env) -> np.random.Generator:
    """The evaluator's generator for ``node`` at the call number in ``env`` (0 unless given)."""
    return np.random.default_rng([node.attr("seed"), node.attr("stream"), int(env.get(CALL, 0))])


def _normal_impl(node, env):
    return generator(node, env).standard_normal(shapes.evaluate(node.shape, env), dtype=node.dtype)


def _uniform_impl(node, env):
    u = generator(node, env).random(shapes.evaluate(node.shape, env), dtype=node.dtype)
    low, high = node.attr("low"), node.attr("high")
    return u if (low, high) == (0, 1) else u * (high - low) + low  # as the generated code: scale, then shift


def keep_scale(p: float) -> float:
    """What a kept element is multiplied by: 1/(1 − p), so the expected value is unchanged."""
    return 1 / (1 - p)


def _mask_impl(node, env):
    u = generator(node, env).random(shapes.evaluate(node.shape, env), dtype=node.dtype)
    p = node.attr("p")
    return (u >= p).astype(node.dtype) * keep_scale(p)  # kept with probability 1 − p


def _describe(what):
    return lambda node, names: f"{what(node)} (seed {node.attr('seed')}, stream {node.attr('stream')})"


defop("random_normal", infer=_declared, impl=_normal_impl, source="random", var="noise",
      describe=_describe(lambda node: "random_normal"))
defop("random_uniform", infer=_declared, impl=_uniform_impl, source="random", var="uniform",
      describe=_describe(lambda node: f"random_uniform({node.attr('low')}, {node.attr('high')})"))
defop("dropout_mask", infer=_declared, impl=_mask_impl, source="random", var="mask", inference=1,
      describe=_describe(lambda node: f"dropout_mask(p={node.attr('p')})"))


def draw(graph, op: str, shape, dtype: str, seed: int, **attrs) -> Tensor:
    """A random node of ``graph`` on a stream of its own (one past the graph's last)."""
    if not is_float(dtype):
        raise GraphError(f"{op}: dtype must be float32 or float64, not {dtype}")
    if not (isinstance(seed, (int, np.integer)) and seed >= 0):
        raise GraphError(f"{op}: seed must be a non-negative int, not {seed!r}")
    streams = [n.attr("stream") for n in graph.nodes.values() if OPS[n.op].source == "random"]
    attrs = {**attrs, "seed": int(seed), "stream": max(streams, default=-1) + 1}
    return Tensor(graph, graph.add(op, (), attrs, shapes.as_shape(shape, f"{op} shape"), dtype))


def random_normal(shape, dtype: str = "float32", seed: int = 0) -> Tensor:
    """Standard normal draws N(0, 1) of ``shape`` (dims may be symbolic), fresh at every call of the generated
    code; ``seed`` and the module's count of calls decide them."""
    return draw(active_graph("gc.random_normal"), "random_normal", shape, dtype, seed)


def random_uniform(shape, dtype: str = "float32", low: float = 0.0, high: float = 1.0, seed: int = 0) -> Tensor:
    """Uniform draws in ``[low, high)`` of ``shape``, fresh at every call (as ``random_normal``)."""
    if not float(low) < float(high):
        raise GraphError(f"random_uniform: low {low!r} must be below high {high!r}")
    return draw(active_graph("gc.random_uniform"), "random_uniform", shape, dtype, seed, low=float(low),
                high=float(high))


def dropout(x: Tensor, p: float, seed: int = 0) -> Tensor:
    """Inverted dropout: each element zeroed with probability ``p``, the others scaled by 1/(1 − p), with a fresh
    mask at every call of ``run`` and ``train_step`` (the backward pass reuses it); the identity in ``predict``."""
    if not isinstance(x, Tensor) or not is_float(x.dtype):
        raise GraphError("dropout: x must be a float tensor")
    if not 0 <= p < 1:
        raise GraphError(f"dropout: p must lie in [0, 1), not {p!r}")
    if p == 0:
        return x
    mask = draw(x.graph, "dropout_mask", x.shape, x.dtype, seed, p=float(p))
    return ew(arg(0) * arg(1), [x, mask], "dropout")


def noise(graph, shape, dtype: str, seed: int) -> Tensor:
    """Standard normal draws for ``graph`` outside a ``with`` block (DP-SGD's noise)."""
    return draw(graph, "random_normal", shape, dtype, seed)


__all__ = ["dropout", "random_normal", "random_uniform"]
