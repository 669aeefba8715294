"""What a job's results depend on, read from the index (docs/reports.md, "Identity of result objects").

* ``source_series``: the files of the job's series and a digest of its instances — each SOP Instance
  UID with the sha256 the index holds for it, read in one query with the paths, so a corrected
  instance changes the digest.
* ``settle_basis``: the job's ``result_basis`` (series, that digest, pipeline, model version, weights
  sha256) and the date/time every object gets — the earliest first start among the jobs with that
  basis, so a re-run (the same job again, or a new job on the same input) writes the same bytes.
* ``replaced_reports``: per destination profile, the SRs of the study's latest run of the pipeline on
  another input before this input was first analysed; the new SR names them in its Predecessor
  Documents Sequence (call it after ``settle_basis``, which records the basis).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import func, or_, select, update

from dicom_node.index.models import Instance, Job, Result, Series, utcnow

if TYPE_CHECKING:
    from dicom_node.jobs.context import WorkerContext
    from dicom_node.reports.uids import DocumentReference, ResultBasis

SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."  # every SR Storage SOP Class


@dataclass(frozen=True)
class SourceSeries:
    """The stored instances of a job's series, in instance-number order, and what identifies them."""

    series_instance_uid: str
    paths: list[Path]
    instances: list[tuple[str, str]]  # (SOP Instance UID, sha256 of the stored instance)


def source_series(context: WorkerContext, job: Job) -> SourceSeries:
    with context.database.sessions() as session:
        series = session.get(Series, job.series_id) if job.series_id is not None else None
        rows = session.execute(
            select(Instance.path, Instance.sop_instance_uid, Instance.sha256)
            .where(Instance.series_id == job.series_id)
            .order_by(Instance.instance_number, Instance.id)
        ).all()
    return SourceSeries(
        series_instance_uid=series.series_instance_uid if series is not None else "",
        paths=[context.store.path(row.path) for row in rows],
        instances=[(row.sop_instance_uid, row.sha256) for row in rows],
    )


def basis_key(source: SourceSeries, pipeline: str, model_version: str, weights_sha256: str) -> str:
    """sha256 over everything a job's results depend on."""
    from dicom_node.reports.uids import instances_digest

    parts = (
        source.series_instance_uid,
        instances_digest(source.instances),
        pipeline,
        model_version,
        weights_sha256,
    )
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def settle_basis(context: WorkerContext, job_id: int, source: SourceSeries, key: str) -> ResultBasis:
    """Record ``key`` and the first start on the job; the basis its writer derives everything from."""
    from dicom_node.reports.uids import ResultBasis, instances_digest

    with context.database.session() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                result_basis=key,
                first_started_at=func.coalesce(Job.first_started_at, Job.started_at, utcnow()),
            ),
            execution_options={"synchronize_session": False},
        )
        first: datetime | None = session.scalar(
            select(func.min(Job.first_started_at)).where(Job.result_basis == key)
        )
    if first is None:  # pragma: no cover - the row was just written
        raise LookupError(f"job {job_id} vanished while its results were written")
    if first.tzinfo is None:  # SQLite hands back naive values; every stored time is UTC
        first = first.replace(tzinfo=UTC)
    return ResultBasis(source.series_instance_uid, instances_digest(source.instances), first)


def replaced_reports(
    context: WorkerContext, job: Job, key: str, profiles: Sequence[str]
) -> dict[str, list[DocumentReference]]:
    """Per profile, the SRs of the latest run of this pipeline on this study before this input's first.

    Counting only runs before the first job with this basis keeps the objects of one basis the same
    whichever job writes them (a re-run, or a new job on an input seen before).
    """
    from dicom_node.reports.uids import DocumentReference

    with context.database.sessions() as session:
        study_uid = job.study.study_instance_uid if job.study is not None else ""
        same_input = (Job.study_id == job.study_id, Job.pipeline == job.pipeline)
        first = session.scalar(select(func.min(Job.id)).where(*same_input, Job.result_basis == key))
        rows = session.execute(
            select(Result, Job.id)
            .join(Job, Result.job_id == Job.id)
            .where(
                *same_input,
                Job.id < (job.id if first is None else min(first, job.id)),
                or_(Job.result_basis.is_(None), Job.result_basis != key),
                Result.profile.in_(list(profiles)),
                Result.sop_class_uid.startswith(SR_CLASS_PREFIX),
            )
            .order_by(Job.id.desc(), Result.id)
        ).all()
    latest: dict[str, int] = {}
    replaced: dict[str, list[DocumentReference]] = {}
    for result, job_id in rows:
        if latest.setdefault(result.profile, job_id) != job_id:
            continue
        replaced.setdefault(result.profile, []).append(
            DocumentReference(
                study_instance_uid=study_uid,
                series_instance_uid=result.series_instance_uid,
                sop_instance_uid=result.sop_instance_uid,
                sop_class_uid=result.sop_class_uid,
            )
        )
    return replaced
