"""Training a starting model from scratch: one run over the whole budget, one LR cycle."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from worker.data import DataBundle, DataSplits
from worker.training._batches import DEFAULT_LOADER, LoaderOptions
from worker.training._loop import OptimizerName, finetune, steps_per_epoch
from worker.training._results import EpochCallback, FinetuneResult
from worker.training._schedules import ScheduleConfig

TrainSchedule = Literal["one_cycle", "cosine"]
TRAIN_SCHEDULES: tuple[str, ...] = ("one_cycle", "cosine")

_ONE_CYCLE_DIV = 25.0  # one_cycle starts and ends at lr / 25
_COSINE_FLOOR = 1e-3  # cosine anneals to lr * 1e-3


def train(
    model: nn.Module,
    data: DataBundle | DataSplits,
    *,
    epochs: int,
    lr: float = 0.05,
    schedule: TrainSchedule = "one_cycle",
    optimizer: OptimizerName = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 128,
    device: str | torch.device = "auto",
    seed: int = 0,
    callback: EpochCallback | None = None,
    max_steps: int | None = None,
    label_smoothing: float = 0.0,
    samples_per_epoch: int | None = None,
    val_samples: int | None = None,
    augment: str = "none",
    loader: LoaderOptions = DEFAULT_LOADER,
) -> FinetuneResult:
    """Train ``model`` in place with a single learning-rate cycle spanning the whole run.

    ``schedule="one_cycle"`` rises linearly from ``lr / 25`` to ``lr`` over the first half of
    the run and falls back over the second half (a ``triangular`` cycle as long as the run);
    ``"cosine"`` anneals from ``lr`` to ``lr * 1e-3`` along a half cosine (one
    ``cosine_restarts`` cycle, no restart). The run's length is ``epochs`` epochs, or
    ``max_steps`` steps when that is shorter. Everything else is as in :func:`finetune`,
    whose result this returns.
    """
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if schedule not in TRAIN_SCHEDULES:
        raise ValueError(f"schedule must be one of {TRAIN_SCHEDULES}, got {schedule!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    n_train = len(data.train)
    if isinstance(samples_per_epoch, int) and not isinstance(samples_per_epoch, bool):
        n_train = min(n_train, max(samples_per_epoch, 1))
    per_epoch = max(steps_per_epoch(n_train, batch_size), 1)
    total_steps = epochs * per_epoch
    if isinstance(max_steps, int) and not isinstance(max_steps, bool) and max_steps >= 1:
        total_steps = min(total_steps, max_steps)
    cycle_epochs = total_steps / per_epoch
    if schedule == "one_cycle":
        config = ScheduleConfig(
            kind="triangular", base_lr=lr / _ONE_CYCLE_DIV, max_lr=lr, cycle_epochs=cycle_epochs
        )
    else:
        config = ScheduleConfig(
            kind="cosine_restarts", base_lr=lr * _COSINE_FLOOR, max_lr=lr, cycle_epochs=cycle_epochs
        )
    return finetune(
        model,
        data,
        config,
        epochs=epochs,
        optimizer=optimizer,
        momentum=momentum,
        weight_decay=weight_decay,
        batch_size=batch_size,
        device=device,
        seed=seed,
        callback=callback,
        max_steps=max_steps,
        label_smoothing=label_smoothing,
        samples_per_epoch=samples_per_epoch,
        val_samples=val_samples,
        augment=augment,
        loader=loader,
    )
