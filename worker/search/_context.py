"""Preparation shared by every trial: baseline, inventory, EVBMF ranks, decomposition cache."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from tensorops import Cost, LayerInfo, Plan, compress, estimate_cost, inventory, measure_cost
from worker.data import DataBundle, DataSplits
from worker.search._calibrate import LrCalibration, calibrate_lr, scaled_schedule
from worker.search._config import DEFAULT_TRIAL_SAMPLES, SearchConfig
from worker.search._latency import measure_latency, measure_speedup
from worker.search._layer_latency import layer_speedups
from worker.search._sensitivity import layer_sensitivity
from worker.search._space import LayerSpace, build_space, evbmf_params, plan_from_params
from worker.training import (
    AccelConfig,
    EpochCallback,
    FinetuneResult,
    LcSchedule,
    LoaderOptions,
    check_model_input,
    eval_indices,
    evaluate,
    finetune,
    lc_finetune,
    predict_logits,
    resolve_device,
    use_teacher_table,
)
from worker.training._loop import steps_per_epoch

logger = logging.getLogger(__name__)

#: Study user attribute with what :func:`prepare` measured once (see :func:`prepared_summary`).
PREPARED_ATTR = "prepared"


@dataclass
class SearchContext:
    """The original model and everything derived from it once, before the first trial."""

    model: nn.Module
    data: DataSplits  # train and val read through datasets: an image folder stays on disk
    config: SearchConfig
    device: torch.device
    example: torch.Tensor
    layers: list[LayerInfo]
    spaces: list[LayerSpace]
    baseline_accuracy: float
    baseline_loss: float
    baseline_cost: Cost
    baseline_latency: float | None
    teacher_logits: torch.Tensor | None = None  # (n_train, classes), for distillation
    teacher: nn.Module | None = None  # or a copy of the original, run on each batch
    search_baseline_accuracy: float | None = None  # on the val_samples subset (see below)
    sensitivity: dict[str, list[tuple[float, float]]] | None = None  # see seed_sensitivity
    cache: dict[tuple[object, ...], object] = field(default_factory=dict)
    latency_example: torch.Tensor | None = None  # config.latency_batch_size images
    speedups: dict[str, dict[str, float]] | None = None  # see seed_speedups
    lr_calibration: LrCalibration | None = None  # see calibrate_lr

    @property
    def trial_baseline_accuracy(self) -> float:
        """The original's accuracy on the search's validation subset (``val_samples``): what
        trial accuracies, the pruner and calibration are compared with."""
        if self.search_baseline_accuracy is None:
            return self.baseline_accuracy
        return self.search_baseline_accuracy

    @property
    def accel(self) -> AccelConfig | None:
        """The GPU switches of every fine-tune: ``config.accel`` True or False forces them
        all, None leaves each to the device (on for CUDA)."""
        on = self.config.accel
        if on is None:
            return None
        return AccelConfig(on, on, on, on)

    @property
    def loader(self) -> LoaderOptions:
        """How every fine-tune and evaluation of the search reads its data."""
        return LoaderOptions(num_workers=self.config.num_workers)

    def val_indices(self) -> torch.Tensor:
        """The fixed seeded validation subset of the search's evaluations (``val_samples``)."""
        n_val = len(self.data.val)
        return eval_indices(n_val, val_budget(self.config, n_val), seed=self.config.seed)

    def search_splits(self, *, final: bool = False) -> DataSplits:
        """The splits a fine-tune reads: training and validation only, never the test split.

        Trials and calibration (``final=False``) are judged on the fixed ``val_samples``
        subset; final fine-tunes on the whole validation split.
        """
        data = self.data
        val = data.val if final else data.val.select(self.val_indices().numpy())
        return DataSplits(
            name=data.name,
            train=data.train,
            val=val,
            test=None,
            num_classes=data.num_classes,
            split_seed=data.split_seed,
            test_note="the search never reads the test split",
        )

    def samples_per_epoch(self, *, final: bool = False) -> int | None:
        """Training examples per epoch: ``trial_samples`` (default: the split up to
        :data:`DEFAULT_TRIAL_SAMPLES`) for trials, ``final_samples`` for final fine-tunes;
        clamped to the split (a larger budget is logged once per fine-tune)."""
        n_train = len(self.data.train)
        if final:
            return self.config.final_samples
        budget = self.config.trial_samples
        return min(n_train, DEFAULT_TRIAL_SAMPLES) if budget is None else budget

    @property
    def lr_scale(self) -> float:
        """Multiplier of the schedule's rates in every fine-tune (1 until calibrated)."""
        return self.lr_calibration.scale if self.lr_calibration is not None else 1.0

    def calibrate_lr(self) -> LrCalibration:
        """Measure the learning-rate multiplier for this model (see
        :mod:`worker.search._calibrate`) and use it from now on."""
        config = self.config
        self.lr_calibration = calibrate_lr(
            config.lr_scales,
            lambda: plan_from_params(
                self.model, self.spaces, evbmf_params(self.spaces, self.layers, config), config
            ),
            fit=lambda plan, **kw: self.fit(plan, mode=config.trial_finetune_mode, **kw)[1],
            epochs=config.epochs_per_trial,
            seed=config.seed,
        )
        self.model.to("cpu")
        return self.lr_calibration

    def seed_sensitivity(self) -> dict[str, list[tuple[float, float]]]:
        """Per-layer sensitivity for the seed plans, scanned on first use.

        Only the process that creates the study needs it (to enqueue the seeds); a worker
        joining a running study never pays for the scan. Empty without seeding or budgets.
        """
        if self.sensitivity is None:
            config = self.config
            self.sensitivity = {}
            if config.seeding and config.sensitivity_budgets:
                self.sensitivity = layer_sensitivity(
                    self.model,
                    self.data,
                    self.spaces,
                    self.layers,
                    config,
                    device=self.device,
                    cache=self.cache,
                )
                self.model.to("cpu")
        return self.sensitivity

    def seed_speedups(self) -> dict[str, dict[str, float]]:
        """Per-layer speed of each method against the dense layer, timed on first use.

        Only for the latency objective with seeding (see
        :mod:`worker.search._layer_latency`); empty otherwise.
        """
        if self.speedups is None:
            config = self.config
            self.speedups = {}
            if config.seeding and config.objective == "latency":
                example = self.latency_example if self.latency_example is not None else self.example
                self.speedups = layer_speedups(
                    self.model,
                    self.spaces,
                    example,
                    device=self.device,
                    repeats=config.latency_repeats,
                    seed=config.seed,
                    cache=self.cache,
                )
        return self.speedups

    def plan_cost(self, plan: Plan) -> Cost:
        return estimate_cost(self.layers, plan, total=self.baseline_cost)

    @property
    def times_latency(self) -> bool:
        """Whether trials and candidates get their latency measured: for the latency
        objective or the ``max_latency_ratio`` constraint."""
        return self.config.objective == "latency" or self.config.max_latency_ratio is not None

    def latency_ratio(self, latency: float) -> float:
        """``latency`` as a multiple of the original's (under 1: faster)."""
        if self.baseline_latency is None:
            raise ValueError("the original's latency was not measured")
        return latency / self.baseline_latency

    def latency_met(self, latency: float | None) -> bool | None:
        """Whether ``latency`` is within ``max_latency_ratio`` (None: no such constraint)."""
        limit = self.config.max_latency_ratio
        if limit is None:
            return None
        return latency is not None and self.latency_ratio(latency) <= limit

    def compression(self, plan: Plan, latency: float | None = None) -> float:
        """Ratio of the original's cost to the plan's (higher is smaller)."""
        if self.config.objective == "latency":
            if latency is None or self.baseline_latency is None:
                raise ValueError("latency objective needs measured latencies")
            return self.baseline_latency / latency
        cost = self.plan_cost(plan)
        if self.config.objective == "macs":
            return self.baseline_cost.macs / max(cost.macs, 1)
        return self.baseline_cost.params / max(cost.params, 1)

    def compress(self, plan: Plan) -> nn.Module:
        """The original with ``plan`` applied (decompositions cached across trials)."""
        return compress(self.model, plan, seed=self.config.seed, cache=self.cache)

    def fit(
        self,
        plan: Plan,
        *,
        mode: Literal["decompose", "lc"],
        epochs: int,
        seed: int,
        callback: EpochCallback | None = None,
        lr_scale: float | None = None,
        final: bool = False,
    ) -> tuple[nn.Module, FinetuneResult]:
        """``plan`` applied to the original and fine-tuned for ``epochs`` in ``mode``:
        ``decompose`` (:meth:`compress`, then :meth:`finetune`) or ``lc``
        (:func:`worker.training.lc_finetune`, the same epochs x samples in all). ``final``: a
        final fine-tune's budgets (see :meth:`finetune`)."""
        if mode == "decompose":
            model = self.compress(plan)
            return model, self.finetune(
                model, epochs=epochs, seed=seed, callback=callback, lr_scale=lr_scale, final=final
            )
        config = self.config

        def train(
            model: nn.Module,
            *,
            epochs: int,
            seed: int,
            max_steps: int | None = None,
            callback: EpochCallback | None = None,
            after_step: Callable[[float], None] | None = None,
        ) -> FinetuneResult:
            return self.finetune(
                model,
                epochs=epochs,
                seed=seed,
                callback=callback,
                lr_scale=lr_scale,
                max_steps=max_steps,
                after_step=after_step,
                final=final,
            )

        n_train = len(self.data.train)
        schedule = LcSchedule(
            mu0=config.lc_mu0,
            mu_factor=config.lc_mu_factor,
            steps=config.lc_steps,
            factor_epochs=config.lc_factor_epochs,
        )
        result = lc_finetune(
            self.model,
            plan,
            train,
            schedule=schedule,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch(
                min(self.samples_per_epoch(final=final) or n_train, n_train), config.batch_size
            ),
            seed=seed,
            callback=callback,
        )
        self.model.to("cpu")
        fit = result.fit
        if fit is None:  # no factor epochs: evaluate the factorised model as it is
            scored = evaluate(
                result.model,
                self.search_splits(final=final),
                device=self.device,
                loader=self.loader,
            )
            fit = FinetuneResult(
                status="completed",
                epochs_run=0,
                history=(),
                final_val_accuracy=scored.accuracy,
                final_val_loss=scored.loss,
                message="LC without a factor fine-tune",
                steps_run=0,
                seconds=0.0,
            )
        return result.model, fit

    def finetune(
        self,
        model: nn.Module,
        *,
        epochs: int,
        seed: int,
        callback: EpochCallback | None = None,
        lr_scale: float | None = None,
        max_steps: int | None = None,
        after_step: Callable[[float], None] | None = None,
        final: bool = False,
    ) -> FinetuneResult:
        """Fine-tune ``model`` in place with the search's schedule, optimiser and batch size,
        the schedule's rates times ``lr_scale`` (default: the calibrated :attr:`lr_scale`).

        A trial's fine-tune (``final=False``) trains on ``trial_samples`` examples an epoch and
        reports accuracy on the ``val_samples`` subset; a final one (verification, spending) on
        ``final_samples`` (default all) and the whole validation split.
        """
        config = self.config
        scale = self.lr_scale if lr_scale is None else lr_scale
        distilling = self.teacher_logits is not None or self.teacher is not None
        return finetune(
            model,
            self.search_splits(final=final),
            scaled_schedule(config.schedule, scale),
            epochs=epochs,
            optimizer=config.optimizer,
            batch_size=config.batch_size,
            device=self.device,
            seed=seed,
            callback=callback,
            teacher_logits=self.teacher_logits,
            teacher=self.teacher,
            distill_weight=config.distill_weight if distilling else 0.0,
            temperature=config.temperature,
            max_steps=max_steps,
            after_step=after_step,
            samples_per_epoch=self.samples_per_epoch(final=final),
            augment=config.augment,
            loader=self.loader,
            accel=self.accel,
        )

    def latency(self, model: nn.Module) -> float:
        """Seconds per forward pass of the latency batch, in the baseline's conditions.

        With a measured baseline (objective ``latency`` or a latency constraint) this is
        ``baseline_latency`` divided by ``model``'s speed-up over the original, timed interleaved
        (:func:`measure_speedup`), so that a change in machine load between the baseline's
        measurement and this one does not pass for a faster or slower model. Without one, a
        plain median.
        """
        example = self.latency_example if self.latency_example is not None else self.example
        repeats = self.config.latency_repeats
        if self.baseline_latency is None:
            return measure_latency(model, example, device=self.device, repeats=repeats)
        speedup = measure_speedup(self.model, model, example, device=self.device, repeats=repeats)
        self.model.to("cpu")
        return self.baseline_latency / max(speedup, 1e-12)


def prepared_summary(ctx: SearchContext) -> dict[str, Any]:
    """What :func:`prepare` measured that a worker joining the search can take instead of
    measuring again: the baseline's accuracy and loss and the EVBMF ranks of every layer's
    choices (the search space). Small JSON, kept on the study (:data:`PREPARED_ATTR`)."""
    return {
        "baseline_accuracy": ctx.baseline_accuracy,
        "baseline_loss": ctx.baseline_loss,
        "spaces": [
            {
                "name": space.name,
                "methods": list(space.methods),
                "seed_ranks": {m: list(r) for m, r in space.seed_ranks.items()},
                "raw_ranks": {m: list(r) for m, r in space.raw_ranks.items()},
            }
            for space in ctx.spaces
        ],
    }


def _spaces_of(summary: Mapping[str, Any]) -> list[LayerSpace]:
    return [
        LayerSpace(
            name=str(item["name"]),
            methods=tuple(str(m) for m in item["methods"]),
            seed_ranks={str(m): tuple(int(r) for r in v) for m, v in item["seed_ranks"].items()},
            raw_ranks={str(m): tuple(int(r) for r in v) for m, v in item["raw_ranks"].items()},
        )
        for item in summary["spaces"]
    ]


def prepare(
    model: nn.Module,
    data: DataSplits | DataBundle,
    config: SearchConfig,
    *,
    prepared: Mapping[str, Any] | None = None,
) -> SearchContext:
    """Evaluate the original model, take its inventory and estimate EVBMF ranks per layer.

    ``data`` is read through its datasets (a :class:`DataBundle` is taken as its
    :meth:`~DataBundle.splits`): an image folder is decoded batch by batch, never held whole,
    and the teacher's logits are tabulated only for an in-memory training split (a folder's
    teacher runs on each batch). The test split is not read.

    With ``prepared`` (a :func:`prepared_summary` read from the study another process
    prepared) the baseline evaluation and the EVBMF estimates are taken from it, not measured
    again: a worker joining a search starts sooner and searches the very same space.
    """
    started = time.perf_counter()
    if isinstance(data, DataBundle):
        data = data.splits()
    device = resolve_device(config.device)
    model = model.to("cpu").eval()
    check_model_input(model, data)
    example = data.example_input(1)
    loader = LoaderOptions(num_workers=config.num_workers)
    if prepared is None:
        baseline = evaluate(model, data, device=device, loader=loader)
        accuracy, loss = baseline.accuracy, baseline.loss
    else:
        accuracy = float(prepared["baseline_accuracy"])
        loss = float(prepared["baseline_loss"])
    budget = val_budget(config, len(data.val))
    search_accuracy = accuracy
    if budget is not None:  # the original on the search's validation subset
        search_accuracy = evaluate(
            model, data, device=device, max_samples=budget, seed=config.seed, loader=loader
        ).accuracy
    model = model.to("cpu")
    layers = inventory(model, example)
    spaces = build_space(model, layers, config) if prepared is None else _spaces_of(prepared)
    timing_example = batch_of(data, config.latency_batch_size)
    latency = None
    if config.objective == "latency" or config.max_latency_ratio is not None:
        latency = measure_latency(
            model, timing_example, device=device, repeats=config.latency_repeats
        )
    table = None
    teacher = None
    if config.distill_weight > 0:
        n_train = len(data.train)
        in_memory = data.train.in_memory  # a folder: no table, the teacher runs per batch
        if use_teacher_table(
            n_train, data.num_classes, augment=config.augment, in_memory=in_memory
        ):
            table = predict_logits(model, data.train, device=device, loader=loader)
        else:  # a copy: finetune moves the teacher to the device in place
            teacher = copy.deepcopy(model).eval()
    model = model.to("cpu")
    logger.info(
        "baseline accuracy %.4f, %d layers, %d searchable, %s in %.1fs",
        accuracy,
        len(layers),
        len(spaces),
        "prepared" if prepared is None else "loaded from the study",
        time.perf_counter() - started,
    )
    return SearchContext(
        model=model,
        data=data,
        config=config,
        device=device,
        example=example,
        layers=layers,
        spaces=spaces,
        baseline_accuracy=accuracy,
        baseline_loss=loss,
        baseline_cost=measure_cost(model, example),
        baseline_latency=latency,
        teacher_logits=table,
        teacher=teacher,
        search_baseline_accuracy=search_accuracy,
        latency_example=timing_example,
    )


def val_budget(config: SearchConfig, n_val: int) -> int | None:
    """``val_samples`` for a validation split of ``n_val`` (None when it covers the split)."""
    budget = config.val_samples
    return None if budget is None or budget >= n_val else budget


def batch_of(data: DataSplits | DataBundle, batch: int) -> torch.Tensor:
    """``batch`` validation images for timing (the split repeated when it holds fewer); only
    the first ``batch`` are decoded."""
    x = data.example_input(batch)
    copies = -(-batch // max(int(x.shape[0]), 1))
    return x.repeat(copies, *([1] * (x.dim() - 1)))[:batch].clone()
