"""The index: SQLAlchemy 2 ORM rows for studies, series, instances and the association audit trail.

Every unit of work is a row with a state, so any process can restart without losing track. The schema
is owned by Alembic (``dicom_node/index/migrations``); ``Base.metadata`` is what its revisions mirror.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    """Timezone-aware now; every timestamp in the index is UTC."""
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python.

    PostgreSQL keeps the zone; SQLite stores the text without it and hands back naive values. Every
    value the node stores is UTC, so reading one back attaches UTC here, once, instead of at each
    comparison.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            return value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


CODE_SEPARATOR = "\\"
CODE_FIELDS = "^"


def coded_text(entries: Iterable[tuple[str, str, str]]) -> str | None:
    """Coded entries ``(value, scheme, meaning)`` as one text column.

    Each entry is ``VALUE^SCHEME^MEANING``, entries are joined by a backslash. The separators never occur
    in a code value and hardly in a meaning; there they are replaced by spaces.
    """
    parts: list[str] = []
    for entry in entries:
        fields = (f.replace(CODE_SEPARATOR, " ").replace(CODE_FIELDS, " ").strip() for f in entry)
        text = CODE_FIELDS.join(fields)
        if text.strip(CODE_FIELDS) and text not in parts:
            parts.append(text)
    return CODE_SEPARATOR.join(parts) or None


def coded_entries(text: str | None) -> list[tuple[str, str, str]]:
    """The ``(value, scheme, meaning)`` entries of a ``coded_text`` column."""
    entries = []
    for part in (text or "").split(CODE_SEPARATOR):
        if part:
            value, scheme, meaning = [*part.split(CODE_FIELDS, 2), "", ""][:3]
            entries.append((value, scheme, meaning))
    return entries


class Base(DeclarativeBase):
    """Declarative base of every table."""


class StudyState(StrEnum):
    RECEIVING = "receiving"
    COMPLETE = "complete"
    UPDATED = "updated"


class SeriesState(StrEnum):
    RECEIVING = "receiving"
    STABLE = "stable"


class AssociationOutcome(StrEnum):
    ACTIVE = "active"
    RELEASED = "released"
    ABORTED = "aborted"
    REJECTED = "rejected"


class Study(Base):
    __tablename__ = "study"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(324))
    """Patient's Name as received (PN, up to three component groups: ``alphabetic=ideographic=...``)."""
    patient_birth_date: Mapped[str | None] = mapped_column(String(8))
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    study_id: Mapped[str | None] = mapped_column(String(16))
    referring_physician_name: Mapped[str | None] = mapped_column(String(324))
    accession_number: Mapped[str | None] = mapped_column(String(64))
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_time: Mapped[str | None] = mapped_column(String(16))
    study_description: Mapped[str | None] = mapped_column(String(64))
    requested_procedure_description: Mapped[str | None] = mapped_column(String(64))
    procedure_codes: Mapped[str | None] = mapped_column(Text)
    """Procedure Code Sequence and Requested Procedure Code Sequence items, in ``coded_text`` form."""
    modalities: Mapped[str] = mapped_column(String(128), default="")
    calling_ae_title: Mapped[str | None] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default=StudyState.RECEIVING, index=True)
    num_series: Mapped[int] = mapped_column(Integer, default=0)
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    total_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    first_received_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    revision: Mapped[int] = mapped_column(Integer, default=0)
    routed_revision: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    routing_reason: Mapped[str | None] = mapped_column(Text)
    released_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    """When the last association that brought instances of the study was released (completion evidence,
    ``workflow/completion.py``; migration 0009)."""

    series: Mapped[list[Series]] = relationship(back_populates="study", order_by="Series.id")

    # What C-FIND and QIDO-RS match on most (index/query.py).
    __table_args__ = (
        Index("ix_study_patient_id", "patient_id"),
        Index("ix_study_study_date", "study_date"),
        Index("ix_study_accession_number", "accession_number"),
        Index("ix_study_patient_name", "patient_name"),
    )


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part_examined: Mapped[str | None] = mapped_column(String(64))
    series_description: Mapped[str | None] = mapped_column(String(64))
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_date: Mapped[str | None] = mapped_column(String(8))
    series_time: Mapped[str | None] = mapped_column(String(16))
    protocol_name: Mapped[str | None] = mapped_column(String(64))
    image_type: Mapped[str | None] = mapped_column(String(128))
    orientation: Mapped[str | None] = mapped_column(String(16))
    view_position: Mapped[str | None] = mapped_column(String(16))
    slice_thickness: Mapped[float | None] = mapped_column(Float)
    kvp: Mapped[float | None] = mapped_column(Float)
    manufacturer: Mapped[str | None] = mapped_column(String(64))
    frame_of_reference_uid: Mapped[str | None] = mapped_column(String(64))
    anatomic_region: Mapped[str | None] = mapped_column(Text)
    """Anatomic Region Sequence items, in ``coded_text`` form."""
    slice_position_min: Mapped[float | None] = mapped_column(Float)
    slice_position_max: Mapped[float | None] = mapped_column(Float)
    """The lowest and highest slice position seen (mm along the slice normal): ``extent_mm`` from these."""
    state: Mapped[str] = mapped_column(String(16), default=SeriesState.RECEIVING)
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    num_frames: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """The images (planes) the series holds: a single-frame instance counts one, a multi-frame one its
    Number of Frames. What the ``num_instances`` routing criterion compares (``workflow/criteria.py``)."""
    total_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    first_received_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    stable_at: Mapped[datetime | None] = mapped_column(UtcDateTime())

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series", order_by="Instance.id")


class Instance(Base):
    __tablename__ = "instance"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int | None] = mapped_column(Integer)
    """Number of Frames of a multi-frame instance; ``None`` for a single-frame one."""
    path: Mapped[str] = mapped_column(String(260))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer, default=1)
    calling_ae_title: Mapped[str | None] = mapped_column(String(16))
    association_id: Mapped[int | None] = mapped_column(ForeignKey("association.id", ondelete="SET NULL"))
    received_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)

    series: Mapped[Series] = relationship(back_populates="instances")


class AssociationRecord(Base):
    """The audit trail: one row per association, accepted or not."""

    __tablename__ = "association"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    calling_ae_title: Mapped[str] = mapped_column(String(16))
    called_ae_title: Mapped[str] = mapped_column(String(16))
    peer_address: Mapped[str] = mapped_column(String(64))
    peer_port: Mapped[int] = mapped_column(Integer)
    tls: Mapped[bool] = mapped_column(default=False)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    outcome: Mapped[str] = mapped_column(String(16), default=AssociationOutcome.ACTIVE)
    reason: Mapped[str | None] = mapped_column(Text)
    instances_accepted: Mapped[int] = mapped_column(Integer, default=0)
    instances_refused: Mapped[int] = mapped_column(Integer, default=0)
    bytes_accepted: Mapped[int] = mapped_column(BigInteger, default=0)
    find_requests: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    move_requests: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    get_requests: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    instances_sent: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """C-STORE sub-operations of this association's C-MOVE and C-GET requests that succeeded."""

    __table_args__ = (Index("ix_association_started_at", "started_at"),)


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


class DeliveryState(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    FAILED = "failed"


class Job(Base):
    """One pipeline run on one series of one study revision; the broker only carries its id.

    ``lease_expires_at`` is the deadline of whoever holds the row: while ``queued``, the message must be
    picked up before it (else the reconciler sends another); while ``running``, the worker's heartbeat
    must extend it (else the worker is presumed dead and the job is queued again). ``claim_token``
    fences a presumed-dead worker that comes back: only the holder of the current token may finish.

    ``result_basis`` is the sha256 of what the job's results depend on (series, its instances' hashes,
    pipeline, model version and weights); ``first_started_at`` when its analysis first started. The
    earliest ``first_started_at`` of the jobs with one basis dates every object of that basis, so a
    re-run writes the same bytes (docs/reports.md).
    """

    __tablename__ = "job"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    series_id: Mapped[int | None] = mapped_column(ForeignKey("series.id", ondelete="SET NULL"))
    study_revision: Mapped[int] = mapped_column(Integer, default=0)
    pipeline: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    worker_host: Mapped[str | None] = mapped_column(String(128))
    claim_token: Mapped[str | None] = mapped_column(String(32))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), index=True)
    stable_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    queued_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    first_started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    result_basis: Mapped[str | None] = mapped_column(String(64), index=True)
    requires: Mapped[str | None] = mapped_column(String(64))
    """The content checks its route requires, comma-separated (``lungs,spine``), or none."""
    content_checks: Mapped[str | None] = mapped_column(Text)
    """What those checks measured on the job's series (JSON, ``pipelines.content_checks``)."""

    study: Mapped[Study] = relationship()
    series: Mapped[Series | None] = relationship()
    results: Mapped[list[Result]] = relationship(back_populates="job", order_by="Result.id")
    deliveries: Mapped[list[Delivery]] = relationship(back_populates="job", order_by="Delivery.id")

    __table_args__ = (UniqueConstraint("study_id", "pipeline", "study_revision", name="uq_job_run"),)


class Result(Base):
    """One stored result object (SR, SEG, ...) a job wrote, in the encoding of one destination profile."""

    __tablename__ = "result"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), index=True)
    profile: Mapped[str] = mapped_column(String(32), default="standard")
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(260))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)

    job: Mapped[Job] = relationship(back_populates="results")

    __table_args__ = (UniqueConstraint("job_id", "profile", "sop_instance_uid", name="uq_result_object"),)


class Delivery(Base):
    """Sending one job's results to one destination; retried with backoff, then ``failed`` (dead letter)."""

    __tablename__ = "delivery"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    ae_title: Mapped[str] = mapped_column(String(16))
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    profile: Mapped[str] = mapped_column(String(32), default="standard")
    state: Mapped[str] = mapped_column(String(16), default=DeliveryState.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    worker_host: Mapped[str | None] = mapped_column(String(128))
    claim_token: Mapped[str | None] = mapped_column(String(32))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), index=True)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    first_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime())

    job: Mapped[Job] = relationship(back_populates="deliveries")

    __table_args__ = (UniqueConstraint("job_id", "destination", name="uq_delivery_target"),)


class WorkerRecord(Base):
    """A worker process seen alive; ``last_seen_at`` is refreshed by its reconciler loop."""

    __tablename__ = "worker"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(160), unique=True)
    queues: Mapped[str] = mapped_column(String(64))
    concurrency: Mapped[int] = mapped_column(Integer, default=1)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class StudyRetention(Base):
    """Per study: failures an operator acknowledged, and what retention purged (migration 0003)."""

    __tablename__ = "study_retention"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), unique=True)
    acknowledged_revision: Mapped[int | None] = mapped_column(Integer)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    purged_revision: Mapped[int | None] = mapped_column(Integer)
    purged_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    purged_instances: Mapped[int] = mapped_column(Integer, default=0)
    purged_bytes: Mapped[int] = mapped_column(BigInteger, default=0)


class CommitmentState(StrEnum):
    PENDING = "pending"
    REPORTED = "reported"
    FAILED = "failed"


class CommitmentRequest(Base):
    """A Storage Commitment (Push Model) request: answered by an N-EVENT-REPORT (migration 0009).

    ``pending`` until the report was acknowledged by the requester (on the request's association, or on
    a new one to the destination with its AE title); kept so a restart does not lose it.
    """

    __tablename__ = "commitment_request"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    transaction_uid: Mapped[str] = mapped_column(String(64), index=True)
    calling_ae_title: Mapped[str] = mapped_column(String(16))
    peer_address: Mapped[str] = mapped_column(String(64))
    association_id: Mapped[int | None] = mapped_column(ForeignKey("association.id", ondelete="SET NULL"))
    state: Mapped[str] = mapped_column(String(16), default=CommitmentState.PENDING, index=True)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    reported_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    error: Mapped[str | None] = mapped_column(Text)

    items: Mapped[list[CommitmentItem]] = relationship(
        back_populates="request", order_by="CommitmentItem.id", cascade="all, delete-orphan"
    )


class CommitmentItem(Base):
    """One referenced instance of a commitment request; ``failure_reason`` is None when committed."""

    __tablename__ = "commitment_item"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(
        ForeignKey("commitment_request.id", ondelete="CASCADE"), index=True
    )
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    failure_reason: Mapped[int | None] = mapped_column(Integer)
    """0x0112 no such object instance, 0x0119 class/instance conflict, 0x0110 processing failure."""

    request: Mapped[CommitmentRequest] = relationship(back_populates="items")


class MppsState(StrEnum):
    IN_PROGRESS = "IN PROGRESS"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"


class PerformedProcedureStep(Base):
    """A Modality Performed Procedure Step the node received (N-CREATE, N-SET; migration 0009)."""

    __tablename__ = "mpps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    state: Mapped[str] = mapped_column(String(16), default=MppsState.IN_PROGRESS, index=True)
    study_instance_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    calling_ae_title: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime())

    instances: Mapped[list[PerformedInstance]] = relationship(
        back_populates="step", order_by="PerformedInstance.id", cascade="all, delete-orphan"
    )


class PerformedInstance(Base):
    """An instance an MPPS lists (Performed Series Sequence > Referenced Image / Non-Image Sequence)."""

    __tablename__ = "mpps_instance"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mpps_id: Mapped[int] = mapped_column(ForeignKey("mpps.id", ondelete="CASCADE"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)

    step: Mapped[PerformedProcedureStep] = relationship(back_populates="instances")
