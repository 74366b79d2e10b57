"""Measured inference latency: median of many timed runs after warm-up, and the speed-up of one
model over another measured interleaved, so that load from other processes hits both alike."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


def _timed_forward(model: nn.Module, x: torch.Tensor, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    model(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure_latency(
    model: nn.Module,
    example: torch.Tensor,
    *,
    device: torch.device,
    warmup: int = 3,
    repeats: int = 15,
) -> float:
    """Median seconds of one forward pass of ``example`` on ``device``."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    model = model.to(device).eval()
    x = example.to(device)
    timings = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            elapsed = _timed_forward(model, x, device)
            if i >= warmup:
                timings.append(elapsed)
    return statistics.median(timings)


def measure_speedup(
    reference: nn.Module,
    candidate: nn.Module,
    example: torch.Tensor,
    *,
    device: torch.device,
    warmup: int = 3,
    repeats: int = 30,
) -> float:
    """How many times faster ``candidate`` runs ``example`` than ``reference`` does.

    The two run alternately, one forward pass each per round (which goes first alternates
    too); the result is the median over
    ``repeats`` rounds of (reference seconds / candidate seconds). Load from other processes
    drifts over seconds and so hits both passes of a round alike: on a busy shared machine
    this ratio is several times steadier than the ratio of two medians measured one after the
    other. Both models are put in eval mode on ``device``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    reference = reference.to(device).eval()
    candidate = candidate.to(device).eval()
    x = example.to(device)
    ratios = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if i % 2:  # alternate which goes first, so that neither gains from the order
                cand = _timed_forward(candidate, x, device)
                ref = _timed_forward(reference, x, device)
            else:
                ref = _timed_forward(reference, x, device)
                cand = _timed_forward(candidate, x, device)
            if i >= warmup:
                ratios.append(ref / max(cand, 1e-12))
    return statistics.median(ratios)
