"""Quantised tensor train (QTT, Khoromskij 2011; Oseledets 2010): TT of a tensor whose every mode
has been split into ``base``-sized digits.

Padding rule (one rule, for every mode): a mode of size ``n`` is padded with zeros at its end up
to ``base ** L``, ``L = max(1, ceil(log_base n))`` (so a mode that already is a power of the base
is not padded, and a mode of size 1 becomes one digit of size ``base``). The padded mode is split
into ``L`` digits in C order, most significant first, and the modes' digits follow each other in
mode order: a ``(3, 8)`` tensor with base 2 becomes ``(2, 2, 2, 2, 2)`` (2 digits, then 3).
Zero padding leaves the Frobenius norm unchanged and cropping never increases the error, so a
``rel_error`` bound on the quantised tensor holds for the original.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tensorops.decompositions._tt import TTResult, tt_svd


def _check_base(base: int) -> None:
    if isinstance(base, bool) or not isinstance(base, int) or base < 2:
        raise ValueError(f"the QTT base must be an integer >= 2, got {base!r}")


def quantised_levels(size: int, base: int = 2) -> int:
    """Number of ``base``-digits of a mode of ``size``: ``max(1, ceil(log_base size))``."""
    _check_base(base)
    if size < 1:
        raise ValueError(f"mode sizes must be >= 1, got {size}")
    levels, capacity = 1, base
    while capacity < size:
        levels, capacity = levels + 1, capacity * base
    return levels


def padded_size(size: int, base: int = 2) -> int:
    """``size`` rounded up to the next power of ``base`` (at least ``base``)."""
    return int(base ** quantised_levels(size, base))


def quantise(tensor: torch.Tensor, base: int = 2) -> torch.Tensor:
    """Zero-pad every mode of ``tensor`` to a power of ``base`` and split it into digits."""
    if tensor.ndim < 1:
        raise ValueError("quantise needs a tensor with at least one dimension")
    padded = padded_shape(tuple(int(n) for n in tensor.shape), base)
    pad: list[int] = []
    for size, target in zip(reversed(tensor.shape), reversed(padded)):
        pad += [0, target - int(size)]  # F.pad lists the last mode first
    out = F.pad(tensor, pad) if any(pad) else tensor
    digits = [base] * sum(quantised_levels(int(n), base) for n in tensor.shape)
    return out.reshape(digits)


def padded_shape(shape: Sequence[int], base: int = 2) -> tuple[int, ...]:
    return tuple(padded_size(int(n), base) for n in shape)


def dequantise(digits: torch.Tensor, shape: Sequence[int], base: int = 2) -> torch.Tensor:
    """Inverse of :func:`quantise`: merge the digits back and crop the padding to ``shape``."""
    padded = padded_shape(shape, base)
    out = digits.reshape(padded)
    return out[tuple(slice(0, int(n)) for n in shape)]


@dataclass(frozen=True)
class QTTResult:
    """A QTT: the tensor train of the quantised tensor plus what is needed to undo quantisation."""

    train: TTResult
    shape: tuple[int, ...]
    base: int

    @property
    def ranks(self) -> tuple[int, ...]:
        return self.train.ranks

    @property
    def num_params(self) -> int:
        return self.train.num_params

    def full(self) -> torch.Tensor:
        """The tensor in its original ``shape`` (padding cropped)."""
        return dequantise(self.train.full(), self.shape, self.base)


def qtt_svd(
    tensor: torch.Tensor,
    base: int = 2,
    *,
    max_rank: int | Sequence[int] | None = None,
    rel_error: float | None = None,
) -> QTTResult:
    """TT-SVD of ``quantise(tensor, base)``; ``max_rank`` and ``rel_error`` as in :func:`tt_svd`."""
    _check_base(base)
    train = tt_svd(quantise(tensor, base), max_rank=max_rank, rel_error=rel_error)
    return QTTResult(train=train, shape=tuple(int(n) for n in tensor.shape), base=base)


def qtt_matrix_modes(
    out_features: int, in_features: int, base: int = 2
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """TT-matrix modes of the quantised ``(out, in)`` matrix.

    Each side is padded to a power of ``base`` (``p`` and ``q`` digits). The TT-matrix has
    ``d = max(p, q)`` cores; the side with fewer digits gets modes of size 1 at its end, so
    core ``k`` couples the ``k``-th most significant output and input digits.
    """
    p, q = quantised_levels(out_features, base), quantised_levels(in_features, base)
    d = max(p, q)
    return (base,) * p + (1,) * (d - p), (base,) * q + (1,) * (d - q)
