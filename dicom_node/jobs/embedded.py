"""The embedded workers: ``serve`` without ``--no-worker`` starts worker subprocesses and keeps them up.

Two children, one per queue: ``gpu`` (analysis) and ``io`` (delivery), so a delivery never waits behind
queued analyses (a Celery worker runs one task per pool process, whatever queue it came from: with one
process for both queues, results finished in a minute waited for every CT study queued before them).
Each child is an ordinary ``dicom-node worker`` (``python -m dicom_node.jobs.worker``) given the node's
AE title, data dir, database and broker through ``DICOM_NODE_*`` variables, so it runs the very code a
scale-out worker runs and its results leave with the node's own calling AE title.

A child exits when ``serve`` dies, however it dies (``kill -9`` included): it asks the kernel for
SIGKILL on its parent's death (``prctl(PR_SET_PDEATHSIG)``, ``--exit-with-parent``), and Celery's pool
processes do the same towards it. A child that exits is started again after a delay that doubles up
to a minute and starts over at one second once a run has been healthy for ``HEALTHY_RUN`` seconds.
``stop`` sends SIGTERM (Celery's warm shutdown) and SIGKILL to its process group after a grace period.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from dicom_node.config import Settings
from dicom_node.ops.metrics import process_exited

LOG = logging.getLogger(__name__)

FIRST_DELAY = 1.0
MAX_DELAY = 60.0
HEALTHY_RUN = 60.0
EMBEDDED_QUEUES = ("gpu", "io")


def worker_environment(settings: Settings, config_file: Path | None) -> dict[str, str]:
    """The environment of an embedded worker: the node's own resolved settings win over inherited ones."""
    env = dict(os.environ)
    env["DICOM_NODE_AE_TITLE"] = settings.ae_title
    env["DICOM_NODE_DATA_DIR"] = str(settings.data_dir.resolve())
    env["DICOM_NODE_DATABASE_URL"] = settings.effective_database_url
    env["DICOM_NODE_BROKER_URL"] = settings.effective_broker_url
    env["DICOM_NODE_LOG_LEVEL"] = settings.log_level
    env["DICOM_NODE_LOG_FORMAT"] = settings.log_format
    if config_file is not None:
        env["DICOM_NODE_CONFIG"] = str(config_file.resolve())
    return env


def restart_delay(previous: float, ran_for: float) -> float:
    """Seconds to wait before restarting a worker that ran ``ran_for`` seconds after a ``previous`` delay.

    A healthy run (``HEALTHY_RUN`` or longer) starts the backoff over; a crash loop doubles it up to
    ``MAX_DELAY``.
    """
    if ran_for >= HEALTHY_RUN:
        return FIRST_DELAY
    return min(max(previous, FIRST_DELAY / 2) * 2, MAX_DELAY)


class WorkerSupervisor:
    """Starts ``python -m dicom_node.jobs.worker QUEUES`` and restarts it whenever it exits, until stopped."""

    def __init__(
        self,
        settings: Settings,
        config_file: Path | None = None,
        queues: str = "gpu,io",
        concurrency: int = 1,
    ) -> None:
        self.queues = queues
        self.command = [
            sys.executable,
            "-m",
            "dicom_node.jobs.worker",
            queues,
            str(concurrency),
            "--exit-with-parent",
            str(os.getpid()),
        ]
        self.env = worker_environment(settings, config_file)
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stop = threading.Event()
        # The parent-death signal fires when the thread that started the child ends, so the children
        # are started, waited for and restarted by this one thread, which lives as long as serve does.
        self._thread = threading.Thread(target=self._supervise, name=f"worker-{queues}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _supervise(self) -> None:
        delay = 0.0
        while not self._stop.is_set():
            started = time.monotonic()
            self.process = subprocess.Popen(self.command, env=self.env, start_new_session=True)
            pid = self.process.pid
            LOG.info("embedded %s worker started (pid %d)", self.queues, pid, extra={"worker_pid": pid})
            code = self.process.wait()
            process_exited(pid)
            if self._stop.is_set():
                return
            self.restarts += 1
            delay = restart_delay(delay, time.monotonic() - started)
            LOG.warning(
                "embedded %s worker exited with %s; restarting in %.0f s",
                self.queues,
                code,
                delay,
                extra={"worker_pid": pid, "exit_code": code},
            )
            self._stop.wait(delay)

    def request_stop(self) -> None:
        """No more restarts; SIGTERM to the child (Celery's warm shutdown: it finishes its task)."""
        self._stop.set()
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)

    def stop(self, grace: float = 30.0) -> None:
        """``request_stop``, then wait ``grace`` seconds and SIGKILL the child's process group."""
        self.request_stop()
        process = self.process
        if process is not None and process.poll() is None:
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self._thread.join(timeout=5)


class EmbeddedWorkers:
    """One supervised worker per queue (see the module docstring)."""

    def __init__(self, settings: Settings, config_file: Path | None = None, concurrency: int = 1) -> None:
        self.supervisors = [
            WorkerSupervisor(settings, config_file, queue, concurrency if queue == "gpu" else 1)
            for queue in EMBEDDED_QUEUES
        ]

    def start(self) -> None:
        for supervisor in self.supervisors:
            supervisor.start()

    def stop(self, grace: float = 30.0) -> None:
        # Both at once: a warm shutdown of each waits for its running task.
        for supervisor in self.supervisors:
            supervisor.request_stop()
        for supervisor in self.supervisors:
            supervisor.stop(grace)
