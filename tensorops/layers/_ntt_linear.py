"""Nonlinear tensor-train linear layer (NTT; Wang, Xu, Zhao et al., "Nonlinear tensor train
format for deep neural network compression", Neural Networks 2021).

A TT-matrix layer whose forward applies an elementwise activation to the intermediate result
after every core contraction but the last: ``y = G_d(σ(... σ(G_1 x)))`` in the notation of
:func:`tensorops.layers.tt_matrix_forward`. The activation has no parameters; ``tanh`` is the
default (it is close to the identity near 0, so a TT-SVD initialisation starts near the dense
layer), ``identity`` makes the layer exactly a :class:`TTLinear`. The cores are initialised by
TT-SVD of the dense weight and are meant to be fine-tuned; the activation changes the function,
so the layer is only exact before fine-tuning when the activation is ``identity``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from tensorops.layers._tt_linear import TTLinear

#: Parameter-free activations an NTT layer may use between core contractions.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "identity": lambda t: t,
    "relu": torch.relu,
    "gelu": nn.functional.gelu,
    "softsign": nn.functional.softsign,
}

DEFAULT_ACTIVATION = "tanh"


class NTTLinear(TTLinear):
    """TT-matrix linear layer with ``activation`` between successive core contractions."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        out_modes: Sequence[int],
        in_modes: Sequence[int],
        ranks: Sequence[int],
        *,
        activation: str = DEFAULT_ACTIVATION,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown NTT activation {activation!r}; choose one of {sorted(ACTIVATIONS)}"
            )
        super().__init__(
            in_features,
            out_features,
            out_modes,
            in_modes,
            ranks,
            bias=bias,
            device=device,
            dtype=dtype,
        )
        self.activation = activation

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation!r}"

    def _between(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        return None if self.activation == "identity" else ACTIVATIONS[self.activation]

    @classmethod
    def from_tt(cls, layer: TTLinear, activation: str = DEFAULT_ACTIVATION) -> NTTLinear:
        """An NTT layer with ``layer``'s modes, ranks, cores and bias (copied)."""
        ntt = cls(
            layer.in_features,
            layer.out_features,
            layer.out_modes,
            layer.in_modes,
            layer.ranks,
            activation=activation,
            bias=layer.bias is not None,
            device=layer.cores[0].device,
            dtype=layer.cores[0].dtype,
        )
        ntt.load_state_dict(layer.state_dict())
        return ntt

    @classmethod
    def skeleton(
        cls,
        linear: nn.Linear,
        max_rank: int | Sequence[int] | None = None,
        *,
        out_modes: Sequence[int] | None = None,
        in_modes: Sequence[int] | None = None,
        activation: str = DEFAULT_ACTIVATION,
    ) -> NTTLinear:
        tt = TTLinear.skeleton(linear, max_rank, out_modes=out_modes, in_modes=in_modes)
        return cls.from_tt(tt, activation)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        in_modes: Sequence[int] | None = None,
        out_modes: Sequence[int] | None = None,
        ranks: int | Sequence[int] | None = None,
        *,
        activation: str = DEFAULT_ACTIVATION,
    ) -> NTTLinear:
        """Cores from the TT-SVD of ``linear.weight`` (as :meth:`TTLinear.from_linear`)."""
        tt = TTLinear.from_linear(linear, in_modes=in_modes, out_modes=out_modes, ranks=ranks)
        return cls.from_tt(tt, activation)
