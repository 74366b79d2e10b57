"""Settings of one compression search, and the one mapping from a job's options to them.

The options a user sets (and their defaults) are :class:`service.job_options.JobOptions`;
:class:`SearchConfig` takes its defaults from it and adds what only a library caller tunes
(sensitivity analysis, seed plans, latency repeats) and the runtime ``device``.
:func:`search_config` turns options into a config, by field name, for the CLI and the pool.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from service.job_options import DEFAULTS, JobOptions, ScheduleOptions
from worker.data import PREPROCESS_PRESETS
from worker.errors import InvalidOptions
from worker.training import ScheduleConfig

Objective = Literal["params", "macs", "latency"]
SamplerName = Literal["tpe", "gp", "random"]
PrunerName = Literal["feasibility", "median", "halving", "none"]

OBJECTIVES: tuple[str, ...] = ("params", "macs", "latency")
SAMPLERS: tuple[str, ...] = ("tpe", "gp", "random")
PRUNERS: tuple[str, ...] = ("feasibility", "median", "halving", "none")
AUGMENTS: tuple[str, ...] = ("none", "crop-flip", "imagenet")

#: A trial epoch's training examples when ``trial_samples`` is None: the split, up to this.
DEFAULT_TRIAL_SAMPLES = 10_000


def schedule_config(options: ScheduleOptions) -> ScheduleConfig:
    """The training schedule of a job's schedule options (``constant`` runs at ``max_lr``)."""
    return ScheduleConfig(
        kind=options.kind,
        base_lr=options.max_lr if options.kind == "constant" else options.base_lr,
        max_lr=options.max_lr,
        cycle_epochs=options.cycle_epochs,
    )


def drop_points(baseline_accuracy: float, accuracy: float) -> float:
    """Accuracy drop in points, rounded to 1e-9 so that a drop of exactly the tolerance
    (10 of 1,000 validation examples for 1 point) is not judged over it by float noise."""
    return round((baseline_accuracy - accuracy) * 100.0, 9)


@dataclass(frozen=True)
class SearchConfig:
    """Everything that shapes a search; stored in the report so a run can be reproduced.

    The defaults of the fields a job can set are :data:`service.job_options.DEFAULTS`, the same
    as ``rankopt compress``'s and the REST spec's.

    ``max_accuracy_drop`` is in percentage points of top-1 accuracy. ``rank_scale`` bounds the
    per-layer multiplier of the EVBMF rank (searched log-uniformly). Estimated ranks are raised
    to at least ``min_rank_fraction`` of the layer's largest rank (EVBMF gives 0 for a layer it
    sees as noise). ``rank_multiple`` rounds ranks (8 suits tensor cores). ``seeding`` enqueues
    the EVBMF plans first; ``methods`` limits the per-layer choice (None = every registered
    method that applies and is ``in_default_search``, plus keep). Seed plans other than the
    pure Kim et al. one keep dense every layer holding less than ``seed_min_share`` of the
    model's cost (decomposing them saves little and can cost much accuracy). Sensitivity
    seeds: each layer is decomposed alone at ``sensitivity_points`` rank scales (geometric
    over ``rank_scale``) and evaluated on up to ``sensitivity_samples`` validation examples
    without fine-tuning; for each budget in
    ``sensitivity_budgets`` (points) a seed takes every layer at the smallest scale within it.
    An empty ``sensitivity_budgets`` skips the analysis. For each of ``ratio_targets`` a seed
    allocates per-layer ranks greedily from the same curves for the best predicted accuracy at
    that compression ratio (:mod:`worker.search._ratio_seeds`); with targets, the scan goes on
    to deeper ranks (until a layer alone loses ``SCAN_STOP_POINTS``).

    ``pruner`` stops trials between epochs: ``feasibility`` only when the trial's drop cannot
    come back within ``max_accuracy_drop + verify_slack`` even with the largest recovery a
    completed trial showed from that epoch on; ``median`` (Optuna's) when its accuracy is below
    the earlier trials' median, which in a constrained search also stops the more compressed
    plans that are within the tolerance; ``halving``; ``none``.

    Fine-tuning distils the original model into the candidate: the loss is ``(1 - a) * CE +
    a * T^2 * KL`` with ``a = distill_weight`` and ``T = temperature`` (0 turns it off).

    Finalising re-checks the best candidates before choosing: up to ``verify_top`` completed
    trials whose drop is within ``max_accuracy_drop + verify_slack``, most compressed first,
    are fine-tuned for ``final_epochs``; the first that meets the tolerance wins. A short
    trial fine-tune misjudges a plan both ways, and the longer fine-tune settles it. When all
    fail, the most accurate compressed trial within the tolerance is tried last. When the
    chosen plan leaves a margin, up to ``spend_steps`` more final fine-tunes bisect a factor on
    all of its rank scales to spend it (:mod:`worker.search._spend`); 0 turns that off.

    Pushing: whenever a trial becomes the most compressed within ``max_accuracy_drop +
    verify_slack``, its plan with every rank
    scale times ``push_factor`` is enqueued next (see :mod:`worker.search._push`); None turns
    it off.

    Fine-tune mode: ``trial_finetune_mode`` (trials and the learning-rate calibration) and
    ``final_finetune_mode`` (verification, the final model) are each ``decompose``
    (factorise the original, fine-tune the factors) or ``lc`` (learning-compression,
    :mod:`worker.training._lc`: of the fine-tune's epochs, ``lc_factor_epochs`` fine-tune the
    factors after the last C step and the rest are ``lc_steps`` L steps of equal length, the
    penalty weight ``μ`` starting at ``lc_mu0`` and multiplied by ``lc_mu_factor`` per step).
    Both modes spend the same epochs x samples.

    Learning-rate calibration: before the first trial, Kim et al.'s EVBMF plan (the first
    seed) is fine-tuned for ``epochs_per_trial`` with the schedule's rates multiplied by each
    of ``lr_scales``, and the multiplier giving the best validation accuracy (the first listed
    on a tie) applies to every trial and the final fine-tune. A peak rate that recovers one
    model's factorised layers can wreck another's weights (an MLP can lose a point to AdamW at
    0.01 with nothing compressed), so it is measured per model rather than fixed. One value
    skips the calibration.

    Sample budgets: every trial epoch (and each calibration fine-tune) trains on a fresh seeded
    random subset of ``trial_samples`` training examples (None: the whole split up to
    :data:`DEFAULT_TRIAL_SAMPLES`), and the search's own evaluations (trial accuracy, pruner,
    calibration, sensitivity) read a fixed seeded subset of ``val_samples`` validation examples
    (None: all), so a trial's cost does not grow with the dataset. Verification, spending and
    the report use the whole validation split; the final fine-tunes train on the whole
    training split, or ``final_samples`` of it per epoch. ``augment`` is the train-time
    augmentation (:data:`worker.data.AUGMENTATIONS`); ``num_workers`` the ``DataLoader``
    worker processes. ``image_size`` and ``preprocess`` say how the caller opened the data
    (:func:`worker.data.open_dataset`); the search records them but reads the splits it is
    given. The test split is never read by the search: only the report evaluates
    the original and the chosen model on it. ``accel`` turns the GPU switches of
    :mod:`worker.training._accel` on or off (None: on when the device is CUDA).

    With ``objective="latency"`` the original's latency is the median of ``latency_repeats``
    forward passes of a batch of ``latency_batch_size`` validation images (the batch size the
    compressed model will serve: per-call overhead dominates at batch 1, arithmetic at large
    batches, and which factorised layers pay off differs). A candidate's speed-up is measured
    interleaved with the original, ``latency_repeats`` rounds (see
    :func:`worker.search.measure_speedup`).

    ``max_latency_ratio`` (None: none) is a second constraint, whatever the objective: the
    chosen model's latency at ``latency_batch_size`` must not exceed the original's times this
    (1.0: no slower). The original's latency is then measured too, every completed trial gets
    its latency measured as above, and a trial over the limit is infeasible (an Optuna
    constraint, like the accuracy one). Verification and spending re-measure each candidate
    after its final fine-tune and never choose one over the limit; when none is within both
    constraints the original model is kept, and the report says so.
    """

    trials: int = DEFAULTS.trials
    timeout_s: float | None = DEFAULTS.timeout_s
    max_accuracy_drop: float = DEFAULTS.max_accuracy_drop
    objective: Objective = DEFAULTS.objective
    max_latency_ratio: float | None = DEFAULTS.max_latency_ratio
    pareto: bool = DEFAULTS.pareto
    sampler: SamplerName = DEFAULTS.sampler
    pruner: PrunerName = DEFAULTS.pruner
    seed: int = DEFAULTS.seed
    split_seed: int = DEFAULTS.split_seed  # the data's, not the search's: recorded, not used
    seeding: bool = DEFAULTS.seeding
    methods: tuple[str, ...] | None = (
        tuple(DEFAULTS.methods) if DEFAULTS.methods is not None else None
    )
    rank_scale: tuple[float, float] = DEFAULTS.rank_scale
    rank_multiple: int = DEFAULTS.rank_multiple
    min_rank_fraction: float = 0.05
    seed_min_share: float = 0.02
    sensitivity_budgets: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    sensitivity_points: int = 9
    sensitivity_samples: int = 2000
    ratio_targets: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0, 32.0)
    spend_steps: int = 2
    distill_weight: float = DEFAULTS.distill_weight
    temperature: float = DEFAULTS.temperature
    verify_top: int = DEFAULTS.verify_top
    verify_slack: float = DEFAULTS.verify_slack
    epochs_per_trial: int = DEFAULTS.epochs_per_trial
    final_epochs: int = DEFAULTS.final_epochs
    trial_finetune_mode: Literal["decompose", "lc"] = DEFAULTS.trial_finetune_mode
    final_finetune_mode: Literal["decompose", "lc"] = DEFAULTS.final_finetune_mode
    lc_mu0: float = DEFAULTS.lc_mu0
    lc_mu_factor: float = DEFAULTS.lc_mu_factor
    lc_steps: int = DEFAULTS.lc_steps
    lc_factor_epochs: int = DEFAULTS.lc_factor_epochs
    schedule: ScheduleConfig = field(default_factory=lambda: schedule_config(DEFAULTS.schedule))
    optimizer: Literal["sgd", "adamw"] = DEFAULTS.optimizer
    batch_size: int = DEFAULTS.batch_size
    device: str = "auto"
    latency_batch_size: int = DEFAULTS.latency_batch_size
    latency_repeats: int = 30
    lr_scales: tuple[float, ...] = tuple(DEFAULTS.lr_scales)
    push_factor: float | None = DEFAULTS.push_factor
    trial_samples: int | None = DEFAULTS.trial_samples
    val_samples: int | None = DEFAULTS.val_samples
    final_samples: int | None = DEFAULTS.final_samples
    augment: str = DEFAULTS.augment
    num_workers: int = DEFAULTS.num_workers
    image_size: int = DEFAULTS.image_size  # the data's, like split_seed: recorded, not used
    preprocess: str = DEFAULTS.preprocess  # the data's: recorded, not used
    accel: bool | None = None

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ValueError(f"trials must be >= 1, got {self.trials}")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")
        if not 0 <= self.max_accuracy_drop <= 100:
            raise ValueError(
                f"max_accuracy_drop is in points, 0..100; got {self.max_accuracy_drop}"
            )
        if self.max_latency_ratio is not None and not 0 < self.max_latency_ratio < math.inf:
            raise ValueError(f"max_latency_ratio must be > 0 or None, got {self.max_latency_ratio}")
        for name, value, allowed in (
            ("objective", self.objective, OBJECTIVES),
            ("sampler", self.sampler, SAMPLERS),
            ("pruner", self.pruner, PRUNERS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        low, high = self.rank_scale
        if not 0 < low <= high < math.inf:
            raise ValueError(
                f"rank_scale must be (low, high) with 0 < low <= high, got {self.rank_scale}"
            )
        if self.rank_multiple < 1:
            raise ValueError(f"rank_multiple must be >= 1, got {self.rank_multiple}")
        if not 0 < self.min_rank_fraction <= 1:
            raise ValueError(f"min_rank_fraction must be in (0, 1], got {self.min_rank_fraction}")
        if self.epochs_per_trial < 1 or self.final_epochs < 0:
            raise ValueError("epochs_per_trial must be >= 1 and final_epochs >= 0")
        if not 0 <= self.seed_min_share < 1:
            raise ValueError(f"seed_min_share must be in [0, 1), got {self.seed_min_share}")
        if any(not 0 <= b < math.inf for b in self.sensitivity_budgets):
            raise ValueError(
                f"sensitivity_budgets must be points >= 0, got {self.sensitivity_budgets}"
            )
        if any(not 1 < r < math.inf for r in self.ratio_targets):
            raise ValueError(f"ratio_targets must be ratios > 1, got {self.ratio_targets}")
        if self.spend_steps < 0:
            raise ValueError(f"spend_steps must be >= 0, got {self.spend_steps}")
        if self.sensitivity_points < 1 or self.sensitivity_samples < 1:
            raise ValueError("sensitivity_points and sensitivity_samples must be >= 1")
        if not 0 <= self.distill_weight <= 1:
            raise ValueError(f"distill_weight must be in [0, 1], got {self.distill_weight}")
        if not 0 < self.temperature < math.inf:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.verify_top < 1:
            raise ValueError(f"verify_top must be >= 1, got {self.verify_top}")
        if not 0 <= self.verify_slack < math.inf:
            raise ValueError(f"verify_slack must be >= 0 points, got {self.verify_slack}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.latency_batch_size < 1 or self.latency_repeats < 1:
            raise ValueError(
                "latency_batch_size and latency_repeats must be >= 1, got "
                f"{self.latency_batch_size} and {self.latency_repeats}"
            )

        if not (self.lc_mu0 > 0 and self.lc_mu_factor >= 1 and self.lc_steps >= 1):
            raise ValueError(
                "lc_mu0 must be > 0, lc_mu_factor >= 1 and lc_steps >= 1, got "
                f"{self.lc_mu0}, {self.lc_mu_factor} and {self.lc_steps}"
            )
        if self.lc_factor_epochs < 0:
            raise ValueError(f"lc_factor_epochs must be >= 0, got {self.lc_factor_epochs}")
        for name in ("trial_samples", "val_samples", "final_samples"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be None or an int >= 1, got {value!r}")
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTS)}; got {self.augment!r}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if isinstance(self.image_size, bool) or self.image_size < 1:
            raise ValueError(f"image_size must be an int >= 1, got {self.image_size!r}")
        if self.preprocess not in PREPROCESS_PRESETS:
            raise ValueError(
                f"preprocess must be one of {', '.join(PREPROCESS_PRESETS)}; "
                f"got {self.preprocess!r}"
            )
        if self.push_factor is not None and not 0 < self.push_factor < 1:
            raise ValueError(f"push_factor must be in (0, 1) or None, got {self.push_factor}")
        if not self.lr_scales or any(
            not (isinstance(v, int | float) and 0 < v < math.inf) for v in self.lr_scales
        ):
            raise ValueError(
                f"lr_scales must be one or more finite multipliers > 0, got {self.lr_scales}"
            )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rank_scale"] = list(self.rank_scale)
        data["methods"] = list(self.methods) if self.methods is not None else None
        data["sensitivity_budgets"] = list(self.sensitivity_budgets)
        data["ratio_targets"] = list(self.ratio_targets)
        data["lr_scales"] = list(self.lr_scales)
        return data


def verify_mode(config: SearchConfig) -> Literal["decompose", "lc"]:
    """The fine-tune mode of verification and the final model: ``final_finetune_mode``, or
    with ``final_epochs == 0`` (candidates get the trial's fine-tune again) the trials'."""
    return config.final_finetune_mode if config.final_epochs > 0 else config.trial_finetune_mode


def search_config(
    options: JobOptions, *, device: str = "auto", trials: int | None = None
) -> SearchConfig:
    """The :class:`SearchConfig` of a job's options (a :class:`JobOptions` or a ``JobSpec``),
    run on ``device``: every option goes to the config field of the same name.

    ``trials`` overrides the options' count (the pool's job record holds the budget).

    Raises:
        InvalidOptions: a value the search refuses, e.g. a method name that is not registered.
    """
    from tensorops import list_methods

    values: dict[str, Any] = {}
    for name in JobOptions.model_fields:
        value = getattr(options, name)
        if isinstance(value, ScheduleOptions):
            value = schedule_config(value)
        elif isinstance(value, list | tuple):
            value = tuple(value)
        values[name] = value
    if trials is not None:
        values["trials"] = trials
    methods = values["methods"]
    if methods is not None:
        unknown = sorted(set(methods) - set(list_methods()))
        if unknown:
            raise InvalidOptions(
                f"methods: {unknown} are not decomposition methods; choose from {list_methods()}"
            )
    try:
        return SearchConfig(**values, device=device)
    except ValueError as exc:
        raise InvalidOptions(str(exc)) from None
