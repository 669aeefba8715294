"""Storage Commitment Push Model SCP: N-ACTION in, N-EVENT-REPORT out (PS3.4 Annex J).

An instance is committed only when the node holds it durably: its index row exists (written after the
file was fsynced and renamed, ``storage/ingest.py``), the SOP Class matches, and its file is still in
the store (retention may have removed it). Every other referenced instance goes in the Failed SOP
Sequence with a reason: 0x0112 no such object instance, 0x0119 SOP class/instance conflict (another SOP
Class under that UID), 0x0110 processing failure (indexed but its file is gone).

The request and its decision are committed in one transaction before the N-ACTION response goes out,
so a restart loses nothing. The N-EVENT-REPORT is then sent by the reporter thread: on the request's own
association while the requester keeps it open, else on a new association to the ``[[destinations]]``
entry whose ``ae_title`` is the requester's (the node takes the SCP role of Storage Commitment there,
by SCP/SCU role selection), retried with a doubling delay until ``MAX_ATTEMPTS``.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_RELEASE
from sqlalchemy import ColumnElement, select, update

from dicom_node.config import Destination, DimseTimeouts
from dicom_node.index.database import Database
from dicom_node.index.models import (
    CommitmentItem,
    CommitmentRequest,
    CommitmentState,
    Instance,
    utcnow,
)
from dicom_node.storage.store import InstanceStore

LOG = logging.getLogger(__name__)

STORAGE_COMMITMENT = UID("1.2.840.10008.1.20.1")
STORAGE_COMMITMENT_INSTANCE = UID("1.2.840.10008.1.20.1.1")
"""The well-known SOP Instance of Storage Commitment Push Model."""
REQUEST_STORAGE_COMMITMENT = 1
EVENT_ALL_COMMITTED = 1
EVENT_SOME_FAILED = 2

SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
INVALID_ATTRIBUTE_VALUE = 0x0106
MISSING_ATTRIBUTE = 0x0120
NO_SUCH_ACTION_TYPE = 0x0123
INVALID_OBJECT_INSTANCE = 0x0117
MAX_ATTEMPTS = 8
RETRY_BASE = 2.0
POLL_INTERVAL = 1.0
RELEASE_GRACE = 0.1
"""How long after the N-ACTION the reporter looks whether the requester is releasing its association."""
SAME_ASSOCIATION_WAIT = 5.0
"""How long a requester that kept its association open may take to answer the report there."""
CLAIM_LEASE = 120.0
"""Seconds a process holds a report it is sending (``next_attempt_at``): with several receiver
processes on one index, only the one whose claim took sends it; if it dies meanwhile, another sends it
once the lease has run out."""
OTHERS_GRACE = 10.0
"""Seconds a request is left to the process that received it (which can report on the request's own
association) before any other process takes it."""

Evidence = Callable[[float], None]
"""Called with a delay in seconds when new completion evidence may let a study complete."""


class RequestError(ValueError):
    """A malformed N-ACTION request: its DIMSE status and the error comment."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status


@dataclass(frozen=True)
class Reference:
    sop_class_uid: str
    sop_instance_uid: str


def status_dataset(status: int, comment: str) -> Dataset:
    """A DIMSE status with its Error Comment (LO, 64 characters at most)."""
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment.replace("\\", "/")[:64]
    return ds


def _valid_uid(value: object) -> bool:
    text = str(value or "")
    return 0 < len(text) <= 64 and UID(text).is_valid


def parse_request(event: evt.Event) -> tuple[str, list[Reference]]:
    """The Transaction UID and the references of an N-ACTION request, or ``RequestError``."""
    request = event.request
    if int(getattr(request, "ActionTypeID", 0) or 0) != REQUEST_STORAGE_COMMITMENT:
        raise RequestError(NO_SUCH_ACTION_TYPE, "Action Type ID must be 1 (Request Storage Commitment)")
    if str(getattr(request, "RequestedSOPInstanceUID", "") or "") != STORAGE_COMMITMENT_INSTANCE:
        raise RequestError(
            INVALID_OBJECT_INSTANCE, f"Requested SOP Instance UID must be {STORAGE_COMMITMENT_INSTANCE}"
        )
    try:
        info = event.action_information
    except Exception as error:
        raise RequestError(INVALID_ATTRIBUTE_VALUE, f"unreadable Action Information: {error}") from None
    transaction = info.get("TransactionUID")
    if transaction is None:
        raise RequestError(MISSING_ATTRIBUTE, "Transaction UID is missing")
    if not _valid_uid(transaction):
        raise RequestError(INVALID_ATTRIBUTE_VALUE, "Transaction UID is not a valid UID")
    items = info.get("ReferencedSOPSequence")
    if not items:
        raise RequestError(MISSING_ATTRIBUTE, "Referenced SOP Sequence is missing or empty")
    references: list[Reference] = []
    for item in items:
        sop_class, sop_instance = item.get("ReferencedSOPClassUID"), item.get("ReferencedSOPInstanceUID")
        if not _valid_uid(sop_class) or not _valid_uid(sop_instance):
            raise RequestError(
                INVALID_ATTRIBUTE_VALUE, "every Referenced SOP Sequence item needs valid class and instance"
            )
        references.append(Reference(str(sop_class), str(sop_instance)))
    return str(transaction), references


def decide(session_instances: dict[str, Instance], store: InstanceStore, reference: Reference) -> int | None:
    """None if ``reference`` is committed, else its failure reason."""
    instance = session_instances.get(reference.sop_instance_uid)
    if instance is None:
        return NO_SUCH_OBJECT_INSTANCE
    if instance.sop_class_uid != reference.sop_class_uid:
        return CLASS_INSTANCE_CONFLICT
    if not store.path(instance.path).is_file():
        return PROCESSING_FAILURE
    return None


def event_report(request: CommitmentRequest) -> tuple[int, Dataset]:
    """The N-EVENT-REPORT event type and Event Information of a decided request."""
    ds = Dataset()
    ds.TransactionUID = request.transaction_uid
    committed, failed = DicomSequence(), DicomSequence()
    for item in request.items:
        entry = Dataset()
        entry.ReferencedSOPClassUID = item.sop_class_uid
        entry.ReferencedSOPInstanceUID = item.sop_instance_uid
        if item.failure_reason is None:
            committed.append(entry)
        else:
            entry.FailureReason = item.failure_reason
            failed.append(entry)
    if committed:
        ds.ReferencedSOPSequence = committed
    if failed:
        ds.FailedSOPSequence = failed
    return (EVENT_SOME_FAILED if failed else EVENT_ALL_COMMITTED), ds


@dataclass
class CommitmentService:
    """Decides commitment requests and reports them; ``start``/``stop`` run the reporter thread."""

    database: Database
    store: InstanceStore
    ae_title: str
    destinations: tuple[Destination, ...]
    timeouts: DimseTimeouts
    on_evidence: Evidence | None = None

    def __post_init__(self) -> None:
        self._live: dict[int, weakref.ref[Association]] = {}
        self._received: set[int] = set()  # requests this process recorded and has not finished
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- N-ACTION ---------------------------------------------------------------------------------
    def handle_n_action(
        self, event: evt.Event, association_id: int | None
    ) -> tuple[int | Dataset, Dataset | None]:
        """Record and decide one request; the N-EVENT-REPORT follows from the reporter thread."""
        assoc = event.assoc
        calling = assoc.requestor.ae_title.strip()
        try:
            transaction, references = parse_request(event)
        except RequestError as error:
            LOG.warning("refused storage commitment request from %s: %s", calling, error)
            return status_dataset(error.status, str(error)), None
        now = utcnow()
        with self.database.session() as session:
            uids = [r.sop_instance_uid for r in references]
            known = {
                i.sop_instance_uid: i
                for i in session.scalars(select(Instance).where(Instance.sop_instance_uid.in_(uids))).all()
            }
            request = CommitmentRequest(
                transaction_uid=transaction,
                calling_ae_title=calling,
                peer_address=str(assoc.requestor.address),
                association_id=association_id,
                state=CommitmentState.PENDING,
                received_at=now,
                decided_at=now,
                attempts=0,
            )
            for reference in dict.fromkeys(references):
                request.items.append(
                    CommitmentItem(
                        sop_class_uid=reference.sop_class_uid,
                        sop_instance_uid=reference.sop_instance_uid,
                        failure_reason=decide(known, self.store, reference),
                    )
                )
            session.add(request)
            session.flush()
            request_id = request.id
            failed = sum(1 for item in request.items if item.failure_reason is not None)
            total = len(request.items)
        LOG.info(
            "storage commitment %s from %s: %d committed, %d failed",
            transaction,
            calling,
            total - failed,
            failed,
            extra={"transaction_uid": transaction, "calling_ae": calling, "commitment_id": request_id},
        )
        with self._lock:
            self._live[request_id] = weakref.ref(assoc)
            self._received.add(request_id)
        self._wake.set()
        if self.on_evidence is not None:
            self.on_evidence(0.0)
        return SUCCESS, None

    # --- reporting --------------------------------------------------------------------------------
    def start(self, *, resume: bool = True) -> None:
        """Start the reporter; with ``resume`` (the node's own process, at start-up), what a previous
        run left pending is due at once. A receiver process (``dicom_node.receivers``) starts with
        ``resume=False``: the node's claims and retries stand."""
        if resume:
            with self.database.session() as session:
                session.execute(
                    update(CommitmentRequest)
                    .where(CommitmentRequest.state == CommitmentState.PENDING)
                    .values(next_attempt_at=None)
                )
        self._thread = threading.Thread(target=self._loop, name="commitment-reporter", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.report_due()
            except Exception:
                LOG.exception("storage commitment reporting pass failed; retrying")
            self._wake.wait(POLL_INTERVAL)
            self._wake.clear()

    def _due(self, now: datetime) -> list[int]:
        """Pending requests due now: those this process received, and others' after ``OTHERS_GRACE``."""
        with self.database.session() as session:
            rows = session.execute(
                select(CommitmentRequest.id, CommitmentRequest.received_at)
                .where(CommitmentRequest.state == CommitmentState.PENDING)
                .where(_due_at(now))
                .order_by(CommitmentRequest.id)
            ).all()
        with self._lock:
            mine = set(self._received)
        others = now - timedelta(seconds=OTHERS_GRACE)
        return [row.id for row in rows if row.id in mine or row.received_at <= others]

    def _claim(self, request_id: int) -> bool:
        """Take the report for ``CLAIM_LEASE`` seconds, unless another process has taken it."""
        now = utcnow()
        with self.database.session() as session:
            claimed = session.execute(
                update(CommitmentRequest)
                .where(CommitmentRequest.id == request_id)
                .where(CommitmentRequest.state == CommitmentState.PENDING)
                .where(_due_at(now))
                .values(next_attempt_at=now + timedelta(seconds=CLAIM_LEASE))
            )
            return bool(getattr(claimed, "rowcount", 0) == 1)

    def report_due(self) -> None:
        """Send the report of every pending request that is due."""
        for request_id in self._due(utcnow()):
            if self._stop.is_set():
                return
            self._report(request_id)

    def _report(self, request_id: int) -> None:
        if not self._claim(request_id):
            return
        with self.database.session() as session:
            request = session.get(CommitmentRequest, request_id)
            if request is None or request.state != CommitmentState.PENDING:
                return
            event_type, info = event_report(request)
            calling, transaction = request.calling_ae_title, request.transaction_uid
        with self._lock:
            ref = self._live.pop(request_id, None)
        assoc = ref() if ref is not None else None
        error: str | None = None
        if assoc is not None and self._still_open(assoc):
            error = self._send_on(assoc, event_type, info, timeout=SAME_ASSOCIATION_WAIT)
            if error is None:
                self._finish(request_id, "the request's association")
                return
            LOG.info("commitment %s: %s; trying a new association", transaction, error)
        destination = next((d for d in self.destinations if d.ae_title == calling), None)
        if destination is None:
            error = f"no [[destinations]] entry with ae_title {calling!r} to send the report to"
        elif destination.tls:
            error = f"destination {destination.name!r} requires TLS, which commitment reports do not use yet"
        else:
            error = self._send_new(destination, event_type, info)
            if error is None:
                self._finish(request_id, f"a new association to {destination.name}")
                return
        self._retry(request_id, error)

    @staticmethod
    def _still_open(assoc: Association) -> bool:
        """Whether the requester keeps its association open: it did not ask to release it.

        Most requesters release right after the N-ACTION response; give that A-RELEASE-RQ a moment to
        arrive, and look at it without taking it off the queue (the association's own thread answers it).
        """
        time.sleep(RELEASE_GRACE)
        return bool(assoc.is_established) and not isinstance(assoc.dul.peek_next_pdu(), A_RELEASE)

    def _send_on(
        self, assoc: Association, event_type: int, info: Dataset, timeout: float | None = None
    ) -> str | None:
        previous = assoc.dimse_timeout
        if timeout is not None:
            assoc.dimse_timeout = min(timeout, previous or timeout)
        try:
            status, _reply = assoc.send_n_event_report(
                info, event_type, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE
            )
        except Exception as error:  # the association ended or has no context for it
            return f"report on the request's association failed: {error}"
        finally:
            assoc.dimse_timeout = previous
        code = getattr(status, "Status", None)
        return None if code == SUCCESS else f"requester answered status {code!r}"

    def _send_new(self, destination: Destination, event_type: int, info: Dataset) -> str | None:
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = self.timeouts.acse
        ae.dimse_timeout = self.timeouts.dimse
        ae.network_timeout = self.timeouts.network
        ae.add_requested_context(STORAGE_COMMITMENT)
        # The requester of the association is the SCP of Storage Commitment: it sends the report.
        role = build_role(STORAGE_COMMITMENT, scu_role=False, scp_role=True)
        try:
            assoc = ae.associate(
                destination.host, destination.port, ae_title=destination.ae_title, ext_neg=[role]
            )
        except Exception as error:
            return f"could not associate with {destination.name}: {error}"
        if not assoc.is_established:
            return f"{destination.name} did not accept an association for the report"
        try:
            return self._send_on(assoc, event_type, info)
        finally:
            if assoc.is_established:
                assoc.release()

    def _forget(self, request_id: int) -> None:
        with self._lock:
            self._received.discard(request_id)

    def _finish(self, request_id: int, how: str) -> None:
        with self.database.session() as session:
            request = session.get(CommitmentRequest, request_id)
            if request is None:
                return
            request.state = CommitmentState.REPORTED
            self._forget(request_id)
            request.reported_at = utcnow()
            request.attempts += 1
            request.error = None
            LOG.info(
                "storage commitment %s reported to %s on %s",
                request.transaction_uid,
                request.calling_ae_title,
                how,
                extra={"transaction_uid": request.transaction_uid, "commitment_id": request_id},
            )

    def _retry(self, request_id: int, error: str) -> None:
        with self.database.session() as session:
            request = session.get(CommitmentRequest, request_id)
            if request is None:
                return
            request.attempts += 1
            request.error = error
            if request.attempts >= MAX_ATTEMPTS:
                request.state = CommitmentState.FAILED
                self._forget(request_id)
                LOG.error("storage commitment %s not reported, giving up: %s", request.transaction_uid, error)
            else:
                delay = RETRY_BASE ** (request.attempts - 1)
                request.next_attempt_at = utcnow() + timedelta(seconds=delay)
                LOG.warning(
                    "storage commitment %s not reported (attempt %d): %s; retrying in %.0f s",
                    request.transaction_uid,
                    request.attempts,
                    error,
                    delay,
                )


def _due_at(now: datetime) -> ColumnElement[bool]:
    return (CommitmentRequest.next_attempt_at.is_(None)) | (CommitmentRequest.next_attempt_at <= now)


def pending_transactions(database: Database) -> Iterable[str]:
    """Transaction UIDs still waiting for their report (``status`` and tests read this)."""
    with database.session() as session:
        return list(
            session.scalars(
                select(CommitmentRequest.transaction_uid).where(
                    CommitmentRequest.state == CommitmentState.PENDING
                )
            ).all()
        )
