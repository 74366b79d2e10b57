"""The job's result record keeps every report key that ``GET /v1/jobs/{id}/result`` serves."""

from __future__ import annotations

import re
from pathlib import Path

from service.api.schemas import ResultOut
from worker.pool._publish import SUMMARY_KEYS, summarize

ROUTES = Path(__file__).resolve().parents[2] / "service" / "api" / "routes_jobs.py"


def test_every_report_key_the_result_route_reads_is_kept() -> None:
    read = set(re.findall(r'report\.get\("([a-z_]+)"\)', ROUTES.read_text()))
    assert {"test", "test_note", "kept_original_reason"} <= read  # the held-out numbers too
    assert read <= set(SUMMARY_KEYS), sorted(read - set(SUMMARY_KEYS))
    assert read - {"pareto_front"} <= set(ResultOut.model_fields)


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
