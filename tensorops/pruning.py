"""Norm-based structured pruning across layers: drop low-norm units and the next layer's inputs.

Workflow::

    plan = to.Plan({"fc1": to.Choice("prune", (500, 784)), ...})   # full ranks: exact copy
    model = to.compress(dense, plan)
    finetune(model, data, ..., penalty_weight=1e-4)   # L1 on the unit norms g
    result = to.prune_channels(model, plan, threshold=1e-2)
    to.save_compressed(result.model, result.plan, path, meta=...)

:func:`prune_channels` removes every unit of a ``prune`` layer whose norm ``|g|`` is at most
``threshold`` (the unit then outputs its bias, a constant). It then follows the network with
``torch.fx`` from each pruned layer to the layer consuming its output and removes the matching
input features or channels there, folding the constant they carried into the consumer's bias.
Recognised paths are chains of channel-wise operations: batch norm, element-wise activations,
dropout, max/average/adaptive pooling and one ``flatten`` (a channel then maps to ``h*w``
features of a Linear). A consumer that is a plain ``nn.Linear``/``nn.Conv2d`` becomes a
``prune`` layer keeping all its units. Anything else (a residual add, a concatenation, an output
used twice, a consumer decomposed by another method, a padded convolution fed a non-zero
constant) keeps the consumer's inputs, which stays exact, and is logged and reported.

Every layer keeps its full-width interface (removed units are scattered back as constants), so
the result is rebuilt from (original model, plan) alone and checkpoints need nothing else:
the plan's ``prune`` ranks are (kept units, kept inputs); the indices are buffers. Folding
uses batch-norm running statistics, so outputs match the masked model in eval mode.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from tensorops.exceptions import PlanError
from tensorops.layers._norm_pruned import NormConv2d, NormLinear, _NormPruned, narrowed
from tensorops.methods import BuildContext, get_method
from tensorops.plan import Choice, Plan

logger = logging.getLogger(__name__)

PRUNE = "prune"

_VALUE_MODULES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardswish,
    nn.Hardtanh,
    nn.Mish,
)
_IDENTITY_MODULES: tuple[type[nn.Module], ...] = (nn.Identity, nn.Dropout, nn.Dropout2d)
_POOL_MODULES: tuple[type[nn.Module], ...] = (
    nn.MaxPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
_VALUE_FUNCTIONS: frozenset[Callable[..., Any]] = frozenset(
    {F.relu, torch.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, torch.tanh, torch.sigmoid, F.elu}
)
_VALUE_METHODS = frozenset({"relu", "sigmoid", "tanh"})
_POOL_FUNCTIONS: frozenset[Callable[..., Any]] = frozenset(
    {F.max_pool2d, torch.max_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
)
_IDENTITY_FUNCTIONS: frozenset[Callable[..., Any]] = frozenset({F.dropout})


@dataclass(frozen=True)
class PrunedLayer:
    """Widths of one ``prune`` layer after :func:`prune_channels`."""

    name: str
    kept_out: int
    out_features: int
    kept_in: int
    in_features: int


@dataclass(frozen=True)
class PruneResult:
    """The pruned model, its plan (for :func:`tensorops.save_compressed`) and what happened.

    ``kept_width`` maps a pruned layer to why its consumer's inputs were left in place.
    """

    model: nn.Module
    plan: Plan
    layers: tuple[PrunedLayer, ...]
    kept_width: dict[str, str]


def prune_channels(
    model: nn.Module,
    plan: Plan,
    *,
    threshold: float,
    layers: Collection[str] | None = None,
) -> PruneResult:
    """Remove units with ``|g| <= threshold`` and the next layers' matching inputs.

    ``model`` is the result of :func:`tensorops.compress` with ``plan`` (possibly trained since)
    and is not modified. ``layers`` names the ``prune`` layers whose units are thresholded
    (default: all of them; name them when pruning again, since a consumer converted by an
    earlier call, a classifier head say, is a ``prune`` layer too). Each layer keeps at least
    its largest-norm unit. ``threshold=0`` removes exactly the units of zero norm, so the
    output equals the model's up to rounding (in eval mode).
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ValueError(f"threshold must be a number >= 0, got {threshold!r}")
    if not math.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
    result = copy.deepcopy(model)
    names = _pruned_layers(result, plan)
    targets = names if layers is None else list(layers)
    for name in targets:
        if name not in names:
            raise PlanError(f"layer {name!r} is not planned as {PRUNE!r}; pruned: {names}")
        _threshold_layer(result, name, float(threshold))
    kept_width: dict[str, str] = {}
    converted: list[str] = []
    graph = _trace(result)
    for name in names:
        layer = _norm_layer(result, name)
        if layer.kept_out == layer.out_full:
            continue
        reason = (
            _shrink_consumer(result, graph, name, converted)
            if isinstance(graph, fx.Graph)
            else graph
        )
        if reason is not None:
            kept_width[name] = reason
            logger.info("pruned %s; keeping the next layer's full input width: %s", name, reason)
    choices: dict[str, Choice] = dict(plan.items())
    reports = []
    for name in [*names, *(c for c in converted if c not in names)]:
        layer = _norm_layer(result, name)
        choices[name] = Choice(PRUNE, (layer.kept_out, layer.kept_in))
        widths = (layer.kept_out, layer.out_full, layer.kept_in, layer.in_full)
        reports.append(PrunedLayer(name, *widths))
    return PruneResult(result, Plan(choices), tuple(reports), kept_width)


def _pruned_layers(model: nn.Module, plan: Plan) -> list[str]:
    names = [name for name, choice in plan.items() if choice.method == PRUNE]
    for name in names:
        _norm_layer(model, name)
    for name, module in model.named_modules():
        if isinstance(module, _NormPruned) and name not in names:
            raise PlanError(f"layer {name!r} is a pruning layer but the plan does not name it")
    return names


def _norm_layer(model: nn.Module, name: str) -> _NormPruned:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise PlanError(f"plan names layer {name!r}, which is not in the model") from None
    if not isinstance(module, _NormPruned):
        raise PlanError(
            f"layer {name!r} is planned as {PRUNE!r} but the model holds a "
            f"{type(module).__name__}: pass the model built by compress(model, plan)"
        )
    return module


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _threshold_layer(model: nn.Module, name: str, threshold: float) -> None:
    layer = _norm_layer(model, name)
    norms = layer.norms()
    keep = norms > threshold
    if not bool(keep.any()):
        keep[int(torch.argmax(norms))] = True
        logger.info("every unit of %s is under the threshold; keeping the largest", name)
    if bool(keep.all()):
        return
    in_keep = torch.ones(layer.kept_in, dtype=torch.bool)
    _replace(model, name, narrowed(layer, keep, in_keep))


# --------------------------------------------------------------------------- graph walking


class _Tracer(fx.Tracer):
    """Treats tensorops' own layers as leaves, so consumers are named by their plan entry."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if type(m).__module__.startswith("tensorops."):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _trace(model: nn.Module) -> fx.Graph | str:
    try:
        return _Tracer().trace(model)
    except Exception as exc:  # fx raises many types on untraceable code
        return f"the model cannot be traced with torch.fx ({type(exc).__name__}: {exc})"


@dataclass
class _Path:
    """What lies between a producer and its consumer."""

    consumer: str
    value_ops: list[Callable[[torch.Tensor], torch.Tensor]]
    flattened: bool


def _follow(model: nn.Module, graph: fx.Graph, producer: str) -> _Path | str:
    nodes = [n for n in graph.nodes if n.op == "call_module" and n.target == producer]
    if len(nodes) != 1:
        return f"{producer} is called {len(nodes)} times in the forward pass"
    node = nodes[0]
    path = _Path("", [], False)
    while True:
        users = list(node.users)
        if len(users) != 1:
            return f"the output of {node.name} is used {len(users)} times (branch or residual)"
        user = users[0]
        others = [a for a in [*user.args[1:], *user.kwargs.values()] if isinstance(a, fx.Node)]
        if not user.args or user.args[0] is not node or others:
            return f"{user.name} combines {node.name} with other tensors"
        if user.op == "call_module":
            module = model.get_submodule(str(user.target))
            if isinstance(module, (nn.Linear, nn.Conv2d)) or type(module).__module__.startswith(
                "tensorops."
            ):
                calls = sum(
                    1 for n in graph.nodes if n.op == "call_module" and n.target == user.target
                )
                if calls != 1:
                    return f"the next layer {user.target} is called {calls} times"
                path.consumer = str(user.target)
                return path
            reason = _module_step(module, path)
        elif user.op == "call_function":
            reason = _function_step(user, path)
        elif user.op == "call_method":
            reason = _method_step(user, path)
        else:
            reason = f"{node.name} feeds the model's output"
        if reason is not None:
            return reason
        node = user


def _module_step(module: nn.Module, path: _Path) -> str | None:
    if isinstance(module, _VALUE_MODULES):
        if path.flattened and isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            return "batch norm after flatten is not channel-wise"
        path.value_ops.append(_eval_call(module))
        return None
    if isinstance(module, _IDENTITY_MODULES):
        return None
    if isinstance(module, _POOL_MODULES) or (
        isinstance(module, nn.AvgPool2d)
        and (module.padding in (0, (0, 0)) or not module.count_include_pad)
    ):
        return None
    if isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1:
        return _flatten(path)
    return f"{type(module).__name__} is not a recognised channel-wise operation"


def _function_step(node: fx.Node, path: _Path) -> str | None:
    target = node.target
    if target in _VALUE_FUNCTIONS:
        args, kwargs = node.args[1:], dict(node.kwargs)
        kwargs.pop("inplace", None)
        path.value_ops.append(lambda x: target(x, *args, **kwargs))
        return None
    if target in _IDENTITY_FUNCTIONS or target in _POOL_FUNCTIONS:
        return None
    if target is torch.flatten and _flatten_args(node):
        return _flatten(path)
    return f"{getattr(target, '__name__', target)} is not a recognised channel-wise operation"


def _method_step(node: fx.Node, path: _Path) -> str | None:
    if node.target in _VALUE_METHODS:
        name = str(node.target)
        path.value_ops.append(lambda x: getattr(x, name)())
        return None
    if node.target == "flatten" and _flatten_args(node):
        return _flatten(path)
    return f".{node.target}() is not a recognised channel-wise operation"


def _flatten_args(node: fx.Node) -> bool:
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
    return bool(start == 1 and end == -1)


def _flatten(path: _Path) -> str | None:
    if path.flattened:
        return "flattened twice"
    path.flattened = True
    return None


def _eval_call(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def call(x: torch.Tensor) -> torch.Tensor:
        was_training = module.training
        module.eval()
        try:
            out: torch.Tensor = module(x)
            return out
        finally:
            module.train(was_training)

    return call


# --------------------------------------------------------------------------- consumers


def _shrink_consumer(
    model: nn.Module, graph: fx.Graph, producer_name: str, converted: list[str]
) -> str | None:
    path = _follow(model, graph, producer_name)
    if isinstance(path, str):
        return path
    producer = _norm_layer(model, producer_name)
    consumer = model.get_submodule(path.consumer)
    if not isinstance(consumer, _NormPruned):
        if type(consumer) not in (nn.Linear, nn.Conv2d):
            return f"the next layer {path.consumer} is a {type(consumer).__name__}"
        method = get_method(PRUNE)
        reason = method.refusal(consumer)
        if reason is not None:
            return f"the next layer {path.consumer} cannot be pruned: {reason}"
        ranks = method.max_ranks(consumer)
        consumer = method.decompose(consumer, ranks, BuildContext(layer_name=path.consumer))
        assert isinstance(consumer, _NormPruned)
    features = _feature_map(producer, consumer, path)
    if isinstance(features, str):
        return features
    constants = _removed_constants(producer, path)  # (out_full,), only removed entries matter
    removed = torch.ones(producer.out_full, dtype=torch.bool)
    removed[producer.out_index.cpu()] = False
    per_feature = torch.zeros(consumer.in_full, dtype=constants.dtype)
    dropped = torch.zeros(consumer.in_full, dtype=torch.bool)
    fed = features[removed].reshape(-1)  # consumer inputs fed by removed units, unit-major
    per_feature[fed] = constants[removed].repeat_interleave(features.shape[1])
    dropped[fed] = True
    in_ids = consumer.in_index.cpu()
    drop_pos = dropped[in_ids]
    if not bool(drop_pos.any()):
        return None
    if bool(drop_pos.all()):
        return f"it would remove every input of {path.consumer}"
    folded = per_feature[in_ids][drop_pos]
    blocker = _fold_blocker(consumer, path.consumer, bool(folded.abs().max() > 0))
    if blocker is not None:
        return blocker
    _fold(consumer, drop_pos, per_feature[in_ids])
    out_keep = torch.ones(consumer.kept_out, dtype=torch.bool)
    _replace(model, path.consumer, narrowed(consumer, out_keep, ~drop_pos))
    if path.consumer not in converted:
        converted.append(path.consumer)
    return None


def _feature_map(producer: _NormPruned, consumer: _NormPruned, path: _Path) -> torch.Tensor | str:
    """(out_full, features per unit) ids of the consumer's inputs fed by each producer unit."""
    units = producer.out_full
    conv_producer = isinstance(producer, NormConv2d)
    if isinstance(consumer, NormConv2d):
        if not conv_producer or path.flattened:
            return "a convolution consumes a flattened or fully connected output"
        if consumer.in_full != units:
            return f"channel counts differ ({units} vs {consumer.in_full})"
        return torch.arange(units).reshape(units, 1)
    assert isinstance(consumer, NormLinear)
    if conv_producer and not path.flattened:
        return "a Linear is applied to an unflattened feature map"
    if not conv_producer and path.flattened:
        return "a flatten follows a fully connected layer"
    if consumer.in_full % units != 0:
        return f"{consumer.in_full} input features do not split into {units} channels"
    per_unit = consumer.in_full // units
    return torch.arange(consumer.in_full).reshape(units, per_unit)


@torch.no_grad()
def _removed_constants(producer: _NormPruned, path: _Path) -> torch.Tensor:
    """Each unit's constant value at the consumer's input, were it removed (its bias passed on)."""
    bias = producer.bias
    value = bias.detach() if bias is not None else producer.g.new_zeros(producer.out_full)
    x = value.reshape(1, -1, 1, 1) if isinstance(producer, NormConv2d) else value.reshape(1, -1)
    for op in path.value_ops:
        x = op(x)
    return x.reshape(-1).to(torch.float64).cpu()


def _fold_blocker(consumer: _NormPruned, name: str, nonzero: bool) -> str | None:
    if not nonzero:
        return None
    if consumer.bias is None:
        return f"{name} has no bias to absorb the removed units' non-zero constant output"
    if isinstance(consumer, NormConv2d):
        geometry = consumer.geometry
        padded = geometry.padding not in ("valid", (0, 0))
        if padded and geometry.padding_mode == "zeros":
            return (
                f"{name} zero-pads its input, so the removed channels' non-zero constant does "
                "not fold into a bias exactly"
            )
    return None


@torch.no_grad()
def _fold(consumer: _NormPruned, drop_pos: torch.Tensor, values: torch.Tensor) -> None:
    """Add the dropped inputs' constant contribution to the consumer's bias (kept units)."""
    weight = consumer.effective_weight().to(torch.float64)  # (kept_out, kept_in, ...)
    dropped = int(drop_pos.sum())
    columns = weight[:, drop_pos.to(weight.device)].reshape(weight.shape[0], dropped, -1)
    delta = (columns.sum(dim=2) * values[drop_pos].to(weight.device)).sum(dim=1)  # (kept_out,)
    assert consumer.bias is not None
    consumer.bias[consumer.out_index] += delta.to(consumer.bias.dtype)
