"""Retention: delete received images some days after their results were delivered — never before.

The policy is one number, ``retention_days`` (``DICOM_NODE_RETENTION_DAYS``; 0, the default, keeps
everything forever). A study's received instances may be deleted only when all of these hold:

* the study is ``complete`` and routed at its current revision (nothing is still arriving or waiting to
  be routed);
* no job of the study, of any revision, is ``queued`` or ``running``;
* no delivery of the study is ``pending`` or ``sending`` (a delivery waiting for its next retry is
  ``pending``);
* no job or delivery is ``failed``, unless an operator acknowledged the failures of the current revision
  (``dicom-node retention --acknowledge STUDY_UID``): a failed job may still be retried, and it needs the
  images to run;
* the study has been settled — no instance received, no job finished, nothing delivered — for
  ``retention_days``. A study whose routing matched nothing is settled once it is routed.

Result objects are never deleted: neither their ``Result`` rows nor their files, nor the ``Instance``
rows under which the node indexed them. Study and series rows stay, so the study remains listed;
``study_retention`` records what was purged, when and at which revision.

``judge_study`` is the decision, a pure function of ``StudyFacts`` read from the index; ``review`` reads
the facts for every study; ``apply_retention`` re-reads and re-judges each study under a lock before it
deletes anything. Files go first, then the rows, in one transaction: a crash between the two leaves rows
whose files are gone, which only a deletable study can have and which the next run removes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from dicom_node.config import Settings
from dicom_node.index.database import Database
from dicom_node.index.models import (
    Delivery,
    DeliveryState,
    Instance,
    Job,
    JobState,
    Result,
    Series,
    Study,
    StudyRetention,
    StudyState,
    utcnow,
)
from dicom_node.storage.store import SUPERSEDED_DIR

log = logging.getLogger(__name__)

SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True)
class RetentionPolicy:
    """How long received images stay once their study is settled; ``days == 0`` keeps them forever."""

    days: float

    def __post_init__(self) -> None:
        if not 0 <= self.days < float("inf"):
            raise ValueError(f'Argument "days" must be a finite number, 0 or more, got {self.days!r}')

    @classmethod
    def from_settings(cls, settings: Settings) -> RetentionPolicy:
        return cls(days=settings.retention_days)

    @property
    def enabled(self) -> bool:
        return self.days > 0

    @property
    def keep_for(self) -> timedelta:
        return timedelta(seconds=self.days * SECONDS_PER_DAY)


@dataclass(frozen=True)
class JobFacts:
    id: int
    revision: int
    state: str
    finished_at: datetime | None


@dataclass(frozen=True)
class DeliveryFacts:
    id: int
    job_id: int
    state: str
    delivered_at: datetime | None


@dataclass(frozen=True)
class StudyFacts:
    """What the decision needs to know about one study, read from the index."""

    study_id: int
    study_instance_uid: str
    state: str
    revision: int
    routed_revision: int
    last_received_at: datetime
    completed_at: datetime | None
    jobs: tuple[JobFacts, ...] = ()
    deliveries: tuple[DeliveryFacts, ...] = ()
    acknowledged_revision: int | None = None
    purged_revision: int | None = None
    source_instances: int = 0
    source_bytes: int = 0


@dataclass(frozen=True)
class Verdict:
    """The decision on one study: ``deletable`` or the reason it is kept."""

    study_id: int
    study_instance_uid: str
    deletable: bool
    reason: str
    settled_at: datetime | None
    delete_after: datetime | None
    instances: int
    bytes: int


@dataclass
class PurgeReport:
    """What ``apply_retention`` did."""

    studies: list[str] = field(default_factory=list)
    instances: int = 0
    bytes: int = 0
    files_missing: int = 0
    skipped: dict[str, str] = field(default_factory=dict)


_ACTIVE_JOBS = frozenset({JobState.QUEUED, JobState.RUNNING})
_ACTIVE_DELIVERIES = frozenset({DeliveryState.PENDING, DeliveryState.SENDING})


def judge_study(facts: StudyFacts, policy: RetentionPolicy, now: datetime) -> Verdict:
    """Whether ``facts``'s received instances may be deleted at ``now`` under ``policy``; pure."""

    def verdict(deletable: bool, reason: str, settled: datetime | None = None) -> Verdict:
        return Verdict(
            study_id=facts.study_id,
            study_instance_uid=facts.study_instance_uid,
            deletable=deletable,
            reason=reason,
            settled_at=settled,
            delete_after=settled + policy.keep_for if settled is not None and policy.enabled else None,
            instances=facts.source_instances,
            bytes=facts.source_bytes,
        )

    if facts.state != StudyState.COMPLETE:
        return verdict(False, f"study is {facts.state}: instances may still arrive")
    if facts.routed_revision != facts.revision:
        return verdict(False, f"revision {facts.revision} is not routed yet")
    for job in facts.jobs:
        if job.state in _ACTIVE_JOBS:
            return verdict(False, f"job {job.id} is {job.state}")
        if job.state not in {JobState.SUCCEEDED, JobState.SKIPPED, JobState.FAILED}:
            return verdict(False, f"job {job.id} is in an unknown state {job.state!r}")
    for delivery in facts.deliveries:
        if delivery.state in _ACTIVE_DELIVERIES:
            return verdict(False, f"delivery {delivery.id} is {delivery.state}: results not delivered yet")
        if delivery.state not in {DeliveryState.DELIVERED, DeliveryState.FAILED}:
            return verdict(False, f"delivery {delivery.id} is in an unknown state {delivery.state!r}")
    acknowledged = facts.acknowledged_revision == facts.revision
    if not acknowledged:
        for job in facts.jobs:
            if job.state == JobState.FAILED:
                return verdict(False, f"job {job.id} failed (retry it, or acknowledge the study)")
        for delivery in facts.deliveries:
            if delivery.state == DeliveryState.FAILED:
                return verdict(False, f"delivery {delivery.id} failed (retry it, or acknowledge the study)")
    moments = [facts.last_received_at, facts.completed_at]
    moments += [job.finished_at for job in facts.jobs]
    moments += [delivery.delivered_at for delivery in facts.deliveries]
    settled = max(m for m in moments if m is not None)
    if facts.purged_revision == facts.revision and facts.source_instances == 0:
        return verdict(False, "already purged", settled)
    if not policy.enabled:
        return verdict(False, "retention is off (retention_days = 0)", settled)
    if now < settled + policy.keep_for:
        return verdict(False, "settled; kept until the retention period ends", settled)
    if not any(job.revision == facts.revision for job in facts.jobs):
        return verdict(True, "routing matched nothing; retention period over", settled)
    return verdict(True, "results delivered; retention period over", settled)


def _result_uids(session: Session, study_id: int) -> set[str]:
    rows = session.scalars(
        select(Result.sop_instance_uid).join(Job, Job.id == Result.job_id).where(Job.study_id == study_id)
    )
    return set(rows)


def _result_paths(session: Session, study_id: int) -> set[str]:
    rows = session.scalars(
        select(Result.path).join(Job, Job.id == Result.job_id).where(Job.study_id == study_id)
    )
    return set(rows)


def source_instances(session: Session, study_id: int) -> list[Instance]:
    """The study's received instances: every indexed instance that is not one of its result objects."""
    results = _result_uids(session, study_id)
    paths = _result_paths(session, study_id)
    instances = session.scalars(
        select(Instance).join(Series, Series.id == Instance.series_id).where(Series.study_id == study_id)
    ).all()
    return [i for i in instances if i.sop_instance_uid not in results and i.path not in paths]


def read_facts(session: Session, study: Study) -> StudyFacts:
    """Everything ``judge_study`` needs about ``study``, read in ``session``."""
    jobs = session.scalars(select(Job).where(Job.study_id == study.id).order_by(Job.id)).all()
    deliveries = session.scalars(
        select(Delivery).join(Job, Job.id == Delivery.job_id).where(Job.study_id == study.id)
    ).all()
    record = session.scalar(select(StudyRetention).where(StudyRetention.study_id == study.id))
    sources = source_instances(session, study.id)
    return StudyFacts(
        study_id=study.id,
        study_instance_uid=study.study_instance_uid,
        state=study.state,
        revision=study.revision,
        routed_revision=study.routed_revision,
        last_received_at=study.last_received_at,
        completed_at=study.completed_at,
        jobs=tuple(JobFacts(j.id, j.study_revision, j.state, j.finished_at) for j in jobs),
        deliveries=tuple(DeliveryFacts(d.id, d.job_id, d.state, d.delivered_at) for d in deliveries),
        acknowledged_revision=record.acknowledged_revision if record else None,
        purged_revision=record.purged_revision if record else None,
        source_instances=len(sources),
        source_bytes=sum(i.size for i in sources),
    )


def review(database: Database, policy: RetentionPolicy, now: datetime | None = None) -> list[Verdict]:
    """A verdict for every study in the index (what ``--dry-run`` prints); changes nothing."""
    moment = now or utcnow()
    with database.sessions() as session:
        studies = session.scalars(select(Study).order_by(Study.id)).all()
        return [judge_study(read_facts(session, study), policy, moment) for study in studies]


def select_deletable(
    database: Database, policy: RetentionPolicy, now: datetime | None = None
) -> list[Verdict]:
    """The verdicts of the studies whose received instances may be deleted now."""
    return [v for v in review(database, policy, now) if v.deletable]


def _lock_study(session: Session, study_id: int, is_sqlite: bool) -> Study | None:
    # Take the write lock before reading what the decision rests on. On SQLite a no-op UPDATE takes the
    # database's write lock (pysqlite opens transactions only at the first write); on PostgreSQL the
    # study row (which ingest updates on every instance) and the study's job rows (which retry and
    # reprocess update) are locked until commit.
    session.execute(update(Study).where(Study.id == study_id).values(revision=Study.revision))
    study = session.scalar(select(Study).where(Study.id == study_id).with_for_update())
    if study is not None and not is_sqlite:
        session.scalars(select(Job.id).where(Job.study_id == study_id).with_for_update()).all()
    return study


def _unlink(root: Path, relative_path: str) -> bool:
    """Delete one instance file and its superseded copies; ``False`` if the file was already gone."""
    path = root / relative_path
    existed = True
    try:
        path.unlink()
    except FileNotFoundError:
        existed = False
    superseded = root / SUPERSEDED_DIR / relative_path
    if superseded.parent.is_dir():
        for old in superseded.parent.glob(f"{superseded.name}.*"):
            old.unlink(missing_ok=True)
    return existed


def _remove_empty_dirs(root: Path, relative_dirs: Iterable[str]) -> None:
    for relative in sorted(set(relative_dirs), key=lambda p: -p.count("/")):
        for base in (root, root / SUPERSEDED_DIR):
            directory = base / relative
            while directory != base and directory.is_dir():
                try:
                    directory.rmdir()  # only if empty: result objects live beside the images
                except OSError:
                    break
                directory = directory.parent


def purge_study(
    database: Database, store_root: Path, study_id: int, policy: RetentionPolicy, now: datetime
) -> tuple[Verdict, int]:
    """Re-judge one study under a lock and, if still deletable, delete its received instances.

    Returns the verdict and how many of its files were already missing.
    """
    missing = 0
    with database.session() as session:
        study = _lock_study(session, study_id, database.is_sqlite)
        if study is None:
            raise LookupError(f"study {study_id} vanished")
        verdict = judge_study(read_facts(session, study), policy, now)
        if not verdict.deletable:
            return verdict, 0
        instances = source_instances(session, study_id)
        directories = set()
        for instance in instances:
            if not _unlink(store_root, instance.path):
                missing += 1
            directories.add(os.path.dirname(instance.path))
        ids = [i.id for i in instances]
        for start in range(0, len(ids), 500):
            session.execute(
                delete(Instance).where(Instance.id.in_(ids[start : start + 500])),
                execution_options={"synchronize_session": False},
            )
        record = session.scalar(select(StudyRetention).where(StudyRetention.study_id == study_id))
        if record is None:
            record = StudyRetention(study_id=study_id, purged_instances=0, purged_bytes=0)
            session.add(record)
        record.purged_revision = study.revision
        record.purged_at = now
        record.purged_instances = (record.purged_instances or 0) + len(instances)
        record.purged_bytes = (record.purged_bytes or 0) + sum(i.size for i in instances)
    _remove_empty_dirs(store_root, directories)
    log.info(
        "retention: purged %d instances (%d bytes) of study %s",
        verdict.instances,
        verdict.bytes,
        verdict.study_instance_uid,
        extra={"study_instance_uid": verdict.study_instance_uid, "instances": verdict.instances},
    )
    return verdict, missing


def apply_retention(
    database: Database,
    store_root: Path,
    policy: RetentionPolicy,
    now: datetime | None = None,
    study_ids: Sequence[int] | None = None,
) -> PurgeReport:
    """Delete the received instances of every deletable study (or of those ``study_ids`` that are)."""
    moment = now or utcnow()
    report = PurgeReport()
    if not policy.enabled:
        return report
    candidates = (
        list(study_ids)
        if study_ids is not None
        else [v.study_id for v in select_deletable(database, policy, moment)]
    )
    for study_id in candidates:
        try:
            verdict, missing = purge_study(database, store_root, study_id, policy, moment)
        except LookupError:
            continue
        if not verdict.deletable:
            report.skipped[verdict.study_instance_uid] = verdict.reason
            continue
        report.studies.append(verdict.study_instance_uid)
        report.instances += verdict.instances
        report.bytes += verdict.bytes
        report.files_missing += missing
    return report


def acknowledge_failures(database: Database, study_instance_uid: str, now: datetime | None = None) -> int:
    """Accept the failed jobs and deliveries of the study's current revision; returns that revision.

    An acknowledged study becomes deletable like a delivered one. A later revision needs a new
    acknowledgement.
    """
    with database.session() as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_instance_uid))
        if study is None:
            raise LookupError(f"study {study_instance_uid} is not in the index")
        record = session.scalar(select(StudyRetention).where(StudyRetention.study_id == study.id))
        if record is None:
            record = StudyRetention(study_id=study.id, purged_instances=0, purged_bytes=0)
            session.add(record)
        record.acknowledged_revision = study.revision
        record.acknowledged_at = now or utcnow()
        return study.revision
