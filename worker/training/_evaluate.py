"""Top-1 accuracy and mean cross-entropy of a classifier on held-out data."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from worker.data import DataBundle, DataSplits, LabeledDataset
from worker.training._batches import DEFAULT_LOADER, BatchReader, LoaderOptions, as_dataset
from worker.training._batches import budget_indices as _budget_indices
from worker.training._device import resolve_device

EvalData = DataBundle | DataSplits | LabeledDataset | tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class EvalResult:
    """Accuracy in [0, 1], mean cross-entropy (nats per example) and the number of examples."""

    accuracy: float
    loss: float
    n: int


def evaluate(
    model: nn.Module,
    data_or_xy: EvalData,
    *,
    batch_size: int = 512,
    device: str | torch.device = "auto",
    split: str = "val",
    max_samples: int | None = None,
    seed: int = 0,
    loader: LoaderOptions = DEFAULT_LOADER,
) -> EvalResult:
    """Evaluate ``model`` without gradients, in batches.

    Args:
        model: a classifier returning logits of shape (N, num_classes). It is moved to the
            resolved device (``nn.Module.to`` is in place) and evaluated in eval mode; the
            train/eval mode of every submodule is restored afterwards.
        data_or_xy: a :class:`DataBundle` or :class:`DataSplits` (its ``split`` is used), a
            dataset, or a pair ``(x, y)`` of inputs and int64 labels.
        batch_size: examples per forward pass.
        device: see :func:`resolve_device`. Batches are moved to it one at a time.
        split: which split of a bundle or splits: ``"val"`` (default), ``"test"``, ``"train"``.
        max_samples: evaluate on a fixed seeded subset of this many examples (the same subset
            for the same ``seed`` and split size); ``None`` or a number at least the split's
            size: the whole split (a larger number is clamped, and logged).
        seed: picks the ``max_samples`` subset.
        loader: how a ``DataLoader`` reads the split (image folders, worker processes).

    A model producing non-finite logits gives a non-finite ``loss``; no error is raised.
    """
    dataset = as_dataset(data_or_xy, split)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if len(dataset) == 0:
        raise ValueError("cannot evaluate on zero examples")
    target = resolve_device(device)
    indices = eval_indices(len(dataset), max_samples, seed=seed)
    reader = BatchReader(dataset, device=target, options=loader, seed=seed)
    return evaluate_batches(model, reader, indices, batch_size=batch_size, device=target)


def eval_indices(n: int, max_samples: int | None, *, seed: int) -> torch.Tensor:
    """The examples an evaluation reads: all ``n`` in order, or a fixed seeded sorted subset."""
    subset = _budget_indices(n, max_samples, seed=seed, what="max_samples")
    return torch.arange(n) if subset is None else subset.sort().values


def evaluate_batches(
    model: nn.Module,
    reader: BatchReader,
    indices: torch.Tensor,
    *,
    batch_size: int,
    device: torch.device,
) -> EvalResult:
    """Evaluate ``model`` on the examples ``indices`` of ``reader``'s dataset."""
    model.to(device)
    n = int(indices.shape[0])
    correct = 0
    loss_sum = 0.0
    batches = [indices[start : start + batch_size] for start in range(0, n, batch_size)]
    with _eval_mode(model), torch.no_grad():
        for xb, yb in reader.read(batches):
            xb = xb.to(device, non_blocking=True)
            yb = yb.to(device, non_blocking=True)
            logits = model(xb)  # (B, num_classes)
            loss_sum += float(F.cross_entropy(logits.float(), yb, reduction="sum"))
            correct += int((logits.argmax(dim=1) == yb).sum())
    return EvalResult(accuracy=correct / n, loss=loss_sum / n, n=n)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode, restoring each submodule's own mode on exit."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def predict_logits(
    model: nn.Module,
    x: torch.Tensor | LabeledDataset,
    *,
    batch_size: int = 512,
    device: str | torch.device = "auto",
    loader: LoaderOptions = DEFAULT_LOADER,
) -> torch.Tensor:
    """``model``'s float32 logits for every example of ``x``, in eval mode, on the CPU.

    ``x`` is a tensor of inputs or a dataset (read without its transform). Used to compute a
    teacher's soft targets once for distillation (see ``finetune``).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    target = resolve_device(device)
    model.to(target)
    chunks = []
    with _eval_mode(model), torch.no_grad():
        if isinstance(x, torch.Tensor):
            for start in range(0, int(x.shape[0]), batch_size):
                xb = x[start : start + batch_size].to(target, non_blocking=True)
                chunks.append(model(xb).float().cpu())  # (B, num_classes)
        else:
            reader = BatchReader(x.with_transform(None), device=target, options=loader)
            n = len(x)
            order = torch.arange(n)
            batches = [order[start : start + batch_size] for start in range(0, n, batch_size)]
            for xb, _ in reader.read(batches):
                chunks.append(model(xb.to(target, non_blocking=True)).float().cpu())
    return torch.cat(chunks) if chunks else torch.empty(0, 0)
