"""What a training run reports: one record per epoch and a summary at the end."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

FinetuneStatus = Literal["completed", "stopped", "diverged"]


@dataclass(frozen=True)
class EpochReport:
    """Metrics at the end of one epoch.

    Attributes:
        epoch: 1-based epoch number.
        train_loss: mean training loss over the examples seen this epoch (as optimised, so
            including label smoothing).
        val_accuracy: top-1 accuracy on the validation split, in [0, 1].
        val_loss: mean cross-entropy on the validation split (no label smoothing).
        lr: learning rate of the epoch's last optimizer step.
        seconds: wall time of the epoch, evaluation included.
    """

    epoch: int
    train_loss: float
    val_accuracy: float
    val_loss: float
    lr: float
    seconds: float


EpochCallback = Callable[[EpochReport], bool | None]
"""Called after each epoch; return ``False`` to stop, ``True`` or ``None`` to go on."""


@dataclass(frozen=True)
class FinetuneResult:
    """Outcome of :func:`finetune` or :func:`train`.

    Attributes:
        status: ``completed`` (all epochs, or ``max_steps``, done), ``stopped`` (the callback
            returned ``False``) or ``diverged`` (a non-finite loss; see ``message``).
        epochs_run: epochs started, a partial one (cut by ``max_steps`` or divergence)
            included.
        history: one :class:`EpochReport` per fully evaluated epoch.
        final_val_accuracy: validation accuracy of the model as returned.
        final_val_loss: validation loss of the model as returned (may be non-finite when
            diverged).
        message: a human-readable account of how the run ended.
        steps_run: optimizer steps taken.
        seconds: wall time of the whole run.
    """

    status: FinetuneStatus
    epochs_run: int
    history: tuple[EpochReport, ...]
    final_val_accuracy: float
    final_val_loss: float
    message: str
    steps_run: int = 0
    seconds: float = 0.0
