"""``dicom-node worker``: a Celery worker on the node's queues, plus this process's reconciler loop.

The same function runs the embedded worker that ``serve`` supervises (broker ``filesystem://`` under the
data dir) and scale-out workers on any host (``DICOM_NODE_BROKER_URL=redis://…``). The reconciler
thread lives in the worker's main process (forked pool children start without it) and also records the
worker in the index, which is how ``status`` lists live workers whatever the broker.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from celery import signals

from dicom_node.config import Settings, load_settings
from dicom_node.errors import ConfigError
from dicom_node.index.database import Database
from dicom_node.jobs.celery_app import QUEUES, create_app, is_embedded
from dicom_node.jobs.context import worker_name
from dicom_node.jobs.reconciler import ReconcilerThread, WorkerIdentity
from dicom_node.ops.logging import configure_logging
from dicom_node.ops.metrics import MetricsServer, process_exited

LOG = logging.getLogger("dicom_node.jobs.worker")  # not "__main__" under python -m


def parse_queues(text: str) -> str:
    queues = [q.strip() for q in text.split(",") if q.strip()]
    unknown = set(queues) - set(QUEUES)
    if not queues or unknown:
        raise ValueError(f"--queues: expected a comma-separated subset of {list(QUEUES)}, got {text!r}")
    return ",".join(queues)


def _log_shutdown(sig: str = "", how: str = "", **_: Any) -> None:
    LOG.info("worker: %s shutdown on %s", how.lower() or "warm", sig or "a signal")


def _json_only() -> None:
    """With JSON logs every line is a record on stderr. Celery prints two things to stdout itself: its
    banner (left out by ``--quiet``) and, from its SIGTERM handler, "worker: Warm shutdown (MainProcess)",
    which nothing turns off. So stdout goes to /dev/null and the shutdown is logged as a record."""
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    signals.worker_shutting_down.connect(_log_shutdown, weak=False)


def worker_argv(queues: str, concurrency: int, name: str, log_level: str, quiet: bool = False) -> list[str]:
    """Celery's command line; ``quiet`` leaves out the start-up banner (on stdout, not a log record)."""
    return [
        *(["--quiet"] if quiet else []),
        "worker",
        f"--queues={queues}",
        f"--concurrency={concurrency}",
        f"--hostname={name}",
        f"--loglevel={log_level}",
        "--pool=prefork",
        # No broadcast chatter: liveness comes from the index, and the filesystem transport polls.
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]


def keep_node_logging(**_kwargs: Any) -> None:
    """Receiver of Celery's ``setup_logging``: with one connected, Celery installs no handlers and does
    not redirect stdout/stderr, so its own records and the tasks' go through ``configure_logging``'s."""


def child_exited(pid: int | None = None, **_kwargs: Any) -> None:
    """Receiver of ``worker_process_shutdown`` (in the prefork child): multiprocess metrics bookkeeping."""
    if pid is not None:
        process_exited(pid)


def run_worker(
    settings: Settings, queues: str = "gpu,io", concurrency: int = 1, metrics_port: int | None = None
) -> None:
    """Run until SIGTERM/SIGINT (Celery's warm shutdown finishes the running task first).

    With ``metrics_port``, serve this worker's counters and histograms (summed over its pool processes
    when ``ops.multiprocess.use_metrics_folder`` ran first) on ``/metrics``.
    """
    queues = parse_queues(queues)
    signals.setup_logging.connect(keep_node_logging)
    signals.worker_process_shutdown.connect(child_exited)
    database = Database(settings.effective_database_url)
    database.upgrade()
    app = create_app(settings)
    name = worker_name(queues)
    reconciler = ReconcilerThread(
        database, settings, app.context().queue, WorkerIdentity(name, queues, concurrency)
    )
    reconciler.start()
    metrics = MetricsServer(metrics_port) if metrics_port is not None else None
    LOG.info(
        "worker %s on %s (%s broker)",
        name,
        queues,
        "embedded" if is_embedded(settings) else "external",
        extra={"worker": name, "queues": queues, "metrics_port": metrics_port},
    )
    try:
        quiet = settings.log_format == "json"
        if quiet:
            _json_only()
        app.worker_main(worker_argv(queues, concurrency, name, settings.log_level, quiet))
    finally:
        if metrics is not None:
            metrics.stop()
        reconciler.stop()
        database.dispose()


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def exit_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux ``PR_SET_PDEATHSIG``).

    SIGKILL rather than SIGTERM: a warm shutdown would finish the running analysis for a node that is
    gone; the job's lease lapses and it runs again once the node is back. If the parent died before the
    request took effect, this process is already orphaned: exit at once.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_PDEATHSIG): {os.strerror(error)}")
    if os.getppid() != parent_pid:
        LOG.error("the node (pid %d) that started this worker is gone; exiting", parent_pid)
        sys.exit(1)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m dicom_node.jobs.worker [QUEUES [CONCURRENCY]] [--exit-with-parent PID]``.

    Settings come from the environment only (``serve`` passes its own through ``DICOM_NODE_*``).
    """
    parser = argparse.ArgumentParser(prog="python -m dicom_node.jobs.worker")
    parser.add_argument("queues", nargs="?", default="gpu,io")
    parser.add_argument("concurrency", nargs="?", type=int, default=1)
    parser.add_argument("--exit-with-parent", type=int, metavar="PID", help="exit when process PID dies")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.exit_with_parent is not None:
        exit_with_parent(args.exit_with_parent)
    try:
        settings = load_settings()
    except ConfigError as error:
        # The same text ``serve`` and ``worker`` print; exit 2 as they do.
        print(f"configuration error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings.log_level, settings.log_format)
    run_worker(settings, args.queues, args.concurrency)


if __name__ == "__main__":
    main()
