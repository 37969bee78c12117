"""The training step: gradients of the loss for every parameter and the update applied in place."""
from __future__ import annotations

from dataclasses import dataclass

import sympy

from graphc.core.errors import GraphError
from graphc.core.ir import Rebuild
from graphc.dsl import Tensor
from graphc.ops.elementwise import arg, ew
from graphc.transforms.autodiff import grad
from graphc.transforms.per_example import dp_sgd_gradients

LR = sympy.Symbol("lr", positive=True)  # an argument of the generated train_step, defaulting to SGD's lr


@dataclass(frozen=True)
class SGD:
    """Stochastic gradient descent: ``p ← p − lr·∂loss/∂p``.

    With ``clip_per_example=C`` it takes DP-SGD's step instead: the batch mean of every example's gradient
    clipped to norm ``C`` (over all params jointly), plus Gaussian noise of std ``noise·C/m`` per coordinate
    drawn from a generator seeded with ``seed``. The loss must then be ``gc.mean(losses)`` of per-example losses.
    """
    lr: float = 0.01
    clip_per_example: float | None = None
    noise: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if not self.lr > 0:
            raise GraphError(f"SGD: lr must be positive, not {self.lr!r}")
        if self.clip_per_example is not None and not self.clip_per_example > 0:
            raise GraphError(f"SGD: clip_per_example must be positive, not {self.clip_per_example!r}")
        if not self.noise >= 0 or (self.noise and self.clip_per_example is None):
            raise GraphError(f"SGD: noise={self.noise!r} needs clip_per_example and must be >= 0 "
                             "(the noise is scaled by the clipping norm)")
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise GraphError(f"SGD: seed must be a non-negative int, not {self.seed!r}")

    def gradients(self, loss: Tensor, params: list[Tensor]) -> list[Tensor] | None:
        """The gradients the update uses where they are not ``∂loss/∂p``; None for the plain gradient."""
        if self.clip_per_example is None:
            return None
        return dp_sgd_gradients(loss, params, self.clip_per_example, self.noise, self.seed)

    def update(self, param: Tensor, g: Tensor) -> Tensor:
        return ew(arg(0) - LR * arg(1), [param, g], "sgd_update")


def training_graph(graph, loss: str, optimizer):
    """A copy of ``graph`` that also computes every param's gradient of output ``loss`` and its update."""
    if loss not in graph.outputs:
        raise GraphError(f"training: graph {graph.name!r} has no output {loss!r} (outputs: {list(graph.outputs)})")
    if not graph.params:
        raise GraphError(f"training: graph {graph.name!r} has no params to train")
    new = Rebuild(graph).run()
    loss_t = Tensor(new, new.outputs[loss])
    params = [Tensor(new, new.params[name]) for name in graph.params]
    custom = optimizer.gradients(loss_t, params) if hasattr(optimizer, "gradients") else None
    existing = {} if custom is None else {p.id: g.id for p, g in zip(params, custom)}
    for r in new.grads if custom is None else ():  # reuse the user's own gc.grad(loss, …) results
        if r.loss == loss_t.id and r.seed is None:
            existing.update(zip(r.wrt, r.results))
    missing = [p for p in params if p.id not in existing]
    if missing:
        for p, g in zip(missing, grad(loss_t, missing)):
            existing[p.id] = g.id
    new.hypers["lr"] = float(optimizer.lr)
    with new.in_phase("update"):
        for p in params:
            new_value = optimizer.update(p, Tensor(new, existing[p.id]))
            if new_value.id != p.id:
                new.updates[p.name] = new_value.id
    return new
