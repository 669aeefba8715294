"""The composition root: builds the database, store, ingest and edge from ``Settings`` and runs them."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from dicom_node.config import Settings
from dicom_node.edge.scp import EdgeServer
from dicom_node.index.database import Database
from dicom_node.jobs.embedded import EmbeddedWorkers
from dicom_node.jobs.reconciler import ReconcilerThread
from dicom_node.ops.metrics import MetricsServer
from dicom_node.receivers import ReceiverProcesses
from dicom_node.storage.ingest import Ingest
from dicom_node.storage.recovery import RecoveryReport, check_store_present, recover
from dicom_node.storage.store import InstanceStore
from dicom_node.web.server import WebServer
from dicom_node.workflow.assembly import CompletedStudy, assemble

LOG = logging.getLogger(__name__)
ASSEMBLY_INTERVAL = 1.0
SIGNAL_POLL = 0.5
"""Seconds between two looks for a signal that arrived while the main thread waited (run_until_signalled)."""

CompletionHook = Callable[[list[CompletedStudy]], None]


class Node:
    """One running node: listener, study assembler and, with ``run_jobs``, the job reconciler.

    With ``run_jobs`` a completed study wakes the reconciler, which routes it and enqueues its jobs by
    task name (``dicom_node.jobs.celery_app``; no pipeline code is imported here).
    ``embedded_worker`` also starts and supervises worker subprocesses on the same broker (one for
    analysis, one for delivery: ``jobs.embedded``);
    ``metrics_port`` serves Prometheus metrics; ``[dicomweb] enabled`` starts the DICOMweb listener
    (``web.server``) on the same index, store and ingest as the edge.
    """

    def __init__(
        self,
        settings: Settings,
        on_complete: CompletionHook | None = None,
        *,
        run_jobs: bool = False,
        embedded_worker: bool = False,
        config_file: Path | None = None,
        metrics_port: int | None = None,
    ) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.database = Database(settings.effective_database_url)
        self.database.upgrade()
        check_store_present(settings.storage_root, self.database)  # before anything creates it
        self.store = InstanceStore(settings.storage_root, min_free_bytes=settings.min_free_bytes)
        self.ingest = Ingest(self.store, self.database)
        self.edge = EdgeServer(settings, self.ingest, on_evidence=self.look_again)
        self.receivers: ReceiverProcesses | None = None
        if settings.receivers > 1:
            self.receivers = ReceiverProcesses(settings, self.look_again)
        self.web: WebServer | None = None
        if settings.dicomweb.enabled:
            self.web = WebServer(settings.dicomweb, settings.access, self.database, self.store, self.ingest)
        self.on_complete = on_complete
        self._stop = threading.Event()
        self._signalled = threading.Event()
        self._wake = threading.Event()
        self._assembler: threading.Thread | None = None
        self.address: tuple[str, int] | None = None
        self.reconciler: ReconcilerThread | None = None
        self.supervisor: EmbeddedWorkers | None = None
        self.metrics_port = metrics_port
        self.metrics: MetricsServer | None = None
        if run_jobs:
            from dicom_node.jobs.celery_app import TaskQueue, create_app

            self.app = create_app(settings)
            self.reconciler = ReconcilerThread(self.database, settings, TaskQueue(self.app))
        if embedded_worker:
            self.supervisor = EmbeddedWorkers(settings, config_file)

    def start(self) -> RecoveryReport:
        report = recover(self.ingest, self.edge.handlers.audit)
        self.address = self.edge.start()
        if self.web is not None:
            try:
                self.web.start()
            except BaseException:
                self.edge.stop(0)
                raise
        if self.receivers is not None:
            self.receivers.start(self.address[1])
        if self.reconciler is not None:
            self.reconciler.start()
        if self.supervisor is not None:
            self.supervisor.start()
        if self.metrics_port is not None:
            from dicom_node.jobs.celery_app import create_app, queue_depths

            broker = create_app(self.settings)
            self.metrics = MetricsServer(self.metrics_port, self.database, lambda: queue_depths(broker))
        self._assembler = threading.Thread(target=self._assemble_loop, name="assembler", daemon=True)
        self._assembler.start()
        return report

    def look_again(self, delay: float = 0.0) -> None:
        """Run an assembly pass after ``delay`` seconds: completion evidence arrived (edge/)."""
        if delay <= 0:
            self._wake.set()
            return
        timer = threading.Timer(delay, self._wake.set)
        timer.daemon = True
        timer.start()

    def _assemble_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(ASSEMBLY_INTERVAL)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                completed = assemble(self.database, self.settings)
                if completed and self.reconciler is not None:
                    self.reconciler.wake()
                if completed and self.on_complete is not None:
                    self.on_complete(completed)
            except Exception:
                LOG.exception("study assembly pass failed; retrying")

    def stop(self, grace: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self.web is not None:
            self.web.stop()
        if self.receivers is not None:
            self.receivers.signal_stop()  # they finish their associations while this one does
        self.edge.stop(grace)
        if self.receivers is not None:
            self.receivers.stop(grace)
        if self.supervisor is not None:
            self.supervisor.stop(grace)
        if self.reconciler is not None:
            self.reconciler.stop()
        if self._assembler is not None:
            self._assembler.join(timeout=5)
        if self.metrics is not None:
            self.metrics.stop()
        self.database.dispose()

    def catch_signals(self) -> None:
        """From now on SIGTERM and SIGINT ask for a graceful stop (call before ``start``: a signal that
        comes while the node starts, or just after it listens, then stops it gracefully too)."""

        def _signalled(signum: int, _frame: FrameType | None) -> None:
            LOG.info("received %s: finishing in-flight stores, then exiting", signal.Signals(signum).name)
            self._signalled.set()

        signal.signal(signal.SIGTERM, _signalled)
        signal.signal(signal.SIGINT, _signalled)

    def run_until_signalled(self, grace: float = 30.0) -> None:
        """Block until SIGTERM or SIGINT, then stop gracefully."""
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self.catch_signals()
        # A bounded wait, not ``wait()``: CPython runs a signal handler in the main thread only when that
        # thread returns to the interpreter, and a SIGTERM the kernel delivers to another thread (any
        # association's) does not wake a lock wait without a timeout. The node then ignored SIGTERM
        # until SIGKILL (seen twice in 4 runs of bench/ingest.py, `py-spy dump`: main thread in
        # Event.wait, the handler never run).
        while not self._signalled.wait(SIGNAL_POLL):
            pass
        self.stop(grace)
