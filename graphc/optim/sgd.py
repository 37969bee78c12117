"""Stochastic gradient descent with momentum, Nesterov momentum, dampening and weight decay (torch.optim.SGD's
rules)."""
from __future__ import annotations

from dataclasses import dataclass

import sympy

from graphc.core.errors import GraphError
from graphc.core.ir import STEP
from graphc.ops.elementwise import arg, ew, scalar
from graphc.optim.base import LR, Optimizer, host_scalar

GRAD_WEIGHT = host_scalar("grad_weight")  # 1 at the first step, then 1 − dampening


@dataclass(frozen=True)
class SGD(Optimizer):
    """``p ← p − lr·d``: d the gradient ``g`` (plus ``weight_decay·p``), or with ``momentum`` μ the velocity
    ``b ← μ·b + (1 − dampening)·g`` (``b = g`` at the first step), or with ``nesterov`` ``g + μ·b``. The velocity is
    the state ``momentum_<param>``. Exactly ``torch.optim.SGD``."""
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False

    def check(self):
        if not self.momentum >= 0 or not self.weight_decay >= 0 or not 0 <= self.dampening <= 1:
            raise GraphError(f"SGD: momentum and weight_decay must be >= 0 and dampening in [0, 1], not "
                             f"{self.momentum!r}, {self.weight_decay!r}, {self.dampening!r}")
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise GraphError("SGD: nesterov needs a positive momentum and zero dampening")

    def slots(self):
        return ("momentum",) if self.momentum else ()

    def scalars(self) -> dict:
        if not (self.momentum and self.dampening):
            return {}
        return {GRAD_WEIGHT.name: 1 - scalar(self.dampening) * sympy.Min(STEP, 1)}

    def gradient_scale(self):
        plain = not (self.momentum or self.clip_grad_norm or self.clip_per_example)
        return -LR if plain else None

    def update(self, param, grad, slots):
        mu = scalar(self.momentum)
        if self.weight_decay:
            decay = scalar(self.weight_decay)
            grad = ew(arg(0) + decay * arg(1), [grad, param], "weight_decay", name=f"g_{param.name}")
        if not self.momentum:
            return {"": ew(arg(0) - LR * arg(1), [param, grad], "sgd_update")}
        weight = GRAD_WEIGHT if self.dampening else 1
        velocity = ew(mu * arg(0) + weight * arg(1), [slots["momentum"], grad], "momentum")
        direction = ew(arg(0) + mu * arg(1), [grad, velocity]) if self.nesterov else velocity
        return {"": ew(arg(0) - LR * arg(1), [param, direction], "sgd_update"), "momentum": velocity}
