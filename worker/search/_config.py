"""Settings of one compression search."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from worker.training import ScheduleConfig

Objective = Literal["params", "macs", "latency"]
SamplerName = Literal["tpe", "gp", "random"]
PrunerName = Literal["median", "halving", "none"]

OBJECTIVES: tuple[str, ...] = ("params", "macs", "latency")
SAMPLERS: tuple[str, ...] = ("tpe", "gp", "random")
PRUNERS: tuple[str, ...] = ("median", "halving", "none")


@dataclass(frozen=True)
class SearchConfig:
    """Everything that shapes a search; stored in the report so a run can be reproduced.

    ``max_accuracy_drop`` is in percentage points of top-1 accuracy. ``rank_scale`` bounds the
    per-layer multiplier of the EVBMF rank (searched log-uniformly). Estimated ranks are raised
    to at least ``min_rank_fraction`` of the layer's largest rank (EVBMF gives 0 for a layer it
    sees as noise). ``rank_multiple`` rounds ranks (8 suits tensor cores). ``seeding`` enqueues
    the EVBMF plans first; ``methods`` limits the per-layer choice (None = every registered
    method that applies, plus keep).
    """

    trials: int = 40
    timeout_s: float | None = None
    max_accuracy_drop: float = 1.0
    objective: Objective = "params"
    pareto: bool = False
    sampler: SamplerName = "tpe"
    pruner: PrunerName = "median"
    seed: int = 0
    seeding: bool = True
    methods: tuple[str, ...] | None = None
    rank_scale: tuple[float, float] = (0.1, 2.0)
    rank_multiple: int = 1
    min_rank_fraction: float = 0.05
    epochs_per_trial: int = 2
    final_epochs: int = 8
    schedule: ScheduleConfig = field(
        default_factory=lambda: ScheduleConfig(
            kind="triangular2", base_lr=1e-4, max_lr=0.01, cycle_epochs=1.0
        )
    )
    optimizer: Literal["sgd", "adamw"] = "adamw"
    batch_size: int = 128
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ValueError(f"trials must be >= 1, got {self.trials}")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")
        if not 0 <= self.max_accuracy_drop <= 100:
            raise ValueError(
                f"max_accuracy_drop is in points, 0..100; got {self.max_accuracy_drop}"
            )
        for name, value, allowed in (
            ("objective", self.objective, OBJECTIVES),
            ("sampler", self.sampler, SAMPLERS),
            ("pruner", self.pruner, PRUNERS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        low, high = self.rank_scale
        if not 0 < low <= high < math.inf:
            raise ValueError(
                f"rank_scale must be (low, high) with 0 < low <= high, got {self.rank_scale}"
            )
        if self.rank_multiple < 1:
            raise ValueError(f"rank_multiple must be >= 1, got {self.rank_multiple}")
        if not 0 < self.min_rank_fraction <= 1:
            raise ValueError(f"min_rank_fraction must be in (0, 1], got {self.min_rank_fraction}")
        if self.epochs_per_trial < 1 or self.final_epochs < 0:
            raise ValueError("epochs_per_trial must be >= 1 and final_epochs >= 0")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rank_scale"] = list(self.rank_scale)
        data["methods"] = list(self.methods) if self.methods is not None else None
        return data
