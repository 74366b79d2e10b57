"""The Optuna storage's trials survive database outages (worker/pool/_resilient_storage.py).

The unit cases simulate an outage on SQLite by making the parent class's writes raise the
errors a lost connection raises. The real case puts a TCP proxy between the storage and
PostgreSQL and cuts it for longer than twice the heartbeat interval while a trial runs, with a
second "worker" looking for stale trials all the while.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import optuna
import pytest
from sqlalchemy.exc import OperationalError

from tests.pg_proxy import proxied
from tests.postgres_support import require_postgres
from tests.worker.pool_support import make_settings
from worker.pool._resilient_storage import ResilientRDBStorage
from worker.pool._storage import StaleTrialCallback, optuna_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _lost_connection() -> OperationalError:
    return OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))


def _storage(tmp_path: Path, interval: int = 1) -> ResilientRDBStorage:
    return ResilientRDBStorage(
        f"sqlite:///{tmp_path}/study.db",
        heartbeat_interval=interval,
        grace_period=2 * interval,
        outage_patience=10.0,
    )


def test_heartbeat_survives_an_outage_and_logs_once_each_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    storage = _storage(tmp_path)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    down = {"on": True, "calls": 0}
    real = optuna.storages.RDBStorage.record_heartbeat

    def flaky(self: optuna.storages.RDBStorage, trial_id: int) -> None:
        down["calls"] += 1
        if down["on"]:
            raise _lost_connection()
        real(self, trial_id)

    monkeypatch.setattr(optuna.storages.RDBStorage, "record_heartbeat", flaky)
    caplog.set_level(logging.INFO, logger="worker.pool._resilient_storage")
    storage.record_heartbeat(trial._trial_id)  # retries for one interval, then returns
    storage.record_heartbeat(trial._trial_id)
    assert down["calls"] > 2  # it retried within the call
    down["on"] = False
    storage.record_heartbeat(trial._trial_id)
    outages = [r for r in caplog.records if getattr(r, "event", "") == "database_outage"]
    recoveries = [r for r in caplog.records if getattr(r, "event", "") == "database_recovered"]
    assert len(outages) == 1
    assert len(recoveries) == 1
    assert "unreachable" in outages[0].getMessage()


def test_a_real_error_is_not_waited_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = _storage(tmp_path)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    calls = {"n": 0}

    def broken(self: object, trial_id: int, key: str, value: object) -> None:
        calls["n"] += 1
        raise ValueError("not an outage")

    monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_user_attr", broken)
    with pytest.raises(ValueError, match="not an outage"):
        storage.set_trial_user_attr(trial._trial_id, "k", 1)
    assert calls["n"] == 1


def test_trial_writes_wait_out_a_short_outage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = _storage(tmp_path)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    real = optuna.storages.RDBStorage.set_trial_intermediate_value
    until = time.monotonic() + 1.0

    def flaky(self: optuna.storages.RDBStorage, trial_id: int, step: int, value: float) -> None:
        if time.monotonic() < until:
            raise _lost_connection()
        real(self, trial_id, step, value)

    monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_intermediate_value", flaky)
    trial.report(0.5, step=0)
    assert study.trials[0].intermediate_values == {0: 0.5}


def test_a_stale_trial_is_reaped_only_when_seen_stale_twice_a_grace_period_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = _storage(tmp_path)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    stale = {"ids": [trial._trial_id]}
    monkeypatch.setattr(
        optuna.storages.RDBStorage, "_get_stale_trial_ids", lambda self, sid: list(stale["ids"])
    )
    assert storage._get_stale_trial_ids(study._study_id) == []  # first sighting: a suspect
    stale["ids"] = []  # it sent a heartbeat: no longer suspected
    assert storage._get_stale_trial_ids(study._study_id) == []
    stale["ids"] = [trial._trial_id]
    assert storage._get_stale_trial_ids(study._study_id) == []
    time.sleep(1.0)
    assert storage._get_stale_trial_ids(study._study_id) == []  # not yet 2 s
    time.sleep(1.1)
    assert storage._get_stale_trial_ids(study._study_id) == [trial._trial_id]


def test_a_looker_that_met_an_outage_suspects_nothing_until_a_heartbeat_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cut off itself, the looker cannot tell a dead worker from a live one cut off with it.
    storage = _storage(tmp_path)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    answer: dict[str, object] = {"stale": [trial._trial_id]}

    def stale_ids(self: optuna.storages.RDBStorage, study_id: int) -> list[int]:
        if answer["stale"] is None:
            raise _lost_connection()
        return list(answer["stale"])  # type: ignore[call-overload]

    monkeypatch.setattr(optuna.storages.RDBStorage, "_get_stale_trial_ids", stale_ids)
    assert storage._get_stale_trial_ids(study._study_id) == []  # a suspect
    time.sleep(1.2)
    answer["stale"] = None  # the database goes away for the looker too
    with pytest.raises(OperationalError):
        storage._get_stale_trial_ids(study._study_id)
    time.sleep(1.0)
    answer["stale"] = [trial._trial_id]  # back; without the outage it would be confirmed now
    assert storage._get_stale_trial_ids(study._study_id) == []
    time.sleep(1.1)  # one heartbeat interval after the outage: suspected afresh
    assert storage._get_stale_trial_ids(study._study_id) == []
    time.sleep(1.0)
    assert storage._get_stale_trial_ids(study._study_id) == []  # 1 s of the 2 s grace
    time.sleep(1.1)
    assert storage._get_stale_trial_ids(study._study_id) == [trial._trial_id]


def test_a_heartbeat_finds_out_that_its_trial_was_reaped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    worker = _storage(tmp_path)
    reaper = _storage(tmp_path)  # another process, on the same database
    study = optuna.create_study(storage=worker)
    running, other = study.ask(), study.ask()
    caplog.set_level(logging.INFO, logger="worker.pool._resilient_storage")
    worker.record_heartbeat(running._trial_id)
    assert not worker.was_reaped(running._trial_id)
    reaper.set_trial_state_values(running._trial_id, optuna.trial.TrialState.FAIL)
    assert not worker.was_reaped(running._trial_id)  # not until its next heartbeat
    worker.record_heartbeat(running._trial_id)
    worker.record_heartbeat(running._trial_id)
    worker.record_heartbeat(other._trial_id)
    assert worker.was_reaped(running._trial_id)
    assert not worker.was_reaped(other._trial_id) and not reaper.was_reaped(running._trial_id)
    (record,) = [r for r in caplog.records if getattr(r, "event", "") == "trial_abandoned"]
    assert "FAIL" in record.getMessage() and "abandoned" in record.getMessage()


def test_a_dead_workers_trial_is_still_reaped_and_retried(tmp_path: Path) -> None:
    storage = ResilientRDBStorage(
        f"sqlite:///{tmp_path}/study.db",
        heartbeat_interval=1,
        grace_period=2,
        heartbeat_stale_trial_callback=StaleTrialCallback(),
    )
    study = optuna.create_study(storage=storage)
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    optuna.storages.RDBStorage.record_heartbeat(storage, trial._trial_id)  # then it "dies"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        optuna.storages.fail_stale_trials(study)
        if study.trials[0].state == optuna.trial.TrialState.FAIL:
            break
        time.sleep(0.3)
    states = [t.state for t in study.trials]
    assert states[0] == optuna.trial.TrialState.FAIL
    assert optuna.trial.TrialState.WAITING in states  # queued again


# -- the real outage: a TCP proxy in front of PostgreSQL (tests/pg_proxy.py) ---------------


@pytest.mark.slow
def test_a_trial_runs_once_across_a_postgres_outage_longer_than_twice_the_heartbeat(
    tmp_path: Path,
) -> None:
    url = require_postgres()
    with proxied(url) as (proxy, proxied_url):
        settings = make_settings(tmp_path, proxied_url, trial_heartbeat_seconds=1)
        worker_a = optuna_storage(settings)
        worker_b = optuna_storage(settings)
        name = f"outage-{time.time_ns()}"
        study_a = optuna.create_study(storage=worker_a, study_name=name)
        study_b = optuna.load_study(storage=worker_b, study_name=name)
        reaped: list[int] = []
        stop = threading.Event()

        def look_for_stale_trials() -> None:  # what every other worker and the reaper do
            while not stop.wait(0.25):
                try:
                    before = {t.number for t in study_b.trials if t.state.name == "FAIL"}
                    optuna.storages.fail_stale_trials(study_b)
                    after = {t.number for t in study_b.trials if t.state.name == "FAIL"}
                    reaped.extend(after - before)
                except Exception:
                    pass  # the database is down: try again

        looker = threading.Thread(target=look_for_stale_trials, daemon=True)
        looker.start()

        def objective(trial: optuna.Trial) -> float:
            for step in range(16):  # 8 s of "training", reporting as a trial does
                time.sleep(0.5)
                trial.report(float(step), step)
            return 1.0

        def outage() -> None:
            time.sleep(1.5)
            proxy.cut()
            time.sleep(3.5)  # longer than 2 x the 1 s heartbeat
            proxy.resume()

        cutter = threading.Thread(target=outage)
        cutter.start()
        study_a.optimize(objective, n_trials=1)
        cutter.join()
        time.sleep(3.0)  # give the looker time to (wrongly) reap it after the fact
        stop.set()
        looker.join()
        trials = optuna.load_study(storage=worker_b, study_name=name).trials
        assert reaped == []
        assert [t.state.name for t in trials] == ["COMPLETE"]
        assert trials[0].value == 1.0
        assert len(trials[0].intermediate_values) == 16
        optuna.delete_study(study_name=name, storage=worker_b)
        for storage in (worker_a, worker_b):
            storage.engine.dispose()
