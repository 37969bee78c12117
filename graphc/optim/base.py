"""What every optimizer shares: the learning rate and its schedule, global gradient-norm clipping, DP-SGD's
gradients, and the symbols update rules are written in."""
from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, fields

import sympy

from graphc.core.errors import GraphError
from graphc.dsl import Tensor
from graphc.ops.elementwise import add_all, arg, ew, scalar
from graphc.ops.functions import Minimum
from graphc.ops.reduce import reduce_sum
from graphc.optim.schedules import Schedule
from graphc.transforms.per_example import dp_sgd_gradients

LR = sympy.Symbol("lr", positive=True)  # an argument of the generated train_step, defaulting to the optimizer's lr


def host_scalar(name: str) -> sympy.Symbol:
    """A scalar the training step computes on the host once per step (``Graph.scalars``)."""
    return sympy.Symbol(name, positive=True)


@dataclass(frozen=True)
class Optimizer:
    """The options of every optimizer, beside its own (keyword-only).

    ``lr``: the learning rate, an argument of the generated ``train_step(..., lr=)`` whose default it is, or with
    ``schedule`` (``gc.schedules``) the base the schedule starts from, computed from the step counter at each
    step. ``clip_grad_norm``: the gradients of all params are scaled together so their global L2 norm is at most
    this (``torch.nn.utils.clip_grad_norm_``), before the update rule sees them. ``clip_per_example``, ``noise``,
    ``seed``: DP-SGD's gradients replace the plain ones — every example's gradient clipped to norm
    ``clip_per_example`` (over all params jointly), averaged, plus Gaussian noise of std
    ``noise·clip_per_example/m`` drawn from a generator seeded with ``seed``; the loss must then be
    ``gc.mean(losses)`` of per-example losses.
    """
    lr: float = 0.01
    _: KW_ONLY
    schedule: Schedule | None = None
    clip_grad_norm: float | None = None
    clip_per_example: float | None = None
    noise: float = 0.0
    seed: int = 0

    def __post_init__(self):
        who = type(self).__name__
        if not self.lr > 0:
            raise GraphError(f"{who}: lr must be positive, not {self.lr!r}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise GraphError(f"{who}: clip_grad_norm must be positive, not {self.clip_grad_norm!r}")
        if self.clip_per_example is not None and not self.clip_per_example > 0:
            raise GraphError(f"{who}: clip_per_example must be positive, not {self.clip_per_example!r}")
        if not self.noise >= 0 or (self.noise and self.clip_per_example is None):
            raise GraphError(f"{who}: noise={self.noise!r} needs clip_per_example and must be >= 0 "
                             "(the noise is scaled by the clipping norm)")
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise GraphError(f"{who}: seed must be a non-negative int, not {self.seed!r}")
        if self.schedule is not None and not isinstance(self.schedule, Schedule):
            raise GraphError(f"{who}: schedule must be one of gc.schedules, not {self.schedule!r}")
        self.check()

    def check(self) -> None:
        """Raise GraphError for options the update rule does not accept."""

    def slots(self) -> tuple[str, ...]:
        """The state the update rule keeps per param: slot "m" of param "W1" is the state tensor "m_W1"."""
        return ()

    def describe(self) -> str:
        """``Adam(lr=0.001, weight_decay=0.01)``: the optimizer with the options that differ from the defaults."""
        items = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
                 if f.name == "lr" or getattr(self, f.name) != f.default]
        return f"{type(self).__name__}({', '.join(items)})"

    def learning_rate(self):
        """The default of the training step's ``lr``: a number, or the schedule's expression of the step counter."""
        return float(self.lr) if self.schedule is None else self.schedule(float(self.lr))

    def scalars(self) -> dict:
        """Name -> expression of the scalars the update rule reads (``Graph.scalars``)."""
        return {}

    def gradient_scale(self):
        """A factor the step may apply to the loss instead of to every gradient (None: the rule needs the
        gradients as they are): where the update is ``p + f·g`` plus terms free of ``g``, differentiating
        ``f·loss`` gives ``f·g`` for every param at once, and the factor rides on the seed of the backward pass
        (folded into the ``1/m`` of a mean) instead of costing a pass over every gradient."""
        return None

    def gradients(self, loss: Tensor, params: list[Tensor]) -> list[Tensor] | None:
        """The gradients the update uses where they are not ``∂loss/∂p``; None for the plain gradient."""
        if self.clip_per_example is None:
            return None
        return dp_sgd_gradients(loss, params, self.clip_per_example, self.noise, self.seed)

    def clip(self, grads: list[Tensor]) -> list[Tensor]:
        """The gradients scaled by ``min(1, max_norm / (‖g‖ + 1e-6))`` with ``‖g‖`` their global L2 norm, as
        ``torch.nn.utils.clip_grad_norm_`` does (the scale is a scalar node, one per step)."""
        if self.clip_grad_norm is None:
            return grads
        squares = add_all([reduce_sum(ew(arg(0) ** 2, [g])) for g in grads])
        max_norm = scalar(self.clip_grad_norm)
        coef = ew(Minimum(max_norm / (sympy.sqrt(arg(0)) + scalar(1e-6)), 1), [squares])
        coef.named("clip_coef")
        return [ew(arg(0) * arg(1), [g, coef]) for g in grads]

    def update(self, param: Tensor, grad: Tensor, slots: dict[str, Tensor]) -> dict[str, Tensor]:
        """The new values the step gives the param and its state: ``{"": param's, slot: slot's}``."""
        raise NotImplementedError
