"""The training graphs: every param's gradient of the loss and the optimizer's update rule for it and its state
(``train_step``); and the same step cut in two for data-parallel training (``grad_step``: one shard's gradients of
its share of the batch's loss; ``apply_update``: the rule, given the gradients summed over the shards)."""
from __future__ import annotations

from graphc.core.errors import GraphError
from graphc.core.ir import Rebuild
from graphc.dsl import STEP_COUNTER, Tensor, fill, input, param, state
from graphc.ops.elementwise import arg, ew
from graphc.transforms.autodiff import check_scalar, grad
from graphc.transforms.sharded import M_TOTAL, shard_share


def training_graph(graph, loss: str, optimizer):
    """A copy of ``graph`` that also computes every param's gradient of output ``loss`` and its update, and the
    updates of the optimizer's state (``Graph.state``, ``Graph.updates``) and of the graph's own (``gc.assign``)."""
    if loss not in graph.outputs:
        raise GraphError(f"training: graph {graph.name!r} has no output {loss!r} (outputs: {list(graph.outputs)})")
    if not graph.params:
        raise GraphError(f"training: graph {graph.name!r} has no params to train")
    new = Rebuild(graph).run()
    params = [Tensor(new, new.params[name]) for name in graph.params]
    check_scalar(Tensor(new, new.outputs[loss]), "training")
    grads = gradients(new, Tensor(new, new.outputs[loss]), params, optimizer)
    apply_rule(new, params, grads, optimizer)
    return new


def apply_rule(graph, params: list[Tensor], grads: list[Tensor], optimizer) -> None:
    """Add to ``graph`` the optimizer's updates of ``params`` (and of its state) given their gradients ``grads``."""
    with graph, graph.in_phase("update"):
        for p, g, clipped in zip(params, grads, optimizer.clip(grads)):
            if clipped.id != g.id:
                clipped.named(f"g_{p.name}")  # the gradient the rule steps with
            g = clipped
            slots = {slot: slot_state(graph, p, slot, optimizer) for slot in optimizer.slots()}
            for slot, value in optimizer.update(p, g, slots).items():
                target = slots[slot] if slot else p
                if value.id != target.id:
                    graph.updates[target.name] = value.id
    graph.hypers["lr"] = optimizer.learning_rate()
    graph.scalars.update(optimizer.scalars())
    graph.update_rule = optimizer.describe()
    if graph.counts_steps() and STEP_COUNTER in graph.fed():
        raise GraphError(f"{optimizer.describe()} counts training steps in the state entry {STEP_COUNTER!r}, but "
                         f"graph {graph.name!r} already has a tensor {STEP_COUNTER!r}: rename it")


def update_graph(graph, optimizer):
    """The update alone (``apply_update``): inputs ``d<param>`` for the gradients, already summed over the shards of a
    batch, then the same clipping and rule as ``training_graph``, with the same state."""
    new = type(graph)(graph.name)
    with new:
        params = [param(name, graph.nodes[nid].shape, graph.nodes[nid].dtype, graph.nodes[nid].attr("init"))
                  for name, nid in graph.params.items()]
        grads = [input(fresh_name(f"d{p.name}", graph.fed()), p.shape, p.dtype) for p in params]
    apply_rule(new, params, grads, optimizer)
    return new


def fresh_name(stem: str, taken) -> str:
    """``stem``, or ``stem_2``, ``stem_3``… where the name is taken."""
    name, k = stem, 1
    while name in taken:
        k += 1
        name = f"{stem}_{k}"
    return name


def grad_step_graph(graph, loss: str, optimizer):
    """``grad_step``'s graph: every param's gradient of this shard's share of the whole batch's loss (outputs in the
    order of ``graph.params``, after the share itself), with ``M_TOTAL`` an argument.

    Refused (GraphError, saying why) where the loss is not a sum over the examples, the graph keeps state of its
    own (grad_step takes none and writes none), or the optimizer makes its own gradients (DP-SGD's noise is drawn
    once per batch, not once per shard)."""
    if optimizer.clip_per_example is not None:
        raise GraphError(f"grad_step: {optimizer.describe()} clips and noises the gradients per batch (DP-SGD); "
                         "shards cannot compute them apart")
    if graph.state:
        raise GraphError(f"grad_step: graph {graph.name!r} keeps state of its own ({', '.join(graph.state)}); "
                         "grad_step takes none and writes none")
    if M_TOTAL.name in {d.name for d in graph.dims()} | set(graph.fed()):
        raise GraphError(f"grad_step: graph {graph.name!r} names a dim or tensor {M_TOTAL.name!r}, grad_step's "
                         "argument (the whole batch's examples): rename it")
    new = Rebuild(graph).run()
    share = shard_share(Tensor(new, new.outputs[loss]))
    params = [Tensor(new, nid) for nid in new.params.values()]
    new.grads = []  # the user's gc.grad requests: only the share's gradients are wanted
    grads = grad(share, params)
    taken = new.fed()
    new.outputs = {fresh_name("loss", taken): share.id}
    new.outputs.update((fresh_name(f"d{p.name}", taken), g.id) for p, g in zip(params, grads))
    new.hypers = {M_TOTAL.name: None}  # an argument without a default
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
