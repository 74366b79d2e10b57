"""Measured inference latency: median of many timed runs after warm-up."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


def measure_latency(
    model: nn.Module,
    example: torch.Tensor,
    *,
    device: torch.device,
    warmup: int = 3,
    repeats: int = 15,
) -> float:
    """Median seconds of one forward pass of ``example`` on ``device``."""
    model = model.to(device).eval()
    x = example.to(device)
    timings = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                timings.append(time.perf_counter() - start)
    return statistics.median(timings)
