"""The GPU efficiency switches: their decisions, testable without a GPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from worker.training import AccelConfig, accel_for, autocast_dtype

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


def test_cpu_leaves_every_switch_off_even_when_asked() -> None:
    for config in (None, AccelConfig(), AccelConfig(True, True, True, True)):
        accel = accel_for(CPU, config)
        assert not accel.mixed_precision and not accel.channels_last
        assert not accel.cudnn_benchmark and not accel.non_blocking
        assert accel.dtype is None and not accel.needs_scaler


def test_cuda_turns_every_switch_on_by_default() -> None:
    accel = accel_for(CUDA, bf16_supported=lambda: True)
    assert accel.mixed_precision and accel.channels_last
    assert accel.cudnn_benchmark and accel.non_blocking
    assert accel.dtype == torch.bfloat16 and not accel.needs_scaler


def test_cuda_switches_can_be_turned_off_one_by_one() -> None:
    accel = accel_for(CUDA, AccelConfig(mixed_precision=False, channels_last=False))
    assert not accel.mixed_precision and accel.dtype is None
    assert not accel.channels_last and accel.cudnn_benchmark and accel.non_blocking
    off = accel_for(CUDA, AccelConfig.off())
    assert not (off.mixed_precision or off.channels_last or off.cudnn_benchmark)


@pytest.mark.parametrize(("bf16", "dtype"), [(True, torch.bfloat16), (False, torch.float16)])
def test_autocast_dtype_follows_bf16_support(bf16: bool, dtype: torch.dtype) -> None:
    assert autocast_dtype(CUDA, bf16_supported=lambda: bf16) == dtype
    accel = accel_for(CUDA, bf16_supported=lambda: bf16)
    assert accel.dtype == dtype
    assert accel.needs_scaler is (dtype == torch.float16)  # fp16 needs a GradScaler


def test_cpu_paths_change_nothing() -> None:
    accel = accel_for(CPU)
    model = nn.Conv2d(1, 2, 3)
    assert accel.prepare_model(model).weight.is_contiguous()
    x = torch.randn(2, 1, 5, 5)
    assert accel.to_device(x) is x
    before = torch.backends.cudnn.benchmark
    with accel.autocast(), accel.cudnn():
        assert model(x).dtype == torch.float32
        assert torch.backends.cudnn.benchmark == before
    assert not accel.scaler().is_enabled()


def test_channels_last_and_cudnn_switches_apply_and_restore() -> None:
    # The memory-format and cuDNN code paths, exercised on CPU tensors.
    accel = accel_for(CUDA, bf16_supported=lambda: True)
    model = nn.Conv2d(3, 4, 3)
    accel.prepare_model(model)
    assert model.weight.is_contiguous(memory_format=torch.channels_last)
    before = torch.backends.cudnn.benchmark
    with accel.cudnn():
        assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cudnn.benchmark == before
