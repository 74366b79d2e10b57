"""Knowledge distillation's soft targets: a precomputed table, or the teacher on each batch.

The loss is ``(1 - a) * CE(labels) + a * T^2 * KL(teacher_T || student_T)`` (Hinton et al.
2015). The teacher's logits come either from a table computed once over the training split
(cheap and exact when the split is small and not augmented: one row per example) or from
running the teacher on the very batch the student sees (memory flat whatever the split size,
and correct under augmentation, where a table row no longer matches the augmented image).
Without augmentation the two give the same loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TABLE_MAX_BYTES", "Distillation", "use_teacher_table", "validate_distillation"]

TABLE_MAX_BYTES = 256 << 20
"""Largest teacher-logit table (float32 bytes) :func:`use_teacher_table` accepts."""


def use_teacher_table(
    n_train: int, num_classes: int, *, augment: str = "none", in_memory: bool = True
) -> bool:
    """Whether to precompute the teacher's logits (a table) rather than run it per batch.

    A table is cheap and exact only without augmentation, for an in-memory split whose table
    fits in :data:`TABLE_MAX_BYTES`; otherwise the teacher runs on each batch.
    """
    return augment == "none" and in_memory and n_train * num_classes * 4 <= TABLE_MAX_BYTES


@dataclass(frozen=True)
class Distillation:
    """Where the soft targets come from and how much they weigh against the labels."""

    weight: float
    temperature: float
    logits: torch.Tensor | None = None  # (n_train, num_classes) on the CPU: the table
    teacher: nn.Module | None = None  # or the teacher, run on each batch

    def targets(self, xb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for batch ``xb`` (examples ``idx`` of the training split)."""
        if self.logits is not None:
            return self.logits[idx].to(xb.device)
        if self.teacher is None:  # excluded by validate_distillation
            raise RuntimeError("Distillation needs a table or a teacher")
        with torch.no_grad():
            return self.teacher(xb).float()

    def mix(
        self, hard_loss: torch.Tensor, logits: torch.Tensor, teacher_logits: torch.Tensor
    ) -> torch.Tensor:
        """The distillation loss of student ``logits`` against ``teacher_logits``."""
        t = self.temperature
        target = F.log_softmax(teacher_logits / t, dim=1)  # (B, C)
        soft = F.kl_div(
            F.log_softmax(logits / t, dim=1), target, reduction="batchmean", log_target=True
        )
        return (1.0 - self.weight) * hard_loss + self.weight * (t * t) * soft


def validate_distillation(
    n_train: int,
    teacher_logits: torch.Tensor | None,
    teacher: nn.Module | None,
    weight: float,
    temperature: float,
    *,
    augment: str,
    device: torch.device,
) -> Distillation | None:
    """Check the distillation arguments of ``finetune``; ``None`` when it is off."""
    if not _is_real(weight) or not 0 <= weight <= 1:
        raise ValueError(f"distill_weight must be in [0, 1], got {weight!r}")
    if not _is_real(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if teacher_logits is not None and teacher is not None:
        raise ValueError("give teacher_logits or teacher, not both")
    if teacher_logits is None and teacher is None:
        if weight > 0:
            raise ValueError("distill_weight > 0 needs teacher_logits or a teacher model")
        return None
    if teacher_logits is not None:
        if teacher_logits.ndim != 2 or int(teacher_logits.shape[0]) != n_train:
            raise ValueError(
                f"teacher_logits must have shape (n_train={n_train}, num_classes), "
                f"got {tuple(teacher_logits.shape)}"
            )
        if not bool(torch.isfinite(teacher_logits).all()):
            raise ValueError("teacher_logits contain NaN or infinity")
        if augment != "none" and weight > 0:
            raise ValueError(
                f"teacher_logits (a table over unaugmented images) cannot be used with "
                f"augment={augment!r}; pass the teacher model instead"
            )
    if weight == 0:
        return None
    if teacher_logits is not None:
        logits = teacher_logits.detach().float().cpu()
        return Distillation(float(weight), float(temperature), logits=logits)
    if teacher is None:  # excluded above: one of the two is set
        return None
    teacher.to(device).eval()  # moved and set to eval mode in place, as finetune does the model
    return Distillation(float(weight), float(temperature), teacher=teacher)


def _is_real(value: object) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
