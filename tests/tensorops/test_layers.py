"""Factorised layers reproduce the dense layer exactly at full rank, for every conv geometry."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from tensorops import (
    CPConv2d,
    LowRankConv2d,
    LowRankLinear,
    NotCompressibleError,
    Tucker2Conv2d,
)
from tensorops.decompositions import max_cp_rank

GEOMETRIES: list[dict[str, Any]] = [
    {},
    {"stride": 2, "padding": 1},
    {"stride": (2, 1), "padding": (1, 2)},
    {"dilation": 2, "padding": 2},
    {"dilation": (1, 2), "padding": (1, 2), "stride": (1, 3)},
    {"padding": "same"},
    {"padding": "same", "dilation": 2},
    {"padding": "valid"},
    {"padding": 1, "padding_mode": "reflect"},
    {"padding": 1, "padding_mode": "replicate"},
    {"padding": (1, 2), "padding_mode": "circular"},
    {"padding": 1, "bias": False},
]


def _conv(kernel: tuple[int, int] = (3, 3), **kwargs: Any) -> nn.Conv2d:
    conv = nn.Conv2d(5, 7, kernel, dtype=torch.float64, **kwargs)
    with torch.no_grad():
        conv.weight.normal_()
        if conv.bias is not None:
            conv.bias.normal_()
    return conv


def _x() -> torch.Tensor:
    return torch.randn(2, 5, 11, 13, dtype=torch.float64)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_full_rank_tucker2_is_exact(geometry: dict[str, Any]) -> None:
    conv = _conv(**geometry)
    layer = Tucker2Conv2d.from_conv(conv, (7, 5))
    x = _x()
    torch.testing.assert_close(layer(x), conv(x))


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_exact_rank_cp_is_exact(geometry: dict[str, Any]) -> None:
    conv = _conv(**geometry)
    # Plant a rank-4 kernel, then CP at rank 4 must reproduce the layer.
    g = torch.Generator().manual_seed(1)
    factors = [torch.randn(d, 4, generator=g, dtype=torch.float64) for d in (7, 5, 3, 3)]
    with torch.no_grad():
        conv.weight.copy_(torch.einsum("or,ir,hr,wr->oihw", *factors))
    layer = CPConv2d.from_conv(conv, 4, tol=1e-15, n_iter_max=2000)
    x = _x()
    torch.testing.assert_close(layer(x), conv(x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_full_rank_svd_conv_is_exact(geometry: dict[str, Any]) -> None:
    conv = _conv(**geometry)
    layer = LowRankConv2d.from_conv(conv, 7)
    x = _x()
    torch.testing.assert_close(layer(x), conv(x))


@pytest.mark.parametrize("geometry", [{}, {"stride": 2, "padding": 1}, {"bias": False}], ids=str)
def test_full_rank_low_rank_pointwise_conv_is_exact(geometry: dict[str, Any]) -> None:
    conv = _conv((1, 1), **geometry)
    layer = LowRankConv2d.from_conv(conv, 5)
    x = _x()
    torch.testing.assert_close(layer(x), conv(x))


@pytest.mark.parametrize("bias", [True, False])
def test_full_rank_low_rank_linear_is_exact(bias: bool) -> None:
    linear = nn.Linear(12, 9, bias=bias, dtype=torch.float64)
    layer = LowRankLinear.from_linear(linear, 9)
    x = torch.randn(4, 3, 12, dtype=torch.float64)
    torch.testing.assert_close(layer(x), linear(x))


def test_full_rank_cp_is_exact_on_an_unstructured_kernel() -> None:
    conv = _conv(padding=1)
    rank = max_cp_rank(tuple(conv.weight.shape))
    layer = CPConv2d.from_conv(conv, rank, tol=1e-15, n_iter_max=3000)
    x = _x()
    torch.testing.assert_close(layer(x), conv(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("groups", [5, 1])
def test_grouped_and_depthwise_convs_are_refused_with_reason(groups: int) -> None:
    conv = nn.Conv2d(5, 10, 3, groups=groups) if groups > 1 else None
    if conv is None:
        conv = nn.Conv2d(10, 10, 3, groups=2)
    kind = "depthwise" if groups == 5 else "grouped"
    for build in (
        lambda: Tucker2Conv2d.from_conv(conv, (2, 2)),
        lambda: CPConv2d.from_conv(conv, 2),
        lambda: LowRankConv2d.from_conv(conv, 2),
    ):
        with pytest.raises(NotCompressibleError, match=kind):
            build()


def test_dtype_and_device_are_kept() -> None:
    conv = nn.Conv2d(4, 6, 3, padding=1, dtype=torch.float16)
    for layer in (
        Tucker2Conv2d.from_conv(conv, (3, 2)),
        CPConv2d.from_conv(conv, 3),
        LowRankConv2d.from_conv(conv, 2),
    ):
        for p in layer.parameters():
            assert p.dtype == torch.float16
            assert p.device == conv.weight.device
    linear = nn.Linear(8, 4, dtype=torch.float64)
    assert LowRankLinear.from_linear(linear, 2).first.weight.dtype == torch.float64


def test_truncation_error_shrinks_with_rank() -> None:
    conv = _conv(padding=1)
    x = _x()
    errors = [float((Tucker2Conv2d.from_conv(conv, (r, r))(x) - conv(x)).norm()) for r in (1, 3, 5)]
    assert errors[0] > errors[1] > errors[2]
