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

import contextlib
import dataclasses
import hashlib
import io
import logging
import time
from collections.abc import Callable, MutableMapping, Sequence
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
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
from dicom_node.jobs.batching import queued_jobs
from dicom_node.jobs.content import ContentCheckFailedError, require_content, required_checks
from dicom_node.jobs.identity import (
    SourceSeries,
    basis_key,
    replaced_reports,
    settle_basis,
    source_series,
)
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


@dataclasses.dataclass(frozen=True)
class _Claim:
    """A job this worker holds: its row as read after the claim, and the claim token."""

    job: Job
    token: str
    pipeline: str
    study_uid: str
    attempts: int
    stamps: tuple[Any, Any, Any]

    @property
    def job_id(self) -> int:
        return self.job.id

    @property
    def fields(self) -> dict[str, Any]:
        return {"job_id": self.job.id, "pipeline": self.pipeline, "study_instance_uid": self.study_uid}


def _read_claim(context: WorkerContext, job_id: int, token: str) -> _Claim:
    with context.database.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return _Claim(
            job=job,
            token=token,
            pipeline=job.pipeline,
            study_uid=job.study.study_instance_uid,
            attempts=job.attempts,
            stamps=(job.stable_at, job.queued_at, job.started_at),
        )


def _gave_up(context: WorkerContext, claim: _Claim) -> bool:
    """Fail the job if it has run out of attempts (``[jobs] max_attempts``); whether it did."""
    if claim.attempts <= context.jobs.max_attempts:
        return False
    _finish(
        context, claim.job_id, claim.token, JobState.FAILED, f"gave up after {claim.attempts - 1} attempts"
    )
    JOBS_FINISHED.labels(pipeline=claim.pipeline, outcome=JobOutcome.FAILED.value).inc()
    return True


def run_job(context: WorkerContext, job_id: int) -> JobOutcome:
    """Run job ``job_id`` to its end state (see the module docstring).

    A radiograph job may take queued jobs of its pipeline along into one batch (``_join_batch``); each
    of those ends here too, with its own outcome, while the return value is this job's.
    """
    token = claim_job(context, job_id)
    if token is None:
        LOG.info(
            "job %d: nothing to do (finished, or another worker holds it)", job_id, extra={"job_id": job_id}
        )
        return JobOutcome.NOT_CLAIMED
    claim = _read_claim(context, job_id, token)
    if _gave_up(context, claim):
        return JobOutcome.FAILED
    LOG.info(
        "job %d: %s on study %s (attempt %d)",
        job_id,
        claim.pipeline,
        claim.study_uid,
        claim.attempts,
        extra=claim.fields,
    )
    try:
        with contextlib.ExitStack() as leases:  # every lease of the batch ends before its job's outcome
            lease = leases.enter_context(
                LeaseHeartbeat(context.database, Job, job_id, token, context.jobs.running_lease)
            )
            delivery_ids = _analyse(context, claim, lease, leases)
    except Exception as error:
        outcome, reraise = _settle_error(context, claim, error)
        if reraise:
            raise
        return outcome
    return _succeeded(context, claim, delivery_ids)


def _settle_error(context: WorkerContext, claim: _Claim, error: Exception) -> tuple[JobOutcome, bool]:
    """End (or put back) the claimed job after ``error``: its outcome, and whether to re-raise ``error``.

    Re-raised: a transient error (Celery retries the task with backoff) and an unexpected one (the
    worker logs it with its traceback).
    """
    job_id, fields = claim.job_id, claim.fields
    if isinstance(error, LeaseLostError):
        LOG.warning("job %d: results discarded, not published: %s", job_id, error, extra=fields)
        return JobOutcome.NOT_CLAIMED, False
    # a model missing only when the pipeline runs is skipped like one missing when it is built
    if isinstance(error, (PipelineUnavailableError, ContentCheckFailedError)) or _is_not_installed(error):
        _finish(context, job_id, claim.token, JobState.SKIPPED, str(error))
        JOBS_FINISHED.labels(pipeline=claim.pipeline, outcome=JobOutcome.SKIPPED.value).inc()
        LOG.warning("job %d skipped: %s", job_id, error, extra=fields)
        return JobOutcome.SKIPPED, False
    if isinstance(error, (OperationalError, TransientJobError)):
        _release(context, job_id, claim.token, f"transient: {error}")
        JOBS_FINISHED.labels(pipeline=claim.pipeline, outcome="retried").inc()
        return JobOutcome.NOT_CLAIMED, True
    _finish(context, job_id, claim.token, JobState.FAILED, f"{type(error).__name__}: {error}")
    JOBS_FINISHED.labels(pipeline=claim.pipeline, outcome=JobOutcome.FAILED.value).inc()
    LOG.error("job %d failed: %s", job_id, error, extra=fields)
    return JobOutcome.FAILED, True


def _succeeded(context: WorkerContext, claim: _Claim, delivery_ids: list[int] | None) -> JobOutcome:
    """Count a finished run and queue its deliveries (``None``: the claim was lost while running)."""
    if delivery_ids is None:
        LOG.warning(
            "job %d: lost its claim while running; another worker finishes it",
            claim.job_id,
            extra=claim.fields,
        )
        return JobOutcome.NOT_CLAIMED
    JOBS_FINISHED.labels(pipeline=claim.pipeline, outcome=JobOutcome.SUCCEEDED.value).inc()
    observe_job_stages(*claim.stamps, utcnow())
    for delivery_id in delivery_ids:
        context.queue.enqueue_delivery(delivery_id)
    LOG.info("job %d succeeded; %d deliveries queued", claim.job_id, len(delivery_ids), extra=claim.fields)
    return JobOutcome.SUCCEEDED


@dataclasses.dataclass(frozen=True)
class _Member:
    """A claimed job ready for its pipeline: its lease and the series it analyses."""

    claim: _Claim
    lease: LeaseHeartbeat
    source: SourceSeries


def _prepare(context: WorkerContext, claim: _Claim) -> SourceSeries:
    """The job's series, after the content checks its route requires (a failed one skips the job)."""
    source = source_series(context, claim.job)
    if not source.paths:
        raise MissingInputError(f"series of job {claim.job_id} has no stored instances")
    if checks := required_checks(claim.job):  # before the pipeline: a series without the anatomy is skipped
        require_content(context, claim.job_id, claim.token, checks, source.paths)
    return source


def _analyse(
    context: WorkerContext, claim: _Claim, lease: LeaseHeartbeat, leases: contextlib.ExitStack
) -> list[int] | None:
    source = _prepare(context, claim)
    pipeline = context.registry.pipeline(
        claim.pipeline,
        context.settings.models_dir,
        allow_untrained=context.settings.allow_untrained,
        mode=context.settings.analysis.mode,
    )
    member = _Member(claim, lease, source)
    run_batch: Callable[[list[Sequence[str | Path]]], list[Any]] | None = getattr(pipeline, "run_batch", None)
    batch_size = context.settings.analysis.batch_size
    if run_batch is not None and batch_size > 1:
        others = _join_batch(context, claim, batch_size - 1, leases)
        if others:
            return _analyse_batch(context, pipeline, run_batch, member, others)
    findings, seconds = pipeline.run_timed(source.paths)
    for stage, value in seconds.items():
        ANALYSIS_STAGE_SECONDS.labels(pipeline=claim.pipeline, stage=stage).observe(value)
    return _publish(context, pipeline, member, findings)


def _join_batch(
    context: WorkerContext, claim: _Claim, limit: int, leases: contextlib.ExitStack
) -> list[_Member]:
    """Claim up to ``limit`` more queued jobs of ``claim``'s pipeline, each with its own lease.

    Their own task messages, when a worker takes them, find them claimed or finished and do nothing;
    a job taken along here that this worker does not finish (killed) is re-queued by the reconciler
    when its lease runs out, as any other.
    """
    members: list[_Member] = []
    for job_id in queued_jobs(context.database, claim.pipeline, exclude=claim.job_id, limit=limit):
        token = claim_job(context, job_id)
        if token is None:
            continue  # another worker took it between the query and the claim
        other = _read_claim(context, job_id, token)
        if _gave_up(context, other):
            continue
        lease = leases.enter_context(
            LeaseHeartbeat(context.database, Job, job_id, token, context.jobs.running_lease)
        )
        try:
            members.append(_Member(other, lease, _prepare(context, other)))
        except Exception as error:
            lease.stop()
            _settle_apart(context, other, error)
            continue
        LOG.info(
            "job %d: %s on study %s (attempt %d), in the batch of job %d",
            job_id,
            other.pipeline,
            other.study_uid,
            other.attempts,
            claim.job_id,
            extra=other.fields,
        )
    return members


def _settle_apart(context: WorkerContext, claim: _Claim, error: Exception) -> None:
    """End a job taken along into a batch after ``error``, without raising into the batch's own job.

    One put back for a transient error gets a new task message at once (its own was taken already).
    """
    outcome, reraise = _settle_error(context, claim, error)  # logged there
    if outcome is JobOutcome.NOT_CLAIMED and reraise:
        try:
            context.queue.enqueue_job(claim.job_id)
        except Exception:  # the reconciler re-queues it after its queued lease
            LOG.warning("job %d: could not queue it again", claim.job_id, exc_info=True, extra=claim.fields)


def _analyse_batch(
    context: WorkerContext,
    pipeline: Pipeline,
    run_batch: Callable[[list[Sequence[str | Path]]], list[Any]],
    first: _Member,
    others: Sequence[_Member],
) -> list[int] | None:
    """``first`` and ``others`` in one ``run_batch``; ``first``'s deliveries (or its error) returned."""
    members = [first, *others]
    LOG.info(
        "job %d: %d %s jobs in one batch (%s)",
        first.claim.job_id,
        len(members),
        first.claim.pipeline,
        ", ".join(str(m.claim.job_id) for m in members),
        extra=first.claim.fields,
    )
    started = time.perf_counter()
    try:
        outputs = run_batch([m.source.paths for m in members])
    except Exception as error:
        for member in others:
            member.lease.stop()
            _settle_apart(context, member.claim, error)
        raise
    per_job = (time.perf_counter() - started) / len(members)
    for _ in members:
        ANALYSIS_STAGE_SECONDS.labels(pipeline=first.claim.pipeline, stage="batch").observe(per_job)
    try:
        if isinstance(outputs[0], Exception):
            raise outputs[0]
        return _publish(context, pipeline, first, outputs[0])
    finally:
        for member, output in zip(others, outputs[1:], strict=True):
            try:
                if isinstance(output, Exception):
                    raise output
                delivery_ids = _publish(context, pipeline, member, output)
            except Exception as error:
                member.lease.stop()
                _settle_apart(context, member.claim, error)
            else:
                member.lease.stop()
                _succeeded(context, member.claim, delivery_ids)


def _publish(context: WorkerContext, pipeline: Pipeline, member: _Member, findings: Any) -> list[int] | None:
    """Write the job's result objects, store them under its lease, and complete the job."""
    claim, source = member.claim, member.source
    job = claim.job
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
        results += store_results(context, job, profile, datasets, written, member.lease.guard)
    return _complete(context, job.id, claim.token, model_version, results)


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
