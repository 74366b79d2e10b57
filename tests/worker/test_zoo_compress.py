"""Every zoo architecture survives inventory → compress at half rank → save → load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tensorops import (
    Choice,
    Plan,
    compress,
    get_method,
    inventory,
    load_compressed,
    measure_cost,
    save_compressed,
)
from worker.zoo import get_model, input_shape

TORCHVISION = [
    "resnet18",
    "resnet50",
    "vgg11_bn",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "densenet121",
    "shufflenet_v2_x1_0",
    "squeezenet1_0",
    "regnet_y_400mf",
    "googlenet",
]
OURS = [
    "vgg11_bn",
    "vgg16_bn",
    "resnet20",
    "lenet5",
    "lenet500_300",
    "tinycnn",
    "tabular_mlp",
    "tabular_cnn1d",
]
CASES = [f"torchvision:{n}" for n in TORCHVISION] + [f"rankopt:{n}" for n in OURS]


def half_rank_plan(model: nn.Module, example: torch.Tensor, *, use_cp: bool) -> Plan:
    choices = {}
    for info in inventory(model, example):
        if not info.compressible:
            continue
        module = model.get_submodule(info.name)
        spatial = info.kind in ("conv2d", "conv1d") and info.kernel_size != (1, 1)
        name = ("cp" if use_cp and info.kind == "conv2d" else "tucker2") if spatial else "svd"
        method = get_method(name)
        ranks = tuple(max(1, r // 2) for r in method.max_ranks(module))
        if name == "cp":  # half of the channel width, not half of the generic CP bound
            ranks = (max(1, min(info.in_channels, info.out_channels) // 2),)
        choices[info.name] = Choice(name, ranks)
    return Plan(choices)


@pytest.mark.slow
@pytest.mark.parametrize("arch", CASES)
def test_half_rank_compression_round_trip(arch: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    kwargs = {"num_classes": 10}
    model = get_model(arch, **kwargs).eval()
    shape = input_shape(arch)
    if arch.startswith("torchvision:"):
        shape = (shape[0], 64, 64)
    example = torch.randn(2, *shape)
    use_cp = arch in ("rankopt:lenet5", "rankopt:resnet20", "rankopt:tinycnn")
    plan = half_rank_plan(model, example, use_cp=use_cp)
    assert len(plan) > 0
    small = compress(model, plan)
    with torch.no_grad():
        out = small(example)
    assert out.shape == (2, 10)
    assert measure_cost(small, example).params < measure_cost(model, example).params
    path = save_compressed(
        small, plan, tmp_path / "ckpt", meta={"arch": {"arch": arch, "kwargs": kwargs}}
    )
    loaded = load_compressed(path)
    with torch.no_grad():
        assert torch.equal(loaded(example), out)
