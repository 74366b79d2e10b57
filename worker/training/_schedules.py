"""Cyclic learning-rate schedules as pure functions of the optimizer step.

Every schedule maps a step index (0 for the first optimizer update) to a learning rate. Steps
are converted to cycles with ``cycle_steps = cycle_epochs * steps_per_epoch``, which may be
fractional: a cycle need not end on an epoch or even on a step boundary.

References:
    L. N. Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017
    (``triangular``, ``triangular2``, ``exp_range``).
    I. Loshchilov and F. Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts",
    ICLR 2017 (``cosine_restarts``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

ScheduleKind = Literal["triangular", "triangular2", "exp_range", "cosine_restarts", "constant"]
SCHEDULE_KINDS: tuple[str, ...] = get_args(ScheduleKind)

# A step/cycle ratio this close to an integer is treated as that integer, so that float error
# in ``cycle_epochs * steps_per_epoch`` (e.g. 0.3 * 10) cannot move a restart by one step.
_SNAP = 1e-9


@dataclass(frozen=True)
class ScheduleConfig:
    """How the learning rate moves between ``base_lr`` and ``max_lr`` during fine-tuning.

    Attributes:
        kind: ``triangular``, ``triangular2``, ``exp_range``, ``cosine_restarts`` or
            ``constant`` (see :func:`lr_at` for each curve).
        base_lr: lower bound of the cycle, > 0.
        max_lr: upper bound of the cycle, >= ``base_lr``; the only rate used by ``constant``.
        cycle_epochs: length of one full cycle in epochs (> 0, may be fractional). For the
            triangular kinds a cycle is one rise and one fall; for ``cosine_restarts`` it is
            the first period between restarts.
        gamma: ``exp_range`` decay per optimizer step, in (0, 1]. ``None`` (the default) is
            resolved when the step count is known to ``0.5 ** (1 / cycle_steps)``, so the
            amplitude halves once per cycle, as in ``triangular2`` but smoothly.
        t_mult: ``cosine_restarts`` cycle-length multiplier, >= 1: cycle ``i`` lasts
            ``cycle_epochs * t_mult**i`` epochs. 1 (the default) keeps cycles equal.
    """

    kind: ScheduleKind = "triangular"
    base_lr: float = 1e-4
    max_lr: float = 1e-2
    cycle_epochs: float = 2.0
    gamma: float | None = None
    t_mult: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"kind must be one of {SCHEDULE_KINDS}, got {self.kind!r}")
        for name in ("base_lr", "max_lr", "cycle_epochs"):
            value = getattr(self, name)
            if not _is_finite_number(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if self.base_lr > self.max_lr:
            raise ValueError(
                f"base_lr must be <= max_lr, got base_lr={self.base_lr!r} > max_lr={self.max_lr!r}"
            )
        if self.gamma is not None and (
            not _is_finite_number(self.gamma) or not 0 < self.gamma <= 1
        ):
            raise ValueError(f"gamma must be in (0, 1] or None, got {self.gamma!r}")
        if not _is_finite_number(self.t_mult) or self.t_mult < 1:
            raise ValueError(f"t_mult must be a finite number >= 1, got {self.t_mult!r}")

    @classmethod
    def constant(cls, lr: float) -> ScheduleConfig:
        """A flat schedule at ``lr``."""
        return cls(kind="constant", base_lr=lr, max_lr=lr)

    def cycle_steps(self, steps_per_epoch: int) -> float:
        """Length of the first cycle in optimizer steps (may be fractional)."""
        _check_steps_per_epoch(steps_per_epoch)
        return self.cycle_epochs * steps_per_epoch

    def resolved_gamma(self, steps_per_epoch: int) -> float:
        """``gamma``, or the default that halves the ``exp_range`` amplitude once per cycle."""
        if self.gamma is not None:
            return self.gamma
        return 0.5 ** (1.0 / self.cycle_steps(steps_per_epoch))


def lr_at(config: ScheduleConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based) under ``config``.

    With ``amp = max_lr - base_lr`` and ``c = cycle_steps``:

    * ``triangular``: ``base_lr`` at the start of each cycle, rising linearly to ``max_lr`` at
      half a cycle and falling linearly back to ``base_lr`` at its end.
    * ``triangular2``: the same triangle with ``amp`` halved every cycle (``amp / 2**k`` in
      cycle ``k``).
    * ``exp_range``: the triangle with ``amp`` scaled by ``gamma**step``.
    * ``cosine_restarts``: ``base_lr + amp * (1 + cos(pi * t / T)) / 2`` where ``t`` counts
      steps since the last restart and ``T`` is the current cycle length (``c * t_mult**k``);
      starts at ``max_lr``, ends near ``base_lr``, then restarts at ``max_lr``.
    * ``constant``: ``max_lr``.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    cycle = config.cycle_steps(steps_per_epoch)
    if config.kind == "constant":
        return config.max_lr
    if config.kind == "triangular":
        return triangular_lr(step, cycle, config.base_lr, config.max_lr)
    if config.kind == "triangular2":
        return triangular2_lr(step, cycle, config.base_lr, config.max_lr)
    if config.kind == "exp_range":
        gamma = config.resolved_gamma(steps_per_epoch)
        return exp_range_lr(step, cycle, config.base_lr, config.max_lr, gamma)
    return cosine_restarts_lr(step, cycle, config.base_lr, config.max_lr, config.t_mult)


def triangular_lr(step: int, cycle_steps: float, base_lr: float, max_lr: float) -> float:
    """Smith's triangular policy: linear base→max over half a cycle, then max→base."""
    _, frac = _cycle_position(step / cycle_steps)
    return base_lr + (max_lr - base_lr) * _triangle(frac)


def triangular2_lr(step: int, cycle_steps: float, base_lr: float, max_lr: float) -> float:
    """Triangular policy whose amplitude halves at the start of every new cycle."""
    index, frac = _cycle_position(step / cycle_steps)
    return base_lr + (max_lr - base_lr) * _triangle(frac) / 2.0**index


def exp_range_lr(
    step: int, cycle_steps: float, base_lr: float, max_lr: float, gamma: float
) -> float:
    """Triangular policy whose amplitude is scaled by ``gamma**step``."""
    _, frac = _cycle_position(step / cycle_steps)
    return base_lr + (max_lr - base_lr) * _triangle(frac) * gamma**step


def cosine_restarts_lr(
    step: int, cycle_steps: float, base_lr: float, max_lr: float, t_mult: float = 1.0
) -> float:
    """SGDR: cosine annealing from ``max_lr`` to ``base_lr``, restarting at ``max_lr``.

    Cycle ``k`` lasts ``cycle_steps * t_mult**k`` steps.
    """
    x = step / cycle_steps  # position in units of the first cycle
    if t_mult == 1.0:
        _, frac = _cycle_position(x)
    else:
        frac = _geometric_cycle_fraction(x, t_mult)
    return base_lr + (max_lr - base_lr) * 0.5 * (1.0 + math.cos(math.pi * frac))


def _triangle(frac: float) -> float:
    """0 at ``frac`` 0, 1 at 0.5, 0 again at 1."""
    return 1.0 - abs(2.0 * frac - 1.0)


def _cycle_position(x: float) -> tuple[int, float]:
    """Split ``x`` (in cycles) into the cycle index and the fraction of it elapsed."""
    nearest = round(x)
    if abs(x - nearest) < _SNAP:
        return int(nearest), 0.0
    index = math.floor(x)
    return index, x - index


def _geometric_cycle_fraction(x: float, t_mult: float) -> float:
    """Fraction elapsed of the current cycle when cycle ``k`` has length ``t_mult**k``.

    Cycle ``k`` starts at ``(t_mult**k - 1) / (t_mult - 1)`` (in units of the first cycle).
    """

    def start(k: int) -> float:
        return (t_mult**k - 1.0) / (t_mult - 1.0)

    index = math.floor(math.log1p(x * (t_mult - 1.0)) / math.log(t_mult))
    # Correct float error in the logarithm near a restart.
    while start(index + 1) <= x + _SNAP * t_mult ** (index + 1):
        index += 1
    while index > 0 and start(index) > x + _SNAP * t_mult**index:
        index -= 1
    length = t_mult**index
    return min(max((x - start(index)) / length, 0.0), 1.0)


def _check_steps_per_epoch(steps_per_epoch: int) -> None:
    if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int):
        raise ValueError(f"steps_per_epoch must be an int >= 1, got {steps_per_epoch!r}")
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be an int >= 1, got {steps_per_epoch!r}")


def _is_finite_number(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )
