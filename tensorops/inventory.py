"""Inventory of a model's Conv2d, Conv1d and Linear layers, traced with one forward pass.

Also the hook-based cost counter used as ground truth for the closed-form cost model:
multiply-accumulates (MACs) of every Conv2d, Conv1d and Linear per example, and parameter counts.
Inputs may be images ``(N, C, H, W)``, sequences ``(N, C, L)`` or feature vectors ``(N, F)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from tensorops._types import Cost, LayerInfo
from tensorops.layers._geometry import ConvGeometry, Padding
from tensorops.methods import applicable_methods, refusal_reason

#: The dense-kernel layers that the inventory lists and the cost counter counts.
_COUNTED = (nn.Conv2d, nn.Conv1d, nn.Linear)


def _layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    """MACs per example of one dense-kernel layer, from its output tensor."""
    per_example = output.numel() // max(int(output.shape[0]), 1)
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return per_example * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Conv1d):
        return per_example * (module.in_channels // module.groups) * module.kernel_size[0]
    if isinstance(module, nn.Linear):
        return per_example * module.in_features
    return 0


@contextmanager
def _hooks(
    model: nn.Module, record: Callable[[str, nn.Module, torch.Tensor, torch.Tensor], None]
) -> Iterator[None]:
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, _COUNTED):

            def hook(
                mod: nn.Module,
                inputs: tuple[torch.Tensor, ...],
                output: torch.Tensor,
                name: str = name,
            ) -> None:
                record(name, mod, inputs[0], output)

            handles.append(module.register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


#: Class attribute by which a factorised layer whose forward computes with matmuls or einsums
#: (not through Conv2d/Linear children), such as the tensor-train layers, opts in to measured
#: counting: :func:`measure_cost` runs its forward under ``torch.utils.flop_counter`` and counts
#: half the matmul/conv FLOPs seen at the aten level, per example, instead of hooking its
#: descendants. Elementwise work (bias, activations, padding) is not counted, as for Linear.
COUNTS_MACS_BY_FLOPS = "counts_macs_by_flops"


def _flop_counted(model: nn.Module) -> list[str]:
    """Names of the outermost modules that opted in with :data:`COUNTS_MACS_BY_FLOPS`."""
    names: list[str] = []
    for name, module in model.named_modules():
        if getattr(module, COUNTS_MACS_BY_FLOPS, False) and not _inside(name, names):
            names.append(name)
    return names


def _inside(name: str, roots: list[str]) -> bool:
    return any(root == "" or name == root or name.startswith(root + ".") for root in roots)


@contextmanager
def _flop_hooks(model: nn.Module, names: list[str], add: Callable[[int], None]) -> Iterator[None]:
    from torch.utils.flop_counter import FlopCounterMode

    handles = []
    modules = dict(model.named_modules())
    for name in names:
        counter = FlopCounterMode(display=False)

        def enter(_mod: nn.Module, _inputs: object, counter: FlopCounterMode = counter) -> None:
            counter.__enter__()

        def leave(
            _mod: nn.Module,
            _inputs: object,
            output: torch.Tensor,
            counter: FlopCounterMode = counter,
        ) -> None:
            counter.__exit__(None, None, None)
            batch = max(int(output.shape[0]), 1)
            add(int(counter.get_total_flops()) // 2 // batch)

        handles.append(modules[name].register_forward_pre_hook(enter))
        handles.append(modules[name].register_forward_hook(leave))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def measure_cost(model: nn.Module, example_input: torch.Tensor) -> Cost:
    """Count parameters and per-example MACs of every Conv2d/Conv1d/Linear by running ``model``.

    Layers that set :data:`COUNTS_MACS_BY_FLOPS` are measured with a FLOP counter instead.
    """
    macs = 0
    flop_counted = _flop_counted(model)

    def add(count: int) -> None:
        nonlocal macs
        macs += count

    def record(name: str, module: nn.Module, _inp: torch.Tensor, out: torch.Tensor) -> None:
        if not _inside(name, flop_counted):
            add(_layer_macs(module, out))

    with _hooks(model, record), _flop_hooks(model, flop_counted, add), torch.no_grad():
        _run(model, example_input)
    params = sum(p.numel() for p in model.parameters())
    return Cost(params=int(params), macs=int(macs))


def _run(model: nn.Module, example_input: torch.Tensor) -> None:
    was_training = model.training
    model.eval()
    try:
        model(example_input)
    finally:
        model.train(was_training)


def inventory(model: nn.Module, example_input: torch.Tensor) -> list[LayerInfo]:
    """List every Conv2d, Conv1d and Linear of ``model`` in forward order, with shapes and costs.

    ``example_input`` is one batch the model accepts (batch size 1 is enough). Layers that the
    forward pass never reaches are listed last, as not compressible.
    """
    seen: dict[str, LayerInfo] = {}

    def record(name: str, module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> None:
        if name in seen:  # a layer called twice: keep the first call's geometry
            return
        methods = applicable_methods(module)
        seen[name] = _describe(
            name, module, inp, out, compressible=bool(methods), reason=refusal_reason(module)
        )

    with _hooks(model, record), torch.no_grad():
        _run(model, example_input)
    layers = list(seen.values())
    for name, module in model.named_modules():
        if isinstance(module, _COUNTED) and name not in seen:
            layers.append(_describe_unreached(name, module))
    return layers


def _describe(
    name: str,
    module: nn.Module,
    inp: torch.Tensor,
    out: torch.Tensor,
    *,
    compressible: bool,
    reason: str | None,
) -> LayerInfo:
    fields = _layout(module)
    if fields["kind"] == "conv2d":
        sizes = (int(inp.shape[-2]), int(inp.shape[-1])), (int(out.shape[-2]), int(out.shape[-1]))
    elif fields["kind"] == "conv1d":
        sizes = (int(inp.shape[-1]), 1), (int(out.shape[-1]), 1)
    else:
        positions = out.numel() // max(int(out.shape[0]), 1) // fields["out_channels"]
        sizes = (positions, 1), (positions, 1)
    return LayerInfo(
        name=name,
        **fields,
        input_size=sizes[0],
        output_size=sizes[1],
        params=sum(p.numel() for p in module.parameters(recurse=False)),
        macs=int(_layer_macs(module, out)),
        compressible=compressible,
        reason=reason,
    )


def _layout(module: nn.Module) -> dict[str, Any]:
    """Kind, shapes and geometry of a Conv2d, Conv1d (as a width-1 2-D conv) or Linear."""
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    fields: dict[str, Any] = {
        "weight_shape": tuple(weight.shape),
        "has_bias": getattr(module, "bias", None) is not None,
    }
    if isinstance(module, nn.Conv2d):
        geometry = ConvGeometry.of(module)
        return fields | {
            "kind": "conv2d",
            "in_channels": module.in_channels,
            "out_channels": module.out_channels,
            "kernel_size": geometry.kernel_size,
            "stride": geometry.stride,
            "padding": geometry.padding,
            "dilation": geometry.dilation,
            "groups": module.groups,
        }
    if isinstance(module, nn.Conv1d):
        padding: Padding = (
            module.padding
            if isinstance(module.padding, str)
            else (
                module.padding[0],
                0,
            )
        )
        return fields | {
            "kind": "conv1d",
            "in_channels": module.in_channels,
            "out_channels": module.out_channels,
            "kernel_size": (module.kernel_size[0], 1),
            "stride": (module.stride[0], 1),
            "padding": padding,
            "dilation": (module.dilation[0], 1),
            "groups": module.groups,
        }
    assert isinstance(module, nn.Linear)
    return fields | {
        "kind": "linear",
        "in_channels": module.in_features,
        "out_channels": module.out_features,
        "kernel_size": (1, 1),
        "stride": (1, 1),
        "padding": (0, 0),
        "dilation": (1, 1),
        "groups": 1,
    }


def _describe_unreached(name: str, module: nn.Module) -> LayerInfo:
    """A layer the forward pass never reached: its kernel, but no geometry, sizes or MACs."""
    fields = _layout(module) | {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1)}
    return LayerInfo(
        name=name,
        **fields,
        input_size=(0, 0),
        output_size=(0, 0),
        params=sum(p.numel() for p in module.parameters(recurse=False)),
        macs=0,
        compressible=False,
        reason="not reached by the traced forward pass, so its cost is unknown",
    )
