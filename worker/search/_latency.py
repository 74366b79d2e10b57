"""Measured inference latency: median of many timed runs after warm-up, and the speed-up of one
model over another measured interleaved, so that load from other processes hits both alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

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


def time_rounds(
    models: Sequence[nn.Module],
    example: torch.Tensor,
    *,
    device: torch.device,
    rounds: int,
    first_round: int = 0,
) -> list[list[float]]:
    """Seconds of one forward pass of ``example`` per model per round, the models run
    alternately: in round ``r`` (counted from ``first_round``) the order is rotated by
    ``r % len(models)``, so that none gains from going first and load from other processes
    hits all alike. Returns one list of ``rounds`` timings per model, in the models' order.
    The models and ``example`` must already be on ``device`` (and in eval mode)."""
    times: list[list[float]] = [[] for _ in models]
    order = list(range(len(models)))
    with torch.inference_mode():
        for r in range(first_round, first_round + rounds):
            shift = r % len(order)
            for index in order[shift:] + order[:shift]:
                times[index].append(_timed_forward(models[index], example, device))
    return times


def median_ratio(reference: Sequence[float], candidate: Sequence[float]) -> float:
    """The median over rounds of (reference seconds / candidate seconds): the speed-up of
    interleaved timings (:func:`time_rounds`)."""
    return statistics.median(r / max(c, 1e-12) for r, c in zip(reference, candidate))


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
    pair = [reference.to(device).eval(), candidate.to(device).eval()]
    x = example.to(device)
    time_rounds(pair, x, device=device, rounds=warmup)
    ref, cand = time_rounds(pair, x, device=device, rounds=repeats, first_round=warmup)
    return median_ratio(ref, cand)
