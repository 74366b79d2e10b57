"""The web page in a real browser: Debian's Chromium, headless, driven through chromedriver by
Selenium, against ``rankopt serve`` and a ``rankopt worker`` on 127.0.0.1 with a job that has
finished (tinycnn on digits, 3 trials of 1 epoch).

Sign-in refuses a wrong key; the jobs list shows the job; its page draws the scatter with the
Pareto front and the chosen point, the sortable trials table with each trial's plan and the
result's per-layer plan; a download arrives with the digest the page shows; another key sees
nothing of the first; the form refuses what the server would before sending, then submits;
cancel and delete ask first; the page follows a job live over ``/events``; and
``optuna.load_study`` on the job's storage and study name reads the trials the page shows.

A screenshot of each page goes to ``$RANKOPT_TEST_ARTIFACTS`` (default ``<repo>/test-artifacts``).
Without Selenium, ``chromium`` or ``chromedriver`` (``make browser-tools`` installs them) the
browser tests are skipped with the reason; the API checks at the end still run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import optuna
import pytest

from service.client import RankoptClient
from service.settings import Settings
from service.store import Store
from tests.e2e._procs import Proc, free_port, start_api, start_worker, stop_all, wait_ready
from tests.worker.pool_support import BASE_SPEC, make_settings, train_weights

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("RANKOPT_TEST_ARTIFACTS") or ROOT / "test-artifacts")
DASHBOARD = "http://127.0.0.1:8089"
SPEC: dict[str, Any] = {**BASE_SPEC, "trials": 3}
KEY_STORAGE = "rankopt.apiKey"
WAIT_S = 30.0


@dataclass
class Site:
    url: str
    settings: Settings
    alice: str
    bob: str
    job_id: str
    weights: Path
    procs: list[Proc]


# ------------------------------------------------------------------ service with a finished job
@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("browser")
    settings = make_settings(folder, dashboard_url=DASHBOARD)
    store = Store.from_settings(settings, migrate=True)
    alice, _ = store.create_api_key("alice")
    bob, _ = store.create_api_key("bob")
    store.dispose()
    weights = train_weights(tmp_path_factory)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with mock.patch.dict(os.environ, {"RANKOPT_DASHBOARD_URL": DASHBOARD}):
        api = start_api(settings, folder, port)
    worker = start_worker(settings, folder)
    procs = [api, worker]
    try:
        wait_ready(url, api)
        with RankoptClient(url, alice, timeout=30) as client:
            job = client.submit(SPEC, weights)
            events = list(client.events(job["id"]))
        final = events[-1]["data"]
        assert final["status"] == "SUCCEEDED", (final, api.tail(), worker.tail())
        worker.stop()  # later jobs stay QUEUED: cancel and delete act at once
        yield Site(url, settings, alice, bob, job["id"], weights, procs)
    finally:
        stop_all(procs)


# ------------------------------------------------------------------ the browser
def _browser_skip_reason() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for program in ("chromium", "chromedriver"):
        if shutil.which(program) is None:
            return (
                f"{program} is not installed (`make browser-tools` runs "
                "apt-get install chromium chromium-driver)"
            )
    return None


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def driver(site: Site, downloads: Path) -> Iterator[Any]:
    reason = _browser_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service as DriverService

    options = Options()
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--window-size=1280,2000",
    ):
        options.add_argument(arg)
    options.binary_location = str(shutil.which("chromium"))
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    service = DriverService(executable_path=str(shutil.which("chromedriver")))
    try:
        browser = webdriver.Chrome(service=service, options=options)
    except Exception as exc:  # a browser that is installed but cannot start here
        pytest.skip(f"chromium could not be started headless: {exc}")
    browser.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    try:
        yield browser
    finally:
        browser.quit()


def _wait(driver: Any, condition: Callable[[Any], Any], what: str) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(condition)
    except TimeoutException:
        banner = driver.execute_script("return document.getElementById('banner').textContent")
        raise AssertionError(f"timed out waiting for {what}; banner: {banner!r}") from None


def _css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def _one(driver: Any, selector: str) -> Any:
    return _wait(driver, lambda d: (_css(d, selector) or [None])[0], selector)


def _visible_text(driver: Any, selector: str, text: str) -> Any:
    def found(d: Any) -> Any:
        for el in _css(d, selector):
            if el.is_displayed() and text in el.text:
                return el
        return None

    return _wait(driver, found, f"{selector} showing {text!r}")


def _screenshot(driver: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(ARTIFACTS / name)), name


def _session_key(driver: Any) -> Any:
    return driver.execute_script(f"return sessionStorage.getItem('{KEY_STORAGE}')")


def _sign_in(driver: Any, site: Site, key: str) -> None:
    driver.get(site.url + "/#/jobs")
    field = _one(driver, "#signin-key")
    _wait(driver, lambda d: field.is_displayed(), "the sign-in form")
    field.clear()
    field.send_keys(key)
    _one(driver, "#signin-form button[type=submit]").click()


def _sign_out(driver: Any) -> None:
    _one(driver, "#sign-out").click()
    _wait(driver, lambda d: _session_key(d) is None, "the key to be forgotten")


def _confirm(driver: Any, answer: bool) -> None:
    dialog = _one(driver, "#confirm")
    _wait(driver, lambda d: dialog.is_displayed(), "the confirmation dialog")
    _one(driver, "#confirm-yes" if answer else "#confirm-no").click()
    _wait(driver, lambda d: not dialog.is_displayed(), "the dialog to close")


def _badge(driver: Any, status: str) -> None:
    _wait(driver, lambda d: _one(d, "#job-status").text == status, f"status {status}")


def _client(site: Site, key: str | None = None) -> RankoptClient:
    return RankoptClient(site.url, key or site.alice, timeout=30)


# ------------------------------------------------------------------ the tests, in page order
def test_a_wrong_key_is_refused(driver: Any, site: Site) -> None:
    _sign_in(driver, site, "rk_this-is-not-a-key")
    error = _visible_text(driver, "#signin-error", "refused")
    assert "unknown or was revoked" in error.text
    assert _session_key(driver) is None
    assert not _one(driver, "#view-jobs").is_displayed()
    _screenshot(driver, "signin-refused.png")


def test_the_jobs_list_shows_the_finished_job(driver: Any, site: Site) -> None:
    _sign_in(driver, site, site.alice)
    row = _one(driver, f'#jobs-table tr[data-job="{site.job_id}"]')
    assert "SUCCEEDED" in row.text and SPEC["arch"] in row.text
    bar = row.find_element("css selector", "progress")
    assert bar.get_attribute("value") == bar.get_attribute("max") == str(SPEC["trials"])
    assert _session_key(driver) == site.alice
    assert driver.execute_script("return localStorage.length") == 0
    assert driver.execute_script("return document.cookie") == ""
    assert site.alice not in driver.current_url
    _screenshot(driver, "jobs.png")


def test_the_job_page_draws_the_front_the_trials_and_the_plan(driver: Any, site: Site) -> None:
    with _client(site) as client:
        trials = list(client.trials(site.job_id))
        result = client.result(site.job_id)
    _one(driver, f'#jobs-table tr[data-job="{site.job_id}"] a').click()
    _one(driver, "#pareto-plot")

    # The scatter: one point per completed trial, the front and the chosen point marked.
    plotted = [t for t in trials if t["state"] == "COMPLETE" and t["accuracy"] is not None]
    points = {int(c.get_attribute("data-trial")) for c in _css(driver, "#pareto-plot circle.pt")}
    assert points == {t["number"] for t in plotted}
    front = {int(c.get_attribute("data-trial")) for c in _css(driver, "circle.pt-front")}
    assert front == {p["trial"] for p in result["pareto_front"]}
    assert len(_css(driver, "#pareto-plot polyline.front-line")) == (1 if len(front) > 1 else 0)
    assert _one(driver, "#chosen-point").get_attribute("data-trial") == str(result["chosen_trial"])

    # The trials table, sortable; each trial's plan on demand.
    rows = _css(driver, "#trials-table tbody tr[data-trial]")
    assert [int(r.get_attribute("data-trial")) for r in rows] == sorted(t["number"] for t in trials)
    _one(driver, '#trials-table th[data-key="accuracy"]').click()
    order = [int(r.get_attribute("data-trial")) for r in _css(driver, "tr[data-trial]")]
    by_accuracy = sorted(
        trials, key=lambda t: (t["accuracy"] is None, -(t["accuracy"] or 0), t["number"])
    )
    assert order == [t["number"] for t in by_accuracy]
    header = _one(driver, '#trials-table th[data-key="accuracy"]')
    assert header.get_attribute("aria-sort") == "descending"
    best = by_accuracy[0]
    _one(driver, f'tr[data-trial="{best["number"]}"] button').click()
    detail = _one(driver, f'tr[data-plan-of="{best["number"]}"]')
    for layer, choice in (best["plan"] or {}).items():
        assert layer in detail.text and choice["method"] in detail.text

    # The result's per-layer plan with params and MACs before and after.
    layers = _css(driver, "#layers-table tbody tr")
    assert [r.get_attribute("data-layer") for r in layers] == [x["layer"] for x in result["layers"]]
    for row, layer in zip(layers, result["layers"]):
        cells = [c.text for c in row.find_elements("css selector", "td")]
        assert cells[1] == layer["method"]
        assert cells[3:] == [
            f"{layer[k]:,}" for k in ("params_before", "params_after", "macs_before", "macs_after")
        ]

    # Downloads with sizes and digests, the study and its optuna-dashboard link.
    with _client(site) as client:
        artifacts = {a["name"]: a for a in client.artifacts(site.job_id)}
    for name, artifact in artifacts.items():
        row = _one(driver, f'#artifacts-table tr[data-artifact="{name}"]')
        assert artifact["sha256"] in row.text
        size = row.find_element("css selector", "td.num")
        assert size.get_attribute("title") == f"{artifact['size']} bytes"
    link = _one(driver, "#job-dashboard")
    assert link.is_displayed()
    assert link.get_attribute("href").startswith(f"{DASHBOARD}/dashboard/studies/")
    assert _one(driver, "#job-study").text == f"job-{site.job_id}"
    assert _one(driver, "#job-live").text == "finished"
    assert not _one(driver, "#job-cancel").is_displayed()
    _screenshot(driver, "job.png")


def test_optuna_load_study_reads_the_trials_the_page_shows(driver: Any, site: Site) -> None:
    study_name = _one(driver, "#job-study").text
    shown = {}
    for row in _css(driver, "#trials-table tbody tr[data-trial]"):
        cells = row.find_elements("css selector", "td")
        shown[int(cells[0].text)] = (cells[1].text, cells[3].text, cells[5].text)
    study = optuna.load_study(study_name=study_name, storage=site.settings.database_url)
    read = {}
    for trial in study.get_trials(deepcopy=False):
        accuracy = trial.user_attrs.get("accuracy")
        compression = trial.user_attrs.get("compression")
        read[trial.number] = (
            trial.state.name,
            "—" if accuracy is None else f"{100 * accuracy:.2f}%",
            "—" if compression is None else f"{compression:.2f}×",
        )
    assert shown == read
    assert len(read) >= SPEC["trials"]


def test_a_download_arrives_with_the_digest_the_page_shows(
    driver: Any, site: Site, downloads: Path
) -> None:
    name = "model.safetensors"
    row = _one(driver, f'#artifacts-table tr[data-artifact="{name}"]')
    digest = row.find_element("css selector", "td.digest").text
    row.find_element("css selector", "button").click()
    _visible_text(driver, f'tr[data-artifact="{name}"] .verified', "SHA-256 verified")
    target = downloads / name
    _wait(driver, lambda d: target.is_file() and target.stat().st_size > 0, "the downloaded file")
    deadline = time.monotonic() + WAIT_S
    while hashlib.sha256(target.read_bytes()).hexdigest() != digest:  # still being written
        assert time.monotonic() < deadline, "the downloaded file does not have the shown digest"
        time.sleep(0.1)
    _screenshot(driver, "download.png")


def test_another_key_sees_nothing_of_the_first(driver: Any, site: Site) -> None:
    _sign_out(driver)
    assert not _css(driver, "#jobs-table tbody tr")  # the page forgot what it showed
    _sign_in(driver, site, site.bob)
    _visible_text(driver, "#jobs-empty", "No jobs yet")
    assert _session_key(driver) == site.bob
    driver.get(f"{site.url}/#/jobs/{site.job_id}")
    _visible_text(driver, "#banner", "job_not_found")
    assert not _css(driver, "#trials-table tbody tr")
    assert not _css(driver, "#pareto-plot")
    assert not _one(driver, "#job-body").is_displayed()
    assert f"job-{site.job_id}" not in driver.find_element("css selector", "body").text
    _screenshot(driver, "other-key.png")
    _sign_out(driver)


def test_the_form_checks_like_the_server_then_submits(driver: Any, site: Site) -> None:
    _sign_in(driver, site, site.alice)
    _one(driver, f'#jobs-table tr[data-job="{site.job_id}"]')
    driver.get(f"{site.url}/#/submit")
    _wait(driver, lambda d: len(_css(d, "#f-sampler option")) == 3, "the form's choices")
    assert [o.text for o in _css(driver, "#f-objective option")] == ["params", "macs", "latency"]
    assert _one(driver, "#f-trials").get_attribute("value") == "40"  # the spec's default
    _one(driver, "#f-arch").send_keys("lenet")
    trials = _one(driver, "#f-trials")
    trials.clear()
    trials.send_keys("0")
    _one(driver, "#submit-button").click()
    _visible_text(driver, '[data-error-for="trials"]', "trials must be ≥ 1")
    _visible_text(driver, '[data-error-for="arch"]', "rankopt:<net>")
    _visible_text(driver, '[data-error-for="weights"]', "choose a file")
    _visible_text(driver, "#submit-error", "nothing was sent")
    with _client(site) as client:
        assert [j["id"] for j in client.list()["jobs"]] == [site.job_id]
    _screenshot(driver, "submit-invalid.png")

    arch = _one(driver, "#f-arch")
    arch.clear()
    arch.send_keys(SPEC["arch"])
    trials.clear()
    trials.send_keys("2")
    _one(driver, "#f-weights").send_keys(str(site.weights))
    _one(driver, "#submit-button").click()
    _wait(driver, lambda d: "#/jobs/" in d.current_url, "the new job's page")
    new_id = driver.current_url.rsplit("/", 1)[-1]
    _badge(driver, "QUEUED")
    with _client(site) as client:
        job = client.get(new_id)
    assert job["spec"]["arch"] == SPEC["arch"] and job["spec"]["trials"] == 2
    assert job["spec"]["dataset"] == "digits"


def test_the_page_follows_a_job_live_and_cancel_and_delete_ask_first(
    driver: Any, site: Site
) -> None:
    with _client(site) as client:
        queued = client.submit(SPEC, site.weights)
        driver.get(f"{site.url}/#/jobs/{queued['id']}")
        _badge(driver, "QUEUED")
        _visible_text(driver, "#job-live", "live")
        client.cancel(queued["id"])  # elsewhere: the page hears it over /events
        _badge(driver, "CANCELLED")
        _visible_text(driver, "#job-live", "finished")

    latest = driver.current_url.replace(queued["id"], "")
    with _client(site) as client:
        other = [j for j in client.list(status="QUEUED")["jobs"]]
    assert len(other) == 1  # the job the form submitted
    driver.get(latest + other[0]["id"])
    _badge(driver, "QUEUED")
    _one(driver, "#job-cancel").click()
    _confirm(driver, answer=False)
    assert _one(driver, "#job-status").text == "QUEUED"
    _one(driver, "#job-cancel").click()
    _screenshot(driver, "confirm-cancel.png")
    _confirm(driver, answer=True)
    _badge(driver, "CANCELLED")

    _one(driver, "#job-delete").click()
    _confirm(driver, answer=True)
    _visible_text(driver, "#banner", "Deleted job")
    with _client(site) as client:
        remaining = {j["id"] for j in client.list()["jobs"]}
    assert other[0]["id"] not in remaining and site.job_id in remaining
    _wait(
        driver,
        lambda d: not _css(d, f'#jobs-table tr[data-job="{other[0]["id"]}"]'),
        "the deleted job to leave the list",
    )


# ------------------------------------------------------------------ API checks (no browser)
def test_the_result_gives_each_layers_params_and_macs_before_and_after(site: Site) -> None:
    with _client(site) as client:
        result = client.result(site.job_id)
    layers = result["layers"]
    assert layers
    for layer in layers:
        if layer["method"] == "keep":
            assert layer["params_after"] == layer["params_before"]
            assert layer["macs_after"] == layer["macs_before"]
    # Only the listed layers change: the per-layer savings add up to the model's.
    for key in ("params", "macs"):
        saved = sum(x[f"{key}_before"] - x[f"{key}_after"] for x in layers)
        assert saved == result["baseline"][key] - result["final"][key], key
