"""Compression plans: which method and ranks each layer gets. Plans round-trip through JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from tensorops._types import KEEP
from tensorops.exceptions import PlanError


@dataclass(frozen=True)
class Choice:
    """The method for one layer (``"keep"`` leaves it dense) and its ranks."""

    method: str
    ranks: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or not self.method:
            raise PlanError(f"a choice's method must be a non-empty string, got {self.method!r}")
        ranks = self.ranks
        if isinstance(ranks, int):
            ranks = (ranks,)
        try:
            normalised = tuple(ranks)
        except TypeError:
            raise PlanError(f"ranks must be a sequence of integers, got {self.ranks!r}") from None
        for rank in normalised:
            if isinstance(rank, bool) or not isinstance(rank, int):
                raise PlanError(f"ranks must be integers, got {self.ranks!r}")
        if self.method == KEEP and normalised:
            raise PlanError(f"'keep' takes no ranks, got {normalised!r}")
        object.__setattr__(self, "ranks", normalised)

    @property
    def keeps(self) -> bool:
        return self.method == KEEP

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "ranks": list(self.ranks)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Choice:
        if not isinstance(data, Mapping) or "method" not in data:
            raise PlanError(f"a choice must be an object with 'method' (and 'ranks'), got {data!r}")
        unknown = set(data) - {"method", "ranks"}
        if unknown:
            raise PlanError(f"unknown field(s) in a choice: {sorted(unknown)}")
        return cls(data["method"], tuple(data.get("ranks", ())))


class Plan(Mapping[str, Choice]):
    """An immutable mapping from dotted layer name to :class:`Choice`.

    Layers not named are kept dense. ``Plan.from_json(plan.to_json()) == plan``.
    """

    def __init__(self, choices: Mapping[str, Choice | Mapping[str, Any]] | None = None) -> None:
        parsed: dict[str, Choice] = {}
        for name, choice in (choices or {}).items():
            if not isinstance(name, str) or not name:
                raise PlanError(f"layer names must be non-empty strings, got {name!r}")
            parsed[name] = choice if isinstance(choice, Choice) else Choice.from_dict(choice)
        self._choices = parsed

    def __getitem__(self, name: str) -> Choice:
        return self._choices[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._choices)

    def __len__(self) -> int:
        return len(self._choices)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and self._choices == other._choices

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._choices.items())))

    def __repr__(self) -> str:
        return f"Plan({self._choices!r})"

    def decomposed(self) -> dict[str, Choice]:
        """The choices that replace a layer (every choice but ``keep``)."""
        return {name: c for name, c in self._choices.items() if not c.keeps}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: choice.to_dict() for name, choice in self._choices.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        if not isinstance(data, Mapping):
            raise PlanError(f"a plan must be a JSON object of layer name → choice, got {data!r}")
        return cls(data)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, **kwargs)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"plan is not valid JSON: {exc}") from None
        return cls.from_dict(data)
