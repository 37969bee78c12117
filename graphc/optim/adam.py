"""Adam and AdamW (torch.optim.Adam's and AdamW's rules), in the form that costs the fewest array passes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import sympy

from graphc.core.errors import GraphError
from graphc.core.ir import STEP
from graphc.ops.elementwise import arg, ew, scalar
from graphc.ops.functions import Maximum
from graphc.optim.base import LR, Optimizer, host_scalar

STEP_SIZE = host_scalar("step_size")  # lr·√(1 − β₂ᵗ)/(1 − β₁ᵗ): the learning rate with both bias corrections
EPS_HAT = host_scalar("eps_hat")  # eps·√(1 − β₂ᵗ): eps moved inside the second moment's bias correction


@dataclass(frozen=True)
class Adam(Optimizer):
    """Adam: moments ``m ← β₁·m + (1 − β₁)·g`` and ``v ← β₂·v + (1 − β₂)·g²`` (the state ``m_<param>``,
    ``v_<param>``), then ``p ← p − lr/(1 − β₁ᵗ) · m/(√v/√(1 − β₂ᵗ) + eps)`` at step ``t`` (1 for the first). With
    ``weight_decay``, ``g + weight_decay·p`` replaces ``g``; with ``amsgrad``, the running maximum of ``v`` (the state
    ``vmax_<param>``) replaces ``v`` in the step. Exactly ``torch.optim.Adam``: the bias corrections are computed once
    per step on the host in float64, the step written as ``p − step_size·m/(√v + eps_hat)`` (the same value)."""
    lr: float = 0.001
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    amsgrad: bool = False

    DECOUPLED: ClassVar[bool] = False  # AdamW: the decay shrinks the param, not the gradient

    def check(self):
        who = type(self).__name__
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise GraphError(f"{who}: betas must be two numbers in [0, 1), not {self.betas!r}")
        if not self.eps >= 0 or not self.weight_decay >= 0:
            raise GraphError(f"{who}: eps and weight_decay must be >= 0, not {self.eps!r}, {self.weight_decay!r}")

    def slots(self):
        return ("m", "v", "vmax") if self.amsgrad else ("m", "v")

    def scalars(self) -> dict:
        beta1, beta2 = map(scalar, self.betas)
        correction2 = sympy.sqrt(1 - beta2 ** (STEP + 1))
        return {STEP_SIZE.name: LR * correction2 / (1 - beta1 ** (STEP + 1)),
                EPS_HAT.name: scalar(self.eps) * correction2}

    def update(self, param, grad, slots):
        beta1, beta2 = map(scalar, self.betas)
        decay = scalar(self.weight_decay)
        if decay and not self.DECOUPLED:
            grad = ew(arg(0) + decay * arg(1), [grad, param], "weight_decay", name=f"g_{param.name}")
        m = ew(beta1 * arg(0) + (1 - beta1) * arg(1), [slots["m"], grad], "adam_m")
        v = ew(beta2 * arg(0) + (1 - beta2) * arg(1) ** 2, [slots["v"], grad], "adam_v")
        new = {"m": m, "v": v}
        if self.amsgrad:
            v = new["vmax"] = ew(Maximum(arg(0), arg(1)), [slots["vmax"], v], "amsgrad")
        shrink = 1 - LR * decay if decay and self.DECOUPLED else 1
        new[""] = ew(shrink * arg(0) - STEP_SIZE * arg(1) / (sympy.sqrt(arg(2)) + EPS_HAT), [param, m, v], "adam")
        return new


@dataclass(frozen=True)
class AdamW(Adam):
    """Adam with decoupled weight decay: ``p ← (1 − lr·weight_decay)·p`` before Adam's step, the gradient left
    alone. Exactly ``torch.optim.AdamW``."""
    weight_decay: float = 0.01

    DECOUPLED: ClassVar[bool] = True
