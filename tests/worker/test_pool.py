"""Tests of the worker pool in one process: whole jobs, bad inputs, cancellation, leases,
trial failures, the budget arithmetic, spec conversion and structured logs."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from service.artifacts import sha256_file
from service.settings import Settings
from service.spec import JobSpec
from service.store import ApiKeyRecord, JobStatus, Store
from tensorops import load_compressed
from tests.worker.pool_support import (
    make_settings,
    storage_of,
    submit,
    train_weights,
    trials_of,
    wait_for,
)
from worker.data import load_dataset
from worker.pool import (
    WORKER_ATTR,
    BadInput,
    Counts,
    Reaper,
    Worker,
    over_budget,
    search_config_from_spec,
)
from worker.pool import _phases as phases_module
from worker.pool import _trial as trial_module
from worker.pool import _worker as worker_module
from worker.pool._budget import INTERRUPTED_ATTR, requeue_interrupted
from worker.pool._storage import StaleTrialCallback
from worker.search import SearchStopped
from worker.structured_logs import JsonFormatter, log_event
from worker.training import evaluate

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_weights(tmp_path_factory)


def make_worker(settings: Settings, store: Store, name: str = "w-test") -> Worker:
    return Worker(settings, store, worker_id=name, device="cpu", poll_interval=0.05)


# --------------------------------------------------------------------------- whole job


def test_full_job_in_process(
    settings: Settings, store: Store, owner: ApiKeyRecord, weights: Path
) -> None:
    job = submit(store, settings, owner, weights, trials=4, exports=["torchscript"])
    worker = make_worker(settings, store)
    try:
        worker.run(once=True)
    finally:
        worker.close()
    done = store.load_job(job.id)
    assert done.status is JobStatus.SUCCEEDED, (done.error_code, done.error_message)
    assert done.trials_done == 4 and done.trials_running == 0
    assert done.baseline_accuracy is not None and done.baseline_accuracy > 0.9
    result = done.result
    assert result is not None
    for key in ("baseline", "final", "ratios", "plan", "layers", "pareto_front", "verification"):
        assert key in result
    assert result["trial_counts"]["counted"] == 4
    assert result["finalized_by"] == "w-test"
    assert "export_errors" not in result

    artifacts = {a.name: a for a in store.list_artifacts(job.id)}
    assert set(artifacts) == {
        "model.safetensors",
        "model.zip",
        "report.json",
        "pareto.png",
        "model.torchscript.pt",
    }
    assert {a["name"] for a in result["artifacts"]} == set(artifacts)
    root = settings.artifact_root.resolve()
    for artifact in artifacts.values():
        path = root / artifact.path
        assert path.is_file()
        assert artifact.path.startswith(f"jobs/{job.id}/")
        assert sha256_file(path) == artifact.sha256
        assert path.stat().st_size == artifact.size
    assert artifacts["report.json"].content_type == "application/json"
    assert not [p for p in (root / "jobs").iterdir() if p.name.startswith(".staging")]

    model = load_compressed(root / artifacts["model.safetensors"].path)
    accuracy = evaluate(model, load_dataset("digits", seed=0), device="cpu").accuracy
    assert math.isclose(accuracy, result["final"]["accuracy"], abs_tol=1e-6)

    trials = trials_of(storage_of(settings), job.study_name)
    assert Counts(trials).done == 4
    ran = [t for t in trials if t.state != TrialState.WAITING]
    assert ran and all(t.user_attrs.get(WORKER_ATTR) == "w-test" for t in ran)


def test_trials_go_round_robin_across_searching_jobs(
    settings: Settings,
    store: Store,
    owner: ApiKeyRecord,
    weights: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = submit(store, settings, owner, weights, trials=2, final_epochs=0)
    second = submit(store, settings, owner, weights, trials=2, final_epochs=0)
    worker = make_worker(settings, store)
    served: list[str] = []
    original = worker.run_trial

    def recording(job: Any) -> bool:
        served.append(job.id)
        return original(job)

    monkeypatch.setattr(worker, "run_trial", recording)
    try:
        worker.run(once=True)
    finally:
        worker.close()
    assert store.load_job(first.id).status is JobStatus.SUCCEEDED
    assert store.load_job(second.id).status is JobStatus.SUCCEEDED
    assert served[:4] == [first.id, second.id, first.id, second.id]
    assert not worker.cache.job_ids()


# --------------------------------------------------------------------------- bad input


def _pickled_object() -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(2), "x": Path("/etc")}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("overrides", "content", "suffix", "needle", "code"),
    [
        ({}, b"not a safetensors file", ".safetensors", "weights", "invalid_weights"),
        ({}, "pickle", ".pt", "weights", "invalid_weights"),
        ({"arch": "rankopt:lenet5"}, None, ".safetensors", "weights do not fit", "invalid_weights"),
        (
            {"arch": "os.path:join"},
            None,
            ".safetensors",
            "not an allowed model factory",
            "factory_not_allowed",
        ),
        ({"dataset": "folder:/etc"}, None, ".safetensors", "dataset", "data_path_not_allowed"),
        ({"methods": ["nonsense"]}, None, ".safetensors", "methods", "invalid_spec"),
        ({"epochs_per_trial": 0}, None, ".safetensors", "epochs_per_trial", "invalid_spec"),
    ],
    ids=["corrupt", "pickle", "wrong-arch", "factory", "data-root", "method", "spec"],
)
def test_bad_input_fails_the_job_with_an_actionable_message(
    settings: Settings,
    store: Store,
    owner: ApiKeyRecord,
    weights: Path,
    overrides: dict[str, Any],
    content: Any,
    suffix: str,
    needle: str,
    code: str,
) -> None:
    """The job fails with the cause's code, the one the API's pre-check gives for it."""
    data = _pickled_object() if content == "pickle" else content
    job = submit(store, settings, owner, data if data is not None else weights, suffix=suffix)
    if overrides:  # the API validates specs; a stored spec may still be unusable
        from sqlalchemy import update

        from service.store.models import Job

        with store.engine.begin() as conn:
            conn.execute(update(Job).where(Job.id == job.id).values(spec={**job.spec, **overrides}))
    worker = make_worker(settings, store)
    try:
        assert worker.run_once()
    finally:
        worker.close()
    failed = store.load_job(job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.error_code == code
    assert failed.error_message is not None and needle in failed.error_message
    assert str(settings.resolved_upload_dir) not in failed.error_message


@pytest.mark.parametrize("stored", ["../outside.safetensors", "/etc/passwd", "gone.safetensors"])
def test_weights_path_must_be_an_existing_file_in_the_upload_folder(
    settings: Settings, store: Store, owner: ApiKeyRecord, weights: Path, stored: str
) -> None:
    outside = settings.resolved_upload_dir.parent / "outside.safetensors"
    outside.parent.mkdir(parents=True, exist_ok=True)
    outside.write_bytes(weights.read_bytes())
    spec = {"arch": "rankopt:tinycnn", "dataset": "digits", "trials": 1}
    job = store.create_job(owner.id, spec, stored, trials_total=1)
    worker = make_worker(settings, store)
    try:
        assert worker.run_once()
    finally:
        worker.close()
    failed = store.load_job(job.id)
    assert (failed.status, failed.error_code) == (JobStatus.FAILED, "bad_input")
    assert failed.error_message is not None and "upload" in failed.error_message


# --------------------------------------------------------------------------- cancel


def test_cancel_stops_the_trial_within_an_epoch_and_deletes_the_study(
    settings: Settings,
    store: Store,
    owner: ApiKeyRecord,
    weights: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    epochs = 6
    job = submit(store, settings, owner, weights, trials=4, epochs_per_trial=epochs, batch_size=8)
    snapshots: list[list[optuna.trial.FrozenTrial]] = []
    original = worker_module.delete_study_if_exists

    def snapshot_then_delete(storage: Any, name: str) -> bool:
        snapshots.append(trials_of(storage, name))
        return original(storage, name)

    monkeypatch.setattr(worker_module, "delete_study_if_exists", snapshot_then_delete)
    monkeypatch.setattr(phases_module, "delete_study_if_exists", snapshot_then_delete)
    worker = make_worker(settings, store)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        storage = storage_of(settings)
        wait_for(
            lambda: any(
                t.state == TrialState.RUNNING and t.intermediate_values
                for t in trials_of(storage, job.study_name)
            ),
            60,
            "a trial past its first epoch",
        )
        store.request_cancel(job.id, owner.id)
        asked = time.monotonic()
        wait_for(lambda: store.load_job(job.id).status is JobStatus.CANCELLED, 30, "CANCELLED")
        waited = time.monotonic() - asked
    finally:
        worker.stop_event.set()
        thread.join(30)
        worker.close()
    assert not thread.is_alive()
    with pytest.raises(KeyError):
        storage.get_study_id_from_name(job.study_name)
    (trials,) = [s for s in snapshots if s]  # the prepare phase deleted nothing
    stopped = [t for t in trials if t.user_attrs.get(INTERRUPTED_ATTR)]
    assert len(stopped) == 1 and stopped[0].state == TrialState.FAIL
    assert 1 <= len(stopped[0].intermediate_values) < epochs  # stopped between epochs
    assert waited < 20
    assert not [t for t in trials if t.state == TrialState.COMPLETE]


# --------------------------------------------------------------------------- leases


def test_worker_that_loses_its_prepare_lease_stops_without_writing(
    settings: Settings,
    store: Store,
    owner: ApiKeyRecord,
    weights: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = submit(store, settings, owner, weights)
    original = worker_module.load_inputs

    def stall_and_lose_the_lease(*args: Any, **kwargs: Any) -> Any:
        inputs = original(*args, **kwargs)
        # The lease expires while this worker stalls and another worker takes the job over.
        store.release_lease(job.id, "w-slow")
        assert store.claim("w-other") is not None
        time.sleep(3 * settings.heartbeat_seconds)  # the lease keeper notices
        return inputs

    monkeypatch.setattr(worker_module, "load_inputs", stall_and_lose_the_lease)
    worker = make_worker(settings, store, "w-slow")
    try:
        assert worker.run_once()
    finally:
        worker.close()
    current = store.load_job(job.id)
    assert current.status is JobStatus.PREPARING
    assert current.lease_owner == "w-other" and current.attempts == 2
    assert current.error_message is None and current.baseline_accuracy is None
    assert trials_of(storage_of(settings), job.study_name) == []  # no study created
    assert job.id not in worker.cache


def test_shutdown_during_finalize_hands_the_phase_back(
    settings: Settings,
    store: Store,
    owner: ApiKeyRecord,
    weights: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A generous tolerance: there are plans to verify, so finalising fine-tunes (has epochs).
    job = submit(store, settings, owner, weights, trials=2, max_accuracy_drop=60.0)
    worker = make_worker(settings, store, "w-leaving")
    original = phases_module.publish_results

    def shutdown_then_publish(*args: Any, **kwargs: Any) -> Any:
        worker.stop_event.set()  # SIGTERM arrives as finalising starts
        return original(*args, **kwargs)

    monkeypatch.setattr(phases_module, "publish_results", shutdown_then_publish)
    try:
        worker.run(once=True)
    finally:
        worker.close()
    released = store.load_job(job.id)
    assert released.status is JobStatus.FINALIZING and released.lease_owner is None
    assert (
        released.error_message is not None and "shut down during finalize" in released.error_message
    )
    assert (released.phase_errors, released.lost_leases) == (0, 0)  # a shutdown is no error
    assert not store.list_artifacts(job.id)
    assert not list((settings.artifact_root / "jobs").iterdir())  # staging removed

    monkeypatch.setattr(phases_module, "publish_results", original)
    other = make_worker(settings, store, "w-next")
    try:
        other.run(once=True)
    finally:
        other.close()
    done = store.load_job(job.id)
    assert done.status is JobStatus.SUCCEEDED and done.attempts == 2
    assert done.result is not None and done.result["finalized_by"] == "w-next"


# --------------------------------------------------------------------------- trial failures


def test_repeated_trial_errors_fail_the_job(
    settings: Settings,
    store: Store,
    owner: ApiKeyRecord,
    weights: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings(settings.artifact_root.parent, max_trial_failures=2)

    def broken_objective(ctx: Any, **kwargs: Any) -> Any:
        def objective(trial: optuna.Trial) -> float:
            raise RuntimeError("CUDA out of memory (simulated)")

        return objective

    monkeypatch.setattr(trial_module, "make_objective", broken_objective)
    job = submit(store, settings, owner, weights, trials=5)
    worker = make_worker(settings, store)
    try:
        worker.run(once=True)
    finally:
        worker.close()
    failed = store.load_job(job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.error_code == "trials_failed"
    assert failed.error_message is not None and "out of memory" in failed.error_message
    trials = trials_of(storage_of(settings), job.study_name)
    assert [t.state for t in trials if t.state != TrialState.WAITING] == [TrialState.FAIL] * 2


def test_a_trial_reaped_while_it_runs_is_abandoned_not_finished_or_requeued(
    settings: Settings,
    store: Store,
    owner: ApiKeyRecord,
    weights: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A worker starved of CPU past the grace period looks dead: another process fails its
    # trial (and queues the retry). Its heartbeat finds out and the trial stops at an epoch.
    polls: list[bool] = []

    def reaped_objective(ctx: Any, *, should_stop: Any) -> Any:
        def objective(trial: optuna.Trial) -> float:
            reaper = storage_of(settings)  # what the reaper does to a stale trial
            reaper.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            StaleTrialCallback()(trial.study, reaper.get_trial(trial._trial_id))
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # "epochs", each asking whether to go on
                polls.append(should_stop())
                if polls[-1]:
                    raise SearchStopped(trial.number)
                time.sleep(0.2)
            return 1.0

        return objective

    monkeypatch.setattr(trial_module, "make_objective", reaped_objective)
    job = submit(store, settings, owner, weights, trials=2)
    worker = make_worker(settings, store)
    try:
        assert worker.run_once()  # prepare
        with caplog.at_level(logging.INFO):
            assert worker.run_trial(store.load_job(job.id))
    finally:
        worker.close()
    assert polls[-1] and len(polls) < 50  # stopped within a heartbeat or two, not at the end
    trials = trials_of(storage_of(settings), job.study_name)
    assert trials[0].state == TrialState.FAIL
    retries = [t for t in trials if 0 in t.system_attrs.get("retry_history", ())]
    assert [t.state for t in retries] == [TrialState.WAITING]  # the reaper's; none of its own
    finished = [r for r in caplog.records if getattr(r, "event", "") == "trial_finished"]
    assert [r.getMessage().split(":")[0] for r in finished] == ["trial 0 reaped"]
    assert store.load_job(job.id).trials_done == 0


# --------------------------------------------------------------------------- budget


def _study_with_history() -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    dist = {"x": FloatDistribution(0, 1)}

    def add(state: TrialState, **kwargs: Any) -> None:
        study.add_trial(create_trial(state=state, params={"x": 0.5}, distributions=dist, **kwargs))

    add(TrialState.COMPLETE, value=1.0)  # 0: counts
    add(TrialState.FAIL)  # 1: its worker died; retried as 2
    add(TrialState.COMPLETE, value=1.0, system_attrs={"failed_trial": 1, "retry_history": [1]})
    add(TrialState.FAIL, user_attrs={INTERRUPTED_ATTR: True})  # 3: stopped, not counted
    add(TrialState.PRUNED)  # 4: counts
    add(TrialState.FAIL)  # 5: an error of its own, counts
    add(TrialState.WAITING)  # 6
    study.ask()  # 7: running (takes the waiting trial 6)
    study.ask()  # 8: running
    return study


def test_budget_counts() -> None:
    trials = _study_with_history().get_trials(deepcopy=False)
    counts = Counts(trials)
    assert counts.done == 4  # 0, 2, 4, 5
    assert counts.running == 2
    assert counts.as_dict()["interrupted_or_retried"] == 2  # 1, 3


def test_over_budget_gives_lower_numbered_running_trials_precedence() -> None:
    trials = _study_with_history().get_trials(deepcopy=False)
    numbers = [t.number for t in trials if t.state == TrialState.RUNNING]
    assert numbers == [6, 7]
    assert not over_budget(trials, 6, budget=5)  # 4 done, none ahead
    assert over_budget(trials, 7, budget=5)  # 4 done + trial 6 ahead
    assert not over_budget(trials, 7, budget=6)


def test_requeued_retry_keeps_its_history_and_drops_the_interrupted_mark() -> None:
    study = optuna.create_study(direction="maximize")
    dist = {"x": FloatDistribution(0, 1)}
    study.add_trial(
        create_trial(
            state=TrialState.FAIL,
            params={"x": 0.25},
            distributions=dist,
            user_attrs={INTERRUPTED_ATTR: True, "plan": {}},
            system_attrs={"failed_trial": 0, "retry_history": [0]},
        )
    )
    requeue_interrupted(study, study.trials[0])
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1
    assert waiting[0].params == {"x": 0.25}
    assert waiting[0].system_attrs["retry_history"] == [0]
    assert INTERRUPTED_ATTR not in waiting[0].user_attrs


def test_budget_is_checked_against_the_study_before_a_trial(
    settings: Settings, store: Store, owner: ApiKeyRecord, weights: Path
) -> None:
    job = submit(store, settings, owner, weights, trials=2)
    worker = make_worker(settings, store)
    try:
        assert worker.run_once()  # prepare
        searching = store.load_job(job.id)
        assert searching.status is JobStatus.SEARCHING
        study = optuna.load_study(study_name=job.study_name, storage=storage_of(settings))
        study.ask()  # two other workers hold the two slots (the store does not know yet)
        study.ask()
        assert not worker.run_trial(searching)
        assert store.load_job(job.id).trials_running == 2  # corrected from the study
        assert store.next_search_job("w-x") is None
    finally:
        worker.close()
    assert Counts(study.get_trials(deepcopy=False)).done == 0


def test_reaper_fails_and_retries_a_trial_that_never_sent_a_heartbeat(
    settings: Settings, store: Store, owner: ApiKeyRecord, weights: Path
) -> None:
    job = submit(store, settings, owner, weights, trials=3)
    worker = make_worker(settings, store)
    try:
        assert worker.run_once()  # prepare
        study = optuna.load_study(study_name=job.study_name, storage=storage_of(settings))
        dead = study.ask()  # a worker took a trial and died before its first heartbeat
        reaper = Reaper(
            store, lambda: worker.storage, worker_id="r", interval=1.0, silent_after=0.3
        )
        reaper.reap_once()
        assert store.load_job(job.id).trials_running == 1  # progress corrected
        time.sleep(0.4)
        reaper.reap_once()
        trials = study.get_trials(deepcopy=False)
        assert trials[dead.number].state == TrialState.FAIL
        retries = [t for t in trials if t.system_attrs.get("retry_history") == [dead.number]]
        assert len(retries) == 1 and retries[0].state == TrialState.WAITING
        assert Counts(trials).done == 0
        assert store.load_job(job.id).trials_running == 0
    finally:
        worker.close()


# --------------------------------------------------------------------------- spec and logs


def test_search_config_from_spec() -> None:
    spec = JobSpec.model_validate(
        {
            "arch": "rankopt:tinycnn",
            "dataset": "digits",
            "trials": 7,
            "methods": ["tucker2", "svd"],
            "rank_scale": [0.5, 2.0],
            "schedule": {"kind": "constant", "max_lr": 0.02},
            "epochs_per_trial": 2,
            "final_epochs": 5,
            "objective": "macs",
            "lr_scales": [1, 0.5],
            "push_factor": None,
        }
    )
    config = search_config_from_spec(spec, "cpu", trials=9)
    assert config.lr_scales == (1.0, 0.5) and config.push_factor is None
    assert (
        search_config_from_spec(spec.model_copy(update={"push_factor": 0.5}), "cpu").push_factor
        == 0.5
    )
    assert config.trials == 9 and config.device == "cpu"
    assert config.methods == ("tucker2", "svd") and config.rank_scale == (0.5, 2.0)
    assert config.schedule.kind == "constant" and config.schedule.base_lr == 0.02
    assert (config.epochs_per_trial, config.final_epochs, config.objective) == (2, 5, "macs")
    assert search_config_from_spec(spec, "cpu").trials == 7
    with pytest.raises(BadInput, match="methods"):
        search_config_from_spec(spec.model_copy(update={"methods": ["qr"]}), "cpu")


def test_json_log_lines() -> None:
    record_logger = logging.getLogger("tests.pool.json")
    captured: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(record)

    handler = Keep()
    record_logger.addHandler(handler)
    record_logger.setLevel(logging.INFO)
    try:
        log_event(
            record_logger, logging.INFO, "trial_finished", "done", worker="w1", job="j1", trial=3
        )
    finally:
        record_logger.removeHandler(handler)
    line = json.loads(JsonFormatter().format(captured[0]))
    assert line["worker"] == "w1" and line["job"] == "j1"
    assert line["event"] == "trial_finished" and line["trial"] == 3
    assert line["level"] == "info" and line["message"] == "done" and "ts" in line
