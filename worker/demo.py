"""``make demo``: the whole service on one machine, end to end, on the embedded default.

1. trains ``rankopt:lenet5`` on ``mnist5k`` (the starting model; nothing can be downloaded);
2. starts ``rankopt serve`` and two ``rankopt worker`` processes in the background on a SQLite
   database and a local artifact folder under ``runs/demo``, and creates an API key;
3. submits a compression job over HTTP, follows it with a progress bar (server-sent events);
4. downloads the compressed checkpoint (SHA-256 checked), loads it in one call, checks its
   accuracy against the report and prints a before/after table (the job asks for a model no
   slower than the original, ``max_latency_ratio`` 1.0; the table says whether it is, and why
   the original was kept if no compressed plan was fast enough);
5. stops everything it started, also on Ctrl-C or error.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from service.procs import Proc, free_port, rankopt_env, stop_all, wait_ready

OUT = Path("runs/demo")
ARCH = "rankopt:lenet5"
#: The batch the latency constraint and the table time (a served model sees batches; at batch 1
#: per-call overhead makes every factorised LeNet-5 slower than the dense one).
LATENCY_BATCH = 32

SPEC: dict[str, Any] = {
    "arch": ARCH,
    "dataset": "mnist5k",
    "trials": 16,
    "epochs_per_trial": 2,
    "final_epochs": 6,
    "max_accuracy_drop": 1.0,
    "max_latency_ratio": 1.0,  # smaller and never slower (at the table's batch size)
    "latency_batch_size": LATENCY_BATCH,
    "exports": ["torchscript", "onnx"],
}


def _env(root: Path, port: int) -> dict[str, str]:
    return rankopt_env(
        {
            "RANKOPT_DATABASE_URL": f"sqlite:///{(root / 'rankopt.db').resolve()}",
            "RANKOPT_ARTIFACT_ROOT": str((root / "artifacts").resolve()),
            "RANKOPT_DEVICE": "cpu",
            "RANKOPT_URL": f"http://127.0.0.1:{port}",
        }
    )


@contextmanager
def _processes(root: Path, env: dict[str, str], port: int) -> Iterator[list[Proc]]:
    """The API and two workers, logging to ``root/logs``; all stopped on exit."""
    logs = root / "logs"
    commands = {
        "api": ["serve", "--host", "127.0.0.1", "--port", str(port)],
        "worker-1": ["worker", "--device", "cpu"],
        "worker-2": ["worker", "--device", "cpu"],
    }
    procs: list[Proc] = []
    try:
        for name, args in commands.items():
            procs.append(Proc(name, args, env=env, log=logs / f"{name}.log", append=True))
            print(f"   started {name} (pid {procs[-1].pid}), log in {procs[-1].log}")
        yield procs
    finally:
        stop_all(procs)
        print("== stopped the API and both workers")


def _watch(client: Any, job_id: str) -> dict[str, Any]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    job: dict[str, Any] = client.get(job_id)
    with Progress(
        TextColumn("[bold]{task.fields[phase]:<10}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} trials"),
        TextColumn("best {task.fields[best]}"),
        TextColumn("ETA {task.fields[eta]}"),
        TimeElapsedColumn(),
    ) as bar:
        task = bar.add_task("job", total=SPEC["trials"], phase="queued", best="-", eta="-")
        for event in client.events(job_id):
            job = event["data"]
            progress = job.get("progress") or {}
            best = progress.get("best_compression")
            eta = progress.get("eta_s")
            bar.update(
                task,
                completed=progress.get("trials_done", 0),
                total=progress.get("trials_total") or SPEC["trials"],
                phase=str(job.get("status", "")).lower(),
                best=f"{best:.2f}x" if best else "-",
                eta=f"{eta:.0f}s" if eta else "-",
            )
            if event["event"] == "end":
                break
    return job


def _table(rows: list[tuple[str, str, str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _latency_verdict(result: dict[str, Any]) -> str:
    """What the job's report says about the latency constraint, in one line."""
    final = result["final"]
    limit, ratio = final.get("max_latency_ratio"), final.get("latency_ratio")
    if limit is None:
        return "the job set no latency constraint"
    if not result.get("found_feasible"):
        reason = result.get("kept_original_reason") or "no plan met the constraints"
        return f"kept the original model: {reason}"
    verdict = "met" if final.get("latency_constraint_met") else "NOT met"
    return (
        f"latency constraint (at most x{limit:g} of the original's) {verdict}: the search "
        f"measured the compressed model at x{ratio:.3f} of the original's latency"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true", help="delete runs/demo first")
    args = parser.parse_args(argv)
    if args.fresh and OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True, exist_ok=True)

    import torch

    from service.client import RankoptClient
    from service.settings import Settings
    from service.store import Store
    from tensorops import load_compressed, measure_cost
    from worker.cli import main as cli_main
    from worker.data import load_dataset
    from worker.search import measure_latency, measure_speedup
    from worker.training import evaluate
    from worker.weights import load_weights, read_state_dict
    from worker.zoo import get_model

    torch.set_num_threads(1)
    weights = OUT / "lenet5-mnist5k.safetensors"
    if not weights.exists():
        print("== training rankopt:lenet5 on mnist5k (the starting model)")
        code = cli_main(
            ["train", "--arch", ARCH, "--dataset", "mnist5k", "--epochs", "8",
             "--device", "cpu", "--out", str(weights)]
        )  # fmt: skip
        if code:
            return code
    port = free_port()
    env = _env(OUT, port)
    url = env["RANKOPT_URL"]
    settings = Settings(
        database_url=env["RANKOPT_DATABASE_URL"], artifact_root=Path(env["RANKOPT_ARTIFACT_ROOT"])
    )
    store = Store.from_settings(settings, migrate=True)
    key, _ = store.create_api_key(f"demo-{int(time.time())}")
    store.dispose()
    print(f"== starting the API on {url} and two workers (SQLite: {OUT / 'rankopt.db'})")
    with _processes(OUT, env, port) as procs:
        wait_ready(url, procs, pause=0.3)
        with RankoptClient(url, key) as client:
            job = client.submit(SPEC, weights)
            print(f"== submitted job {job['id']}: {json.dumps(SPEC)}")
            job = _watch(client, job["id"])
            if job["status"] != "SUCCEEDED":
                error = job.get("error") or {}
                print(f"job ended {job['status']}: {error.get('message', '')}", file=sys.stderr)
                return 1
            result = client.result(job["id"])
            (OUT / "download").mkdir(exist_ok=True)
            got = client.download(job["id"], "model.safetensors", OUT / "download")
            names = [a["name"] for a in client.artifacts(job["id"])]
            print(f"== downloaded {got} (sha256 checked); artifacts: {', '.join(names)}")
            workers = sorted(
                {str(t["worker"]) for t in client.trials(job["id"]) if t.get("worker")}
            )
    data = load_dataset("mnist5k", seed=0)
    small = load_compressed(got)
    accuracy = evaluate(small, data, device="cpu").accuracy
    original = get_model(ARCH, num_classes=10, in_channels=1)
    load_weights(original, read_state_dict(weights))
    example = data.example_input(LATENCY_BATCH)
    before, after = measure_cost(original, example[:1]), measure_cost(small, example[:1])
    cpu = torch.device("cpu")
    lat_before = measure_latency(original, example, device=cpu, repeats=50)
    # Timed interleaved with the original (as the search does), so that load from other
    # processes hits both alike rather than passing for a slower or faster model.
    lat_after = lat_before / measure_speedup(original, small, example, device=cpu, repeats=50)
    base = result["baseline"]["accuracy"]
    p_ratio, m_ratio = before.params / after.params, before.macs / after.macs
    print(
        f"== before and after (latency: batch {LATENCY_BATCH}, CPU, 1 thread, median of 50 "
        "interleaved)"
    )
    print(
        _table(
            [
                ("", "original", "compressed" if result["found_feasible"] else "kept original"),
                ("params", f"{before.params:,}", f"{after.params:,} ({p_ratio:.2f}x)"),
                ("MACs", f"{before.macs:,}", f"{after.macs:,} ({m_ratio:.2f}x)"),
                ("latency", f"{lat_before * 1e6:.0f} us", f"{lat_after * 1e6:.0f} us"),
                ("accuracy", f"{100 * base:.2f}%", f"{100 * accuracy:.2f}%"),
            ]
        )
    )  # fmt: skip
    reported = result["final"]["accuracy"]
    if abs(accuracy - reported) > 1e-9:
        print(f"loaded accuracy {accuracy} differs from the report's {reported}", file=sys.stderr)
        return 1
    print(f"== the loaded checkpoint reproduces the reported accuracy ({100 * reported:.2f}%)")
    print(f"== {_latency_verdict(result)}")
    if workers:
        print(f"== trials were run by {len(workers)} workers: {', '.join(workers)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
