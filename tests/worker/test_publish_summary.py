"""The job's result record keeps every report key that ``GET /v1/jobs/{id}/result`` serves."""

from __future__ import annotations

from service.api.schemas import ResultOut
from worker.pool._publish import SUMMARY_KEYS, summarize


def test_the_result_record_keeps_every_report_key_the_result_route_serves() -> None:
    served = set(ResultOut.model_fields) - {"job_id", "artifacts"}
    assert {"test", "test_note", "kept_original_reason", "spend"} <= served  # held out too
    assert served == set(SUMMARY_KEYS)


def test_summarize_keeps_held_out_numbers_and_the_reason() -> None:
    report = {
        "test": {"baseline_accuracy": 0.9, "final_accuracy": 0.89, "accuracy_drop": 1.0, "n": 10},
        "test_note": "official test set",
        "kept_original_reason": None,
        "trials": [{"number": 0}],
    }
    summary = summarize(report)
    assert summary["test"] == report["test"]
    assert summary["test_note"] == "official test set"
    assert "kept_original_reason" in summary
    assert "trials" not in summary  # the full list stays in report.json
