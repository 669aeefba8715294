"""pynetdicom event handlers: association checks, C-ECHO, C-STORE, audit bookkeeping.

Access fails closed. ``handle_requested`` decides first and refuses on anything but a clear "yes": a
policy miss, and also any exception while deciding (pynetdicom would log an exception in this handler
and accept the association). The audit row is written after the A-ASSOCIATE-RJ has gone out, so a
failing audit write (SQLite locked, PostgreSQL down, disk full) can never let anyone in. An admitted
association is marked as such, and ``handle_store`` stores nothing on an association without that
mark, nor on one whose audit row could not be written.

The C-STORE response waits for ``handle_store`` to return. The data set is already on disk in the
store's temporary folder (``edge/receive.py`` streams it there as it arrives); the handler checks its
structure, parses it once without pixel data, validates identifiers and commits it. Known failures
become DIMSE statuses with an error comment; anything unexpected propagates and pynetdicom answers
0xC211.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import EventHandlerType

from dicom_node.config import AccessPolicy
from dicom_node.edge import wakeup
from dicom_node.edge.commitment import CommitmentService
from dicom_node.edge.mpps import MppsService
from dicom_node.edge.nodelay import nodelay
from dicom_node.edge.quiet import drop_unheard_log_handlers
from dicom_node.edge.receive import StreamingDimse
from dicom_node.edge.retrieve import prefer_requested_syntaxes
from dicom_node.errors import (
    IndexUnavailableError,
    IngestError,
    InvalidIdentifierError,
    NotAdmittedError,
    UnreadableDatasetError,
)
from dicom_node.index.audit import AuditTrail
from dicom_node.index.models import AssociationOutcome
from dicom_node.ops.metrics import REFUSED_ASSOCIATIONS, REFUSED_INSTANCES
from dicom_node.storage.incoming import IncomingFile, read_received
from dicom_node.storage.ingest import Ingest, StoreResult

LOG = logging.getLogger(__name__)

SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
NO_SUCH_SOP_CLASS = 0x0118
# A-ASSOCIATE-RJ (result, source, reason), PS3.8 §9.3.4
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
REJECT_NO_REASON = (0x01, 0x01, 0x01)
REJECT_BUSY = (0x02, 0x03, 0x02)
# rejected-transient, service user, no reason given: the node could not decide (try again later)
REJECT_TRANSIENT = (0x02, 0x01, 0x01)
ERROR_COMMENT_MAX = 64
REFUSAL_METRIC_REASONS = {
    REJECT_NO_REASON: "address",
    REJECT_CALLING_AE: "calling_ae_title",
    REJECT_CALLED_AE: "called_ae_title",
}


def status_dataset(status: int, comment: str | None = None) -> Dataset:
    """A C-STORE response status, with an Error Comment (LO, at most 64 characters) when failing."""
    ds = Dataset()
    ds.Status = status
    if comment:
        ds.ErrorComment = comment.replace("\\", "/")[:ERROR_COMMENT_MAX]
    return ds


def _reason(error: Exception) -> str:
    """``StorageFullError`` → ``storage_full``: the ``reason`` label of a refused instance."""
    name = type(error).__name__.removesuffix("Error")
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def _peer(assoc: Association) -> tuple[str, int]:
    return str(assoc.requestor.address), int(assoc.requestor.port)


@dataclass
class _Admission:
    """An association the access check admitted; ``record_id`` once its audit row is written."""

    record_id: int | None = None


@dataclass
class EdgeHandlers:
    """The node's handlers, bound to one ``Ingest`` and one audit trail."""

    ae_title: str
    access: AccessPolicy
    ingest: Ingest
    audit: AuditTrail
    tls: bool = False
    max_instance_bytes: int = 0
    commitment: CommitmentService | None = None
    mpps: MppsService | None = None
    on_release: Callable[[int], None] | None = None
    """Called with the audit row id of an admitted association its requester released."""
    _admitted: weakref.WeakKeyDictionary[Association, _Admission] = field(
        default_factory=weakref.WeakKeyDictionary
    )
    _in_flight: int = 0
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def bindings(self) -> list[EventHandlerType]:
        return [
            (evt.EVT_CONN_OPEN, self.handle_conn_open),
            (evt.EVT_CONN_CLOSE, self.handle_conn_close),
            (evt.EVT_REQUESTED, self.handle_requested),
            (evt.EVT_ACCEPTED, self.handle_accepted),
            (evt.EVT_RELEASED, self.handle_released),
            (evt.EVT_ABORTED, self.handle_aborted),
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_N_ACTION, self.handle_n_action),
            (evt.EVT_N_CREATE, self.handle_n_create),
            (evt.EVT_N_SET, self.handle_n_set),
        ]

    # --- association life cycle -------------------------------------------------------------------
    def handle_conn_open(self, event: evt.Event) -> None:
        # Before the association's threads start: its DUL reactor waits on events, not a 1 ms poll.
        try:
            wakeup.install(event.assoc)
        except OSError:  # no descriptor left for the wake-up pipe: pynetdicom's own polling then
            LOG.warning("could not make the association's reactor event-driven", exc_info=True)
        nodelay(event)
        drop_unheard_log_handlers(event.assoc)

    def handle_conn_close(self, event: evt.Event) -> None:
        dimse = event.assoc.dimse
        if isinstance(dimse, StreamingDimse):
            dimse.abandon_files()

    def refusal_reason(
        self, calling_ae: str, called_ae: str, address: str
    ) -> tuple[tuple[int, ...], str] | None:
        """Why an association must be refused, or None if it may proceed."""
        if not self.access.address_allowed(address):
            return REJECT_NO_REASON, f"source address {address} is not in access.allowed_networks"
        if not self.access.ae_allowed(calling_ae):
            return REJECT_CALLING_AE, f"calling AE title {calling_ae!r} is not in access.allowed_ae_titles"
        if called_ae.strip() != self.ae_title:
            return REJECT_CALLED_AE, f"called AE title {called_ae!r} is not this node's ({self.ae_title!r})"
        return None

    def handle_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        calling = called = address = ""
        port = 0
        try:
            primitive = assoc.requestor.primitive
            calling = str(primitive.calling_ae_title).strip() if primitive is not None else ""
            called = str(primitive.called_ae_title).strip() if primitive is not None else ""
            address, port = _peer(assoc)
            refusal = self.refusal_reason(calling, called, address)
            if refusal is None:
                prefer_requested_syntaxes(assoc)
                assoc.dimse = StreamingDimse(assoc, self._open_incoming)
                self._admitted[assoc] = _Admission()
                return
        except Exception as error:  # whatever went wrong, the answer is no
            LOG.exception("access check failed; refusing the association")
            refusal = REJECT_TRANSIENT, f"the access check failed: {type(error).__name__}"
        (result, source, reason), text = refusal
        self._reject(assoc, result, source, reason)
        REFUSED_ASSOCIATIONS.labels(
            reason=REFUSAL_METRIC_REASONS.get((result, source, reason), "other")
        ).inc()
        LOG.warning(
            "refused association from %s@%s:%d: %s",
            calling,
            address,
            port,
            text,
            extra={"calling_ae": calling, "called_ae": called, "peer_address": address, "reason": text},
        )
        try:
            self.audit.opened(
                calling_ae=calling,
                called_ae=called,
                address=address,
                port=port,
                tls=self.tls,
                outcome=AssociationOutcome.REJECTED,
                reason=text,
            )
        except Exception:
            LOG.exception("could not write the audit row of a refused association (it stays refused)")

    def _reject(self, assoc: Association, result: int, source: int, reason: int) -> None:
        """Send the A-ASSOCIATE-RJ; if even that fails, abort: never fall through to accepting."""
        try:
            assoc.acse.send_reject(result, source, reason)
            # As pynetdicom's own rejection does: wait for the DUL to send the A-ASSOCIATE-RJ and
            # reach Sta1 before the association thread closes the socket.
            assoc.kill()
        except Exception:
            LOG.exception("could not send A-ASSOCIATE-RJ; aborting the association")
            assoc.is_aborted = True  # pynetdicom negotiates only if neither rejected nor aborted
            try:
                assoc.abort()
            except Exception:
                LOG.exception("could not abort the association")
                assoc.kill()

    def _open_audit_row(self, assoc: Association, admission: _Admission) -> int:
        address, port = _peer(assoc)
        record_id = self.audit.opened(
            calling_ae=assoc.requestor.ae_title.strip(),
            called_ae=assoc.acceptor.ae_title.strip(),
            address=address,
            port=port,
            tls=self.tls,
        )
        admission.record_id = record_id
        return record_id

    def handle_accepted(self, event: evt.Event) -> None:
        assoc = event.assoc
        admission = self._admitted.get(assoc)
        if admission is None:  # cannot happen: pynetdicom accepts only what handle_requested let by
            LOG.error("association accepted without admission; aborting it")
            assoc.abort()
            return
        try:
            record_id = self._open_audit_row(assoc, admission)
        except Exception:
            # Its C-STOREs try again, and are refused while the audit trail cannot be written.
            LOG.exception("could not write the audit row of an accepted association")
            return
        address, port = _peer(assoc)
        calling = assoc.requestor.ae_title.strip()
        LOG.info(
            "association %d accepted from %s@%s:%d",
            record_id,
            calling,
            address,
            port,
            extra={"association_id": record_id, "calling_ae": calling, "peer_address": address},
        )

    def _close(self, assoc: Association, outcome: AssociationOutcome) -> int | None:
        admission = self._admitted.pop(assoc, None)
        record_id = admission.record_id if admission is not None else None
        if record_id is not None:
            try:
                self.audit.closed(record_id, outcome)
            except Exception:
                LOG.exception("could not close the audit row of association %d", record_id)
            LOG.info(
                "association %d %s",
                record_id,
                outcome,
                extra={"association_id": record_id, "outcome": outcome},
            )
        return record_id

    def handle_released(self, event: evt.Event) -> None:
        record_id = self._close(event.assoc, AssociationOutcome.RELEASED)
        if record_id is not None and self.on_release is not None:
            try:
                self.on_release(record_id)
            except Exception:  # the study then completes by its quiet period
                LOG.exception("could not record the release of association %d", record_id)

    def handle_aborted(self, event: evt.Event) -> None:
        self._close(event.assoc, AssociationOutcome.ABORTED)

    # --- DIMSE services ---------------------------------------------------------------------------
    def handle_echo(self, event: evt.Event) -> int:
        return SUCCESS

    def handle_store(self, event: evt.Event) -> Dataset | int:
        with self._cond:
            self._in_flight += 1
        try:
            return self._store(event)
        finally:
            with self._cond:
                self._in_flight -= 1
                self._cond.notify_all()

    def admitted_record(self, assoc: Association) -> int | None:
        """The audit row id of an admitted association (written now if it could not be at acceptance);
        ``None`` when the access check did not admit it or its audit row cannot be written: the C-FIND,
        C-MOVE and C-GET handlers (``edge/query.py``, ``edge/retrieve.py``) refuse then."""
        admission = self._admitted.get(assoc)
        if admission is None:
            return None
        if admission.record_id is None:
            try:
                return self._open_audit_row(assoc, admission)
            except Exception:
                LOG.exception("audit trail unavailable: refusing the query")
                return None
        return admission.record_id

    def _open_incoming(self, header: bytes) -> IncomingFile:
        return IncomingFile(self.ingest.store, header, limit=self.max_instance_bytes)

    def _store(self, event: evt.Event) -> Dataset | int:
        request = event.request
        assert isinstance(request, C_STORE)
        incoming = getattr(request, "_dataset_file", None)
        if not isinstance(incoming, IncomingFile) or not incoming.claim():
            incoming = None
        admission = self._admitted.get(event.assoc)
        record_id = admission.record_id if admission is not None else None
        try:
            if admission is None:
                raise NotAdmittedError("association was not admitted by the access check")
            if record_id is None:
                try:
                    record_id = self._open_audit_row(event.assoc, admission)
                except Exception as error:
                    LOG.exception("audit trail unavailable: refusing the instance")
                    raise IndexUnavailableError("audit trail unavailable: instance not accepted") from error
            if incoming is None:
                raise UnreadableDatasetError("no data set was received with the C-STORE request")
            result = self._keep(event, request, incoming, record_id)
        except IngestError as error:
            if record_id is not None:
                self.audit.refused(record_id)
            status, uid = f"0x{error.status:04X}", str(request.AffectedSOPInstanceUID or "")
            REFUSED_INSTANCES.labels(status=status, reason=_reason(error)).inc()
            LOG.warning(
                "refused instance %s: %s %s",
                uid,
                status,
                error,
                extra={"sop_instance_uid": uid, "association_id": record_id, "status": status},
            )
            return status_dataset(error.status, str(error))
        except Exception:
            # pynetdicom logs it and answers 0xC211 (refused: cannot understand).
            REFUSED_INSTANCES.labels(status="0xC211", reason="unexpected").inc()
            raise
        finally:
            if incoming is not None:
                incoming.discard()  # nothing left to remove once it is committed
        self.audit.accepted(record_id, result.size)
        return SUCCESS

    def _keep(
        self, event: evt.Event, request: C_STORE, incoming: IncomingFile, record_id: int
    ) -> StoreResult:
        written = incoming.finish()
        requested_instance = str(request.AffectedSOPInstanceUID or "").rstrip("\x00 ")
        if not requested_instance:
            raise InvalidIdentifierError("Affected SOP Instance UID is missing from the C-STORE request")
        received = read_received(
            incoming.path,
            incoming.dataset_offset,
            str(event.context.transfer_syntax),
            requested_sop_class_uid=str(request.AffectedSOPClassUID or ""),
            requested_sop_instance_uid=requested_instance,
        )
        return self.ingest.store_file(
            received,
            incoming.path,
            written,
            calling_ae_title=event.assoc.requestor.ae_title.strip(),
            association_id=record_id,
        )

    def _admitted_record(self, event: evt.Event, service: str) -> int | None:
        """The audit row id of an admitted association (``NotAdmittedError`` when it was not)."""
        admission = self._admitted.get(event.assoc)
        if admission is None:
            raise NotAdmittedError(f"{service} on an association the access check did not admit")
        if admission.record_id is None:
            try:
                self._open_audit_row(event.assoc, admission)
            except Exception as error:
                raise IndexUnavailableError(f"audit trail unavailable: {service} not accepted") from error
        return admission.record_id

    def handle_n_action(self, event: evt.Event) -> tuple[int | Dataset, Dataset | None]:
        try:
            record_id = self._admitted_record(event, "Storage Commitment")
        except IngestError as error:
            return status_dataset(PROCESSING_FAILURE, str(error)), None
        if self.commitment is None:
            return status_dataset(NO_SUCH_SOP_CLASS, "Storage Commitment is not offered"), None
        return self.commitment.handle_n_action(event, record_id)

    def handle_n_create(self, event: evt.Event) -> tuple[int | Dataset, Dataset | None]:
        try:
            self._admitted_record(event, "MPPS N-CREATE")
        except IngestError as error:
            return status_dataset(PROCESSING_FAILURE, str(error)), None
        if self.mpps is None:
            return status_dataset(NO_SUCH_SOP_CLASS, "MPPS is not offered"), None
        return self.mpps.handle_n_create(event)

    def handle_n_set(self, event: evt.Event) -> tuple[int | Dataset, Dataset | None]:
        try:
            self._admitted_record(event, "MPPS N-SET")
        except IngestError as error:
            return status_dataset(PROCESSING_FAILURE, str(error)), None
        if self.mpps is None:
            return status_dataset(NO_SUCH_SOP_CLASS, "MPPS is not offered"), None
        return self.mpps.handle_n_set(event)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no C-STORE is being handled; False if ``timeout`` ran out first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._in_flight == 0, timeout=timeout)
