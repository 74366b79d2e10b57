"""The options of a compression job and their defaults: defined here once, torch-free.

Every way to start a search reads this model:

* the REST spec :class:`service.spec.JobSpec` extends it (adding model, data and exports);
* the web form gets its fields, bounds and defaults as JSON schema from ``/ui/config``;
* ``rankopt compress`` generates one option per field (:mod:`worker.cli_options`) and parses
  its arguments into it;
* the library's :class:`worker.search.SearchConfig` takes its defaults from :data:`DEFAULTS`,
  and :func:`worker.search.search_config` is the one mapping from options to a search config.

Adding an option is one change here: declare the field with its bounds, default and a
``description`` (the CLI's help text), then add a field of the same name to ``SearchConfig``
with ``= DEFAULTS.<name>`` as its default and use it in the search. The CLI option
(``--<name-with-dashes>``), the REST field, the form field and the mapping follow by name;
``tests/worker/test_job_options.py`` fails if any of them is missing or disagrees.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["DEFAULTS", "JobOptions", "ScheduleOptions"]

FinetuneMode = Literal["decompose", "lc"]
ScheduleKind = Literal["triangular", "triangular2", "exp_range", "cosine_restarts", "constant"]


class ScheduleOptions(BaseModel):
    """The cyclic learning-rate schedule of every fine-tune."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ScheduleKind = Field(default="triangular2", description="learning-rate schedule")
    base_lr: float = Field(default=1e-4, gt=0, description="lowest rate of a cycle")
    max_lr: float = Field(default=0.01, gt=0, description="peak rate of a cycle")
    cycle_epochs: float = Field(default=1.0, gt=0, description="epochs per cycle")

    @model_validator(mode="after")
    def _ordered(self) -> ScheduleOptions:
        if self.kind != "constant" and self.base_lr > self.max_lr:
            raise ValueError(f"base_lr ({self.base_lr}) must not exceed max_lr ({self.max_lr})")
        return self


class JobOptions(BaseModel):
    """How a search runs: tolerance, budget, objective, search space and fine-tuning.

    ``max_accuracy_drop`` and ``verify_slack`` are in points of top-1 accuracy. See
    :class:`worker.search.SearchConfig` for what each option does in the search.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    trials: int = Field(default=40, ge=1, le=100_000, description="search trials")
    timeout_s: float | None = Field(default=None, gt=0, description="wall-clock budget in seconds")
    max_accuracy_drop: float = Field(
        default=1.0, ge=0, le=100, description="tolerated accuracy drop, in accuracy points"
    )
    objective: Literal["params", "macs", "latency"] = Field(
        default="params", description="what to minimise within the tolerance"
    )
    max_latency_ratio: float | None = Field(
        default=None,
        gt=0,
        le=1000,
        description="largest latency of the chosen model at the latency batch size, as a "
        "multiple of the original's, measured (1.0: no slower; none: no constraint)",
    )
    pareto: bool = Field(default=False, description="two-objective search (accuracy, compression)")
    sampler: Literal["tpe", "gp", "random"] = Field(default="tpe", description="Optuna sampler")
    pruner: Literal["feasibility", "median", "halving", "none"] = Field(
        default="feasibility",
        description="stop trials early: feasibility (only those that cannot meet the "
        "tolerance), median, halving, none",
    )
    seed: int = Field(
        default=0,
        ge=0,
        le=2**31 - 1,
        description="seed of the search (sampler, fine-tunes); the data split has its own",
    )
    split_seed: int = Field(
        default=0,
        ge=0,
        le=2**31 - 1,
        description="seed of the train/val/test split of built-in, folder and CIFAR data; keep "
        "the one the starting model was trained with",
    )
    seeding: bool = Field(default=True, description="enqueue the EVBMF plans first")
    methods: list[str] | None = Field(
        default=None,
        description="per-layer choices; none means tucker2,cp,svd (the opt-in families tt, "
        "qtt, qcp, ntt, btd, tt_conv, tt_tucker and prune join only when named)",
    )
    rank_scale: tuple[float, float] = Field(
        default=(0.1, 4.0), description="LOW,HIGH multiplier of EVBMF ranks"
    )
    rank_multiple: int = Field(
        default=1, ge=1, le=1024, description="round ranks to a multiple (8 for tensor cores)"
    )
    latency_batch_size: int = Field(
        default=1, ge=1, le=4096, description="batch size the latency objective times"
    )
    push_factor: float | None = Field(
        default=0.7,
        gt=0,
        lt=1,
        description="after each new best trial, try its plan with ranks times this (none: never)",
    )
    lr_scales: list[Annotated[float, Field(gt=0, le=1000)]] = Field(
        default_factory=lambda: [1.0, 0.3, 0.1],
        min_length=1,
        max_length=10,
        description="multipliers of the schedule's rates tried on the EVBMF plan before the "
        "search; the best is used throughout (one value: no calibration)",
    )
    epochs_per_trial: int = Field(
        default=3, ge=1, le=1000, description="fine-tuning epochs of each trial"
    )
    final_epochs: int = Field(
        default=10, ge=0, le=10_000, description="fine-tuning epochs of each verified candidate"
    )
    distill_weight: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="weight of distillation from the original model in the fine-tuning loss "
        "(0: off)",
    )
    temperature: float = Field(default=2.0, gt=0, description="distillation temperature")
    verify_top: int = Field(
        default=3,
        ge=1,
        le=100,
        description="candidates fine-tuned for final_epochs before choosing (if all miss, the "
        "most accurate compressed trial within the tolerance is tried last)",
    )
    verify_slack: float = Field(
        default=0.5,
        ge=0,
        description="points above the tolerance a trial may be and still be verified",
    )
    trial_finetune_mode: FinetuneMode = Field(
        default="decompose",
        description="how trials fine-tune: decompose (factorise, then fine-tune the factors) or "
        "lc (learning-compression: train the dense weights towards their factorised form)",
    )
    final_finetune_mode: FinetuneMode = Field(
        default="decompose",
        description="how verified candidates are fine-tuned: decompose or lc",
    )
    lc_mu0: float = Field(
        default=0.1, gt=0, le=1e6, description="LC: penalty weight mu of the first L step"
    )
    lc_mu_factor: float = Field(
        default=2.0, ge=1, le=100, description="LC: multiplier of mu after each L/C step"
    )
    lc_steps: int = Field(
        default=10,
        ge=1,
        le=10_000,
        description="LC: L/C iterations; the fine-tune's epochs less lc_factor_epochs are "
        "split evenly among their L steps",
    )
    lc_factor_epochs: int = Field(
        default=1,
        ge=0,
        le=10_000,
        description="LC: epochs of the fine-tune spent on the factors after the last C step",
    )
    schedule: ScheduleOptions = Field(default_factory=ScheduleOptions)
    optimizer: Literal["sgd", "adamw"] = Field(default="adamw", description="fine-tuning optimizer")
    batch_size: int = Field(default=64, ge=1, le=65_536, description="fine-tuning batch size")
    trial_samples: int | None = Field(
        default=None,
        ge=1,
        le=100_000_000,
        description="training examples per trial epoch, a fresh seeded random subset each "
        "epoch (none: the whole training split up to 10,000)",
    )
    val_samples: int | None = Field(
        default=5000,
        ge=1,
        le=100_000_000,
        description="validation examples of the search's evaluations (trials, pruner, "
        "calibration, sensitivity), a fixed seeded subset (none, or 0 on the command line: the "
        "whole split); "
        "verification and the report use the whole split",
    )
    final_samples: int | None = Field(
        default=None,
        ge=1,
        le=100_000_000,
        description="training examples per epoch of the final fine-tunes (none: the whole "
        "training split)",
    )
    augment: Literal["none", "crop-flip", "imagenet"] = Field(
        default="none",
        description="train-time augmentation: none, crop-flip (pad 4, random crop, "
        "horizontal flip), imagenet (random resized crop, flip)",
    )
    num_workers: int = Field(
        default=0, ge=0, le=64, description="DataLoader worker processes (0: read in-process)"
    )
    image_size: int = Field(
        default=32,
        ge=1,
        le=4096,
        description="side in pixels image folders (folder:) are resized to by the resize preset; "
        "cifar10: data is 32x32 and refuses another size; arrays and built-in datasets keep "
        "their own size and ignore it",
    )
    preprocess: Literal["resize", "imagenet"] = Field(
        default="resize",
        description="preprocessing of image folders: resize (to image_size, normalised with the "
        "training split's mean/std) or imagenet (resize 256, centre crop 224, ImageNet "
        "mean/std, for torchvision's pretrained models; image_size is then ignored); other "
        "sources ignore it (cifar10: refuses imagenet)",
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


#: The options a job gets when it names none: the defaults of CLI, REST, web form and library.
DEFAULTS = JobOptions()
