"""``GET /v1/jobs/{id}/result`` and ``/trials`` serve the report's one model
(``service.report_model``): every field of it, a current report as written, an old one with
defaults."""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import pytest
from fastapi.testclient import TestClient

from service.api.schemas import ResultOut, TrialOut, served_model
from service.report_model import FILE_ONLY_KEYS, RESULT_KEYS, Report, TrialRecord
from service.settings import Settings
from service.store import Store
from tests.service.api_helpers import SPEC, finish, report, submit, torch_weights


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    return torch_weights(tmp_path / "model.pt")


def _nested(hint: Any) -> list[type]:
    """The report dataclasses inside a type hint (``Final``, ``list[Verification]``, ...)."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return [hint]
    return [cls for arg in get_args(hint) for cls in _nested(arg)]


#: Served as ``report.json`` has them, the rows of ``LayerRow.to_dict()`` (no ``kept`` key, and
#: ``reason`` only on a dense layer's row): checked by the round trip below.
AS_WRITTEN = {"layers"}


def _served_dataclasses() -> list[type]:
    """The dataclasses ``GET /result`` serves as models: those its report fields nest."""
    hints = get_type_hints(Report)
    keys = [key for key in RESULT_KEYS if key in hints and key not in AS_WRITTEN]
    return [cls for key in keys for cls in _nested(hints[key])]


def _sample(hint: Any) -> Any:
    """A value of type ``hint`` with nothing left at a default (None, empty, zero)."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        values = get_type_hints(hint)
        return hint(**{f.name: _sample(values[f.name]) for f in dataclasses.fields(hint)})
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return _sample(next(a for a in args if a is not type(None)))
    if origin is list:
        return [_sample(args[0])]
    if origin is dict:
        return {"key": [1, "two"]}
    return {bool: True, int: 7, float: 0.25, str: "text"}.get(hint, "any")


def test_every_report_field_is_in_the_api_schema(api: TestClient) -> None:
    schemas = api.get("/openapi.json").json()["components"]["schemas"]
    nested = _served_dataclasses()
    assert {c.__name__ for c in nested} >= {"Baseline", "Final", "Ratios", "HeldOut"}
    for cls in nested:
        fields = {f.name for f in dataclasses.fields(cls)}
        assert set(schemas[cls.__name__]["properties"]) == fields, cls.__name__
        assert set(served_model(cls).model_fields) == fields, cls.__name__
    properties = schemas["ResultOut"]["properties"]
    served = set(properties) - {"job_id", "artifacts"}
    assert served == set(RESULT_KEYS)
    assert all(properties[key]["items"]["type"] == "object" for key in AS_WRITTEN)
    report_fields = {f.name for f in dataclasses.fields(Report)}
    assert served | FILE_ONLY_KEYS >= report_fields
    trial_fields = {f.name for f in dataclasses.fields(TrialRecord)}
    assert set(schemas["TrialOut"]["properties"]) == trial_fields


def test_a_current_report_is_served_as_written() -> None:
    written = json.loads(json.dumps(_sample(Report).to_dict()))
    result = {key: written[key] for key in RESULT_KEYS if key != "pareto_front"}
    served = ResultOut.model_validate({**result, "job_id": "j", "artifacts": []})
    assert served.model_dump(mode="json", include=set(result)) == result
    for trial in written["trials"]:
        assert TrialOut.model_validate(trial).model_dump(mode="json") == trial


def test_an_old_report_is_served_with_defaults(
    api: TestClient, api_store: Store, api_settings: Settings, alice: dict[str, str],
    weights: Path,
) -> None:  # fmt: skip
    job_id = submit(api, alice, SPEC, weights).json()["id"]
    old = report(job_id)  # no test, test_note, data, spend or chosen_by_spending
    old["kept_original_reason"] = None
    old["data"] = {"name": "digits", "train": 8, "val": 2}  # before split_seed
    newer = {"test", "test_note", "spend", "chosen_by_spending", "verification", "search"}
    assert not newer & set(old)
    finish(api_store, api_settings, job_id, {"report.json": b"{}"}, old)
    response = api.get(f"/v1/jobs/{job_id}/result", headers=alice)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["final"]["accuracy"] == 0.9 and result["final"]["test_accuracy"] is None
    assert result["final"]["accuracy_constraint_met"] is None
    assert result["baseline"]["val_accuracy"] is None
    assert result["data"] == {"name": "digits", "train": 8, "val": 2, "split_seed": 0}
    assert result["test"] is None and result["test_note"] == ""
    assert result["spend"] is None and result["chosen_by_spending"] is None
    assert result["verification"] == [] and result["search"] is None
    assert result["layers"] == old["layers"]
    trials = api.get(f"/v1/jobs/{job_id}/trials", headers=alice).json()["trials"]
    assert trials[0]["worker"] is None and trials[0]["latency_ratio"] is None
