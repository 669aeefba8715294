"""One analysis job's work: claim the row, load the chosen series, run the pipeline, store the results.

Stages, each a plain call: claim (a conditional UPDATE that fences other workers) → load the series'
files from the store → ``Pipeline.run(paths)`` → settle what the results depend on (``identity``: the
series and its instances' hashes, model and weights; the first start, which dates every object) →
write SR/SEG datasets (``dicom_node.reports``: each object once per job, shared by the destination
profiles that produce the same one) → store and index them with ``Ingest`` as the node's own objects
(they change no received fact of the study) → finish the job and create one delivery per destination,
in one transaction that only the current claim holder can commit.

Outcomes: ``succeeded``; ``skipped`` when a content check its route requires fails (``jobs.content``:
run first, the measured reason kept), when the pipeline's model is not installed, or is an untrained
scaffold and ``[analysis] allow_untrained`` is off (never analysed with random weights unless asked,
and then marked UNTRAINED); ``failed`` with the reason for a refused input or any other permanent
error (re-raised so the worker logs it). A transient error (the database went away) puts the job back
to ``queued`` and lets Celery retry with backoff. A lease heartbeat (``index.leases``) runs while the
pipeline does, so a worker that dies is noticed by the reconciler within ``running_lease`` seconds.

Fencing: a worker presumed dead (frozen past its lease) that comes back must not publish. Its result
objects are written under temporary names and each is renamed into the store and indexed only in a
transaction that starts with a compare-and-set on the claim token; completion is one more such
transaction (token in the UPDATE's WHERE, then the Result and Delivery rows). A fenced worker's objects
are discarded unpublished and it creates no delivery.

Pipelines are looked up in a ``PipelineRegistry``: the real ``pipelines.registry.get_pipeline`` by
default, plus whatever the modules named in ``[jobs] plugins`` register (tests add a fixed-cost
pipeline and a minimal writer this way, in the worker process).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import time
from collections.abc import Callable, MutableMapping, Sequence
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import Connection, update
from sqlalchemy.exc import OperationalError

from dicom_node.errors import DicomNodeError, TransientJobError
from dicom_node.index.leases import LeaseHeartbeat, LeaseLostError, claim
from dicom_node.index.models import (
    Delivery,
    DeliveryState,
    Job,
    JobState,
    Result,
    utcnow,
)
from dicom_node.jobs.content import ContentCheckFailedError, require_content, required_checks
from dicom_node.jobs.identity import basis_key, replaced_reports, settle_basis, source_series
from dicom_node.jobs.registry import Pipeline, PipelineUnavailableError, ResultContext
from dicom_node.ops.metrics import ANALYSIS_STAGE_SECONDS, JOBS_FINISHED, observe_job_stages
from dicom_node.storage.ingest import describe_instance

if TYPE_CHECKING:
    from dicom_node.config import Destination, Settings
    from dicom_node.jobs.context import WorkerContext

LOG = logging.getLogger(__name__)


class JobOutcome(StrEnum):
    SUCCEEDED = "succeeded"
    SKIPPED = "skipped"
    FAILED = "failed"
    NOT_CLAIMED = "not-claimed"


def destinations_for(
    settings: Settings, calling_ae_title: str | None, send_to_caller: bool
) -> list[Destination]:
    """The configured destinations, plus the calling AE's entry first when asked and it is configured."""
    chosen = list(settings.destinations)
    if send_to_caller and calling_ae_title:
        caller = [d for d in chosen if d.ae_title == calling_ae_title.strip()]
        chosen = caller + [d for d in chosen if d not in caller]
    return chosen


def claim_job(context: WorkerContext, job_id: int) -> str | None:
    """Take the job if it is queued (or running under a lapsed lease); return the claim token."""
    return claim(
        context.database,
        Job,
        job_id,
        waiting=JobState.QUEUED,
        working=JobState.RUNNING,
        lease=context.jobs.running_lease,
        started_at=utcnow(),
        finished_at=None,
    )


def _finish(context: WorkerContext, job_id: int, token: str, state: JobState, error: str | None) -> bool:
    with context.database.session() as session:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.claim_token == token)
            .values(state=state, error=error, finished_at=utcnow(), lease_expires_at=None),
            execution_options={"synchronize_session": False},
        )
        return bool(getattr(result, "rowcount", 0))


def encode(ds: Dataset) -> bytes:
    """A complete DICOM file (preamble, meta, data set) as bytes, the way the edge stores received ones."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


class ResultConflictError(DicomNodeError):
    """A writer produced two different contents under one SOP Instance UID (a bug, never stored)."""


def store_results(
    context: WorkerContext,
    job: Job,
    profile: str,
    datasets: Sequence[Dataset],
    written: MutableMapping[str, tuple[int, str]] | None = None,
    guard: Callable[[Connection], bool] | None = None,
) -> list[Result]:
    """Store and index each result dataset (idempotently: same bytes on a re-run) and list them.

    ``written`` (SOP Instance UID → object id and sha256 of its bytes), shared by a job's profiles,
    stores an object that several profiles share once; a second, different content under a UID already
    written raises ``ResultConflictError`` instead of superseding the first.

    Each is written under a temporary name and published (renamed into the store and indexed) in a
    transaction that ``guard`` opens with a compare-and-set on the job's claim token; a fenced worker's
    objects are discarded (``LeaseLostError``), never indexed.
    """
    written = {} if written is None else written
    results: list[Result] = []
    for ds in datasets:
        received = describe_instance(ds, transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID))
        known = written.get(received.sop_instance_uid)
        if known is None or known[0] != id(ds):
            data = encode(ds)
            digest = hashlib.sha256(data).hexdigest()
            if known is not None and known[1] != digest:
                raise ResultConflictError(
                    f"two different objects were written as SOP Instance {received.sop_instance_uid}"
                )
            if known is None:
                # The node's own object: stored and indexed, but no received fact of the study changes.
                context.ingest.store_encoded(
                    dataclasses.replace(received, produced_here=True),
                    data,
                    calling_ae_title=context.settings.ae_title,
                    guard=guard,
                )
            written[received.sop_instance_uid] = (id(ds), digest)
        results.append(
            Result(
                job_id=job.id,
                profile=profile,
                sop_instance_uid=received.sop_instance_uid,
                sop_class_uid=received.sop_class_uid,
                series_instance_uid=received.series_instance_uid,
                path=context.store.relative_path(
                    received.study_instance_uid, received.series_instance_uid, received.sop_instance_uid
                ),
            )
        )
    return results


def _complete(
    context: WorkerContext, job_id: int, token: str, model_version: str | None, results: Sequence[Result]
) -> list[int] | None:
    """Record results and deliveries and mark the job succeeded, only if ``token`` still holds it.

    The first statement is the compare-and-set (claim token in the UPDATE's WHERE), so the rest of the
    transaction runs only for the holder, and no other worker can claim the job until it commits.
    """
    now = utcnow()
    values: dict[str, Any] = {
        "state": JobState.SUCCEEDED,
        "finished_at": now,
        "lease_expires_at": None,
        "error": None,
    }
    if model_version:
        values["model_version"] = model_version
    with context.database.session() as session:
        claimed = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.claim_token == token, Job.state == JobState.RUNNING)
            .values(**values),
            execution_options={"synchronize_session": False},
        )
        if not getattr(claimed, "rowcount", 0):
            return None
        job = session.get(Job, job_id)
        assert job is not None
        # This run's results replace the job's earlier ones: a job retried after its input changed
        # must not deliver the old objects beside the new ones (its new SR names the old one).
        current = {(r.profile, r.sop_instance_uid) for r in results}
        for stale in [r for r in job.results if (r.profile, r.sop_instance_uid) not in current]:
            session.delete(stale)
        known = {(r.profile, r.sop_instance_uid) for r in job.results}
        for result in results:
            if (result.profile, result.sop_instance_uid) not in known:
                session.add(result)
        existing = {d.destination for d in job.deliveries}
        created: list[Delivery] = []
        for destination in destinations_for(
            context.settings, job.study.calling_ae_title, context.jobs.send_to_caller
        ):
            if destination.name in existing:
                continue
            delivery = Delivery(
                job_id=job.id,
                destination=destination.name,
                ae_title=destination.ae_title,
                host=destination.host,
                port=destination.port,
                profile=destination.report_profile,
                state=DeliveryState.PENDING,
                attempts=0,
                failures=0,
                lease_expires_at=utcnow() + timedelta(seconds=context.jobs.queued_lease),
            )
            session.add(delivery)
            created.append(delivery)
        session.flush()
        return [d.id for d in created]


def _model_version(pipeline: Pipeline, findings: Any) -> str | None:
    model = getattr(findings, "model", None)
    version = getattr(model, "version", None) or getattr(pipeline, "model_version", None)
    return str(version) if version else None


def run_job(context: WorkerContext, job_id: int) -> JobOutcome:
    """Run job ``job_id`` to its end state (see the module docstring)."""
    token = claim_job(context, job_id)
    if token is None:
        LOG.info(
            "job %d: nothing to do (finished, or another worker holds it)", job_id, extra={"job_id": job_id}
        )
        return JobOutcome.NOT_CLAIMED
    with context.database.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        pipeline_name = job.pipeline
        study_uid = job.study.study_instance_uid
        attempts = job.attempts
        stamps = (job.stable_at, job.queued_at, job.started_at)
    fields = {"job_id": job_id, "pipeline": pipeline_name, "study_instance_uid": study_uid}
    if attempts > context.jobs.max_attempts:
        _finish(context, job_id, token, JobState.FAILED, f"gave up after {attempts - 1} attempts")
        JOBS_FINISHED.labels(pipeline=pipeline_name, outcome=JobOutcome.FAILED.value).inc()
        return JobOutcome.FAILED
    LOG.info("job %d: %s on study %s (attempt %d)", job_id, pipeline_name, study_uid, attempts, extra=fields)
    try:
        with LeaseHeartbeat(context.database, Job, job_id, token, context.jobs.running_lease) as lease:
            delivery_ids = _analyse(context, job, token, lease)
    except LeaseLostError as error:
        LOG.warning("job %d: results discarded, not published: %s", job_id, error)
        return JobOutcome.NOT_CLAIMED
    except (PipelineUnavailableError, ContentCheckFailedError) as error:
        _finish(context, job_id, token, JobState.SKIPPED, str(error))
        JOBS_FINISHED.labels(pipeline=pipeline_name, outcome=JobOutcome.SKIPPED.value).inc()
        LOG.warning("job %d skipped: %s", job_id, error, extra=fields)
        return JobOutcome.SKIPPED
    except (OperationalError, TransientJobError) as error:
        _release(context, job_id, token, f"transient: {error}")
        JOBS_FINISHED.labels(pipeline=pipeline_name, outcome="retried").inc()
        raise
    except Exception as error:
        _finish(context, job_id, token, JobState.FAILED, f"{type(error).__name__}: {error}")
        JOBS_FINISHED.labels(pipeline=pipeline_name, outcome=JobOutcome.FAILED.value).inc()
        LOG.error("job %d failed: %s", job_id, error, extra=fields)
        raise
    if delivery_ids is None:
        LOG.warning("job %d: lost its claim while running; another worker finishes it", job_id, extra=fields)
        return JobOutcome.NOT_CLAIMED
    JOBS_FINISHED.labels(pipeline=pipeline_name, outcome=JobOutcome.SUCCEEDED.value).inc()
    observe_job_stages(*stamps, utcnow())
    for delivery_id in delivery_ids:
        context.queue.enqueue_delivery(delivery_id)
    LOG.info("job %d succeeded; %d deliveries queued", job_id, len(delivery_ids), extra=fields)
    return JobOutcome.SUCCEEDED


def _analyse(context: WorkerContext, job: Job, token: str, lease: LeaseHeartbeat) -> list[int] | None:
    source = source_series(context, job)
    if not source.paths:
        raise MissingInputError(f"series of job {job.id} has no stored instances")
    if checks := required_checks(job):  # before the pipeline: a series without the anatomy is skipped
        require_content(context, job.id, token, checks, source.paths)
    pipeline = context.registry.pipeline(
        job.pipeline,
        context.settings.models_dir,
        allow_untrained=context.settings.allow_untrained,
        mode=context.settings.analysis.mode,
    )
    try:
        findings, seconds = pipeline.run_timed(source.paths)
    except Exception as error:
        if _is_not_installed(error):
            raise PipelineUnavailableError(str(error)) from error
        raise
    for stage, value in seconds.items():
        ANALYSIS_STAGE_SECONDS.labels(pipeline=job.pipeline, stage=stage).observe(value)
    sources = [pydicom.dcmread(p) for p in source.paths]
    model_version = _model_version(pipeline, findings)
    weights = str(getattr(getattr(findings, "model", None), "weights_sha256", "") or "")
    key = basis_key(source, job.pipeline, model_version or "", weights)
    profiles = sorted({d.report_profile for d in context.settings.destinations}) or ["standard"]
    basis = settle_basis(context, job.id, source, key)  # records the basis replaced_reports reads
    result_context = ResultContext(
        pipeline=job.pipeline, basis=basis, predecessors=replaced_reports(context, job, key, profiles)
    )
    writer = context.registry.writer(job.pipeline)
    written: dict[str, tuple[int, str]] = {}
    results: list[Result] = []
    for profile in profiles:
        datasets = writer(findings, sources, profile, result_context)
        results += store_results(context, job, profile, datasets, written, lease.guard)
    return _complete(context, job.id, token, model_version, results)


class MissingInputError(DicomNodeError):
    """The job's input cannot be analysed as it is (no instances stored for the chosen series)."""


def _is_not_installed(error: Exception) -> bool:
    try:
        from pipelines.errors import PipelineNotInstalledError
    except ImportError:
        return False
    return isinstance(error, PipelineNotInstalledError)


def _release(context: WorkerContext, job_id: int, token: str, error: str) -> None:
    """Put a claimed job back to ``queued`` for Celery's retry; if even that fails, the lease expires."""
    for attempt in range(3):
        try:
            with context.database.session() as session:
                session.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.claim_token == token)
                    .values(state=JobState.QUEUED, error=error, claim_token=None),
                    execution_options={"synchronize_session": False},
                )
            return
        except OperationalError:  # SQLite "database is locked" under several writer processes
            time.sleep(0.2 * (attempt + 1))
    LOG.warning(
        "job %d: could not release the claim; the reconciler re-queues it after the lease",
        job_id,
        extra={"job_id": job_id},
    )
