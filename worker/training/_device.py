"""Turning a user's device setting into a ``torch.device``."""

from __future__ import annotations

import re

import torch

_ACCEPTED = "'auto', 'cpu', 'cuda' or 'cuda:<index>'"
_CUDA_INDEX = re.compile(r"cuda:(\d+)")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The device to train and evaluate on.

    Args:
        device: ``"auto"`` (CUDA when available, otherwise CPU), ``"cpu"``, ``"cuda"``,
            ``"cuda:<index>"``, or a ``torch.device`` of type ``cpu`` or ``cuda``.

    Raises:
        ValueError: for any other value, or when CUDA is asked for but not available (or the
            index is past the last visible GPU).
    """
    if isinstance(device, torch.device):
        if device.type == "cpu":
            return torch.device("cpu")
        if device.type == "cuda":
            return _checked_cuda(device.index)
        raise ValueError(f"device must be {_ACCEPTED}, got {device!r}")
    if not isinstance(device, str):
        raise ValueError(f"device must be {_ACCEPTED}, got {device!r}")
    text = device.strip().lower()
    if text == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda":
        return _checked_cuda(None)
    match = _CUDA_INDEX.fullmatch(text)
    if match is not None:
        return _checked_cuda(int(match.group(1)))
    raise ValueError(f"device must be {_ACCEPTED}, got {device!r}")


def _checked_cuda(index: int | None) -> torch.device:
    if not torch.cuda.is_available():
        raise ValueError(
            "device 'cuda' was requested but CUDA is not available; use 'auto' or 'cpu'"
        )
    if index is None:
        return torch.device("cuda")
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(f"device 'cuda:{index}' does not exist; {count} CUDA device(s) visible")
    return torch.device("cuda", index)
