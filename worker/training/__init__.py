"""Fine-tuning and evaluation: cyclic learning-rate schedules, the training loop, metrics."""

from __future__ import annotations

from worker.training._accel import AccelConfig, Accelerator, accel_for, autocast_dtype
from worker.training._batches import LoaderOptions, as_dataset, budget_indices
from worker.training._device import resolve_device
from worker.training._distill import TABLE_MAX_BYTES, use_teacher_table
from worker.training._evaluate import EvalResult, eval_indices, evaluate, predict_logits
from worker.training._input_check import check_model_input
from worker.training._lc import LcResult, LcSchedule, lc_finetune
from worker.training._loop import OPTIMIZERS, OptimizerName, finetune
from worker.training._results import EpochCallback, EpochReport, FinetuneResult, FinetuneStatus
from worker.training._schedules import SCHEDULE_KINDS, ScheduleConfig, ScheduleKind, lr_at
from worker.training._train import TRAIN_SCHEDULES, TrainSchedule, train

__all__ = [
    "OPTIMIZERS",
    "SCHEDULE_KINDS",
    "TABLE_MAX_BYTES",
    "TRAIN_SCHEDULES",
    "AccelConfig",
    "Accelerator",
    "EpochCallback",
    "EpochReport",
    "EvalResult",
    "FinetuneResult",
    "FinetuneStatus",
    "LcResult",
    "LcSchedule",
    "LoaderOptions",
    "OptimizerName",
    "ScheduleConfig",
    "ScheduleKind",
    "TrainSchedule",
    "accel_for",
    "as_dataset",
    "autocast_dtype",
    "budget_indices",
    "check_model_input",
    "eval_indices",
    "evaluate",
    "finetune",
    "lc_finetune",
    "lr_at",
    "predict_logits",
    "resolve_device",
    "train",
    "use_teacher_table",
]
