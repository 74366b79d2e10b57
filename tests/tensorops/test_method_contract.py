"""One contract suite run over every registered decomposition method."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tensorops import (
    BuildContext,
    RankError,
    get_method,
    inventory,
    list_methods,
    measure_cost,
)

LAYERS = {
    "conv3x3": lambda: nn.Conv2d(6, 10, 3, padding=1),
    "conv3x3_stride2": lambda: nn.Conv2d(6, 10, 3, stride=2, padding=1, bias=False),
    "conv_5x3_dilated": lambda: nn.Conv2d(6, 8, (5, 3), stride=(1, 2), dilation=(2, 1)),
    "conv1x1": lambda: nn.Conv2d(6, 10, 1),
    "grouped": lambda: nn.Conv2d(6, 12, 3, groups=3),
    "linear": lambda: nn.Linear(20, 7),
    "conv1d_k3": lambda: nn.Conv1d(6, 10, 3, padding=1),
    "conv1d_k5_stride2_dilated": lambda: nn.Conv1d(6, 8, 5, stride=2, dilation=2, bias=False),
    "conv1d_same_reflect": lambda: nn.Conv1d(6, 8, 4, padding="same", padding_mode="reflect"),
    "conv1d_k1": lambda: nn.Conv1d(6, 10, 1),
    "conv1d_grouped": lambda: nn.Conv1d(6, 12, 3, groups=3),
}


def _input(name: str) -> torch.Tensor:
    if name == "linear":
        return torch.randn(1, 20)
    if name.startswith("conv1d"):
        return torch.randn(1, 6, 15)
    return torch.randn(1, 6, 15, 14)


def _half_ranks(method_name: str, module: nn.Module) -> tuple[int, ...]:
    method = get_method(method_name)
    return tuple(max(1, m // 2) for m in method.max_ranks(module))


@pytest.fixture(params=list_methods())
def method_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_every_builtin_method_is_registered() -> None:
    assert {"tucker2", "cp", "svd"} <= set(list_methods())


@pytest.mark.parametrize("layer_name", sorted(LAYERS))
def test_closed_form_cost_equals_measured_cost(method_name: str, layer_name: str) -> None:
    method = get_method(method_name)
    module = LAYERS[layer_name]()
    if not method.applies(module):
        assert isinstance(method.refusal(module), str)
        return
    x = _input(layer_name)
    (info,) = inventory(module, x)
    for ranks in {tuple(1 for _ in method.max_ranks(module)), _half_ranks(method_name, module)}:
        built = method.decompose(module, ranks, BuildContext(layer_name=layer_name))
        assert method.cost(info, ranks) == measure_cost(built, x), (method_name, layer_name, ranks)
        # The skeleton has exactly the decomposed layer's structure.
        skeleton = method.skeleton(module, ranks)
        assert {k: v.shape for k, v in skeleton.state_dict().items()} == {
            k: v.shape for k, v in built.state_dict().items()
        }
        assert built(x).shape == module(x).shape


def test_ranks_are_validated(method_name: str) -> None:
    method = get_method(method_name)
    module = next(m for m in (f() for f in LAYERS.values()) if method.applies(m))
    limits = method.max_ranks(module)
    with pytest.raises(RankError, match=method_name):
        method.validate_ranks(module, tuple(limit + 1 for limit in limits))
    with pytest.raises(RankError):
        method.validate_ranks(module, tuple(0 for _ in limits))
    with pytest.raises(RankError, match="rank"):
        method.validate_ranks(module, (*limits, 1))
    assert method.validate_ranks(module, limits) == limits


def test_decomposition_is_deterministic(method_name: str) -> None:
    method = get_method(method_name)
    module = next(m for m in (f() for f in LAYERS.values()) if method.applies(m))
    ranks = _half_ranks(method_name, module)
    a = method.decompose(module, ranks, BuildContext(seed=1))
    b = method.decompose(module, ranks, BuildContext(seed=1))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_seed_ranks_are_in_range(method_name: str) -> None:
    method = get_method(method_name)
    for factory in LAYERS.values():
        module = factory()
        if method.applies(module):
            seeds = method.seed_ranks(module)
            limits = method.max_ranks(module)
            assert len(seeds) == len(limits)
            assert all(0 <= s <= m for s, m in zip(seeds, limits))


def test_scaled_ranks_round_and_clamp(method_name: str) -> None:
    method = get_method(method_name)
    module = next(m for m in (f() for f in LAYERS.values()) if method.applies(m))
    limits = method.max_ranks(module)
    assert method.scaled_ranks(module, limits, 10.0) == limits
    assert method.scaled_ranks(module, limits, 1e-6) == tuple(1 for _ in limits)
    big = method.scaled_ranks(module, limits, 1.0, multiple=8)
    assert all(r == limit or r % 8 == 0 for r, limit in zip(big, limits))
