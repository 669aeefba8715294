"""What a job or a delivery needs, built once per worker process (after fork).

``WorkerContext`` holds the settings, the index, the store, the ingest step, the pipeline registry and a
doorbell to ring for follow-up work. It knows nothing of Celery: ``celery_app`` builds one with its own
``TaskQueue`` as the doorbell, and tests or tools may build one with any object that rings.
"""

from __future__ import annotations

from typing import Protocol

from dicom_node.config import JobSettings, Settings
from dicom_node.index.database import Database
from dicom_node.index.leases import holder
from dicom_node.jobs.registry import PipelineRegistry
from dicom_node.storage.ingest import Ingest
from dicom_node.storage.store import InstanceStore


def worker_name(queues: str = "") -> str:
    """``host:pid``, or ``queues@host:pid`` for a worker's record: who holds a claimed job or delivery."""
    return f"{queues.replace(',', '+')}@{holder()}" if queues else holder()


class Doorbell(Protocol):
    """Rings for a job or a delivery: sends its id, nothing else (``celery_app.TaskQueue``)."""

    def enqueue_job(self, job_id: int) -> None: ...

    def enqueue_delivery(self, delivery_id: int) -> None: ...


class WorkerContext:
    """Settings, index, store, ingest, pipelines and the doorbell of one worker process."""

    def __init__(self, settings: Settings, doorbell: Doorbell) -> None:
        self.settings = settings
        self.jobs: JobSettings = settings.jobs
        self.database = Database(settings.effective_database_url)
        self.store = InstanceStore(settings.storage_root, min_free_bytes=settings.min_free_bytes)
        self.ingest = Ingest(self.store, self.database)
        self.queue = doorbell
        self.registry = PipelineRegistry()
        self.registry.load_plugins(self.jobs.plugins)
