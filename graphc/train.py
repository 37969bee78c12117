"""The training step: gradients of the loss for every parameter and the update applied in place."""
from __future__ import annotations

from dataclasses import dataclass

from graphc.autodiff import grad
from graphc.dsl import Tensor
from graphc.errors import GraphError
from graphc.ir import Rebuild
from graphc.ops.elementwise import arg, ew
from graphc.ops.elementwise import scalar as exact


@dataclass(frozen=True)
class SGD:
    """Plain stochastic gradient descent: ``p ← p − lr·∂loss/∂p``."""
    lr: float = 0.01

    def __post_init__(self):
        if not self.lr > 0:
            raise GraphError(f"SGD: lr must be positive, not {self.lr!r}")

    def update(self, param: Tensor, g: Tensor) -> Tensor:
        return ew(arg(0) - exact(self.lr) * arg(1), [param, g], "sgd_update")


def training_graph(graph, loss: str, optimizer):
    """A copy of ``graph`` that also computes every param's gradient of output ``loss`` and its update."""
    if loss not in graph.outputs:
        raise GraphError(f"training: graph {graph.name!r} has no output {loss!r} (outputs: {list(graph.outputs)})")
    if not graph.params:
        raise GraphError(f"training: graph {graph.name!r} has no params to train")
    new = Rebuild(graph).run()
    loss_t = Tensor(new, new.outputs[loss])
    params = [Tensor(new, new.params[name]) for name in graph.params]
    existing = {}
    for r in new.grads:  # reuse the user's own gc.grad(loss, …) results
        if r.loss == loss_t.id and r.seed is None:
            existing.update(zip(r.wrt, r.results))
    missing = [p for p in params if p.id not in existing]
    if missing:
        for p, g in zip(missing, grad(loss_t, missing)):
            existing[p.id] = g.id
    with new.in_phase("update"):
        for p in params:
            new_value = optimizer.update(p, Tensor(new, existing[p.id]))
            if new_value.id != p.id:
                new.updates[p.name] = new_value.id
    return new
