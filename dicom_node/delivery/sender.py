"""One delivery's work: C-STORE a job's result objects to one destination, with backoff kept in the row.

A delivery is claimed like a job (a conditional UPDATE, fenced by a token), then its results in the
destination's profile are sent on one association. The association proposes, per SOP class, the
transfer syntax the objects are stored in plus Explicit and Implicit VR Little Endian, so a peer that
accepts only the uncompressed defaults still gets them (decoded first if they were compressed).

Any failure — no association, a refused or aborted one, a non-success status — is retried: the row
goes back to ``pending`` with ``next_attempt_at`` = now + ``delivery_backoff`` × 2^(failures−1) (capped
at ``delivery_backoff_max``, ±10 % jitter), and the reconciler enqueues it when due. Once the next
attempt would fall past ``delivery_horizon`` after the first one, the delivery ends ``failed``: the dead
letter, listed by ``dicom-node jobs`` and put back by ``dicom-node retry``. Each delivery is its own
row and message, so one unreachable destination delays nothing bound elsewhere.

While it sends, the delivery's lease is renewed like a running job's (``index.leases.LeaseHeartbeat``),
so a slow PACS or a large SEG never looks like a dead worker; before each object the lease is renewed
once more as a compare-and-set, so a worker that was frozen past its lease and comes back stops (and
aborts its association) instead of sending beside the worker that took over. Its outcome is recorded
by a compare-and-set on the claim token, too.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from pydicom import dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from sqlalchemy import func, update

from dicom_node.config import DEFAULT_TIMEOUTS, Destination, DimseTimeouts, JobSettings, Settings
from dicom_node.delivery.scu import FileToSend, SendReport, associate, is_success, make_ae
from dicom_node.index.leases import LeaseHeartbeat, LeaseLostError, claim
from dicom_node.index.models import Delivery, DeliveryState, Job, utcnow
from dicom_node.ops.metrics import DELIVERIES_FINISHED, DELIVERY_ATTEMPTS, DELIVERY_FAILURES, observe_stage

if TYPE_CHECKING:
    from dicom_node.index.database import Database
    from dicom_node.storage.store import InstanceStore

LOG = logging.getLogger(__name__)
FALLBACK_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


class DeliveryOutcome(StrEnum):
    DELIVERED = "delivered"
    RETRYING = "retrying"
    FAILED = "failed"
    NOT_CLAIMED = "not-claimed"


def proposed_syntaxes(stored: Sequence[str]) -> list[str]:
    """The stored transfer syntaxes first, then the uncompressed fallbacks, without repeats."""
    ordered: list[str] = []
    for uid in [*stored, *FALLBACK_SYNTAXES]:
        if uid not in ordered:
            ordered.append(str(uid))
    return ordered


class DeliveryContext(Protocol):
    """What a delivery needs (``jobs.context.WorkerContext`` is one): settings, index and store."""

    settings: Settings
    jobs: JobSettings
    database: Database
    store: InstanceStore


def send_results(
    destination: Destination,
    files: Sequence[FileToSend],
    calling_ae_title: str,
    timeouts: DimseTimeouts = DEFAULT_TIMEOUTS,
    before_each: Callable[[], None] | None = None,
) -> SendReport:
    """C-STORE ``files`` on one association; raises ``ConnectionError`` if none is established.

    ``before_each`` runs before every C-STORE; if it raises, the association is aborted (nothing more is
    sent on it) and the exception propagates.
    """
    report = SendReport()
    ae = make_ae(calling_ae_title, timeouts)
    by_class: dict[str, list[str]] = {}
    for item in files:
        by_class.setdefault(item.sop_class_uid, []).append(item.transfer_syntax_uid)
    for sop_class, stored in sorted(by_class.items()):
        ae.add_requested_context(sop_class, proposed_syntaxes(stored))
    assoc = associate(ae, destination)
    try:
        accepted = {str(cx.abstract_syntax): str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
        for item in files:
            if not assoc.is_established:
                raise ConnectionError(f"{destination.address} ended the association")
            if before_each is not None:
                try:
                    before_each()
                except BaseException:
                    assoc.abort()
                    raise
            syntax = accepted.get(item.sop_class_uid)
            if syntax is None:
                report.statuses[item.sop_instance_uid] = -1
                report.comments[item.sop_instance_uid] = "SOP class not accepted by the destination"
                continue
            if syntax == item.transfer_syntax_uid:
                response = assoc.send_c_store(item.path)
            else:
                ds = dcmread(item.path)
                if UID(item.transfer_syntax_uid).is_compressed:
                    ds.decompress()
                response = assoc.send_c_store(ds)
            status = int(response.Status) if "Status" in response else -1
            report.statuses[item.sop_instance_uid] = status
            if "ErrorComment" in response:
                report.comments[item.sop_instance_uid] = str(response.ErrorComment)
    finally:
        if assoc.is_established:
            assoc.release()
    return report


def backoff_delay(failures: int, base: float, cap: float) -> float:
    """Seconds before attempt ``failures + 1``: exponential, capped, with ±10 % jitter."""
    delay = min(base * 2 ** max(failures - 1, 0), cap)
    return float(delay * random.uniform(0.9, 1.1))


def claim_delivery(context: DeliveryContext, delivery_id: int) -> str | None:
    """Take the delivery if it is pending (or sending under a lapsed lease); return the claim token."""
    return claim(
        context.database,
        Delivery,
        delivery_id,
        waiting=DeliveryState.PENDING,
        working=DeliveryState.SENDING,
        lease=context.jobs.running_lease,
        first_attempt_at=func.coalesce(Delivery.first_attempt_at, utcnow()),
    )


def deliver(context: DeliveryContext, delivery_id: int) -> DeliveryOutcome:
    """Send delivery ``delivery_id`` once; on failure schedule the next attempt or dead-letter it."""
    token = claim_delivery(context, delivery_id)
    if token is None:
        return DeliveryOutcome.NOT_CLAIMED
    with context.database.sessions() as session:
        delivery = session.get(Delivery, delivery_id)
        job = session.get(Job, delivery.job_id) if delivery else None
        assert delivery is not None and job is not None
        files = [
            FileToSend(
                context.store.path(r.path),
                r.sop_class_uid,
                r.sop_instance_uid,
                _stored_syntax(context, r.path),
            )
            for r in job.results
            if r.profile == delivery.profile
        ]
        # The destination as configured now, TLS settings and all. One that was removed from the
        # settings gets nothing (never sent in clear text to an address it had): the row names it.
        configured = next((d for d in context.settings.destinations if d.name == delivery.destination), None)
        destination = configured or Destination(
            name=delivery.destination, ae_title=delivery.ae_title, host=delivery.host, port=delivery.port
        )
        job_finished_at = job.finished_at
    fields = {"delivery_id": delivery_id, "job_id": job.id, "destination": destination.name}
    DELIVERY_ATTEMPTS.labels(destination=destination.name).inc()
    error: str | None = None
    lease = LeaseHeartbeat(context.database, Delivery, delivery_id, token, context.jobs.running_lease)
    try:
        if configured is None:
            raise ConnectionError(f"destination {destination.name!r} is no longer configured; nothing sent")
        with lease:
            report = send_results(
                destination, files, context.settings.ae_title, context.settings.timeouts, lease.check
            )
        failed = {uid: s for uid, s in report.statuses.items() if not is_success(s)}
        if failed:
            uid, status = next(iter(failed.items()))
            error = (
                f"{len(failed)} of {len(files)} objects refused, e.g. {uid}: status 0x{status & 0xFFFF:04X} "
                + report.comments.get(uid, "")
            ).strip()
    except LeaseLostError as lost:
        LOG.warning(
            "delivery %d: stopped sending to %s: %s", delivery_id, destination.address, lost, extra=fields
        )
        return DeliveryOutcome.NOT_CLAIMED
    except (ConnectionError, OSError, RuntimeError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    outcome = _record_outcome(context, delivery_id, token, destination, len(files), error, fields)
    if outcome is not DeliveryOutcome.NOT_CLAIMED:
        if error is not None:
            DELIVERY_FAILURES.labels(destination=destination.name).inc()
        if outcome is not DeliveryOutcome.RETRYING:
            DELIVERIES_FINISHED.labels(destination=destination.name, outcome=outcome.value).inc()
        if outcome is DeliveryOutcome.DELIVERED:
            observe_stage("delivery", job_finished_at, utcnow())
    return outcome


def _record_outcome(
    context: DeliveryContext,
    delivery_id: int,
    token: str,
    destination: Destination,
    count: int,
    error: str | None,
    fields: dict[str, Any],
) -> DeliveryOutcome:
    """Delivered, pending again after a backoff, or failed for good: a compare-and-set on ``token``."""
    now = utcnow()
    values: dict[str, Any] = {"claim_token": None, "lease_expires_at": None}
    with context.database.session() as session:
        delivery = session.get(Delivery, delivery_id)
        if delivery is None or delivery.claim_token != token:
            return DeliveryOutcome.NOT_CLAIMED
        if error is None:
            outcome = DeliveryOutcome.DELIVERED
            values.update(state=DeliveryState.DELIVERED, delivered_at=now, error=None)
        else:
            failures = delivery.failures + 1
            delay = backoff_delay(failures, context.jobs.delivery_backoff, context.jobs.delivery_backoff_max)
            first = delivery.first_attempt_at or now
            values.update(failures=failures, error=error)
            if (now + timedelta(seconds=delay) - first).total_seconds() > context.jobs.delivery_horizon:
                outcome = DeliveryOutcome.FAILED
                values.update(state=DeliveryState.FAILED)
            else:
                outcome = DeliveryOutcome.RETRYING
                values.update(state=DeliveryState.PENDING, next_attempt_at=now + timedelta(seconds=delay))
        # The row was read above only for its counters; what decides is the token in this WHERE.
        result = session.execute(
            update(Delivery)
            .where(Delivery.id == delivery_id, Delivery.claim_token == token)
            .values(**values),
            execution_options={"synchronize_session": False},
        )
        if not getattr(result, "rowcount", 0):
            return DeliveryOutcome.NOT_CLAIMED
    if outcome is DeliveryOutcome.DELIVERED:
        LOG.info("delivery %d: %d objects to %s", delivery_id, count, destination.address, extra=fields)
    elif outcome is DeliveryOutcome.FAILED:
        LOG.error(
            "delivery %d to %s failed for good: %s", delivery_id, destination.address, error, extra=fields
        )
    else:
        LOG.warning(
            "delivery %d to %s failed (%s); next attempt in %.1f s",
            delivery_id,
            destination.address,
            error,
            (values["next_attempt_at"] - now).total_seconds(),
            extra=fields,
        )
    return outcome


def _stored_syntax(context: DeliveryContext, relative: str) -> str:
    ds = dcmread(context.store.path(relative), stop_before_pixels=True, specific_tags=["SOPClassUID"])
    return str(ds.file_meta.TransferSyntaxUID)
