"""The training graph: every param's gradient of the loss, and the optimizer's update rule for it and its state."""
from __future__ import annotations

from graphc.core.errors import GraphError
from graphc.core.ir import Rebuild
from graphc.dsl import Tensor, fill, state
from graphc.ops.elementwise import arg, ew
from graphc.transforms.autodiff import grad


def training_graph(graph, loss: str, optimizer):
    """A copy of ``graph`` that also computes every param's gradient of output ``loss`` and its update, and the
    updates of the optimizer's state (``Graph.state``, ``Graph.updates``) and of the graph's own (``gc.assign``)."""
    if loss not in graph.outputs:
        raise GraphError(f"training: graph {graph.name!r} has no output {loss!r} (outputs: {list(graph.outputs)})")
    if not graph.params:
        raise GraphError(f"training: graph {graph.name!r} has no params to train")
    new = Rebuild(graph).run()
    params = [Tensor(new, new.params[name]) for name in graph.params]
    grads = gradients(new, Tensor(new, new.outputs[loss]), params, optimizer)
    with new, new.in_phase("update"):
        for p, g, clipped in zip(params, grads, optimizer.clip(grads)):
            if clipped.id != g.id:
                clipped.named(f"g_{p.name}")  # the gradient the rule steps with
            g = clipped
            slots = {slot: slot_state(new, p, slot, optimizer) for slot in optimizer.slots()}
            for slot, value in optimizer.update(p, g, slots).items():
                target = slots[slot] if slot else p
                if value.id != target.id:
                    new.updates[target.name] = value.id
    new.hypers["lr"] = optimizer.learning_rate()
    new.scalars.update(optimizer.scalars())
    new.update_rule = optimizer.describe()
    return new


def gradients(graph, loss: Tensor, params: list[Tensor], optimizer) -> list[Tensor]:
    """What the update rule reads as the params' gradients: the optimizer's own (DP-SGD's), else ``∂loss/∂p``,
    reusing the user's ``gc.grad(loss, …)`` results where there are some."""
    custom = optimizer.gradients(loss, params)
    if custom is not None:
        return custom
    existing = {}
    for r in graph.grads:
        if r.loss == loss.id and r.seed is None:
            existing.update(zip(r.wrt, r.results))
    scale = optimizer.gradient_scale()
    if scale is not None and not existing:  # the step rides on the backward pass: f·∂loss/∂p, divided back by f
        with graph.in_phase("backward"):   # in the rule's expression, where it cancels (p − lr·(−lr·g)/(−lr))
            seed = fill(graph, scale, (), loss.dtype)
        steps = grad(loss, params, seed=seed)
        for p, step in zip(params, steps):
            if step.node.phase == "backward" and not step.node.op == "fill":
                step.named(f"step_{p.name}")  # what the update adds: the gradient times the factor
        return [ew(arg(0) / scale, [s]) for s in steps]
    missing = [p for p in params if p.id not in existing]
    if missing:
        existing.update((p.id, g.id) for p, g in zip(missing, grad(loss, missing)))
    return [Tensor(graph, existing[p.id]) for p in params]


def slot_state(graph, param: Tensor, slot: str, optimizer) -> Tensor:
    """The state tensor ``<slot>_<param>`` an update rule keeps beside ``param`` (its shape and dtype, zeros)."""
    name = f"{slot}_{param.name}"
    if name in graph.fed():
        raise GraphError(f"{optimizer.describe()} keeps its state {name!r} beside param {param.name!r}, but graph "
                         f"{graph.name!r} already has a tensor {name!r}: rename it")
    return state(name, param.shape, param.dtype)
