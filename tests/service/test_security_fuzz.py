"""Security: schemathesis against the app's own OpenAPI document, in process (ASGI).

Every operation of ``/openapi.json`` is fuzzed with a valid API key: schema-conforming
(positive) and schema-violating (negative) requests, plus requests pinned to real jobs (a
finished one with artifacts, a queued one, a cancelled one) so that the success paths run too,
and for ``POST /v1/jobs`` forms with real weights and generated specs. Each response must not
be a 5xx and must conform to the document: documented status, content type, headers and body
schema (events are checked event by event). Runs are derandomized, so a failure reproduces.
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as save_safetensors
from schemathesis import GenerationMode, checks

from service.api import create_app
from service.settings import Settings
from service.store import Store
from tests.service.api_helpers import SPEC, finish, npz_dataset, small_net, submit

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

#: What every response is checked for.
CHECKS = [
    checks.not_a_server_error,
    checks.response_schema_conformance,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
]

#: Generated cases per operation: 2,203 in all (the three health routes take no input, so
#: Hypothesis runs each once).
EXAMPLES: dict[tuple[str, str], int] = {
    ("POST", "/v1/jobs"): 400,
    ("GET", "/v1/jobs"): 200,
    ("GET", "/v1/jobs/{job_id}"): 200,
    ("DELETE", "/v1/jobs/{job_id}"): 200,
    ("GET", "/v1/jobs/{job_id}/trials"): 200,
    ("GET", "/v1/jobs/{job_id}/events"): 200,
    ("POST", "/v1/jobs/{job_id}/cancel"): 200,
    ("GET", "/v1/jobs/{job_id}/result"): 200,
    ("GET", "/v1/jobs/{job_id}/artifacts"): 200,
    ("GET", "/v1/jobs/{job_id}/artifacts/{name}"): 200,
    ("GET", "/v1/jobs/{job_id}/dashboard"): 100,
    ("GET", "/healthz"): 1,
    ("GET", "/readyz"): 1,
    ("GET", "/metrics"): 1,
}
MIN_TOTAL_CASES = 1_000


def _weights_files() -> list[bytes]:
    buffer = io.BytesIO()
    torch.save(small_net().state_dict(), buffer)
    state = {k: v.contiguous() for k, v in small_net().state_dict().items()}
    return [buffer.getvalue(), save_safetensors(state), b"", b"PK\x03\x04junk", b"\x80\x02N."]


def _dataset_file(folder: Path) -> bytes:
    return npz_dataset(folder / "d.npz").read_bytes()


def _specs() -> st.SearchStrategy[str]:
    """Job specs: mostly well formed JSON objects with valid and invalid field values."""
    floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, 0.5, 1e300])
    ints = st.integers(min_value=-(2**70), max_value=2**70) | st.integers(0, 50)
    anything = st.none() | st.booleans() | ints | floats | st.text(max_size=20)
    values = {
        "arch": st.sampled_from(
            ["rankopt:lenet5", "torchvision:resnet18", "mypkg.models:build_net", "os.path:join",
             "rankopt:", "x"]
        ) | st.text(max_size=40),
        "dataset": st.sampled_from(
            ["digits", "mnist5k", "upload", "folder:images", "folder:../../etc", "cifar10:/etc",
             "folder:" + "a" * 900, "folder:images\x00/../x"]
        ) | st.text(max_size=40),
        "trials": ints | anything,
        "timeout_s": floats | anything,
        "max_accuracy_drop": floats,
        "objective": st.sampled_from(["params", "macs", "latency", "bogus"]),
        "methods": st.none() | st.lists(st.sampled_from(["tucker2", "cp", "svd", "x"]), max_size=3),
        "rank_scale": st.lists(floats, min_size=0, max_size=3),
        "schedule": st.fixed_dictionaries(
            {}, optional={"kind": st.text(max_size=12), "base_lr": floats, "max_lr": floats}
        ),
        "exports": st.lists(st.sampled_from(["onnx", "torchscript", "tflite"]), max_size=3),
        "batch_size": ints,
        "seed": ints,
    }  # fmt: skip
    objects = st.fixed_dictionaries(
        {"arch": values.pop("arch")}, optional={**values, "extra": anything}
    )
    as_json = objects.map(lambda spec: json.dumps(spec, allow_nan=True))
    return as_json | st.sampled_from(["", "null", "[]", "{", '{"arch": 1}']) | st.text(max_size=50)


@pytest.fixture
def world(
    api_settings: Settings, api_store: Store, alice: dict[str, str], tmp_path: Path
) -> Iterator[dict[str, Any]]:
    """An app with alice's jobs in several states; its schema loaded in process."""
    app = create_app(api_settings, api_store, sse_poll_s=0.01, sse_heartbeat_s=0.05)
    weights = tmp_path / "w.pt"
    torch.save(small_net().state_dict(), weights)
    with TestClient(app) as client:
        done = str(submit(client, alice, SPEC, weights).json()["id"])
        files = {"report.json": b'{"ok": true}', "model.zip": b"PK\x05\x06" + b"\0" * 18}
        finish(api_store, api_settings, done, files)
        cancelled = str(submit(client, alice, SPEC, weights).json()["id"])
        assert client.post(f"/v1/jobs/{cancelled}/cancel", headers=alice).status_code == 200
        queued = str(submit(client, alice, SPEC, weights).json()["id"])
        yield {
            "app": app,
            "schema": schemathesis.openapi.from_asgi("/openapi.json", app),
            "auth": alice,
            "done": done,
            "cancelled": cancelled,
            "queued": queued,
            "dataset": _dataset_file(tmp_path),
        }


def _strategy(world: dict[str, Any], method: str, path: str) -> st.SearchStrategy[Any]:
    operation = world["schema"][path][method]
    strategies = [operation.as_strategy()]
    has_input = bool(operation.path_parameters or operation.query or operation.body)
    if has_input:
        strategies.append(operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
    if "{job_id}" in path:
        # The event stream of a queued job never ends: pin only finished jobs there.
        jobs = ["done", "cancelled"] + ([] if path.endswith("/events") else ["queued"])
        for job in jobs:
            pinned: dict[str, Any] = {"job_id": world[job]}
            strategies.append(operation.as_strategy(path_parameters=pinned))
            if "{name}" in path:
                for name in ("report.json", "model.zip"):
                    named = {**pinned, "name": name}
                    strategies.append(operation.as_strategy(path_parameters=named))
    if (method, path) == ("POST", "/v1/jobs"):
        # Files are picked by index, so that Hypothesis never prints kilobytes of bytes.
        weights = _weights_files()
        files = st.integers(0, len(weights) - 1).map(lambda i: weights[i])
        dataset = world["dataset"]
        datasets = st.none() | st.booleans().map(lambda _: dataset) | st.binary(max_size=64)

        def with_form(parts: tuple[Any, str, bytes, bytes | None]) -> Any:
            case, spec, weights, dataset = parts
            body = {"spec": spec, "weights": weights}
            if dataset is not None:
                body["dataset"] = dataset
            case.body = body
            return case

        form = st.tuples(operation.as_strategy(), _specs(), files, datasets).map(with_form)
        strategies += [form, form]  # weighted: most POSTs carry a real form
    return st.one_of(strategies)


def _fuzz(world: dict[str, Any], method: str, path: str, examples: int) -> Counter[int]:
    """Run ``examples`` generated cases of one operation; return how often each status came."""
    statuses: Counter[int] = Counter()
    queued = world["queued"]

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(case=_strategy(world, method, path))
    def run(case: Any) -> None:
        if path.endswith("/events") and case.path_parameters.get("job_id") == queued:
            return  # never reached by a generated id; guards against an endless stream
        response = case.call(headers=world["auth"])
        statuses[response.status_code] += 1
        case.validate_response(response, checks=CHECKS)

    run()
    return statuses


def test_the_plan_covers_every_operation_and_enough_cases(world: dict[str, Any]) -> None:
    operations = {
        (result.ok().method.upper(), result.ok().path)
        for result in world["schema"].get_all_operations()
    }
    assert operations == set(EXAMPLES)
    assert sum(EXAMPLES.values()) >= MIN_TOTAL_CASES


@pytest.mark.parametrize("operation", sorted(EXAMPLES), ids=lambda o: f"{o[0]} {o[1]}")
def test_no_5xx_and_responses_conform_to_the_schema(
    world: dict[str, Any], operation: tuple[str, str]
) -> None:
    method, path = operation
    started = time.perf_counter()
    statuses = _fuzz(world, method, path, EXAMPLES[operation])
    elapsed = time.perf_counter() - started
    calls = sum(statuses.values())
    seen = dict(sorted(statuses.items()))
    print(f"{method} {path}: {calls} cases in {elapsed:.1f}s, statuses {seen}")
    assert calls >= EXAMPLES[operation], (operation, calls)
    assert any(200 <= status < 300 for status in statuses), "no request got through"
    if EXAMPLES[operation] > 1:  # and the refusals were exercised too
        assert any(400 <= status < 500 for status in statuses), statuses


def test_fuzzing_left_the_roots_tidy(world: dict[str, Any], api_settings: Settings) -> None:
    """A short run of submissions leaves uploads only in the folders of jobs that exist."""
    _fuzz(world, "POST", "/v1/jobs", 60)
    app: FastAPI = world["app"]
    with TestClient(app) as client:
        listed = client.get("/v1/jobs", params={"limit": 100}, headers=world["auth"]).json()
    ids = {job["id"] for job in listed["jobs"]}
    folders = {p.name for p in api_settings.resolved_upload_dir.iterdir()}
    assert folders <= ids, folders - ids
