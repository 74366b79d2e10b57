"""Learning-rate calibration: the fine-tuning rate that suits this model, measured once.

The search fine-tunes every candidate with one schedule. How high its rates may go depends on
the model: the peak rate that lets a convolutional net recover its factorised layers in two
epochs can cost a small MLP a point of accuracy with nothing compressed at all, and then every
trial looks worse than its plan is. So before the first trial, Kim et al.'s EVBMF plan (the
first seed) is compressed once and fine-tuned for a trial's budget at each multiplier of
``SearchConfig.lr_scales``; the multiplier that leaves it most accurate on the validation split
(the earlier one on a tie) scales the schedule of every trial and of the final fine-tune.

The process that creates the study calibrates and records the outcome on the study (user
attribute :data:`LR_CALIBRATION_ATTR`); a worker joining the study reads it from there.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from worker.training import ScheduleConfig

if TYPE_CHECKING:
    from tensorops import Plan
    from worker.training import FinetuneResult

logger = logging.getLogger(__name__)

#: Study user attribute holding :meth:`LrCalibration.to_dict`.
LR_CALIBRATION_ATTR = "lr_calibration"


@dataclass(frozen=True)
class LrCalibration:
    """The chosen multiplier and what each candidate scored.

    ``accuracies`` pairs every multiplier tried with the calibration plan's validation accuracy
    after the trial fine-tune (``nan`` when fine-tuning diverged); empty when only one
    multiplier was given and nothing was measured.
    """

    scale: float
    accuracies: tuple[tuple[float, float], ...] = ()
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "accuracies": [[s, a] for s, a in self.accuracies],
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LrCalibration:
        scale = float(data["scale"])
        if not 0 < scale < math.inf:
            raise ValueError(f"recorded learning-rate scale must be > 0, got {scale}")
        pairs = tuple((float(s), float(a)) for s, a in data.get("accuracies", []))
        return cls(scale=scale, accuracies=pairs, seconds=float(data.get("seconds", 0.0)))


def scaled_schedule(schedule: ScheduleConfig, scale: float) -> ScheduleConfig:
    """``schedule`` with both of its rates multiplied by ``scale``."""
    if scale == 1.0:
        return schedule
    return replace(schedule, base_lr=schedule.base_lr * scale, max_lr=schedule.max_lr * scale)


def choose_scale(accuracies: tuple[tuple[float, float], ...]) -> float:
    """The multiplier with the best accuracy; the earliest listed on a tie; NaN never wins
    unless every candidate diverged (then the first)."""
    measured = [(scale, accuracy) for scale, accuracy in accuracies if not math.isnan(accuracy)]
    if not measured:
        return accuracies[0][0]
    best_scale, best_accuracy = measured[0]
    for scale, accuracy in measured[1:]:
        if accuracy > best_accuracy:
            best_scale, best_accuracy = scale, accuracy
    return best_scale


class FitPlan(Protocol):
    """Applies ``plan`` to a fresh copy of the original and fine-tunes it in the trials' mode
    with the search's schedule, rates times ``lr_scale`` (:meth:`SearchContext.fit`)."""

    def __call__(
        self, plan: Plan, *, epochs: int, seed: int, lr_scale: float | None = None
    ) -> FinetuneResult: ...


def calibrate_lr(
    scales: Sequence[float],
    plan: Callable[[], Plan],
    *,
    fit: FitPlan,
    epochs: int,
    seed: int,
) -> LrCalibration:
    """Fine-tune ``plan()`` (the EVBMF plan, built only when there is something to measure)
    for ``epochs`` at each multiplier of ``scales`` and pick the best.

    ``fit`` applies a plan to a fresh copy of the original model and fine-tunes it.
    One multiplier measures nothing.
    """
    if len(scales) == 1:
        return LrCalibration(scale=float(scales[0]))
    started = time.perf_counter()
    calibration_plan = plan()
    scored: list[tuple[float, float]] = []
    for scale in scales:
        tuned = fit(calibration_plan, epochs=epochs, seed=seed, lr_scale=scale)
        accuracy = float("nan") if tuned.status == "diverged" else float(tuned.final_val_accuracy)
        scored.append((float(scale), accuracy))
        logger.info(
            "learning-rate calibration: x%g of the schedule's rates gives the EVBMF plan "
            "%.4f validation accuracy after %d epoch(s)",
            scale,
            accuracy,
            epochs,
        )
    pairs = tuple(scored)
    result = LrCalibration(
        scale=choose_scale(pairs), accuracies=pairs, seconds=time.perf_counter() - started
    )
    logger.info("learning-rate calibration chose x%g in %.1fs", result.scale, result.seconds)
    return result
