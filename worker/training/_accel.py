"""GPU efficiency switches: mixed precision, channels_last, cudnn.benchmark, non-blocking copies.

All on by default when the device is CUDA and off on the CPU, where they would cost time
(CPU autocast is slow for convolutions) or change nothing. Mixed precision autocasts to
bfloat16 where the GPU supports it (no loss scaling needed) and to float16 with a
``GradScaler`` otherwise. Losses are computed in float32 either way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["AccelConfig", "Accelerator", "accel_for", "autocast_dtype"]


@dataclass(frozen=True)
class AccelConfig:
    """Which switches to use; ``None`` for each: on when the device is CUDA.

    Attributes:
        mixed_precision: autocast forward passes (bf16 where supported, else fp16 + scaler).
        channels_last: store 4-d weights and inputs in NHWC memory format.
        cudnn_benchmark: let cuDNN time its algorithms for the shapes seen.
        non_blocking: asynchronous host-to-device copies (of pinned batches).
    """

    mixed_precision: bool | None = None
    channels_last: bool | None = None
    cudnn_benchmark: bool | None = None
    non_blocking: bool | None = None

    @classmethod
    def off(cls) -> AccelConfig:
        return cls(False, False, False, False)


def autocast_dtype(
    device: torch.device, *, bf16_supported: Callable[[], bool] | None = None
) -> torch.dtype:
    """bfloat16 when the CUDA device supports it, float16 otherwise (``bf16_supported``
    replaces the capability query, for tests)."""
    query = bf16_supported if bf16_supported is not None else torch.cuda.is_bf16_supported
    if device.type == "cuda" and query():
        return torch.bfloat16
    return torch.float16


@dataclass(frozen=True)
class Accelerator:
    """The switches resolved for one device: what the training loop and evaluation apply."""

    device: torch.device
    mixed_precision: bool
    channels_last: bool
    cudnn_benchmark: bool
    non_blocking: bool
    dtype: torch.dtype | None = None  # the autocast dtype when mixed_precision

    @property
    def needs_scaler(self) -> bool:
        """float16 autocast needs loss scaling; bfloat16 does not."""
        return self.mixed_precision and self.dtype == torch.float16

    def autocast(self) -> Any:
        """A context that autocasts forward passes, or does nothing."""
        if not self.mixed_precision or self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def scaler(self) -> Any:
        """A ``GradScaler`` enabled only for float16 autocast."""
        return torch.amp.GradScaler(self.device.type, enabled=self.needs_scaler)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """``model`` in channels_last memory format when on (in place, like ``.to``)."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """``batch`` on the device (channels_last for 4-d float inputs when on)."""
        batch = batch.to(self.device, non_blocking=self.non_blocking)
        if self.channels_last and batch.dim() == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch

    @contextmanager
    def cudnn(self) -> Iterator[None]:
        """``torch.backends.cudnn.benchmark`` set as configured, restored afterwards."""
        previous = torch.backends.cudnn.benchmark
        if self.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = previous


def accel_for(
    device: torch.device,
    config: AccelConfig | None = None,
    *,
    bf16_supported: Callable[[], bool] | None = None,
) -> Accelerator:
    """The switches of ``config`` for ``device``: each ``None`` becomes on for CUDA, off
    elsewhere; every switch is off on a device other than CUDA whatever the config says (no
    CPU autocast, no cuDNN)."""
    config = config or AccelConfig()
    cuda = device.type == "cuda"

    def pick(value: bool | None) -> bool:
        return cuda and (value if value is not None else True)

    mixed = pick(config.mixed_precision)
    return Accelerator(
        device=device,
        mixed_precision=mixed,
        channels_last=pick(config.channels_last),
        cudnn_benchmark=pick(config.cudnn_benchmark),
        non_blocking=pick(config.non_blocking),
        dtype=autocast_dtype(device, bf16_supported=bf16_supported) if mixed else None,
    )
