"""The fine-tuning loop: shuffled mini-batches, a per-step learning rate, per-epoch evaluation.

The loop reads any :class:`~worker.data.DataSplits` (or a :class:`~worker.data.DataBundle`)
through :class:`~worker.training._batches.BatchReader`: in-memory arrays by a plain gather,
image folders through a ``DataLoader``. Sample budgets bound the cost of an epoch and of an
evaluation whatever the size of the split.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from tensorops.layers import Penalized
from worker.data import DataBundle, DataSplits, LabeledDataset, train_transform
from worker.training._accel import AccelConfig, Accelerator, accel_for
from worker.training._batches import DEFAULT_LOADER, BatchReader, LoaderOptions
from worker.training._device import resolve_device
from worker.training._distill import Distillation, validate_distillation
from worker.training._evaluate import EvalResult, eval_indices, evaluate_batches
from worker.training._results import EpochCallback, EpochReport, FinetuneResult, FinetuneStatus
from worker.training._schedules import ScheduleConfig, lr_at

logger = logging.getLogger(__name__)

OptimizerName = Literal["sgd", "adamw"]
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
_EVAL_BATCH_SIZE = 512


def finetune(
    model: nn.Module,
    data: DataBundle | DataSplits,
    schedule: ScheduleConfig,
    *,
    epochs: int,
    optimizer: OptimizerName = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 128,
    device: str | torch.device = "auto",
    seed: int = 0,
    callback: EpochCallback | None = None,
    max_steps: int | None = None,
    label_smoothing: float = 0.0,
    teacher_logits: torch.Tensor | None = None,
    distill_weight: float = 0.0,
    temperature: float = 2.0,
    penalty_weight: float = 0.0,
    after_step: Callable[[float], None] | None = None,
    samples_per_epoch: int | None = None,
    val_samples: int | None = None,
    augment: str = "none",
    teacher: nn.Module | None = None,
    loader: LoaderOptions = DEFAULT_LOADER,
    accel: AccelConfig | None = None,
) -> FinetuneResult:
    """Train ``model`` in place on ``data``'s training split, following ``schedule``.

    The learning rate is set on every parameter group before each optimizer step to
    ``lr_at(schedule, step, steps_per_epoch)``. Training examples are reshuffled every epoch
    by a ``torch.Generator`` seeded with ``seed``; the global RNG (dropout and the like) is
    also seeded with ``seed`` inside a fork, so the caller's RNG state is left untouched and
    the same seed gives bit-identical weights on CPU.

    After every epoch the model is evaluated on the validation split and ``callback`` is
    called with an :class:`EpochReport`; returning ``False`` stops the run (status
    ``stopped``), ``True`` or ``None`` continues. Exceptions from the callback (a pruner's,
    say) propagate. A non-finite training loss ends the run at once with status
    ``diverged`` (the offending step is not applied); so does a non-finite validation loss.
    Neither raises.

    Args:
        model: the network; moved to the resolved device (in place) and left there, in eval
            mode, when this returns or raises.
        data: the train and validation splits (:class:`DataSplits`, or a
            :class:`DataBundle` of tensors), kept where they are; batches are moved to the
            device one at a time.
        schedule: the learning-rate curve.
        epochs: number of epochs, >= 1: passes over the training split, or over
            ``samples_per_epoch`` examples of it.
        optimizer: ``"sgd"`` (with ``momentum``) or ``"adamw"`` (``momentum`` unused;
            ``weight_decay`` is decoupled).
        momentum: SGD momentum, >= 0.
        weight_decay: L2 penalty (SGD) or decoupled decay (AdamW), >= 0.
        batch_size: examples per step. A last batch of a single example is merged into the
            one before it so batch-norm layers never see a batch of one.
        device: see :func:`resolve_device`.
        seed: seeds shuffling and the global RNG.
        callback: called after each evaluated epoch.
        max_steps: stop after this many optimizer steps in total (status ``completed``); the
            partial epoch is still evaluated and reported.
        label_smoothing: passed to ``cross_entropy`` for the training loss, in [0, 1).
        teacher_logits: the original model's logits on the training split, one row per
            training example (``(n_train, num_classes)``), for knowledge distillation (Hinton
            et al. 2015). Computed once by the caller, since the teacher never changes; only
            without augmentation (see :func:`use_teacher_table`).
        teacher: instead of ``teacher_logits``, the teacher model itself, run (in eval mode,
            without gradients, moved to the device) on each training batch: memory stays
            flat and augmentation is allowed. Same loss as the table without augmentation.
        distill_weight: weight ``a`` in ``(1 - a) * CE(labels) + a * T^2 * KL(teacher_T ||
            student_T)``, in [0, 1]; 0 (the default) trains on the labels alone.
        temperature: ``T`` above, > 0, softening both distributions.
        penalty_weight: weight of the summed ``penalty()`` of every
            :class:`tensorops.layers.Penalized` module (the L1 of the unit norms of
            ``prune`` layers), added to the training loss and to the reported train loss;
            >= 0. The default 0 leaves training as without such modules.
        after_step: called with the step's learning rate after every optimizer step (LC's
            proximal step, :mod:`worker.training._lc`); it may change parameters in place.
        samples_per_epoch: each epoch trains on a fresh seeded random subset of this many
            training examples (``None``: the whole split; a larger number is clamped, and
            logged). The schedule's epochs are these shorter epochs.
        val_samples: the per-epoch evaluation uses a fixed seeded subset of this many
            validation examples (``None``: the whole split; clamped likewise).
        augment: train-time augmentation, one of :data:`worker.data.AUGMENTATIONS`
            (``"none"``, ``"crop-flip"``, ``"imagenet"``), seeded by ``seed``.
        loader: how a ``DataLoader`` reads the splits (worker processes, pinned memory).
        accel: the GPU switches (mixed precision, channels_last, cudnn.benchmark,
            non-blocking copies); default: all on for a CUDA device, off elsewhere
            (:mod:`worker.training._accel`).
    """
    _validate(
        data,
        schedule,
        epochs=epochs,
        optimizer=optimizer,
        momentum=momentum,
        weight_decay=weight_decay,
        batch_size=batch_size,
        seed=seed,
        max_steps=max_steps,
        label_smoothing=label_smoothing,
    )
    splits = data.splits() if isinstance(data, DataBundle) else data
    if not _is_real(penalty_weight) or penalty_weight < 0:
        raise ValueError(f"penalty_weight must be a finite number >= 0, got {penalty_weight!r}")
    target = resolve_device(device)
    transform = train_transform(augment, splits.train.sample_shape)  # checks augment
    n_train = len(splits.train)
    distill = validate_distillation(
        n_train,
        teacher_logits,
        teacher,
        distill_weight,
        temperature,
        augment=augment,
        device=target,
    )
    per_epoch = _epoch_size(n_train, samples_per_epoch)
    val_idx = eval_indices(len(splits.val), val_samples, seed=seed)
    model.to(target)
    speed = accel_for(target, accel)
    speed.prepare_model(model)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    opt = _make_optimizer(params, optimizer, schedule, momentum, weight_decay)
    bounds = _batch_bounds(per_epoch, batch_size)
    run = _Run(model, schedule, opt, bounds, target, label_smoothing, max_steps, distill)
    run.accel = speed
    run.scaler = speed.scaler()
    run.train = BatchReader(
        splits.train.with_transform(transform), device=target, options=loader, seed=seed
    )
    run.n_train = n_train
    run.val = BatchReader(splits.val, device=target, options=loader, seed=seed)
    run.val_idx = val_idx
    run.penalty = _penalty(model, float(penalty_weight))
    run.after_step = after_step
    started = time.perf_counter()
    try:
        with _seeded(seed, target), speed.cudnn():
            status, message = run.loop(epochs, seed, callback)
        final = run.final_eval()
    finally:
        model.eval()
    seconds = time.perf_counter() - started
    log = logger.warning if status == "diverged" else logger.info
    log("finetune %s after %d epoch(s), %.1fs: %s", status, run.epochs_run, seconds, message)
    return FinetuneResult(
        status=status,
        epochs_run=run.epochs_run,
        history=tuple(run.history),
        final_val_accuracy=final.accuracy,
        final_val_loss=final.loss,
        message=message,
        steps_run=run.step,
        seconds=seconds,
    )


class _Run:
    """Mutable state of one fine-tuning run (kept out of the public signature)."""

    def __init__(
        self,
        model: nn.Module,
        schedule: ScheduleConfig,
        opt: torch.optim.Optimizer,
        bounds: list[tuple[int, int]],
        device: torch.device,
        label_smoothing: float,
        max_steps: int | None,
        distill: Distillation | None = None,
    ) -> None:
        self.model = model
        self.distill = distill
        self.train: BatchReader
        self.val: BatchReader
        self.n_train = 0
        self.val_idx = torch.empty(0, dtype=torch.int64)
        self.examples_seen = 0  # training examples read, over the whole run
        self.schedule = schedule
        self.opt = opt
        self.bounds = bounds
        self.device = device
        self.label_smoothing = label_smoothing
        self.max_steps = max_steps
        self.steps_per_epoch = len(bounds)
        self.step = 0
        self.epochs_run = 0
        self.history: list[EpochReport] = []
        self._last_eval: EvalResult | None = None  # of the current weights, if known
        self.penalty: Callable[[], torch.Tensor] | None = None
        self.accel: Accelerator = accel_for(torch.device("cpu"))
        self.scaler = self.accel.scaler()
        self.after_step: Callable[[float], None] | None = None

    def loop(
        self, epochs: int, seed: int, callback: EpochCallback | None
    ) -> tuple[FinetuneStatus, str]:
        generator = torch.Generator().manual_seed(seed)
        n = self.n_train
        for epoch in range(1, epochs + 1):
            if self._out_of_steps():
                return "completed", f"reached max_steps={self.max_steps} after epoch {epoch - 1}"
            epoch_started = time.perf_counter()
            # A fresh seeded permutation each epoch; with a budget, its first examples.
            order = torch.randperm(n, generator=generator)[: self.bounds[-1][1]]
            self.epochs_run = epoch
            train_loss, lr, failure = self._train_epoch(epoch, order)
            if failure is not None:
                return "diverged", failure
            val = self._evaluate()
            self._last_eval = val
            report = EpochReport(
                epoch=epoch,
                train_loss=train_loss,
                val_accuracy=val.accuracy,
                val_loss=val.loss,
                lr=lr,
                seconds=time.perf_counter() - epoch_started,
            )
            self.history.append(report)
            logger.debug("epoch %d: %s", epoch, report)
            if not math.isfinite(val.loss):
                return "diverged", f"validation loss became {val.loss} after epoch {epoch}"
            if callback is not None and callback(report) is False:
                return "stopped", f"stopped by the callback after epoch {epoch}"
            if self._out_of_steps():
                return "completed", f"reached max_steps={self.max_steps} in epoch {epoch}"
        return "completed", f"completed {epochs} epoch(s)"

    def _train_epoch(self, epoch: int, order: torch.Tensor) -> tuple[float, float, str | None]:
        """One pass; returns (mean train loss, last lr, divergence message or None)."""
        self.model.train()
        self._last_eval = None
        loss_sum = 0.0
        seen = 0
        lr = lr_at(self.schedule, self.step, self.steps_per_epoch)
        left = self._steps_left()
        bounds = self.bounds if left is None else self.bounds[:left]
        batches = [order[lo:hi] for lo, hi in bounds]
        for batch_index, (idx, (xb, yb)) in enumerate(
            zip(batches, self.train.read(batches), strict=True), start=1
        ):
            size = int(idx.shape[0])
            self.examples_seen += size
            xb = self.accel.to_device(xb)
            yb = yb.to(self.device, non_blocking=self.accel.non_blocking)
            lr = lr_at(self.schedule, self.step, self.steps_per_epoch)
            for group in self.opt.param_groups:
                group["lr"] = lr
            with self.accel.autocast():
                logits = self.model(xb)  # (B, num_classes)
            loss = F.cross_entropy(logits.float(), yb, label_smoothing=self.label_smoothing)
            if self.distill is not None:
                with self.accel.autocast():
                    soft = self.distill.targets(xb, idx).float()
                loss = self.distill.mix(loss, logits.float(), soft)
            if self.penalty is not None:
                loss = loss + self.penalty()
            value = float(loss.detach())
            if not math.isfinite(value):
                return (
                    math.nan,
                    lr,
                    f"training loss became {value} at epoch {epoch}, batch {batch_index} "
                    f"(global step {self.step}, lr={lr:.3g})",
                )
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
            if self.after_step is not None:
                self.after_step(lr)
            self.step += 1
            loss_sum += value * size
            seen += size
        return loss_sum / max(seen, 1), lr, None

    def final_eval(self) -> EvalResult:
        """Validation metrics of the current weights (reused when already measured)."""
        if self._last_eval is None:
            self._last_eval = self._evaluate()
        return self._last_eval

    def _evaluate(self) -> EvalResult:
        return evaluate_batches(
            self.model, self.val, self.val_idx, batch_size=_EVAL_BATCH_SIZE, device=self.device
        )

    def _out_of_steps(self) -> bool:
        return self.max_steps is not None and self.step >= self.max_steps

    def _steps_left(self) -> int | None:
        return None if self.max_steps is None else max(self.max_steps - self.step, 0)


def _penalty(model: nn.Module, weight: float) -> Callable[[], torch.Tensor] | None:
    """``weight`` times the summed penalties of ``model``'s Penalized modules, or None."""
    modules = [m for m in model.modules() if isinstance(m, Penalized)]
    if weight == 0 or not modules:
        return None

    def total() -> torch.Tensor:
        return weight * torch.stack([m.penalty().float() for m in modules]).sum()

    return total


def _make_optimizer(
    params: list[nn.Parameter],
    name: str,
    schedule: ScheduleConfig,
    momentum: float,
    weight_decay: float,
) -> torch.optim.Optimizer:
    lr = lr_at(schedule, 0, 1)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimizer steps in one epoch over ``n_train`` examples (see :func:`_batch_bounds`)."""
    return len(_batch_bounds(n_train, batch_size))


def _batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[lo, hi) slices of a permutation; a trailing batch of one joins the previous batch."""
    bounds = [(lo, min(lo + batch_size, n)) for lo in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        last = bounds.pop()
        bounds[-1] = (bounds[-1][0], last[1])
    return bounds


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the global CPU (and the used CUDA device's) RNG, restoring both on exit."""
    cuda = device.type == "cuda"
    index = device.index if device.index is not None else 0
    with torch.random.fork_rng(devices=[index] if cuda else [], device_type="cuda"):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


def _epoch_size(n_train: int, samples_per_epoch: int | None) -> int:
    """Examples per epoch: the split, or ``samples_per_epoch`` of it (clamped, and logged)."""
    if samples_per_epoch is None:
        return n_train
    if not _is_int(samples_per_epoch) or samples_per_epoch < 1:
        raise ValueError(
            f"samples_per_epoch must be None or an int >= 1, got {samples_per_epoch!r}"
        )
    if samples_per_epoch > n_train:
        logger.info(
            "samples_per_epoch=%d exceeds the %d training examples; each epoch uses all %d",
            samples_per_epoch,
            n_train,
            n_train,
        )
    return min(samples_per_epoch, n_train)


def _validate(
    data: DataBundle | DataSplits,
    schedule: ScheduleConfig,
    *,
    epochs: int,
    optimizer: str,
    momentum: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
    max_steps: int | None,
    label_smoothing: float,
) -> None:
    if not isinstance(data, (DataBundle, DataSplits)):
        raise ValueError(f"data must be a DataBundle or DataSplits, got {type(data).__name__}")
    if not isinstance(schedule, ScheduleConfig):
        raise ValueError(f"schedule must be a ScheduleConfig, got {type(schedule).__name__}")
    for name, count in (("epochs", epochs), ("batch_size", batch_size)):
        if not _is_int(count) or count < 1:
            raise ValueError(f"{name} must be an int >= 1, got {count!r}")
    if max_steps is not None and (not _is_int(max_steps) or max_steps < 1):
        raise ValueError(f"max_steps must be None or an int >= 1, got {max_steps!r}")
    if not _is_int(seed):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    for name, value in (("momentum", momentum), ("weight_decay", weight_decay)):
        if not _is_real(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if not _is_real(label_smoothing) or not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    for split in ("train", "val"):
        if isinstance(data, DataSplits):
            dataset: LabeledDataset = getattr(data, split)
            n_x = n_y = len(dataset)
        else:
            n_x = int(getattr(data, f"x_{split}").shape[0])
            n_y = int(getattr(data, f"y_{split}").shape[0])
        if n_y == 0 or n_x != n_y:
            raise ValueError(
                f"the {split} split must be non-empty with as many inputs as labels, got "
                f"{n_x} inputs and {n_y} labels"
            )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))
