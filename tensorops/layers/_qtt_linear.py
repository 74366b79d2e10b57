"""Quantised TT-matrix linear layer: the TT-matrix of the weight zero-padded to powers of a base.

Both dimensions are padded to the next power of ``base`` (``p`` output digits, ``q`` input
digits, see :func:`tensorops.decompositions.qtt_matrix_modes`); the TT-matrix has
``max(p, q)`` cores of modes ``base x base``, the side with fewer digits taking modes of size 1
in its last cores. The forward pads the input with zeros and crops the output, so the layer is
a drop-in ``nn.Linear``. Layers with a single core (both sides at most ``base``) are refused.
"""

from __future__ import annotations

from torch import nn

from tensorops.decompositions import qtt_matrix_modes, tt_matrix_ranks
from tensorops.exceptions import NotCompressibleError
from tensorops.layers._tt_linear import TTLinear
from tensorops.layers._validation import require_linear

#: Base of the quantisation the registered ``qtt`` and ``qcp`` methods use.
DEFAULT_QTT_BASE = 2


def quantised_modes(
    out_features: int, in_features: int, base: int = DEFAULT_QTT_BASE
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(out_modes, in_modes)`` of the quantised weight; refuses fewer than two cores."""
    outs, ins = qtt_matrix_modes(out_features, in_features, base)
    if len(outs) < 2:
        raise NotCompressibleError(
            f"a ({out_features}, {in_features}) weight has a single base-{base} "
            "digit per side: quantisation leaves nothing to factorise"
        )
    return outs, ins


class QTTLinear(TTLinear):
    """A :class:`TTLinear` over the quantised (zero-padded, base-``base`` digit) weight."""

    @classmethod
    def skeleton(  # type: ignore[override]
        cls, linear: nn.Linear, max_rank: int | None = None, *, base: int = DEFAULT_QTT_BASE
    ) -> QTTLinear:
        require_linear(linear, "qtt")
        outs, ins = quantised_modes(linear.out_features, linear.in_features, base)
        return cls(
            linear.in_features,
            linear.out_features,
            outs,
            ins,
            tt_matrix_ranks(outs, ins, max_rank),  # type: ignore[arg-type]
            bias=linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )

    @classmethod
    def from_linear(  # type: ignore[override]
        cls, linear: nn.Linear, max_rank: int | None = None, *, base: int = DEFAULT_QTT_BASE
    ) -> QTTLinear:
        """QTT-SVD of ``linear.weight`` with every TT rank capped at ``max_rank``."""
        layer = cls.skeleton(linear, max_rank, base=base)
        layer.load_weight(linear.weight, linear.bias)
        return layer
