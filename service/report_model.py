"""The report of a finished search: the one definition of its shape.

The worker builds a :class:`Report` (``worker.search.finalize``) and writes
:meth:`Report.to_dict` to ``report.json``; the job's result record keeps the keys in
:data:`RESULT_KEYS`, and ``GET /v1/jobs/{id}/result`` serves them through models that
``service.api.schemas`` makes from these dataclasses (their fields, types, defaults and the
``description`` in each field's metadata). The keys of ``to_dict`` and their order are part of
the ``report.json`` format. Standard library only: the API process imports it without torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = [
    "DERIVED_KEYS",
    "FILE_ONLY_KEYS",
    "RESULT_KEYS",
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
]

_NO_TEST = " (none: the data has no test split)"


def _doc(description: str, **more: Any) -> dict[str, Any]:
    """Field metadata the API's schema reads: a ``description`` (and e.g. ``examples``)."""
    return {"description": description, **more}


@dataclass(frozen=True)
class Baseline:
    """The original model: accuracy and cost."""

    accuracy: float = field(metadata=_doc("on the validation split (the tolerance's split)"))
    params: int
    macs: int
    latency_s: float
    val_accuracy: float | None = field(default=None, metadata=_doc("on the validation split"))
    test_accuracy: float | None = field(
        default=None, metadata=_doc("on the held-out test split" + _NO_TEST)
    )


@dataclass(frozen=True)
class HeldOut:
    """The original and the kept model on the test split, read once the choice is made.

    ``constraint_met``: whether the test drop is within the tolerance too (the tolerance
    itself is judged on validation, the only split the search may read).
    """

    baseline_accuracy: float
    final_accuracy: float
    accuracy_drop: float = field(metadata=_doc("in accuracy points"))
    constraint_met: bool = field(metadata=_doc("whether the test drop is within the tolerance"))
    n: int = field(metadata=_doc("the number of test samples"))


@dataclass(frozen=True)
class Final:
    """The model kept (the chosen plan, or the original when none held): accuracy and cost."""

    accuracy: float = field(metadata=_doc("on the validation split (the tolerance's split)"))
    accuracy_drop: float = field(
        metadata=_doc("in accuracy points, on validation (what the tolerance judges)")
    )
    params: int
    macs: int
    latency_s: float
    latency_ratio: float = field(
        metadata=_doc("measured latency over the original's (under 1: faster)")
    )
    max_latency_ratio: float | None = field(
        metadata=_doc("the job's latency limit (none: no latency constraint)")
    )
    accuracy_constraint_met: bool = field(
        metadata=_doc("whether the validation drop is within the tolerance")
    )
    latency_constraint_met: bool | None = field(
        metadata=_doc("within max_latency_ratio (none: no latency constraint)")
    )
    constraint_met: bool = field(
        metadata=_doc("within the tolerance and the latency limit, if any")
    )
    val_accuracy: float | None = field(default=None, metadata=_doc("on the validation split"))
    val_accuracy_drop: float | None = field(
        default=None, metadata=_doc("in accuracy points, on the validation split")
    )
    test_accuracy: float | None = field(
        default=None, metadata=_doc("on the held-out test split" + _NO_TEST)
    )
    test_accuracy_drop: float | None = field(
        default=None, metadata=_doc("in accuracy points, on the held-out test split" + _NO_TEST)
    )
    test_constraint_met: bool | None = field(
        default=None,
        metadata=_doc("whether the test drop is within the tolerance too" + _NO_TEST),
    )


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
    """One trial of the study as the report (and ``GET /v1/jobs/{id}/trials``) lists it."""

    number: int
    state: str = field(
        metadata=_doc(
            "the Optuna state", examples=["COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"]
        )
    )
    seed: str | None = field(metadata=_doc("label of an EVBMF seed trial"))
    params: dict[str, Any]
    plan: dict[str, Any] | None
    accuracy: float | None
    accuracy_drop: float | None
    compression: float | None
    params_count: int | None
    macs: int | None
    latency_s: float | None
    latency_ratio: float | None = field(
        metadata=_doc("measured latency over the original's (with max_latency_ratio)")
    )
    latency_met: bool | None = field(
        metadata=_doc("within max_latency_ratio (none: no latency constraint)")
    )
    duration_s: float | None
    worker: str | None = field(metadata=_doc("the worker process that ran it"))

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
    chosen_by_spending: bool = field(
        metadata=_doc("whether spending the tolerance's margin replaced the chosen plan")
    )
    kept_original_reason: str | None = field(
        metadata=_doc("why the original model was kept, when it was")
    )
    verification: list[Verification] = field(
        metadata=_doc("the candidates fine-tuned longer before choosing")
    )
    spend: dict[str, Any] = field(metadata=_doc("the steps of spending the margin"))
    plan: dict[str, Any]
    layers: list[LayerRow]
    search: dict[str, Any] = field(metadata=_doc("the search configuration"))
    lr_calibration: dict[str, Any]
    data: DataSummary
    arch: dict[str, Any]
    trials: list[TrialRecord]
    test: HeldOut | None = field(
        default=None,
        metadata=_doc(
            "the original and the kept model on the held-out test split, read only after the "
            "choice (none: no test split, see test_note)"
        ),
    )
    test_note: str = field(
        default="", metadata=_doc("where the test split came from, or why there is none")
    )
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


#: Keys :meth:`Report.to_dict` computes rather than copies from a field.
DERIVED_KEYS: tuple[str, ...] = ("found_feasible", "pareto_front")
#: Report fields kept only in ``report.json``: the job's result record leaves them out (the
#: trials are served by ``/trials``), and so does ``GET /result``; ``extra`` is the caller's.
FILE_ONLY_KEYS: frozenset[str] = frozenset({"trials", "lr_calibration", "extra"})
#: The keys of ``report.json`` that the job's result record keeps and ``GET /result`` serves.
RESULT_KEYS: tuple[str, ...] = (
    *(f.name for f in fields(Report) if f.name not in FILE_ONLY_KEYS),
    *DERIVED_KEYS,
)


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
