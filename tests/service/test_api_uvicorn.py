"""End to end over a real uvicorn server on loopback: streamed uploads, the 413 answer to an
oversized upload, and server-sent events that arrive while the job changes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from service.api import create_app
from service.client import ClientError, RankoptClient
from service.settings import Settings
from service.store import Store
from tests.service.api_helpers import SPEC, torch_weights


@pytest.fixture
def server(api_settings: Settings, api_store: Store) -> Iterator[str]:
    app = create_app(api_settings, api_store, sse_poll_s=0.02, sse_heartbeat_s=0.2)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_over_a_real_socket(
    server: str, api_store: Store, api_settings: Settings, tmp_path: Path
) -> None:
    key, record = api_store.create_api_key("e2e")
    client = RankoptClient(server, key, timeout=10)
    big = tmp_path / "big.safetensors"
    big.write_bytes(b"\0" * (api_settings.max_upload_bytes * 2))
    with pytest.raises(ClientError) as err:
        client.submit(SPEC, big)
    assert (err.value.status, err.value.code) == (413, "upload_too_large")
    assert list(api_settings.resolved_upload_dir.iterdir()) == []

    job = client.submit(SPEC, torch_weights(tmp_path / "w.pt"))

    def worker() -> None:
        time.sleep(0.2)
        api_store.claim("w")
        time.sleep(0.2)
        api_store.request_cancel(job["id"], record.id)
        api_store.mark_cancelled(job["id"], "w")

    thread = threading.Thread(target=worker)
    thread.start()
    seen = []
    started = time.monotonic()
    for event in client.events(job["id"]):
        seen.append((event["event"], event["data"]["status"], time.monotonic() - started))
    thread.join()
    assert seen[-1][:2] == ("end", "CANCELLED")
    statuses = [s for e, s, _ in seen if e == "progress"]
    # Every change is sent once, in order (a short-lived state may fall between two polls).
    assert statuses[0] == "QUEUED" and statuses[-1] == "CANCELLED"
    lifecycle = ["QUEUED", "PREPARING", "CANCELLING", "CANCELLED"]
    assert statuses == [s for s in lifecycle if s in statuses]
    assert seen[0][2] < 0.2  # the first event arrived before the job changed: streamed
    client.close()
