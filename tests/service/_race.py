"""Process entry point of the claim races (importable by ``spawn`` children: no torch)."""

from __future__ import annotations

from typing import Any

from service.store import Store, make_engine


def claim_all(url: str, worker_id: str, barrier: Any, results: Any) -> None:
    """Wait for every racer, then claim until nothing is left; report the claimed job ids."""
    store = Store(make_engine(url), lease_s=300.0)
    claimed: list[str] = []
    try:
        barrier.wait(timeout=60)
        while (claim := store.claim(worker_id)) is not None:
            claimed.append(claim.job.id)
    finally:
        store.dispose()
        results.put((worker_id, claimed))
