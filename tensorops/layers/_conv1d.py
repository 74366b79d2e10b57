"""Factorised 1-D convolutions: truncated SVD (conv → 1x1) and Tucker-2 (1x1 → k → 1x1).

A ``Conv1d`` kernel ``(out, in, k)`` is the 2-D case with one spatial axis, so both
factorisations reuse the 2-D numerics: SVD of the ``(out, in·k)`` unfolding, Tucker-2 of the
kernel viewed as ``(out, in, k, 1)``. Stride, padding (also ``'same'``/``'valid'``), dilation and
padding mode sit on the one layer that carries the kernel; the pointwise layers commute with any
padding and the bias is added last, so full-rank factorisations are exact.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tensorops.decompositions import ModeBasis, truncated_svd, tucker2
from tensorops.exceptions import NotCompressibleError
from tensorops.layers._validation import groups_refusal


def conv1d_refusal(conv: nn.Module) -> str | None:
    """Why ``conv`` cannot be factorised as a 1-D convolution, or None when it can."""
    if type(conv) is not nn.Conv1d:
        return f"{type(conv).__name__} is not a plain nn.Conv1d"
    return groups_refusal(conv)


def _layout(conv: nn.Module, method: str) -> tuple[nn.Conv1d, dict[str, Any]]:
    reason = conv1d_refusal(conv)
    if reason is not None:
        raise NotCompressibleError(f"{method} cannot factorise this layer: {reason}")
    assert isinstance(conv, nn.Conv1d)
    options = {"device": conv.weight.device, "dtype": conv.weight.dtype}
    return conv, options


def _like(conv: nn.Conv1d, in_channels: int, out_channels: int, **options: Any) -> nn.Conv1d:
    """A bias-free Conv1d with ``conv``'s kernel size and geometry."""
    return nn.Conv1d(
        in_channels,
        out_channels,
        conv.kernel_size[0],
        stride=conv.stride[0],
        padding=conv.padding if isinstance(conv.padding, str) else conv.padding[0],
        dilation=conv.dilation[0],
        bias=False,
        padding_mode=conv.padding_mode,
        **options,
    )


def _pointwise(in_channels: int, out_channels: int, *, bias: bool, **options: Any) -> nn.Conv1d:
    return nn.Conv1d(in_channels, out_channels, 1, bias=bias, **options)


class LowRankConv1d(nn.Module):
    """A Conv1d (in→out, kernel k) as a Conv1d (in→rank, kernel k) then a 1x1 (rank→out).

    The kernel is treated as an ``(out, in·k)`` matrix and factorised by truncated SVD.
    """

    def __init__(self, conv: nn.Conv1d, rank: int, **options: Any) -> None:
        super().__init__()
        self.rank = int(rank)
        self.first = _like(conv, conv.in_channels, self.rank, **options)
        self.last = _pointwise(self.rank, conv.out_channels, bias=conv.bias is not None, **options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.first(x))

    @classmethod
    def skeleton(cls, conv: nn.Module, rank: int) -> LowRankConv1d:
        """The layer's structure for ``conv`` at ``rank``, weights uninitialised."""
        plain, options = _layout(conv, "svd")
        return cls(plain, rank, **options)

    @classmethod
    def from_conv(cls, conv: nn.Module, rank: int) -> LowRankConv1d:
        """Factorise the ``(out, in·k)`` matrix of ``conv``'s kernel at ``rank``."""
        layer = cls.skeleton(conv, rank)
        assert isinstance(conv, nn.Conv1d)
        result = truncated_svd(conv.weight.reshape(conv.out_channels, -1), layer.rank)
        with torch.no_grad():
            layer.first.weight.copy_(result.right.reshape(layer.first.weight.shape))  # (r, in, k)
            layer.last.weight.copy_(result.left[:, :, None])  # (out, r, 1)
            if conv.bias is not None and layer.last.bias is not None:
                layer.last.bias.copy_(conv.bias)
        return layer


class Tucker2Conv1d(nn.Module):
    """A Conv1d whose ``(out, in, k)`` kernel is Tucker-2 factorised on its channel modes:
    1x1 (in→r_in) → kernel k core (r_in→r_out) → 1x1 (r_out→out)."""

    def __init__(self, conv: nn.Conv1d, ranks: tuple[int, int], **options: Any) -> None:
        super().__init__()
        r_out, r_in = ranks
        self.ranks = (int(r_out), int(r_in))
        self.first = _pointwise(conv.in_channels, self.ranks[1], bias=False, **options)
        self.core = _like(conv, self.ranks[1], self.ranks[0], **options)
        self.last = _pointwise(
            self.ranks[0], conv.out_channels, bias=conv.bias is not None, **options
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.core(self.first(x)))

    @classmethod
    def skeleton(cls, conv: nn.Module, ranks: tuple[int, int]) -> Tucker2Conv1d:
        """The layer's structure for ``conv`` at ``ranks``, weights uninitialised."""
        plain, options = _layout(conv, "tucker2")
        return cls(plain, ranks, **options)

    @classmethod
    def from_conv(
        cls,
        conv: nn.Module,
        ranks: tuple[int, int],
        *,
        n_iter: int = 0,
        bases: tuple[ModeBasis, ModeBasis] | None = None,
    ) -> Tucker2Conv1d:
        """Factorise ``conv``'s kernel at ``ranks = (r_out, r_in)`` (HOSVD, then HOOI sweeps)."""
        layer = cls.skeleton(conv, ranks)
        assert isinstance(conv, nn.Conv1d)
        kernel = conv.weight[..., None]  # (out, in, k) -> (out, in, k, 1)
        result = tucker2(kernel, layer.ranks, n_iter=n_iter, bases=bases)
        with torch.no_grad():
            # first: (r_in, in, 1); core: (r_out, r_in, k); last: (out, r_out, 1).
            layer.first.weight.copy_(result.in_factor.T[:, :, None])
            layer.core.weight.copy_(result.core[..., 0])
            layer.last.weight.copy_(result.out_factor[:, :, None])
            if conv.bias is not None and layer.last.bias is not None:
                layer.last.bias.copy_(conv.bias)
        return layer
