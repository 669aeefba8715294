"""The reconciler: the database is the truth, the broker only a doorbell.

One ``reconcile`` pass, run every ``reconcile_interval`` seconds by ``serve`` and by every worker (all
of its updates are conditional, so any number of them can run at once):

* routes complete studies whose current revision has not been routed yet (a crash between the assembler
  commit and the completion hook loses nothing) and enqueues their jobs;
* re-enqueues ``queued`` jobs whose message was not picked up before their lease ran out (a broker that
  lost or flushed its messages), and puts ``running`` jobs whose worker stopped renewing the lease back
  in the queue (a ``kill -9``), up to ``max_attempts``;
* enqueues ``pending`` deliveries that are due (their backoff has passed) and ``sending`` ones whose
  worker vanished;
* records this process in the ``worker`` table, which ``status`` reads as the list of live workers.

Duplicate messages are harmless: a task first claims its row with a conditional UPDATE and does nothing
when that matches no row.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from dicom_node.config import JobSettings, Settings
from dicom_node.index.database import Database
from dicom_node.index.models import (
    Delivery,
    DeliveryState,
    Job,
    JobState,
    Study,
    StudyState,
    WorkerRecord,
    utcnow,
)
from dicom_node.jobs.context import Doorbell
from dicom_node.workflow.routing import compile_routes, create_jobs, route_study

LOG = logging.getLogger(__name__)

# A worker's reconciler thread lives in Celery's main process, which forks the prefork pool's children
# (at start, and again whenever a child dies). A fork taken while that thread is inside SQLite copies
# SQLite's internal mutexes in their locked state, and the child then hangs or reports "database is
# locked" at its first query. Every fork therefore waits for the current pass to end.
_PASS_LOCK = threading.Lock()


os.register_at_fork(
    before=_PASS_LOCK.acquire, after_in_parent=_PASS_LOCK.release, after_in_child=_PASS_LOCK.release
)


def _lease_lapsed(column: Any, now: datetime) -> Any:
    return or_(column.is_(None), column < now)


def route_pending_studies(session: Session, settings: Settings) -> list[int]:
    """Route complete studies whose current revision was not routed yet; return the new job ids."""
    routes = compile_routes(settings.routes)
    studies = session.scalars(
        select(Study).where(Study.state == StudyState.COMPLETE, Study.routed_revision < Study.revision)
    ).all()
    job_ids: list[int] = []
    for study in studies:
        decision = route_study(study, routes)
        created = create_jobs(session, study, decision)
        job_ids += created
        if decision.reason:
            LOG.info(
                "study %s not analysed: %s",
                study.study_instance_uid,
                decision.reason,
                extra={"study_instance_uid": study.study_instance_uid, "reason": decision.reason},
            )
        else:
            LOG.info(
                "study %s revision %d routed to %s (%d new jobs)",
                study.study_instance_uid,
                study.revision,
                ", ".join(m.pipeline for m in decision.matches),
                len(created),
                extra={
                    "study_instance_uid": study.study_instance_uid,
                    "revision": study.revision,
                    "pipelines": [m.pipeline for m in decision.matches],
                    "job_ids": created,
                },
            )
    return job_ids


def mark_job_queued(session: Session, job_id: int, jobs: JobSettings, now: datetime) -> bool:
    """Stamp a queued job's lease before its message is sent; ``False`` if it is not queued."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.QUEUED)
        .values(lease_expires_at=now + timedelta(seconds=jobs.queued_lease), queued_at=now),
        execution_options={"synchronize_session": False},
    )
    return bool(getattr(result, "rowcount", 0))


def _requeue_jobs(session: Session, jobs: JobSettings, now: datetime) -> list[int]:
    ids: list[int] = []
    lapsed = session.scalars(
        select(Job).where(
            Job.state.in_([JobState.QUEUED, JobState.RUNNING]), _lease_lapsed(Job.lease_expires_at, now)
        )
    ).all()
    for job in lapsed:
        lease = now + timedelta(seconds=jobs.queued_lease)
        if job.state == JobState.RUNNING and job.attempts >= jobs.max_attempts:
            values: dict[str, Any] = {
                "state": JobState.FAILED,
                "error": f"gave up after {job.attempts} attempts: the worker stopped renewing its lease",
                "finished_at": now,
                "lease_expires_at": None,
            }
        elif job.state == JobState.RUNNING:
            values = {
                "state": JobState.QUEUED,
                "error": f"worker {job.worker_host} stopped renewing its lease; queued again",
                "lease_expires_at": lease,
                "claim_token": None,
            }
        else:
            values = {"lease_expires_at": lease}
        result = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.state == job.state, _lease_lapsed(Job.lease_expires_at, now))
            .values(**values),
            execution_options={"synchronize_session": False},
        )
        if getattr(result, "rowcount", 0) and values.get("state") != JobState.FAILED:
            LOG.info(
                "job %d (%s): lease ran out while %s; enqueued again",
                job.id,
                job.pipeline,
                job.state,
                extra={"job_id": job.id, "pipeline": job.pipeline, "state": job.state},
            )
            ids.append(job.id)
    return ids


def _due_deliveries(session: Session, jobs: JobSettings, now: datetime) -> list[int]:
    ids: list[int] = []
    due = session.scalars(
        select(Delivery).where(
            or_(
                and_(
                    Delivery.state == DeliveryState.PENDING,
                    or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
                ),
                Delivery.state == DeliveryState.SENDING,
            ),
            _lease_lapsed(Delivery.lease_expires_at, now),
        )
    ).all()
    for delivery in due:
        result = session.execute(
            update(Delivery)
            .where(
                Delivery.id == delivery.id,
                Delivery.state == delivery.state,
                _lease_lapsed(Delivery.lease_expires_at, now),
            )
            .values(
                state=DeliveryState.PENDING,
                lease_expires_at=now + timedelta(seconds=jobs.queued_lease),
                claim_token=None,
            ),
            execution_options={"synchronize_session": False},
        )
        if getattr(result, "rowcount", 0):
            ids.append(delivery.id)
    return ids


def heartbeat(session: Session, name: str, queues: str, concurrency: int, now: datetime) -> None:
    """Record that worker ``name`` is alive."""
    record = session.scalar(select(WorkerRecord).where(WorkerRecord.name == name))
    if record is None:
        session.add(
            WorkerRecord(name=name, queues=queues, concurrency=concurrency, started_at=now, last_seen_at=now)
        )
    else:
        record.last_seen_at = now
        record.queues = queues
        record.concurrency = concurrency


@dataclass(frozen=True)
class WorkerIdentity:
    name: str
    queues: str
    concurrency: int


def reconcile(
    database: Database,
    settings: Settings,
    doorbell: Doorbell,
    worker: WorkerIdentity | None = None,
    now: datetime | None = None,
) -> tuple[list[int], list[int]]:
    """One pass (see the module docstring); returns the job and delivery ids it enqueued."""
    jobs = settings.jobs
    now = now or utcnow()
    with database.session() as session:
        if worker is not None:
            heartbeat(session, worker.name, worker.queues, worker.concurrency, now)
        new_jobs = route_pending_studies(session, settings)
        for job_id in new_jobs:
            mark_job_queued(session, job_id, jobs, now)
        job_ids = new_jobs + _requeue_jobs(session, jobs, now)
        delivery_ids = _due_deliveries(session, jobs, now)
    # Ring only after the commit: a worker that gets the message must find the row as we left it.
    for job_id in job_ids:
        doorbell.enqueue_job(job_id)
    for delivery_id in delivery_ids:
        doorbell.enqueue_delivery(delivery_id)
    return job_ids, delivery_ids


class ReconcilerThread:
    """Runs ``reconcile`` every ``reconcile_interval`` seconds until stopped; never dies of an error."""

    def __init__(
        self,
        database: Database,
        settings: Settings,
        doorbell: Doorbell,
        worker: WorkerIdentity | None = None,
        on_pass: Callable[[Sequence[int], Sequence[int]], None] | None = None,
    ) -> None:
        self.database = database
        self.settings = settings
        self.doorbell = doorbell
        self.worker = worker
        self.on_pass = on_pass
        self.interval = settings.jobs.reconcile_interval
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Run a pass now (the assembler calls this when a study completes)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                with _PASS_LOCK:
                    job_ids, delivery_ids = reconcile(
                        self.database, self.settings, self.doorbell, self.worker
                    )
                if self.on_pass is not None:
                    self.on_pass(job_ids, delivery_ids)
            except Exception:
                LOG.exception("reconciler pass failed; retrying in %.1f s", self.interval)
            self._wake.wait(self.interval)
            self._wake.clear()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
