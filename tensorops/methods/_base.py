"""The contract every decomposition method fulfils, so that plans, costs and tests treat all
families alike. New families (TT, QTT, BTD, ...) subclass :class:`DecompositionMethod` and call
:func:`tensorops.register_method`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from tensorops._types import Cost, LayerInfo
from tensorops.exceptions import RankError


@dataclass
class BuildContext:
    """What a method may use while decomposing one layer.

    ``cache`` is a per-model scratch space (for example the mode bases of a kernel, shared by
    every Tucker-2 rank pair) keyed by ``layer_name``; ``seed`` makes randomised methods
    reproducible.
    """

    layer_name: str = ""
    seed: int = 0
    cache: dict[tuple[object, ...], object] = field(default_factory=dict)


class DecompositionMethod(ABC):
    """One way of replacing a dense layer by a factorised one.

    Contract:
      * ``refusal(module)`` is None exactly when the method applies to ``module``.
      * ``max_ranks`` bounds every rank; ``validate_ranks`` accepts ranks within ``[1, max]``.
      * ``cost(info, ranks)`` is the closed-form parameter and MAC count of the built layer and
        equals what :func:`tensorops.measure_cost` measures on it.
      * ``skeleton`` builds the layer's structure only (for loading checkpoints); ``decompose``
        builds it with factorised weights, deterministic given ``ctx.seed``.
      * ``seed_ranks`` is the EVBMF-based estimate; it may contain zeros (no signal found),
        which callers clamp with :func:`tensorops.clamp_rank`.
    """

    name: ClassVar[str]
    rank_names: ClassVar[tuple[str, ...]]
    summary: ClassVar[str]
    #: Whether a search that names no methods offers this one in the per-layer choice. Families
    #: that need more trials to pay off (TT, BTD, ...) are opt-in: name them in ``methods``.
    in_default_search: ClassVar[bool] = True

    @abstractmethod
    def refusal(self, module: nn.Module) -> str | None: ...

    @abstractmethod
    def max_ranks(self, module: nn.Module) -> tuple[int, ...]: ...

    @abstractmethod
    def cost(self, info: LayerInfo, ranks: tuple[int, ...]) -> Cost: ...

    @abstractmethod
    def skeleton(self, module: nn.Module, ranks: tuple[int, ...]) -> nn.Module: ...

    @abstractmethod
    def decompose(
        self, module: nn.Module, ranks: tuple[int, ...], ctx: BuildContext
    ) -> nn.Module: ...

    @abstractmethod
    def seed_ranks(self, module: nn.Module) -> tuple[int, ...]: ...

    def applies(self, module: nn.Module) -> bool:
        return self.refusal(module) is None

    def validate_ranks(self, module: nn.Module, ranks: tuple[int, ...]) -> tuple[int, ...]:
        """Return ``ranks`` as a tuple of ints, or raise :class:`RankError` saying which is bad."""
        limits = self.max_ranks(module)
        if len(ranks) != len(limits):
            raise RankError(
                f"{self.name} takes {len(limits)} rank(s) {self.rank_names}, got {tuple(ranks)!r}"
            )
        for rank_name, rank, limit in zip(self.rank_names, ranks, limits):
            if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= limit:
                raise RankError(
                    f"{self.name} rank {rank_name} must be an integer in [1, {limit}] for this "
                    f"layer, got {rank!r}"
                )
        return tuple(int(r) for r in ranks)

    def scaled_ranks(
        self, module: nn.Module, base: tuple[int, ...], scale: float, *, multiple: int = 1
    ) -> tuple[int, ...]:
        """``base`` ranks times ``scale``, rounded to a multiple of ``multiple`` (>= 1), capped."""
        out = []
        for rank, limit in zip(base, self.max_ranks(module)):
            value = max(1.0, rank * scale)
            rounded = max(multiple, round(value / multiple) * multiple)
            out.append(int(min(max(rounded, 1), limit)))
        return tuple(out)
