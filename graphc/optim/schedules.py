"""Learning-rate schedules: the learning rate as a function of the step counter, compiled into the generated file
as ``lr_at(step)`` (``step``: training steps taken before this one). ``train_step`` calls it when no ``lr=`` is
given; an ``lr=`` passed to a step wins.

Each schedule maps the optimizer's ``lr`` to an expression of the step counter, as ``torch.optim.lr_scheduler``
computes it: ``step`` (StepLR), ``cosine`` (CosineAnnealingLR), ``linear_warmup`` (LinearLR, then another schedule
as SequentialLR does). ``a * b`` multiplies two schedules' factors (ChainedScheduler of multiplicative ones).
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy

from graphc.core.errors import GraphError
from graphc.core.ir import STEP
from graphc.ops.elementwise import scalar


class Schedule:
    """A learning-rate schedule: ``schedule(lr)`` is the learning rate after ``STEP`` steps."""

    def __call__(self, lr: float) -> sympy.Expr:
        return self.at(scalar(lr), STEP)

    def at(self, lr, t) -> sympy.Expr:
        """The learning rate after ``t`` steps (an expression) for the base rate ``lr``."""
        raise NotImplementedError

    def __mul__(self, other: Schedule) -> Schedule:
        if not isinstance(other, Schedule):
            return NotImplemented
        return Product(self, other)


@dataclass(frozen=True)
class Product(Schedule):
    """Both schedules' factors at once: ``lr·fa(t)·fb(t)``."""
    a: Schedule
    b: Schedule

    def at(self, lr, t):
        return self.a.at(lr, t) * self.b.at(lr, t) / lr

    def __repr__(self):
        return f"{self.a!r} * {self.b!r}"


@dataclass(frozen=True)
class Step(Schedule):
    every: int
    gamma: float

    def at(self, lr, t):
        return lr * scalar(self.gamma) ** sympy.floor(t / self.every)

    def __repr__(self):
        return f"step({self.every}, gamma={self.gamma!r})"


@dataclass(frozen=True)
class Cosine(Schedule):
    steps: int
    min_lr: float

    def at(self, lr, t):
        low = scalar(self.min_lr)
        return low + (lr - low) * (1 + sympy.cos(sympy.pi * t / self.steps)) / 2

    def __repr__(self):
        return f"cosine({self.steps}, min_lr={self.min_lr!r})"


@dataclass(frozen=True)
class LinearWarmup(Schedule):
    steps: int
    start_factor: float
    then: Schedule | None

    def at(self, lr, t):
        start = scalar(self.start_factor)
        warm = lr * (start + (1 - start) * t / self.steps)
        after = lr if self.then is None else self.then.at(lr, t - self.steps)
        return sympy.Piecewise((warm, t < self.steps), (after, True))

    def __repr__(self):
        then = "" if self.then is None else f", then={self.then!r}"
        return f"linear_warmup({self.steps}, start_factor={self.start_factor!r}{then})"


def _count(name: str, value) -> int:
    if not isinstance(value, int) or value < 1:
        raise GraphError(f"gc.schedules: {name} must be a positive int, not {value!r}")
    return value


def step(every: int, gamma: float = 0.1) -> Schedule:
    """``lr·gamma^⌊t/every⌋``: the rate multiplied by ``gamma`` every ``every`` steps (torch's StepLR)."""
    return Step(_count("every", every), float(gamma))


def cosine(steps: int, min_lr: float = 0.0) -> Schedule:
    """``min_lr + (lr − min_lr)·(1 + cos(π·t/steps))/2``: from ``lr`` down to ``min_lr`` over ``steps`` steps (and
    back up over the next ``steps``, as torch's CosineAnnealingLR)."""
    return Cosine(_count("steps", steps), float(min_lr))


def linear_warmup(steps: int, start_factor: float = 0.1, then: Schedule | None = None) -> Schedule:
    """``lr·(start_factor + (1 − start_factor)·t/steps)`` for the first ``steps`` steps (torch's LinearLR), then
    ``lr``, or the schedule ``then`` with its own count starting at 0 (torch's SequentialLR)."""
    if not 0 < start_factor <= 1:
        raise GraphError(f"gc.schedules.linear_warmup: start_factor must be in (0, 1], not {start_factor!r}")
    if then is not None and not isinstance(then, Schedule):
        raise GraphError(f"gc.schedules.linear_warmup: then must be a schedule, not {then!r}")
    return LinearWarmup(_count("steps", steps), float(start_factor), then)


__all__ = ["Schedule", "cosine", "linear_warmup", "step"]
