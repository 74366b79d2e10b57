"""``rankopt`` subcommands of the REST service: run it, administer it, and use it as a client.

* server side (read ``RANKOPT_*`` settings): ``serve``, ``keys create|list|revoke``,
  ``db upgrade``;
* client side (``RANKOPT_URL``, default ``http://127.0.0.1:8000``, and ``RANKOPT_API_KEY``):
  ``submit``, ``list``, ``status``, ``watch``, ``cancel``, ``result``, ``download``, ``delete``.

None of these imports torch: the service and its client run without it.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from service.cli.usage import UsageError
from service.job_options import JobOptions

if TYPE_CHECKING:
    from service.client import RankoptClient
    from service.settings import Settings
    from service.store import Store

__all__ = ["make_client", "register"]

Handler = Callable[[argparse.Namespace], int]
_UPLOAD_SUFFIXES = (".npz", ".safetensors")
_SUCCEEDED = "SUCCEEDED"
_TERMINAL = ("SUCCEEDED", "CANCELLED", "FAILED")


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# ------------------------------------------------------------------ wiring
def make_client() -> RankoptClient:
    """The API client configured by ``RANKOPT_URL`` and ``RANKOPT_API_KEY`` (tests replace
    this function to talk to an in-process app)."""
    from service.client import RankoptClient

    try:
        return RankoptClient.from_env()
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _remote(handler: Callable[[argparse.Namespace, RankoptClient], int]) -> Handler:
    """Run ``handler`` with a client; an API error is one line on stderr and exit status 1."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        from service.client import ClientError

        client = make_client()
        try:
            return handler(args, client)
        except ClientError as exc:
            where = f"HTTP {exc.status}, " if exc.status else ""
            _err(f"rankopt {args.command}: {exc.message} ({where}{exc.code})")
            return 1
        finally:
            client.close()

    return run


def _settings() -> Settings:
    from pydantic import ValidationError

    from service.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise UsageError(f"RANKOPT_{where.upper()}: {first['msg']}") from None


def _store() -> Store:
    from service.store import MigrationError, Store

    settings = _settings()
    try:
        return Store.from_settings(settings, migrate=True)
    except (MigrationError, ValueError) as exc:
        raise UsageError(f"database {settings.database_url!r}: {exc}") from None


def _table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]
    for row in (headers, *rows):
        _out("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


def _fmt(value: Any, pattern: str = "{}") -> str:
    return "-" if value is None else pattern.format(value)


# ------------------------------------------------------------------ server side
def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.api import create_app

    settings = _settings()
    app = create_app(settings)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from service.store import DuplicateKeyName

    store = _store()
    try:
        key, record = store.create_api_key(args.name)
    except (ValueError, DuplicateKeyName) as exc:
        raise UsageError(str(exc)) from None
    finally:
        store.dispose()
    _out(key)
    _err(
        f"API key {record.name!r} created (prefix {record.prefix}). Store it now: it cannot be "
        "shown again."
    )
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    store = _store()
    try:
        keys = store.list_api_keys()
    finally:
        store.dispose()
    rows = [
        (
            k.name,
            k.prefix + "…",
            k.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            k.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if k.revoked_at else "-",
        )
        for k in keys
    ]
    _table(rows, ("NAME", "PREFIX", "CREATED (UTC)", "REVOKED (UTC)"))
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from service.store import ApiKeyNotFound

    store = _store()
    try:
        record = store.revoke_api_key(args.name)
    except ApiKeyNotFound as exc:
        raise UsageError(str(exc)) from None
    finally:
        store.dispose()
    _out(f"revoked API key {record.name!r}")
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from service.store import MigrationError, current_revision, make_engine, upgrade

    settings = _settings()
    try:
        upgrade(settings.database_url)
        engine = make_engine(settings.database_url)
        try:
            revision = current_revision(engine)
            where = engine.url.render_as_string(hide_password=True)
        finally:
            engine.dispose()
    except (MigrationError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    _out(f"store schema of {where} is at revision {revision}")
    return 0


# ------------------------------------------------------------------ client side
def _spec(args: argparse.Namespace) -> tuple[dict[str, Any], Path | None]:
    """The job spec from the options, and the dataset file to upload (if any)."""
    spec: dict[str, Any] = {"arch": args.arch}
    upload = None
    if args.dataset is not None:
        candidate = Path(args.dataset).expanduser()
        if args.dataset.lower().endswith(_UPLOAD_SUFFIXES) and ":" not in args.dataset:
            if not candidate.is_file():
                raise UsageError(f"--dataset: file {args.dataset} does not exist")
            spec["dataset"], upload = "upload", candidate
        else:
            spec["dataset"] = args.dataset
    options = {
        "trials": args.trials,
        "max_accuracy_drop": args.max_accuracy_drop,
        "epochs_per_trial": args.epochs_per_trial,
        "final_epochs": args.final_epochs,
        "timeout_s": args.timeout,
        "objective": args.objective,
        "num_classes": args.num_classes,
        "sampler": args.sampler,
        "seed": args.seed,
        "split_seed": args.split_seed,
        "image_size": args.image_size,
        "preprocess": args.preprocess,
    }
    spec.update({k: v for k, v in options.items() if v is not None})
    if args.pareto:
        spec["pareto"] = True
    if args.export:
        spec["exports"] = sorted(set(args.export))
    return spec, upload


@_remote
def cmd_submit(args: argparse.Namespace, client: RankoptClient) -> int:
    weights = Path(args.weights).expanduser()
    if not weights.is_file():
        raise UsageError(f"--weights: file {args.weights} does not exist")
    spec, upload = _spec(args)
    job = client.submit(spec, weights, upload, idempotency_key=args.idempotency_key)
    _out(job["id"])
    if args.watch:
        return _watch(client, job["id"])
    return 0


def _best(progress: dict[str, Any]) -> str:
    if progress.get("best_compression") is None:
        return "no feasible plan yet"
    accuracy = progress.get("best_accuracy")
    at = f" at {100 * accuracy:.2f}%" if accuracy is not None else ""
    return f"best {progress['best_compression']:.2f}x{at}"


@_remote
def cmd_list(args: argparse.Namespace, client: RankoptClient) -> int:
    if args.all:
        jobs = list(client.iter_jobs(status=args.status))
        cursor = None
    else:
        page = client.list(status=args.status, limit=args.limit)
        jobs, cursor = page["jobs"], page["next_cursor"]
    if args.json:
        _out(json.dumps({"jobs": jobs, "next_cursor": cursor}, indent=2))
        return 0
    rows = [
        (
            job["id"],
            job["status"],
            f"{job['progress']['trials_done']}/{job['progress']['trials_total']}",
            _fmt(job["progress"]["best_compression"], "{:.2f}x"),
            job["spec"].get("arch", "?"),
            job["created_at"][:19].replace("T", " "),
        )
        for job in jobs
    ]
    _table(rows, ("ID", "STATUS", "TRIALS", "BEST", "ARCH", "CREATED (UTC)"))
    if cursor:
        _err("more jobs: use --all, or --limit up to 100")
    return 0


@_remote
def cmd_status(args: argparse.Namespace, client: RankoptClient) -> int:
    job = client.get(args.job_id)
    if args.json:
        _out(json.dumps(job, indent=2))
        return 0
    progress = job["progress"]
    rows = [
        ("id", job["id"]),
        ("status", f"{job['status']} ({job['phase']})"),
        ("arch", job["spec"].get("arch", "?")),
        ("dataset", job["spec"].get("dataset", "?")),
        ("trials", f"{progress['trials_done']}/{progress['trials_total']} done, "
                   f"{progress['trials_running']} running"),
        ("best", _best(progress)),
        ("baseline accuracy", _fmt(progress["baseline_accuracy"], "{:.4f}")),
        ("eta", _fmt(progress["eta_s"], "{:.0f} s")),
        ("created", job["created_at"]),
        ("finished", _fmt(job["finished_at"])),
    ]  # fmt: skip
    if job["error"]:
        rows.append(("error", f"{job['error']['code']}: {job['error']['message']}"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        _out(f"{key.ljust(width)}  {value}")
    return 0


def _watch(client: RankoptClient, job_id: str) -> int:
    """Follow the job with a progress bar until it finishes; 0 when it SUCCEEDED."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from service.client import ClientError

    columns = (
        TextColumn("[bold]{task.fields[status]}"),
        TextColumn("trial {task.fields[trials]}"),
        BarColumn(),
        TextColumn("{task.fields[best]}"),
        TextColumn("ETA {task.fields[eta]}"),
        TimeElapsedColumn(),
    )
    job: dict[str, Any] = {}
    failures = 0
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task("job", total=None, status="…", trials="-", best="", eta="-")

        def show(current: dict[str, Any]) -> None:
            progress = current["progress"]
            bar.update(
                task,
                completed=progress["trials_done"],
                total=progress["trials_total"],
                status=current["status"],
                trials=f"{progress['trials_done']}/{progress['trials_total']}",
                best=_best(progress),
                eta=_fmt(progress.get("eta_s"), "{:.0f}s"),
            )

        while True:
            try:
                for event in client.events(job_id):
                    if event["event"] in ("progress", "end") and isinstance(event["data"], dict):
                        job = event["data"]
                        show(job)
                    if event["event"] == "error":
                        raise ClientError(404, "job_not_found", f"job {job_id} was deleted")
                job = client.get(job_id)
                show(job)
            except ClientError as exc:
                if exc.status != 0 or failures >= 5:
                    raise
                failures += 1
                time.sleep(min(2.0**failures, 10.0))
                continue
            if job.get("status") in _TERMINAL:
                break
            time.sleep(1.0)
    status = job.get("status")
    if status == _SUCCEEDED:
        _out(f"job {job_id} SUCCEEDED: {_best(job['progress'])}")
        return 0
    error = job.get("error") or {}
    detail = f": {error.get('code')}: {error.get('message')}" if error else ""
    _out(f"job {job_id} {status}{detail}")
    return 1


@_remote
def cmd_watch(args: argparse.Namespace, client: RankoptClient) -> int:
    return _watch(client, args.job_id)


@_remote
def cmd_cancel(args: argparse.Namespace, client: RankoptClient) -> int:
    job = client.cancel(args.job_id)
    _out(f"job {job['id']} {job['status']}")
    return 0


@_remote
def cmd_result(args: argparse.Namespace, client: RankoptClient) -> int:
    _out(json.dumps(client.result(args.job_id), indent=2))
    return 0


@_remote
def cmd_download(args: argparse.Namespace, client: RankoptClient) -> int:
    out = Path(args.out).expanduser()
    names: Iterable[str] = args.name or [a["name"] for a in client.artifacts(args.job_id)]
    names = list(names)
    if not names:
        _err(f"job {args.job_id} has no artifacts (yet)")
        return 1
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        _out(str(client.download(args.job_id, name, out)))
    return 0


@_remote
def cmd_delete(args: argparse.Namespace, client: RankoptClient) -> int:
    client.delete(args.job_id)
    _out(f"deleted job {args.job_id}")
    return 0


# ------------------------------------------------------------------ parsers
def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the service's subcommands to the ``rankopt`` parser."""
    serve = sub.add_parser("serve", help="run the REST API (settings from RANKOPT_*)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--log-level", default="info", choices=("critical", "error", "warning", "info", "debug")
    )
    serve.set_defaults(handler=cmd_serve)

    keys = sub.add_parser("keys", help="create, list and revoke API keys (RANKOPT_DATABASE_URL)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key; it is printed once")
    create.add_argument("--name", required=True)
    create.set_defaults(handler=cmd_keys_create)
    keys_sub.add_parser("list", help="list keys (never the keys themselves)").set_defaults(
        handler=cmd_keys_list
    )
    revoke = keys_sub.add_parser("revoke", help="revoke a key; its jobs stay")
    revoke.add_argument("--name", required=True)
    revoke.set_defaults(handler=cmd_keys_revoke)

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="create or migrate the store schema").set_defaults(
        handler=cmd_db_upgrade
    )

    submit = sub.add_parser(
        "submit", help="submit a job to the service (RANKOPT_URL, RANKOPT_API_KEY)"
    )
    submit.add_argument("--arch", required=True, help="e.g. rankopt:lenet5, torchvision:resnet18")
    submit.add_argument("--weights", required=True, help=".safetensors or a state_dict .pt")
    submit.add_argument(
        "--dataset",
        default=None,
        help="digits, mnist5k, fashion-mnist, breast-cancer, breast-cancer-seq, folder:PATH or "
        "cifar10:PATH on the server, or a local .npz/.safetensors file to upload",
    )
    submit.add_argument("--trials", type=int, default=None)
    submit.add_argument("--max-accuracy-drop", type=float, default=None, help="accuracy points")
    submit.add_argument("--epochs-per-trial", type=int, default=None)
    submit.add_argument("--final-epochs", type=int, default=None)
    submit.add_argument("--timeout", type=float, default=None, help="search budget in seconds")
    submit.add_argument("--objective", choices=("params", "macs", "latency"), default=None)
    submit.add_argument("--pareto", action="store_true", help="two-objective search")
    submit.add_argument("--sampler", choices=("tpe", "gp", "random"), default=None)
    submit.add_argument("--seed", type=int, default=None, help="seed of the search")
    submit.add_argument(
        "--split-seed",
        type=int,
        default=None,
        help="seed of the data split (keep the one the weights were trained with)",
    )
    submit.add_argument(
        "--image-size", type=int, default=None, help="side image folders are resized to"
    )
    submit.add_argument(
        "--preprocess",
        choices=get_args(JobOptions.model_fields["preprocess"].annotation),
        default=None,
        help="image folders' preset",
    )
    submit.add_argument("--num-classes", type=int, default=None)
    submit.add_argument(
        "--export", action="append", choices=("torchscript", "onnx"), default=[],
        help="also export the compressed model (repeatable)",
    )  # fmt: skip
    submit.add_argument("--idempotency-key", default=None, help="make retries safe")
    submit.add_argument("--watch", action="store_true", help="follow the job until it ends")
    submit.set_defaults(handler=cmd_submit)

    listing = sub.add_parser("list", help="list your jobs, newest first")
    listing.add_argument(
        "--status",
        choices=("QUEUED", "PREPARING", "SEARCHING", "FINALIZING", "SUCCEEDED", "CANCELLING",
                 "CANCELLED", "FAILED"),
        default=None,
    )  # fmt: skip
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--all", action="store_true", help="every page")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_list)

    for name, handler, text in (
        ("status", cmd_status, "show a job"),
        ("watch", cmd_watch, "follow a job until it ends (exit 0 when it SUCCEEDED)"),
        ("cancel", cmd_cancel, "cancel a job"),
        ("result", cmd_result, "print a finished job's report as JSON"),
        ("delete", cmd_delete, "delete a finished job and its files"),
    ):
        parser = sub.add_parser(name, help=text)
        parser.add_argument("job_id")
        if name == "status":
            parser.add_argument("--json", action="store_true")
        parser.set_defaults(handler=handler)

    download = sub.add_parser("download", help="download a job's artifacts (all by default)")
    download.add_argument("job_id")
    download.add_argument("--name", action="append", default=[], help="e.g. model.zip (repeatable)")
    download.add_argument("--out", default=".", help="folder to write to")
    download.set_defaults(handler=cmd_download)
