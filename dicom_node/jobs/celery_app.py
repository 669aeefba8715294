"""Thin Celery wiring: the app, its two queues and the two tasks that call ``analysis`` and ``sender``.

Messages carry one integer id and nothing else (JSON). Tasks are idempotent: each first claims its row
in the index, so a duplicate or replayed message does nothing. ``acks_late`` + ``reject_on_worker_lost``
+ prefetch 1 keep a message until its task finished; the reconciler covers what a broker can still lose
(a virtual transport on ``kill -9``, a ``FLUSHDB``).

The broker is ``settings.broker_url`` (``redis://…`` to scale out) or, by default, kombu's
``filesystem://`` transport under ``<data_dir>/queue`` (``fs_transport``: atomic publish, defensive
read) — one code path for both. This module imports neither torch nor the pipelines: the edge enqueues
by task *name*, the worker imports the work lazily.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy.exc import OperationalError

from dicom_node.config import JobSettings, Settings
from dicom_node.errors import TransientJobError
from dicom_node.jobs.context import WorkerContext
from dicom_node.jobs.fs_transport import Transport as FilesystemTransport

LOG = logging.getLogger(__name__)

RUN_PIPELINE = "dicom_node.run_pipeline"
SEND_RESULTS = "dicom_node.send_results"
GPU_QUEUE = "gpu"
IO_QUEUE = "io"
QUEUES = (GPU_QUEUE, IO_QUEUE)


def is_embedded(settings: Settings) -> bool:
    return settings.effective_broker_url.startswith("filesystem://")


def queue_folder(settings: Settings) -> Path:
    return (settings.data_dir / "queue").resolve()


def transport_options(settings: Settings, jobs: JobSettings) -> dict[str, Any]:
    if is_embedded(settings):
        folder = queue_folder(settings)
        for sub in ("messages", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder / "messages"),
            "data_folder_out": str(folder / "messages"),
            "control_folder": str(folder / "control"),
            "claimed_folder": str(folder / "claimed"),
            "corrupt_folder": str(folder / "corrupt"),
            "store_processed": False,
            "polling_interval": jobs.polling_interval,
        }
    # Redis re-delivers an unacknowledged message after this long; the reconciler is faster anyway.
    return {"visibility_timeout": max(jobs.task_time_limit * 2, 3600.0)}


class NodeCelery(Celery):  # type: ignore[misc]
    """A Celery app that knows the node's ``Settings`` and builds a ``WorkerContext`` per process."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("dicom_node", broker=settings.effective_broker_url, set_as_current=False)
        self.node_settings = settings
        self._context: WorkerContext | None = None
        self._context_pid = 0
        self._context_lock = threading.Lock()

    def context(self) -> WorkerContext:
        with self._context_lock:
            if self._context is None or self._context_pid != os.getpid():
                self._context = WorkerContext(self.node_settings, TaskQueue(self))
                self._context_pid = os.getpid()
            return self._context


@dataclass(frozen=True)
class TaskQueue:
    """The doorbell: sends id-only messages by task name (no import of the task code)."""

    app: Celery

    def enqueue_job(self, job_id: int) -> None:
        self.app.send_task(RUN_PIPELINE, args=[job_id], queue=GPU_QUEUE)

    def enqueue_delivery(self, delivery_id: int) -> None:
        self.app.send_task(SEND_RESULTS, args=[delivery_id], queue=IO_QUEUE)


def create_app(settings: Settings) -> NodeCelery:
    """The Celery app for ``settings``; the same for ``serve``, ``worker`` and the CLI."""
    jobs = settings.jobs
    app = NodeCelery(settings)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=jobs.task_time_limit,
        task_soft_time_limit=max(jobs.task_time_limit - 30.0, jobs.task_time_limit * 0.9),
        task_default_queue=IO_QUEUE,
        task_routes={RUN_PIPELINE: {"queue": GPU_QUEUE}, SEND_RESULTS: {"queue": IO_QUEUE}},
        # kombu takes an explicit transport over the URL's scheme: ours publishes atomically.
        broker_transport=FilesystemTransport if is_embedded(settings) else None,
        broker_transport_options=transport_options(settings, jobs),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5.0,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        enable_utc=True,
    )
    _register_tasks(app)
    return app


def _register_tasks(app: NodeCelery) -> None:
    @app.task(  # type: ignore[untyped-decorator]
        name=RUN_PIPELINE,
        autoretry_for=(TransientJobError, OperationalError),
        retry_backoff=2,
        retry_backoff_max=120,
        retry_jitter=True,
        max_retries=5,
    )
    def run_pipeline(job_id: int) -> str:
        """Run one analysis job (ids only); see ``dicom_node.jobs.analysis.run_job``."""
        from dicom_node.jobs.analysis import run_job

        return run_job(app.context(), int(job_id)).value

    @app.task(  # type: ignore[untyped-decorator]
        name=SEND_RESULTS,
        autoretry_for=(OperationalError,),
        retry_backoff=2,
        retry_backoff_max=60,
        retry_jitter=True,
        max_retries=5,
    )
    def send_results(delivery_id: int) -> str:
        """Send one delivery (ids only); backoff between attempts is kept in the row, not the broker."""
        from dicom_node.delivery.sender import deliver

        return deliver(app.context(), int(delivery_id)).value


def queue_depths(app: Celery) -> dict[str, int | None]:
    """Messages waiting in each queue, straight from the broker (``None`` when it cannot be asked)."""
    depths: dict[str, int | None] = {}
    try:
        with app.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
            channel = connection.default_channel
            for queue in QUEUES:
                try:
                    depths[queue] = int(channel.queue_declare(queue=queue, passive=True).message_count)
                except Exception:  # a queue nobody declared yet holds nothing
                    depths[queue] = 0
    except Exception as error:
        LOG.warning("cannot read queue depths from the broker: %s", error)
        return dict.fromkeys(QUEUES)
    return depths
