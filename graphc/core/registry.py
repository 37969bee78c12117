"""The op registry: one ``Op`` record per op, holding its rules and traits side by side.

Rules (functions):
``infer(nodes, attrs) -> (shape, dtype)`` raises GraphError naming the op and its operands;
``impl(node, env, *arrays) -> array`` is the reference NumPy semantics used by ``Graph.evaluate``;
``vjp(out, g, *inputs, **attrs) -> grads`` builds backward nodes from ordinary ops (Tensors in, Tensors out);
``batch_axis(node, inputs, axes) -> axis`` says where the examples of a batch sit in the output, given where they
sit in each input (None: shared by all examples), raising GraphError where the op mixes examples, and
``batch_copies(node, inputs, batch) -> axis | None`` where an op of shared inputs makes one copy per example;
``shared_grad(out, P, inputs, batch, **attrs)`` carries per-example gradients ``P`` (batch axis first) back
through a node computed from shared tensors only; ``example_grad(slot, g, *inputs, axes)`` gives the
per-example gradient of a shared operand where the generic rule (the VJP summed over all but the batch axis)
does not do, e.g. ``x @ W`` as outer products; ``class_ids(node, inputs) -> [(slot, classes)]`` names the
integer inputs that are ids (class ids, rows of a table) and how many there are, so feeds out of range are caught;
``describe(node, names) -> str`` is what a node computes in words (``names`` maps ids to names);
``requires(node, inputs) -> [condition]`` states what the symbolic dims must satisfy for the op to make sense
(``x[-2:]`` needs ``m ≥ 2``), checked against the feeds by the evaluator and the generated modules.

Traits (data): ``source`` (made from nothing: "input", "param", "state" (persists between training steps without
being trained: running statistics, optimizer moments), "const" (an array baked in), "fill" (one value
everywhere, e.g. ``1/m``) or "random"), ``inference`` (the value a random source takes in inference mode, as
in ``predict``: a dropout mask is 1; None: it draws as in training), ``inference_input`` (the input whose value a node
takes in inference mode: batch statistics give way to running ones), ``view`` (shares its
input's memory), ``linear`` (commutes with scalar factors: ``c·op(x) = op(c·x)``), ``var`` (what an unnamed node is
called in code, diagrams and ``graphc explain``: a stem, or a rule ``var(node, input nodes, names) -> stem``;
see ``graphc.core.naming``), ``in_place`` (as the new value of a param or state, it is computed straight into that
array, reading the old value first; other new values are computed aside and copied in).

Backends keep their lowerings in tables of their own, keyed by op name (``graphc.backends``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sympy

from graphc.core import shapes
from graphc.core.errors import GraphError


@dataclass(frozen=True)
class Op:
    name: str
    infer: Callable
    impl: Callable
    vjp: Callable | None = None  # None: not differentiable (labels, masks, sources)
    source: str | None = None
    view: bool = False
    linear: bool = False
    var: str | Callable | None = None
    in_place: bool = False
    describe: Callable | None = None
    batch_axis: Callable | None = None
    batch_copies: Callable | None = None
    shared_grad: Callable | None = None
    example_grad: Callable | None = None
    class_ids: Callable | None = None
    requires: Callable | None = None
    inference: float | None = None
    inference_input: int | None = None

    @property
    def fed(self) -> bool:
        """Its value is given by the caller (inputs, params and state)."""
        return self.source in ("input", "param", "state")

    @property
    def given(self) -> bool:
        """Its value exists before any statement runs: fed by the caller, or a constant of the module."""
        return self.fed or self.source == "const"


OPS: dict[str, Op] = {}


def defop(name: str, *, infer, impl, vjp=None, **traits) -> Op:
    if name in OPS:
        raise RuntimeError(f"op {name!r} defined twice")
    OPS[name] = op = Op(name, infer, impl, vjp, **traits)
    return op


def fail(op: str, message: str, *nodes) -> GraphError:
    operands = ", ".join(n.label for n in nodes)  # 'x' (m, 784) or matmul#7 (m, 128)
    return GraphError(f"{op}: {message}" + (f" [operands: {operands}]" if operands else ""))


def reduced_shape(dims, axes, keepdims: bool):
    if keepdims:
        return tuple(sympy.Integer(1) if i in axes else d for i, d in enumerate(dims))
    return tuple(d for i, d in enumerate(dims) if i not in axes)


def check_axes(op: str, axis, node):
    axes = shapes.normalize_axes(axis, len(node.shape))
    if axes is None:
        n = len(node.shape)
        raise fail(op, f"axis {axis!r} is not an axis of a {n}-d tensor (distinct ints from {-n} to {n - 1})", node)
    return axes
