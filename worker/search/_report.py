"""The report of a finished search: a typed model that :func:`finalize` builds.

:meth:`Report.to_dict` gives the JSON object written to ``report.json`` (and summarised in the
job's result that the API serves); its keys and their order are part of that format.
Torch-free: it needs nothing but the standard library.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Baseline",
    "DataSummary",
    "Final",
    "HeldOut",
    "LayerRow",
    "Ratios",
    "Report",
    "TrialRecord",
    "Verification",
    "pareto_front",
    "write_json",
]


@dataclass(frozen=True)
class Baseline:
    """The original model."""

    accuracy: float
    params: int
    macs: int
    latency_s: float
    val_accuracy: float | None = None  # = accuracy: the tolerance is judged on validation
    test_accuracy: float | None = None  # None: the data has no test split


@dataclass(frozen=True)
class HeldOut:
    """The original and the kept model on the test split, read once the choice is made.

    ``constraint_met``: whether the test drop is within the tolerance too (the tolerance
    itself is judged on validation, the only split the search may read).
    """

    baseline_accuracy: float
    final_accuracy: float
    accuracy_drop: float
    constraint_met: bool
    n: int


@dataclass(frozen=True)
class Final:
    """The model kept (the chosen plan, or the original when none held)."""

    accuracy: float
    accuracy_drop: float
    params: int
    macs: int
    latency_s: float
    latency_ratio: float
    max_latency_ratio: float | None
    accuracy_constraint_met: bool
    latency_constraint_met: bool | None
    constraint_met: bool
    val_accuracy: float | None = None
    val_accuracy_drop: float | None = None
    test_accuracy: float | None = None  # None: the data has no test split
    test_accuracy_drop: float | None = None
    test_constraint_met: bool | None = None


@dataclass(frozen=True)
class Ratios:
    """Original over final: parameters, MACs and latency (higher is smaller or faster)."""

    params: float
    macs: float
    latency: float


@dataclass(frozen=True)
class Verification:
    """One candidate fine-tuned longer by finalising, and whether it met the tolerance."""

    trial: int
    compression: float
    trial_accuracy_drop: float
    final_accuracy: float
    final_accuracy_drop: float
    fine_tune: str
    fine_tune_mode: str
    latency_ratio: float | None
    latency_met: bool | None
    met: bool


@dataclass(frozen=True)
class LayerRow:
    """One layer of the kept plan, with its cost before and after.

    ``reason`` (only for a layer left dense) says why; a compressed layer's row has no
    ``reason`` key.
    """

    layer: str
    method: str
    ranks: list[int]
    params_before: int
    macs_before: int
    params_after: int
    macs_after: int
    reason: str | None = None
    kept: bool = False

    def to_dict(self) -> dict[str, Any]:
        head: dict[str, Any] = {"layer": self.layer, "method": self.method, "ranks": self.ranks}
        if self.kept:
            head["reason"] = self.reason
        return {
            **head,
            "params_before": self.params_before,
            "macs_before": self.macs_before,
            "params_after": self.params_after,
            "macs_after": self.macs_after,
        }


@dataclass(frozen=True)
class TrialRecord:
    """One trial of the study as the report lists it."""

    number: int
    state: str
    seed: Any
    params: dict[str, Any]
    plan: Any
    accuracy: float | None
    accuracy_drop: float | None
    compression: float | None
    params_count: int | None
    macs: int | None
    latency_s: float | None
    latency_ratio: float | None
    latency_met: bool | None
    duration_s: float | None
    worker: str | None  # set by the worker pool: which process ran it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DataSummary:
    """The data set's name, split sizes and split seed (the data's, not the search's)."""

    name: str
    train: int
    val: int
    split_seed: int = 0


@dataclass(frozen=True)
class Report:
    """What a search found and what finalising kept (see the module docstring).

    ``extra`` holds caller-supplied keys (the pool adds ``job``), written after the others.
    """

    baseline: Baseline
    final: Final
    ratios: Ratios
    chosen_trial: int | None
    chosen_by_spending: bool
    kept_original_reason: str | None
    verification: list[Verification]
    spend: dict[str, Any]
    plan: dict[str, Any]
    layers: list[LayerRow]
    search: dict[str, Any]
    lr_calibration: dict[str, Any]
    data: DataSummary
    arch: dict[str, Any]
    trials: list[TrialRecord]
    test: HeldOut | None = None  # None: no test split (test_note says why)
    test_note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def found_feasible(self) -> bool:
        """Whether a plan met the tolerance (False: the original model was kept)."""
        return self.chosen_trial is not None

    def to_dict(self) -> dict[str, Any]:
        """The report as the JSON object of ``report.json``."""
        records = [t.to_dict() for t in self.trials]
        return {
            "baseline": asdict(self.baseline),
            "final": asdict(self.final),
            "ratios": asdict(self.ratios),
            "chosen_trial": self.chosen_trial,
            "chosen_by_spending": self.chosen_by_spending,
            "found_feasible": self.found_feasible,
            "kept_original_reason": self.kept_original_reason,
            "verification": [asdict(v) for v in self.verification],
            "spend": self.spend,
            "plan": self.plan,
            "layers": [row.to_dict() for row in self.layers],
            "search": self.search,
            "lr_calibration": self.lr_calibration,
            "test": asdict(self.test) if self.test is not None else None,
            "test_note": self.test_note,
            "data": asdict(self.data),
            "arch": self.arch,
            "pareto_front": pareto_front(records),
            "trials": records,
            **self.extra,
        }


def pareto_front(records: list[dict[str, Any]]) -> list[int]:
    """Trial numbers not dominated in (accuracy, compression), both maximised."""
    points = [r for r in records if r["state"] == "COMPLETE" and r["accuracy"] is not None]
    front = []
    for r in points:
        dominated = any(
            o["accuracy"] >= r["accuracy"]
            and o["compression"] >= r["compression"]
            and (o["accuracy"] > r["accuracy"] or o["compression"] > r["compression"])
            for o in points
        )
        if not dominated:
            front.append(r["number"])
    return sorted(front)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file renamed over it)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, default=str)
    os.replace(tmp, path)
