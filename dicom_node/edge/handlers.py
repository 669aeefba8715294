"""pynetdicom event handlers: association checks, C-ECHO, C-STORE, audit bookkeeping.

The C-STORE response waits for ``handle_store`` to return, so the handler only validates identifiers,
writes the bytes as received and indexes them; it never decodes pixels. Known failures become DIMSE
statuses with an error comment; anything unexpected propagates and pynetdicom answers 0xC211.
"""

from __future__ import annotations

import logging
import socket
import threading
import weakref
from dataclasses import dataclass, field
from io import BytesIO

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import EventHandlerType

from dicom_node.config import AccessPolicy
from dicom_node.errors import IngestError, UnreadableDatasetError
from dicom_node.index.audit import AuditTrail
from dicom_node.index.models import AssociationOutcome
from dicom_node.ops.metrics import REFUSED_ASSOCIATIONS, REFUSED_INSTANCES
from dicom_node.storage.ingest import Ingest, describe_instance
from dicom_node.storage.integrity import check_complete
from dicom_node.storage.part10 import PREAMBLE, file_meta

LOG = logging.getLogger(__name__)

SUCCESS = 0x0000
# A-ASSOCIATE-RJ (result, source, reason), PS3.8 §9.3.4
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
REJECT_NO_REASON = (0x01, 0x01, 0x01)
REJECT_BUSY = (0x02, 0x03, 0x02)
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
class EdgeHandlers:
    """The node's handlers, bound to one ``Ingest`` and one audit trail."""

    ae_title: str
    access: AccessPolicy
    ingest: Ingest
    audit: AuditTrail
    tls: bool = False
    _records: weakref.WeakKeyDictionary[Association, int] = field(default_factory=weakref.WeakKeyDictionary)
    _in_flight: int = 0
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def bindings(self) -> list[EventHandlerType]:
        return [
            (evt.EVT_CONN_OPEN, self.handle_conn_open),
            (evt.EVT_REQUESTED, self.handle_requested),
            (evt.EVT_ACCEPTED, self.handle_accepted),
            (evt.EVT_RELEASED, self.handle_released),
            (evt.EVT_ABORTED, self.handle_aborted),
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_C_STORE, self.handle_store),
        ]

    # --- association life cycle -------------------------------------------------------------------
    def handle_conn_open(self, event: evt.Event) -> None:
        # Nagle's algorithm would hold each small C-STORE-RSP for up to 40 ms.
        sock = event.assoc.dul.socket
        if sock is not None and sock.socket is not None:
            try:
                sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                LOG.debug("could not set TCP_NODELAY", exc_info=True)

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
        primitive = assoc.requestor.primitive
        calling = str(primitive.calling_ae_title).strip() if primitive is not None else ""
        called = str(primitive.called_ae_title).strip() if primitive is not None else ""
        address, port = _peer(assoc)
        refusal = self.refusal_reason(calling, called, address)
        if refusal is None:
            return
        (result, source, reason), text = refusal
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
        self.audit.opened(
            calling_ae=calling,
            called_ae=called,
            address=address,
            port=port,
            tls=self.tls,
            outcome=AssociationOutcome.REJECTED,
            reason=text,
        )
        assoc.acse.send_reject(result, source, reason)
        # As pynetdicom's own rejection does: wait for the DUL to send the A-ASSOCIATE-RJ and reach
        # Sta1 before the association thread closes the socket.
        assoc.kill()

    def handle_accepted(self, event: evt.Event) -> None:
        assoc = event.assoc
        address, port = _peer(assoc)
        record_id = self.audit.opened(
            calling_ae=assoc.requestor.ae_title.strip(),
            called_ae=assoc.acceptor.ae_title.strip(),
            address=address,
            port=port,
            tls=self.tls,
        )
        self._records[assoc] = record_id
        calling = assoc.requestor.ae_title.strip()
        LOG.info(
            "association %d accepted from %s@%s:%d",
            record_id,
            calling,
            address,
            port,
            extra={"association_id": record_id, "calling_ae": calling, "peer_address": address},
        )

    def _close(self, assoc: Association, outcome: AssociationOutcome) -> None:
        record_id = self._records.pop(assoc, None)
        if record_id is not None:
            self.audit.closed(record_id, outcome)
            LOG.info(
                "association %d %s",
                record_id,
                outcome,
                extra={"association_id": record_id, "outcome": outcome},
            )

    def handle_released(self, event: evt.Event) -> None:
        self._close(event.assoc, AssociationOutcome.RELEASED)

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

    def _store(self, event: evt.Event) -> Dataset | int:
        record_id = self._records.get(event.assoc)
        request = event.request
        assert isinstance(request, C_STORE)
        try:
            syntax = event.context.transfer_syntax
            dataset_stream = request.DataSet
            assert isinstance(dataset_stream, BytesIO)
            with dataset_stream.getbuffer() as raw:
                if syntax.is_little_endian and not syntax.is_deflated:
                    check_complete(raw, implicit_vr=syntax.is_implicit_VR)
                try:
                    ds = event.dataset
                except Exception as error:  # truncated or corrupt stream
                    raise UnreadableDatasetError(f"cannot decode data set: {error}") from error
                received = describe_instance(
                    ds,
                    transfer_syntax_uid=str(syntax),
                    requested_sop_class_uid=str(request.AffectedSOPClassUID or ""),
                    requested_sop_instance_uid=str(request.AffectedSOPInstanceUID or ""),
                )
                calling = event.assoc.requestor.ae_title.strip()
                meta = file_meta(received.sop_class_uid, received.sop_instance_uid, str(syntax), calling)
                result = self.ingest.store_encoded(
                    received,
                    [PREAMBLE, meta, raw],
                    calling_ae_title=calling,
                    association_id=record_id,
                )
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
        if record_id is not None:
            self.audit.accepted(record_id, result.size)
        return SUCCESS

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no C-STORE is being handled; False if ``timeout`` ran out first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._in_flight == 0, timeout=timeout)
