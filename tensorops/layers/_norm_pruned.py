"""Norm-parametrised layers for structured pruning: each output unit is ``g_i * v_i / ||v_i||``.

A :class:`NormLinear` or :class:`NormConv2d` keeps a subset of its dense layer's output units
(``out_index``) computed from a subset of its input features or channels (``in_index``), both
sorted index buffers. The kept units are computed by an inner weight-normalised ``nn.Linear`` or
``nn.Conv2d`` (``core``; ``g`` is its ``parametrizations.weight.original0``, ``v`` its
``original1``); the output is scattered back to the dense layer's full width, removed units
giving their bias (or zero), so the layer is a drop-in replacement. An L1 penalty on ``g``
(:meth:`penalty`) drives unimportant units towards zero norm during training.

Structure depends only on (dense layer, kept outputs, kept inputs); the indices are data.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from tensorops.exceptions import RankError
from tensorops.layers._geometry import ConvGeometry
from tensorops.layers._validation import plain_conv_layout, require_linear


@runtime_checkable
class Penalized(Protocol):
    """A module that adds a regularisation term to the training loss (``penalty()``, a scalar)."""

    def penalty(self) -> torch.Tensor: ...


class _NormPruned(nn.Module):
    """Shared machinery of :class:`NormLinear` and :class:`NormConv2d` (``dim`` = channel axis)."""

    core: nn.Module
    out_index: torch.Tensor
    in_index: torch.Tensor
    bias: nn.Parameter | None

    def _init_common(
        self,
        in_full: int,
        out_full: int,
        kept_out: int,
        kept_in: int,
        *,
        bias: bool,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        if not 1 <= kept_out <= out_full or not 1 <= kept_in <= in_full:
            raise RankError(
                f"kept units must be in [1, {out_full}] and kept inputs in [1, {in_full}], "
                f"got ({kept_out}, {kept_in})"
            )
        self.in_full = int(in_full)
        self.out_full = int(out_full)
        self.register_buffer("out_index", torch.arange(kept_out, device=device))
        self.register_buffer("in_index", torch.arange(kept_in, device=device))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_full, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    @property
    def kept_out(self) -> int:
        return int(self.out_index.numel())

    @property
    def kept_in(self) -> int:
        return int(self.in_index.numel())

    @property
    def g(self) -> nn.Parameter:
        """Norms of the kept units, shape (kept_out, 1, ...)."""
        param: nn.Parameter = self.core.parametrizations.weight.original0  # type: ignore[union-attr,assignment]
        return param

    @property
    def v(self) -> nn.Parameter:
        """Unnormalised directions of the kept units, shape like the core's weight."""
        param: nn.Parameter = self.core.parametrizations.weight.original1  # type: ignore[union-attr,assignment]
        return param

    def norms(self) -> torch.Tensor:
        """``|g|`` of every kept unit, shape (kept_out,), detached."""
        return self.g.detach().abs().reshape(-1)

    def penalty(self) -> torch.Tensor:
        """L1 norm of ``g``: the sum of the kept units' norms."""
        return self.g.abs().sum()

    def effective_weight(self) -> torch.Tensor:
        """``g * v / ||v||`` for the kept units (detached), shape like the core's weight."""
        with torch.no_grad():
            weight: torch.Tensor = self.core.weight  # type: ignore[assignment]
            return weight.detach().clone()

    @torch.no_grad()
    def mask_(self, threshold: float) -> int:
        """Set ``g`` to zero for every unit with ``|g| <= threshold``; returns how many."""
        below = self.norms() <= threshold
        self.g[below.reshape(self.g.shape)] = 0.0
        return int(below.sum())

    @torch.no_grad()
    def _load_weight(self, weight: torch.Tensor) -> None:
        """Set ``g`` and ``v`` so that ``g * v / ||v||`` equals ``weight`` (kept units).

        ``v`` gets unit rows. (With ``v = weight``, as ``weight_norm`` starts, a unit of small
        norm has a small ``v`` whose direction a gradient step turns by ``lr * |grad| / |v|``:
        fine-tuning after pruning, where surviving units can have norms near the threshold,
        then scrambles them and the network collapses.)
        """
        flat = weight.reshape(weight.shape[0], -1)
        norms = flat.norm(dim=1)
        zero = norms == 0
        direction = flat / torch.where(zero, 1.0, norms).unsqueeze(1)
        direction[zero, 0] = 1.0  # any unit vector: g = 0 makes the unit's weight zero anyway
        self.g.copy_(norms.reshape(self.g.shape))
        self.v.copy_(direction.reshape(self.v.shape))

    def _scatter(self, core_out: torch.Tensor, dim: int) -> torch.Tensor:
        """Place the kept units' outputs at ``out_index`` in a full-width output."""
        shape = [1] * core_out.dim()
        shape[dim] = -1
        if self.kept_out == self.out_full:
            return core_out if self.bias is None else core_out + self.bias.reshape(shape)
        full_shape = list(core_out.shape)
        full_shape[dim] = self.out_full
        if self.bias is None:
            base = core_out.new_zeros(full_shape)
        else:
            base = self.bias.reshape(shape).expand(full_shape)
            core_out = core_out + self.bias[self.out_index].reshape(shape)
        return base.index_copy(dim, self.out_index, core_out)

    def _gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        if self.kept_in == self.in_full:
            return x
        return x.index_select(dim, self.in_index)

    @torch.no_grad()
    def _copy_from(self, source: _NormPruned, out_pos: torch.Tensor, in_pos: torch.Tensor) -> None:
        """Take ``source``'s kept units ``out_pos`` and inputs ``in_pos`` (positions, not ids)."""
        weight = source.effective_weight().index_select(0, out_pos).index_select(1, in_pos)
        self._load_weight(weight)
        self.out_index.copy_(source.out_index[out_pos])
        self.in_index.copy_(source.in_index[in_pos])
        if self.bias is not None and source.bias is not None:
            self.bias.copy_(source.bias)


def _top_positions(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Positions of the ``keep`` largest scores, ascending (ties broken by lower position)."""
    order = torch.argsort(-scores, stable=True)[:keep]
    return torch.sort(order).values


class NormLinear(_NormPruned):
    """A ``Linear(in_full, out_full)`` keeping ``kept_out`` units of ``kept_in`` inputs."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kept_out: int,
        kept_in: int,
        *,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._init_common(
            in_features, out_features, kept_out, kept_in, bias=bias, device=device, dtype=dtype
        )
        core = nn.Linear(kept_in, kept_out, bias=False, device=device, dtype=dtype)
        self.core = weight_norm(core, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.core(self._gather(x, -1))  # (..., kept_out)
        return self._scatter(y, y.dim() - 1)

    @classmethod
    def skeleton(cls, linear: nn.Linear, kept_out: int, kept_in: int) -> NormLinear:
        require_linear(linear, "prune")
        return cls(
            linear.in_features,
            linear.out_features,
            kept_out,
            kept_in,
            bias=linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, kept_out: int | None = None, kept_in: int | None = None
    ) -> NormLinear:
        """Keep the ``kept_out`` rows and ``kept_in`` columns of largest L2 norm (all by default).

        With everything kept the layer reproduces ``linear`` (up to rounding); dropped inputs
        are simply ignored, dropped units output their bias.
        """
        kept_out = linear.out_features if kept_out is None else kept_out
        kept_in = linear.in_features if kept_in is None else kept_in
        layer = cls.skeleton(linear, kept_out, kept_in)
        _fill_from_dense(layer, linear.weight, linear.bias)
        return layer


class NormConv2d(_NormPruned):
    """A ``Conv2d(in_full, out_full)`` keeping ``kept_out`` kernels over ``kept_in`` channels."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kept_out: int,
        kept_in: int,
        geometry: ConvGeometry,
        *,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._init_common(
            in_channels, out_channels, kept_out, kept_in, bias=bias, device=device, dtype=dtype
        )
        self.geometry = geometry
        core = geometry.conv(kept_in, kept_out, device=device, dtype=dtype)
        self.core = weight_norm(core, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.core(self._gather(x, 1))  # (N, kept_out, H', W')
        return self._scatter(y, 1)

    @classmethod
    def skeleton(cls, conv: nn.Conv2d, kept_out: int, kept_in: int) -> NormConv2d:
        in_channels, out_channels, geometry, options = plain_conv_layout(conv, "prune")
        return cls(in_channels, out_channels, kept_out, kept_in, geometry, **options)

    @classmethod
    def from_conv(
        cls, conv: nn.Conv2d, kept_out: int | None = None, kept_in: int | None = None
    ) -> NormConv2d:
        """Keep the ``kept_out`` kernels and ``kept_in`` input channels of largest L2 norm."""
        kept_out = conv.out_channels if kept_out is None else kept_out
        kept_in = conv.in_channels if kept_in is None else kept_in
        layer = cls.skeleton(conv, kept_out, kept_in)
        _fill_from_dense(layer, conv.weight, conv.bias)
        return layer


@torch.no_grad()
def _fill_from_dense(layer: _NormPruned, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    w = weight.detach().to(torch.float64)  # (out, in, ...) ; norms in float64, cast back below
    out_pos = _top_positions(w.reshape(w.shape[0], -1).norm(dim=1), layer.kept_out)
    in_scores = w.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1)
    in_pos = _top_positions(in_scores, layer.kept_in)
    kept = w.index_select(0, out_pos).index_select(1, in_pos)
    layer._load_weight(kept.to(weight.dtype))
    layer.out_index.copy_(out_pos)
    layer.in_index.copy_(in_pos)
    if bias is not None and layer.bias is not None:
        layer.bias.copy_(bias)


def narrowed(layer: _NormPruned, out_keep: torch.Tensor, in_keep: torch.Tensor) -> _NormPruned:
    """A copy of ``layer`` keeping only the kept units ``out_keep`` and inputs ``in_keep``.

    Both are boolean masks over the layer's current kept units / inputs (not over the full
    width). Removed units then output their bias; removed inputs are ignored (the caller folds
    their contribution into the bias first when they carry a constant).
    """
    out_pos = torch.nonzero(out_keep.cpu()).reshape(-1).to(layer.out_index.device)
    in_pos = torch.nonzero(in_keep.cpu()).reshape(-1).to(layer.in_index.device)
    weight = layer.g
    options = {"bias": layer.bias is not None, "device": weight.device, "dtype": weight.dtype}
    new: _NormPruned
    if isinstance(layer, NormConv2d):
        new = NormConv2d(
            layer.in_full,
            layer.out_full,
            int(out_pos.numel()),
            int(in_pos.numel()),
            layer.geometry,
            **options,  # type: ignore[arg-type]
        )
    else:
        new = NormLinear(
            layer.in_full,
            layer.out_full,
            int(out_pos.numel()),
            int(in_pos.numel()),
            **options,  # type: ignore[arg-type]
        )
    new._copy_from(layer, out_pos, in_pos)
    new.train(layer.training)
    return new
