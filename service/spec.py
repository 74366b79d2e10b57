"""What a client asks for: the JSON ``spec`` of a compression job, validated without torch.

The API validates a spec when a job is submitted and stores it as given (``model_dump``); the
worker reads it back with :meth:`JobSpec.model_validate` and turns it into a search config.
Field names and defaults match ``rankopt compress``'s options.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["BUILTIN_DATASETS", "DATASET_UPLOAD", "EXPORTS", "JobSpec", "ScheduleSpec"]

BUILTIN_DATASETS: tuple[str, ...] = ("digits", "mnist5k")
DATASET_UPLOAD = "upload"  # the dataset comes as the job's uploaded file
EXPORTS: tuple[str, ...] = ("torchscript", "onnx")
_ARCH_RE = re.compile(r"^(rankopt|torchvision):[A-Za-z0-9_]+$|^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_SERVER_DATA_RE = re.compile(r"^(folder|cifar10):.+$")


class ScheduleSpec(BaseModel):
    """The cyclic learning-rate schedule of every fine-tune."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["triangular", "triangular2", "exp_range", "cosine_restarts", "constant"] = (
        "triangular2"
    )
    base_lr: float = Field(default=1e-4, gt=0)
    max_lr: float = Field(default=0.01, gt=0)
    cycle_epochs: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> ScheduleSpec:
        if self.kind != "constant" and self.base_lr > self.max_lr:
            raise ValueError(f"base_lr ({self.base_lr}) must not exceed max_lr ({self.max_lr})")
        return self


class JobSpec(BaseModel):
    """A compression job: model, data, tolerance and search budget.

    ``arch`` names a zoo model (``rankopt:lenet5``, ``torchvision:resnet18``) or an
    operator-allowed factory (``package.module:function``; the worker refuses one that is not
    in ``RANKOPT_ALLOWED_FACTORIES``). ``dataset`` is ``digits``, ``mnist5k``, ``upload`` (the
    file sent with the job) or ``folder:PATH`` / ``cifar10:PATH`` under an allowed data root.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: str = Field(min_length=3, max_length=200)
    num_classes: int | None = Field(default=None, ge=2, le=100_000)
    dataset: str = Field(default="mnist5k", min_length=1, max_length=1000)
    trials: int = Field(default=40, ge=1, le=100_000)
    timeout_s: float | None = Field(default=None, gt=0)
    max_accuracy_drop: float = Field(default=1.0, ge=0, le=100)
    objective: Literal["params", "macs", "latency"] = "params"
    pareto: bool = False
    sampler: Literal["tpe", "gp", "random"] = "tpe"
    pruner: Literal["feasibility", "median", "halving", "none"] = "feasibility"
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    seeding: bool = True
    methods: list[str] | None = None
    rank_scale: tuple[float, float] = (0.1, 4.0)
    rank_multiple: int = Field(default=1, ge=1, le=1024)
    latency_batch_size: int = Field(default=1, ge=1, le=4096)
    push_factor: float | None = Field(default=0.7, gt=0, lt=1)
    lr_scales: list[Annotated[float, Field(gt=0, le=1000)]] = Field(
        default_factory=lambda: [1.0, 0.3, 0.1], min_length=1, max_length=10
    )
    epochs_per_trial: int = Field(default=3, ge=1, le=1000)
    final_epochs: int = Field(default=10, ge=0, le=10_000)
    distill_weight: float = Field(default=0.5, ge=0, le=1)
    temperature: float = Field(default=2.0, gt=0)
    verify_top: int = Field(default=3, ge=1, le=100)
    verify_slack: float = Field(default=0.5, ge=0)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    optimizer: Literal["sgd", "adamw"] = "adamw"
    batch_size: int = Field(default=64, ge=1, le=65_536)
    exports: list[Literal["torchscript", "onnx"]] = Field(default_factory=list)

    @field_validator("arch")
    @classmethod
    def _check_arch(cls, value: str) -> str:
        if not _ARCH_RE.match(value):
            raise ValueError(
                f"arch {value!r} must be 'rankopt:<net>', 'torchvision:<model>' or an allowed "
                "'package.module:function'"
            )
        return value

    @field_validator("dataset")
    @classmethod
    def _check_dataset(cls, value: str) -> str:
        if value in (*BUILTIN_DATASETS, DATASET_UPLOAD) or _SERVER_DATA_RE.match(value):
            return value
        raise ValueError(
            f"dataset {value!r} must be one of {', '.join(BUILTIN_DATASETS)}, "
            f"'{DATASET_UPLOAD}' (send the file as 'dataset'), 'folder:PATH' or 'cifar10:PATH'"
        )

    @field_validator("rank_scale")
    @classmethod
    def _check_rank_scale(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low <= high:
            raise ValueError(f"rank_scale must be [low, high] with 0 < low <= high, got {value}")
        return value

    @field_validator("methods")
    @classmethod
    def _check_methods(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("methods must be omitted (the default families) or name at least one")
        return value

    @property
    def needs_dataset_upload(self) -> bool:
        """True when the job's data is the uploaded ``dataset`` file."""
        return self.dataset == DATASET_UPLOAD
