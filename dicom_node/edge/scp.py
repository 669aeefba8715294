"""The node's Application Entity: presentation contexts, TLS, and one place where it is all wired.

``build_ae`` makes the AE; ``EdgeServer`` starts it on the configured address and stops it gracefully:
on SIGTERM it stops accepting, lets associations finish for a grace period, waits for every C-STORE in
flight to be written and indexed, and only then aborts what is left.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
from pynetdicom.events import EventHandlerType
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ModalityPerformedProcedureStep,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node.config import Settings, TlsConfig
from dicom_node.edge.commitment import STORAGE_COMMITMENT, CommitmentService, Evidence
from dicom_node.edge.handlers import EdgeHandlers
from dicom_node.edge.mpps import MppsService
from dicom_node.edge.query import MODELS, FindService
from dicom_node.edge.retrieve import RetrieveService
from dicom_node.edge.uid_validation import memoise_uid_validation
from dicom_node.index.audit import AuditTrail
from dicom_node.index.models import utcnow
from dicom_node.storage.ingest import Ingest
from dicom_node.workflow.completion import record_release

LOG = logging.getLogger(__name__)


def build_ae(settings: Settings) -> AE:
    """An AE that accepts C-ECHO, every storage SOP class in every transfer syntax pynetdicom knows (also
    in the SCP role, for C-GET's sub-operations), and the Patient and Study Root FIND, MOVE and GET."""
    memoise_uid_validation()
    ae = AE(ae_title=settings.ae_title)
    # The largest PDU a peer may send us: what one association holds of an instance in memory at a
    # time (data sets stream to disk, edge/receive.py). 0 would mean unlimited.
    ae.maximum_pdu_size = settings.max_pdu
    ae.maximum_associations = settings.max_associations
    ae.acse_timeout = settings.timeouts.acse
    ae.dimse_timeout = settings.timeouts.dimse
    ae.network_timeout = settings.timeouts.network
    # Called/calling AE checks are done by EdgeHandlers.handle_requested so that every refusal is
    # audited with its reason; pynetdicom's own checks stay off.
    ae.require_called_aet = False
    ae.require_calling_aet = []
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    # Storage Commitment: the requester is its SCU; the node may send the N-EVENT-REPORT on the same
    # association (the SCU's reactor serves it), so the requester may propose SCP/SCU role selection.
    ae.add_supported_context(STORAGE_COMMITMENT, ALL_TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
    ae.add_supported_context(ModalityPerformedProcedureStep, ALL_TRANSFER_SYNTAXES)
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:
            # A C-GET requestor proposes SCP/SCU role selection for the storage it wants to receive.
            ae.add_supported_context(
                context.abstract_syntax, ALL_TRANSFER_SYNTAXES, scu_role=True, scp_role=True
            )
    for sop_class in MODELS:
        ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
    return ae


class _QuicklyCopiedContext(PresentationContext):
    """A supported presentation context whose ``deepcopy`` does not re-validate its UIDs.

    pynetdicom deep-copies the server's supported contexts for every association it accepts
    (``RequestHandler._create_association``). The node supports 179 abstract syntaxes with 45 transfer
    syntaxes each: 8 055 ``UID`` objects, each re-made through pydicom's regular-expression check on
    the copy — 46 to 125 ms of CPU per association, under the GIL, 82 % of the CPU an association of
    one image cost (py-spy ``--gil``, 30 one-image ``storescu`` associations). Every field but the
    transfer-syntax list is immutable (``UID`` is a ``str``), so a copy with a fresh list is the same
    copy.
    """

    @classmethod
    def of(cls, context: PresentationContext) -> _QuicklyCopiedContext:
        """A copy of ``context`` (any ``PresentationContext``): its fields shared, its list copied."""
        copied = cls.__new__(cls)
        copied.__dict__.update(context.__dict__)
        copied._transfer_syntax = list(context._transfer_syntax)
        return copied

    def __deepcopy__(self, memo: dict[int, Any]) -> _QuicklyCopiedContext:
        return _QuicklyCopiedContext.of(self)


def quickly_copied(contexts: list[PresentationContext]) -> list[PresentationContext]:
    """``contexts`` as ``_QuicklyCopiedContext`` instances (same fields, the list copied)."""
    return [_QuicklyCopiedContext.of(context) for context in contexts]


def server_ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """A TLS 1.2+ server context; with ``require_client_certificate`` peers must present a trusted one."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=str(tls.certificate), keyfile=str(tls.private_key))
    if tls.ca_certificates is not None:
        context.load_verify_locations(cafile=str(tls.ca_certificates))
    context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_NONE
    return context


class SharedPortServer(ThreadedAssociationServer):
    """An association server whose port other processes may listen on too (``SO_REUSEPORT``).

    pynetdicom's ``server_bind`` sets only ``SO_REUSEADDR`` (and ignores socketserver's
    ``allow_reuse_port``); every receiver process binds this way, and the kernel hands each new
    connection to one of them.
    """

    def server_bind(self) -> None:
        assert self.socket is not None
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class EdgeServer:
    """The running listener."""

    def __init__(self, settings: Settings, ingest: Ingest, on_evidence: Evidence | None = None) -> None:
        """``on_evidence(delay)``: completion evidence arrived; look at open studies after ``delay`` s."""
        self.settings = settings
        self.ae = build_ae(settings)
        self.on_evidence = on_evidence
        self.database = ingest.database
        self.commitment = CommitmentService(
            database=ingest.database,
            store=ingest.store,
            ae_title=settings.ae_title,
            destinations=settings.destinations,
            timeouts=settings.timeouts,
            on_evidence=on_evidence,
        )
        self.handlers = EdgeHandlers(
            ae_title=settings.ae_title,
            access=settings.access,
            ingest=ingest,
            audit=AuditTrail(ingest.database),
            tls=settings.tls is not None,
            max_instance_bytes=settings.max_instance_bytes,
            commitment=self.commitment,
            mpps=MppsService(ingest.database, on_evidence),
            on_release=self._record_release,
        )
        audit = self.handlers.audit
        self.find = FindService(settings.ae_title, ingest.database, audit, self.handlers.admitted_record)
        self.retrieve = RetrieveService(
            settings, ingest.database, ingest.store, audit, self.handlers.admitted_record
        )
        self.server: ThreadedAssociationServer | None = None

    def _record_release(self, association_id: int) -> None:
        with self.database.session() as session:
            studies = record_release(session, association_id, utcnow())
        if studies and self.on_evidence is not None:
            # Look again once the settle time has passed (plus a little for the clock's resolution).
            self.on_evidence(self.settings.association_settle + 0.01)

    def bindings(self) -> list[EventHandlerType]:
        """Every handler: the association life cycle, C-ECHO and C-STORE, C-FIND, C-MOVE and C-GET."""
        return [*self.handlers.bindings(), *self.find.bindings(), *self.retrieve.bindings()]

    def start(self, *, resume: bool = True) -> tuple[str, int]:
        """Start listening in background threads; returns the bound (host, port).

        With ``receivers`` > 1 the port is shared with the other receiver processes, which start with
        ``resume=False``: only the node's own process makes what a previous run left pending due
        again (Storage Commitment reports).
        """
        ssl_context = server_ssl_context(self.settings.tls) if self.settings.tls else None
        # AE.start_server(block=False), with the server class chosen here.
        server = self.ae.make_server(
            (self.settings.host, self.settings.port),
            ssl_context=ssl_context,
            evt_handlers=self.bindings(),
            contexts=quickly_copied(self.ae.supported_contexts),
            server_class=SharedPortServer if self.settings.receivers > 1 else ThreadedAssociationServer,
        )
        threading.Thread(target=server.serve_forever, name="acceptor", daemon=True).start()
        self.ae._servers.append(server)
        self.server = server
        self.commitment.start(resume=resume)  # also reports what a previous run left pending
        host, port = server.server_address[:2]
        LOG.info(
            "listening as %s on %s:%d%s", self.settings.ae_title, host, port, " (TLS)" if ssl_context else ""
        )
        return str(host), int(port)

    def stop(self, grace: float = 30.0) -> None:
        """Stop accepting, let associations finish (up to ``grace`` s), finish in-flight stores, exit."""
        server = self.server
        if server is None:
            return
        self.server = None
        self.commitment.stop()
        # socketserver's own shutdown stops the accept loop without touching live associations.
        super(ThreadedAssociationServer, server).shutdown()
        server.server_close()
        deadline = time.monotonic() + grace
        # Only established associations have work to finish. One still waiting for its A-ASSOCIATE-RQ
        # (a health check's bare TCP connect: pynetdicom waits up to the ACSE timeout for the request
        # even after the peer closed) holds nothing; waiting for it made every stop take 30 s.
        while (
            any(assoc.is_established for assoc in server.active_associations) and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        self.handlers.wait_idle(max(1.0, deadline - time.monotonic()))
        for assoc in server.active_associations:
            if assoc.is_established:
                LOG.warning("aborting association with %s after the grace period", assoc.requestor.ae_title)
            else:
                LOG.debug("closing a connection that has not requested an association")
            assoc.abort()
        self.handlers.wait_idle(5.0)
        if server in self.ae._servers:
            self.ae._servers.remove(server)
