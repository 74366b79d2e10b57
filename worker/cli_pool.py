"""``rankopt worker``: run the REST service's jobs (prepare, search trials, finalise).

Settings come from ``RANKOPT_*`` environment variables (see :class:`service.settings.Settings`).
``--concurrency N`` starts N worker processes (multiprocessing ``spawn``), each its own
:class:`worker.pool.Worker` named ``<hostname>-<pid>-<i>``; the parent forwards SIGTERM and
SIGINT to them and waits. The first SIGTERM/SIGINT stops a worker gracefully (a running trial
stops after its epoch and is requeued; a prepare phase is finished; a finalize phase is handed
back); a second one also hands a prepare phase back; a third one kills the process.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

from worker.structured_logs import LOG_FORMATS, configure_logging, log_event

__all__ = ["register", "run_worker_command"]

logger = logging.getLogger("worker.pool")

EXIT_USAGE = 2


@dataclass(frozen=True)
class _Options:
    device: str | None
    once: bool
    poll_interval: float
    log_format: str
    verbose: bool
    threads: int | None


def register(sub: Any) -> None:
    """Add the ``worker`` subcommand to ``rankopt``'s subparsers."""
    parser = sub.add_parser(
        "worker",
        help="run jobs of the REST service (settings from RANKOPT_* environment variables)",
        description="Run jobs of the REST service: prepare them, run their search trials "
        "(any number of workers share a job's trials) and finalise them. Settings come from "
        "RANKOPT_* environment variables.",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="auto (CUDA when present), cpu, cuda or cuda:N; default RANKOPT_DEVICE (auto)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="worker processes to run (each takes its own jobs and trials); default 1",
    )
    parser.add_argument(
        "--once", action="store_true", help="process the work available now, then exit"
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=2.0,
        help="seconds to wait between looks for work when idle; default 2",
    )
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="text")
    parser.set_defaults(handler=run_worker_command)


def _install_signals(worker: Any) -> None:
    """First signal: graceful stop; second (a second or more later): abort; third: default."""
    state = {"count": 0, "first": 0.0}

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        now = time.monotonic()
        if state["count"] and now - state["first"] < 1.0:
            return  # the same Ctrl-C delivered to the group and forwarded by the parent
        state["count"] += 1
        if state["count"] == 1:
            state["first"] = now
            worker.stop_event.set()
            log_event(
                logger,
                logging.INFO,
                "shutdown_requested",
                f"{signal.Signals(signum).name}: finishing or handing back the current work",
                worker=worker.worker_id,
            )
        else:
            worker.abort()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            log_event(
                logger,
                logging.WARNING,
                "shutdown_forced",
                f"{signal.Signals(signum).name} again: handing back the current work now",
                worker=worker.worker_id,
            )

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def _serve(settings: Any, worker_id: str, options: _Options) -> int:
    """Run one worker in this process until it is stopped; the exit status."""
    configure_logging(
        options.log_format,
        worker=worker_id,
        level=logging.DEBUG if options.verbose else logging.INFO,
    )
    if options.threads is not None:
        import torch

        torch.set_num_threads(options.threads)
    from worker.pool import Worker

    try:
        worker = Worker(
            settings,
            worker_id=worker_id,
            device=options.device,
            poll_interval=options.poll_interval,
        )
    except ValueError as exc:  # a device this machine does not have
        log_event(logger, logging.ERROR, "bad_device", str(exc), worker=worker_id)
        return EXIT_USAGE
    _install_signals(worker)
    try:
        worker.run(once=options.once)
    finally:
        worker.close()
    return 0


def _devices(device: str | None, n: int) -> list[str | None]:
    """One device per process: with several GPUs and ``auto``/``cuda``, round-robin them."""
    if device not in (None, "auto", "cuda") or n < 2:
        return [device] * n
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus < 2:
        return [device] * n
    return [f"cuda:{i % gpus}" for i in range(n)]


def run_worker_command(args: argparse.Namespace) -> int:
    """``rankopt worker``."""
    from pydantic import ValidationError

    from service.settings import Settings
    from worker.cli import UsageError

    if args.concurrency < 1:
        raise UsageError(f"--concurrency must be >= 1, got {args.concurrency}")
    if not args.poll_interval > 0:
        raise UsageError(f"--poll-interval must be > 0, got {args.poll_interval}")
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"RANKOPT_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise UsageError(f"bad settings: {problems}") from None
    device = args.device.strip().lower() if args.device else None
    if device is not None:
        try:
            Settings(device=device)  # validated like RANKOPT_DEVICE
        except ValidationError:
            raise UsageError(
                f"--device {args.device!r} is not one of auto, cpu, cuda, cuda:N"
            ) from None
    threads = None
    if args.concurrency > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, (os.cpu_count() or 1) // args.concurrency)
    verbose = bool(getattr(args, "verbose", False))
    n = args.concurrency
    if n == 1:
        options = _Options(device, args.once, args.poll_interval, args.log_format, verbose, None)
        from socket import gethostname

        return _serve(settings, f"{gethostname()}-{os.getpid()}-0", options)
    return _supervise(settings, n, device, args, verbose, threads)


def _supervise(
    settings: Any,
    n: int,
    device: str | None,
    args: argparse.Namespace,
    verbose: bool,
    threads: int | None,
) -> int:
    """Start ``n`` worker processes, forward SIGTERM/SIGINT to them, wait for them all."""
    from socket import gethostname

    configure_logging(args.log_format, worker=f"{gethostname()}-{os.getpid()}-parent")
    context = multiprocessing.get_context("spawn")
    children = []
    for i, dev in enumerate(_devices(device, n)):
        options = _Options(dev, args.once, args.poll_interval, args.log_format, verbose, threads)
        # The child names itself: its id holds its own pid.
        proc = context.Process(
            target=_spawned, args=(settings, i, options), name=f"rankopt-worker-{i}"
        )
        proc.start()
        children.append(proc)
    log_event(logger, logging.INFO, "pool_started", f"started {n} worker processes")

    def forward(signum: int, _frame: FrameType | None) -> None:
        for proc in children:
            if proc.is_alive() and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for proc in children:
        proc.join()
    codes = [proc.exitcode for proc in children]
    log_event(logger, logging.INFO, "pool_stopped", f"worker processes exited with {codes}")
    return 0 if all(code == 0 for code in codes) else 1


def _spawned(settings: Any, index: int, options: _Options) -> None:
    """Entry point of a spawned worker process."""
    from socket import gethostname

    sys.exit(_serve(settings, f"{gethostname()}-{os.getpid()}-{index}", options))
