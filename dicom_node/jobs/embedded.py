"""The embedded worker: ``serve`` without ``--no-worker`` starts one worker subprocess and keeps it up.

The child is an ordinary ``dicom-node worker`` (``python -m dicom_node.jobs.worker``) given the resolved data
dir, database and broker through ``DICOM_NODE_*`` variables, so it runs the very code a scale-out worker
runs. If it exits, it is started again after a delay that doubles up to a minute; ``stop`` sends SIGTERM
(Celery's warm shutdown) and SIGKILL after a grace period.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from dicom_node.config import Settings
from dicom_node.ops.metrics import process_exited

LOG = logging.getLogger(__name__)


def worker_environment(settings: Settings, config_file: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    env["DICOM_NODE_DATA_DIR"] = str(settings.data_dir.resolve())
    env["DICOM_NODE_DATABASE_URL"] = settings.effective_database_url
    env["DICOM_NODE_BROKER_URL"] = settings.effective_broker_url
    env["DICOM_NODE_LOG_LEVEL"] = settings.log_level
    env["DICOM_NODE_LOG_FORMAT"] = settings.log_format
    if config_file is not None:
        env["DICOM_NODE_CONFIG"] = str(config_file.resolve())
    return env


class WorkerSupervisor:
    """Starts ``python -m dicom_node.jobs.worker`` and restarts it whenever it exits, until stopped."""

    def __init__(self, settings: Settings, config_file: Path | None = None, concurrency: int = 1) -> None:
        self.command = [sys.executable, "-m", "dicom_node.jobs.worker", "gpu,io", str(concurrency)]
        self.env = worker_environment(settings, config_file)
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _supervise(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            self.process = subprocess.Popen(self.command, env=self.env, start_new_session=True)
            pid = self.process.pid
            LOG.info("embedded worker started (pid %d)", pid, extra={"worker_pid": pid})
            code = self.process.wait()
            process_exited(pid)
            if self._stop.is_set():
                return
            self.restarts += 1
            LOG.warning(
                "embedded worker exited with %s; restarting in %.0f s",
                code,
                delay,
                extra={"worker_pid": pid, "exit_code": code},
            )
            self._stop.wait(delay)
            delay = min(delay * 2, 60.0)

    def stop(self, grace: float = 30.0) -> None:
        self._stop.set()
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self._thread.join(timeout=5)
