"""Learning-compression (LC) fine-tuning: train dense weights towards their compressed form.

Carreira-Perpiñán's LC algorithm (for low rank: Idelbayev & Carreira-Perpiñán, CVPR 2020)
alternates two steps over the planned layers' dense weights ``W`` and their factors ``Θ``:

* **L step**: train the dense model on the task loss (with the caller's distillation) plus
  ``μ/2 · ‖W − Δ(Θ)‖²``, ``Δ(Θ)`` fixed. The quadratic term is applied as its proximal step
  after each optimizer step, ``W ← (W + ημ·Δ) / (1 + ημ)`` with ``η`` the step's learning
  rate: the same objective, stable for any ``μ`` (``μ → ∞`` pins ``W`` to ``Δ(Θ)``).
* **C step**: ``Θ = Π(W)``, each layer's registered method decomposing a module holding ``W``
  at the plan's ranks; ``Δ(Θ)`` is the dense kernel the factorised layer computes.

``μ`` grows geometrically, ``μ_k = μ0 · factor^k``. The result is the factorised model of the
last C step, optionally fine-tuned for a few epochs. Only the planned layers hold a second
copy (``Δ``) and factors; the dense model is the one being trained.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from tensorops import BuildContext, Choice, Plan, get_method, validate_plan
from worker.training._results import EpochCallback, FinetuneResult

logger = logging.getLogger(__name__)

#: Methods whose layer is not a linear map of the same shape as the dense one (pruning drops
#: channels, NTT adds an activation): LC leaves their weights unpenalised and compresses them
#: once, after the last L step.
UNPENALISED_METHODS: frozenset[str] = frozenset({"prune", "ntt"})


@dataclass(frozen=True)
class LcSchedule:
    """How an LC fine-tune spends its epochs.

    Attributes:
        mu0: ``μ`` of the first L step, > 0.
        mu_factor: ``μ`` multiplier per LC step, >= 1.
        steps: LC iterations (L step then C step), >= 1; the epochs not kept for the factors
            are split evenly among their L steps.
        factor_epochs: epochs of fine-tuning of the factors after the last C step, >= 0.
    """

    mu0: float = 0.1
    mu_factor: float = 2.0
    steps: int = 10
    factor_epochs: int = 1

    def __post_init__(self) -> None:
        if not self.mu0 > 0:  # math.inf allowed: W pinned to Δ(Θ)
            raise ValueError(f"mu0 must be > 0, got {self.mu0!r}")
        if not self.mu_factor >= 1:
            raise ValueError(f"mu_factor must be >= 1, got {self.mu_factor!r}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps!r}")
        if self.factor_epochs < 0:
            raise ValueError(f"factor_epochs must be >= 0, got {self.factor_epochs!r}")

    def mu(self, step: int) -> float:
        """``μ`` of L step ``step`` (0-based)."""
        return self.mu0 * self.mu_factor**step


class TrainFn(Protocol):
    """Fine-tunes ``model`` in place (the caller's schedule, optimizer, data, distillation)."""

    def __call__(
        self,
        model: nn.Module,
        *,
        epochs: int,
        seed: int,
        max_steps: int | None = None,
        callback: EpochCallback | None = None,
        after_step: Callable[[float], None] | None = None,
    ) -> FinetuneResult: ...


@dataclass
class LcResult:
    """The compressed model of an LC run and how the run went.

    ``distances[k]`` is ``sqrt(Σ‖W − Δ(Θ)‖²)`` over the penalised layers after C step ``k``;
    ``fit`` is the factor fine-tune's result (or the failed L step's, status ``diverged``).
    """

    model: nn.Module
    fit: FinetuneResult | None
    mus: list[float] = field(default_factory=list)
    distances: list[float] = field(default_factory=list)


def dense_kernel(layer: nn.Module, dense: nn.Linear | nn.Conv2d) -> torch.Tensor:
    """The dense weight (``dense.weight``'s shape) that the linear ``layer`` computes: ``Δ(Θ)``.

    Read off as the Jacobian of one output position with respect to the input, in float64:
    for a conv (``(out, in, kh, kw)``, ``dense``'s stride, padding and dilation), at an output
    whose input window involves no padding. The layer's bias plays no part.
    """
    shape = dense.weight.shape
    dtype = next(layer.parameters()).dtype
    probe = copy.deepcopy(layer).to(device="cpu", dtype=torch.float64)
    out, fan_in = int(shape[0]), int(shape[1])
    with torch.enable_grad():
        if isinstance(dense, nn.Linear):
            x = torch.zeros(out, fan_in, dtype=torch.float64, requires_grad=True)
            probe(x).diagonal().sum().backward()  # row o of the grad: d y_o / d x
            grad = x.grad
            assert grad is not None
            return grad.to(dtype)
        if isinstance(dense.padding, str):
            raise ValueError(f"padding={dense.padding!r} is not supported by LC")
        kernel = (int(shape[2]), int(shape[3]))
        first = [-(-int(p) // int(s)) for p, s in zip(dense.padding, dense.stride)]
        origin = [a * int(s) - int(p) for a, s, p in zip(first, dense.stride, dense.padding)]
        extent = [int(d) * (k - 1) + 1 for d, k in zip(dense.dilation, kernel)]
        x = torch.zeros(
            out, fan_in, *(o + e for o, e in zip(origin, extent)), dtype=torch.float64
        ).requires_grad_(True)
        y = probe(x)  # (out, out, H', W')
        y[:, :, first[0], first[1]].diagonal().sum().backward()
        grad = x.grad
        assert grad is not None
        rows = slice(origin[0], origin[0] + extent[0], int(dense.dilation[0]))
        cols = slice(origin[1], origin[1] + extent[1], int(dense.dilation[1]))
        return grad[:, :, rows, cols].to(dtype)


def project(
    module: nn.Module, method_name: str, ranks: tuple[int, ...], *, name: str, seed: int
) -> tuple[nn.Module, torch.Tensor]:
    """The C step for one layer: its factorised form ``Θ = Π(W)`` and ``Δ(Θ)``."""
    method = get_method(method_name)
    with torch.no_grad():
        layer = method.decompose(module, ranks, BuildContext(layer_name=name, seed=seed))
    if not isinstance(module, nn.Linear | nn.Conv2d):
        raise ValueError(f"LC projects Linear and Conv2d layers, {name} is {type(module).__name__}")
    return layer, dense_kernel(layer, module).to(_weight(module).device)


def _weight(module: nn.Module) -> nn.Parameter:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, nn.Parameter):
        raise ValueError(f"LC needs a layer with a weight, got {type(module).__name__}")
    return weight


def lc_finetune(
    model: nn.Module,
    plan: Plan,
    train: TrainFn,
    *,
    schedule: LcSchedule,
    epochs: int,
    steps_per_epoch: int,
    seed: int = 0,
    callback: EpochCallback | None = None,
) -> LcResult:
    """Compress a copy of ``model`` to ``plan`` by LC; ``model`` is untouched.

    ``epochs`` is the whole budget: ``schedule.factor_epochs`` of it (at most ``epochs``) for
    the factors, the rest as ``schedule.steps`` L steps of equal length in optimizer steps
    (``steps_per_epoch`` per epoch, at least one step each when any epoch is left).
    ``callback`` sees the factor fine-tune's epochs only (the L steps' validation accuracy is
    the dense model's). Seeded: the L steps use ``seed + k``, the factors ``seed``.
    """
    validate_plan(model, plan)
    dense = copy.deepcopy(model)
    chosen = plan.decomposed()
    penalised = {n: c for n, c in chosen.items() if c.method not in UNPENALISED_METHODS}
    factor_epochs = min(schedule.factor_epochs, epochs)
    l_total = (epochs - factor_epochs) * steps_per_epoch
    per_step = max(1, l_total // schedule.steps) if l_total > 0 else 0
    result = LcResult(model=dense, fit=None)
    layers: dict[str, nn.Module] = {}
    targets: dict[str, torch.Tensor] = {}

    def c_step() -> None:
        total = 0.0
        for name, choice in penalised.items():
            module = dense.get_submodule(name)
            layers[name], targets[name] = project(
                module, choice.method, choice.ranks, name=name, seed=seed
            )
            total += float((_weight(module).detach() - targets[name]).double().pow(2).sum())
        result.distances.append(math.sqrt(total))

    c_step()
    for k in range(schedule.steps if per_step > 0 and penalised else 0):
        mu = schedule.mu(k)
        result.mus.append(mu)
        weights = {n: _weight(dense.get_submodule(n)) for n in penalised}

        def prox(lr: float, mu: float = mu, weights: dict[str, nn.Parameter] = weights) -> None:
            with torch.no_grad():
                for name, w in weights.items():
                    target = targets[name].to(w.device)
                    if math.isinf(mu):
                        w.copy_(target)
                    else:
                        w.add_(target, alpha=lr * mu).div_(1.0 + lr * mu)

        epochs_k = -(-per_step // max(steps_per_epoch, 1))
        fit = train(dense, epochs=epochs_k, seed=seed + k, max_steps=per_step, after_step=prox)
        if fit.status == "diverged":
            result.fit = fit
            return result
        dense.to("cpu")
        c_step()
        logger.debug("LC step %d: mu %.3g, distance %.4g", k, mu, result.distances[-1])
    compressed = _assemble(dense, chosen, layers, seed)
    result.model = compressed
    if factor_epochs > 0:
        result.fit = train(compressed, epochs=factor_epochs, seed=seed, callback=callback)
    return result


def _assemble(
    dense: nn.Module, chosen: Mapping[str, Choice], layers: dict[str, nn.Module], seed: int
) -> nn.Module:
    """``dense`` with each planned layer replaced by its last projection (in place)."""
    for name, choice in chosen.items():
        layer = layers.get(name)
        if layer is None:  # an unpenalised method: compressed once, from the trained weights
            method = get_method(choice.method)
            module = dense.get_submodule(name)
            ranks = method.validate_ranks(module, choice.ranks)
            with torch.no_grad():
                layer = method.decompose(module, ranks, BuildContext(layer_name=name, seed=seed))
        layer.to(next(dense.get_submodule(name).parameters()).device)
        parent_name, _, child = name.rpartition(".")
        parent = dense.get_submodule(parent_name) if parent_name else dense
        setattr(parent, child, layer)
    return dense
