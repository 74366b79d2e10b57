"""Top-1 accuracy and mean cross-entropy of a classifier on held-out data."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from worker.data import DataBundle
from worker.training._device import resolve_device


@dataclass(frozen=True)
class EvalResult:
    """Accuracy in [0, 1], mean cross-entropy (nats per example) and the number of examples."""

    accuracy: float
    loss: float
    n: int


def evaluate(
    model: nn.Module,
    data_or_xy: DataBundle | tuple[torch.Tensor, torch.Tensor],
    *,
    batch_size: int = 512,
    device: str | torch.device = "auto",
) -> EvalResult:
    """Evaluate ``model`` without gradients, in batches.

    Args:
        model: a classifier returning logits of shape (N, num_classes). It is moved to the
            resolved device (``nn.Module.to`` is in place) and evaluated in eval mode; the
            train/eval mode of every submodule is restored afterwards.
        data_or_xy: a :class:`DataBundle` (its validation split is used) or a pair
            ``(x, y)`` of inputs and int64 labels.
        batch_size: examples per forward pass.
        device: see :func:`resolve_device`. Batches are moved to it one at a time.

    A model producing non-finite logits gives a non-finite ``loss``; no error is raised.
    """
    x, y = _split(data_or_xy)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    target = resolve_device(device)
    model.to(target)
    n = int(y.shape[0])
    correct = 0
    loss_sum = 0.0
    with _eval_mode(model), torch.no_grad():
        for start in range(0, n, batch_size):
            xb = x[start : start + batch_size].to(target, non_blocking=True)
            yb = y[start : start + batch_size].to(target, non_blocking=True)
            logits = model(xb)  # (B, num_classes)
            loss_sum += float(F.cross_entropy(logits.float(), yb, reduction="sum"))
            correct += int((logits.argmax(dim=1) == yb).sum())
    return EvalResult(accuracy=correct / n, loss=loss_sum / n, n=n)


def _split(
    data_or_xy: DataBundle | tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data_or_xy, DataBundle):
        x, y = data_or_xy.x_val, data_or_xy.y_val
    elif isinstance(data_or_xy, tuple) and len(data_or_xy) == 2:
        x, y = data_or_xy
    else:
        raise ValueError(
            f"data_or_xy must be a DataBundle or an (x, y) tuple, got {type(data_or_xy).__name__}"
        )
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError("x and y must be torch tensors")
    if y.ndim != 1:
        raise ValueError(f"y must be one-dimensional class labels, got shape {tuple(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]}")
    if y.shape[0] == 0:
        raise ValueError("cannot evaluate on zero examples")
    return x, y


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
    x: torch.Tensor,
    *,
    batch_size: int = 512,
    device: str | torch.device = "auto",
) -> torch.Tensor:
    """``model``'s float32 logits for every row of ``x``, in eval mode, gathered on the CPU.

    Used to compute a teacher's soft targets once for distillation (see ``finetune``).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    target = resolve_device(device)
    model.to(target)
    chunks = []
    with _eval_mode(model), torch.no_grad():
        for start in range(0, int(x.shape[0]), batch_size):
            xb = x[start : start + batch_size].to(target, non_blocking=True)
            chunks.append(model(xb).float().cpu())  # (B, num_classes)
    return torch.cat(chunks) if chunks else torch.empty(0, 0)
