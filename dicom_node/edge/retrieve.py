"""The C-MOVE and C-GET SCPs: the stored files of a study, series or instance, sent by C-STORE.

pynetdicom runs the sub-operations and the counting (remaining, completed, failed, warning; 0xB000 with
the Failed SOP Instance UID List when some failed); the handlers here check the request, pick the
instances (``index/query.py``) and hand over each stored file read with pydicom and never touched, so
its elements are written back as they were stored (raw, undecoded) in the transfer syntax the file is
in. For C-MOVE the association to the destination proposes, per SOP class, each stored transfer
syntax (the node does not transcode: a destination that refuses a compressed one gets those
sub-operations failed, listed in Failed SOP Instance UID List); C-GET sends over the requestor's own
association, on the storage contexts it offered with SCP role selection.

Who may move where: ``[query_retrieve]`` (``config/tables.py`` ``QueryRetrieveSettings``). A destination
AE title that is not a configured peer or destination, or one the caller may not move to, is answered
0xA801 (pynetdicom's only status before the sub-operations; the log line says which). An identifier
that does not fit is 0xA900 with the reason as Error Comment.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy.exc import SQLAlchemyError

from dicom_node.config import Settings
from dicom_node.edge.nodelay import nodelay
from dicom_node.edge.query import (
    CANCEL,
    INDEX_UNAVAILABLE,
    MODELS,
    NOT_AUTHORIZED,
    PENDING,
    UNABLE_TO_DECODE,
    Admission,
    failure,
    read_identifier,
)
from dicom_node.errors import QueryError
from dicom_node.index.audit import AuditTrail
from dicom_node.index.database import Database
from dicom_node.index.query import Query, StoredInstance, instances_to_retrieve
from dicom_node.ops.metrics import QUERY_MATCHES, QUERY_REQUESTS
from dicom_node.storage.store import InstanceStore

LOG = logging.getLogger(__name__)

MAX_CONTEXTS = 128
DEFER_SIZE = 1024 * 1024
"""Values larger than this (pixel data) are read from the file only while it is sent."""

Yield = tuple[int | Dataset, Dataset | None]
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def _contexts(instances: list[StoredInstance]) -> list[PresentationContext]:
    """One context per SOP class and stored transfer syntax (the destination accepts or rejects each on
    its own: one listing several would let it pick an uncompressed one the node does not transcode to);
    files stored uncompressed are offered in both Explicit and Implicit VR Little Endian."""
    pairs = sorted({(item.sop_class_uid, item.transfer_syntax_uid) for item in instances})
    contexts = []
    for sop_class, syntax in pairs[:MAX_CONTEXTS]:
        offered: list[str | UID] = [syntax] if syntax not in UNCOMPRESSED else list(UNCOMPRESSED)
        contexts.append(build_context(sop_class, offered))
    return contexts


def prefer_requested_syntaxes(assoc: Association) -> None:
    """For a C-GET requestor's storage contexts (those it proposes in the SCP role), accept the transfer
    syntax it lists first, not pynetdicom's (implicit VR first): the node sends stored files without
    transcoding, so a requestor that prefers the stored syntax (getscu ``+xv``) must get it.

    Called by the access check before negotiation, on this association's own copy of the contexts.
    """
    roles = {uid: item.scp_role for uid, item in assoc.requestor.role_selection.items()}
    primitive = assoc.requestor.primitive
    if not any(roles.values()) or primitive is None:
        return
    wanted = {
        str(cx.abstract_syntax): [str(ts) for ts in cx.transfer_syntax]
        for cx in primitive.presentation_context_definition_list
        if cx.abstract_syntax is not None and roles.get(cx.abstract_syntax)
    }
    contexts = []
    for context in assoc.acceptor.supported_contexts:
        order = wanted.get(str(context.abstract_syntax))
        if order and context.abstract_syntax is not None:
            supported = {str(ts) for ts in context.transfer_syntax}
            first: list[str | UID] = [ts for ts in order if ts in supported]
            rest = [ts for ts in context.transfer_syntax if str(ts) not in first]
            context = build_context(context.abstract_syntax, [*first, *rest])
            context.scu_role = context.scp_role = True
        contexts.append(context)
    assoc.acceptor.supported_contexts = contexts


@dataclass
class RetrieveService:
    """C-MOVE and C-GET over the store, on admitted associations only."""

    settings: Settings
    database: Database
    store: InstanceStore
    audit: AuditTrail
    admitted: Admission

    def bindings(self) -> list[tuple[Any, Callable[..., Any]]]:
        return [(evt.EVT_C_MOVE, self.handle_move), (evt.EVT_C_GET, self.handle_get)]

    # --- shared ------------------------------------------------------------------------------------
    def _select(self, event: evt.Event) -> tuple[Query, list[StoredInstance]]:
        model = MODELS[str(event.context.abstract_syntax)]
        try:
            identifier = event.identifier
        except Exception as error:  # pydicom raises many types on a malformed identifier
            raise QueryError(f"cannot decode the identifier: {error}", status=UNABLE_TO_DECODE) from error
        query, _ = read_identifier(identifier, model)
        try:
            return query, instances_to_retrieve(self.database, query)
        except SQLAlchemyError as error:
            LOG.exception("C-MOVE/C-GET could not read the index")
            raise QueryError(f"index unavailable: {error}", status=INDEX_UNAVAILABLE) from error

    def _datasets(
        self, event: evt.Event, service: str, record_id: int, instances: list[StoredInstance]
    ) -> Iterator[Yield]:
        """The sub-operations: one stored file per pending yield, until done or cancelled."""
        for index, item in enumerate(instances):
            if event.is_cancelled:
                LOG.info("C-%s cancelled after %d of %d instances", service.upper(), index, len(instances))
                QUERY_REQUESTS.labels(service=service, status="0xFE00").inc()
                yield CANCEL, None
                return
            try:
                ds = dcmread(self.store.path(item.path), defer_size=DEFER_SIZE)
            except Exception as error:  # a file gone or damaged since it was indexed: that one fails
                LOG.error("cannot read stored instance %s: %s", item.sop_instance_uid, error)
                missing = Dataset()
                missing.SOPInstanceUID = item.sop_instance_uid
                yield PENDING, missing
                continue
            yield PENDING, ds
        QUERY_REQUESTS.labels(service=service, status="done").inc()

    def _refused(self, service: str, calling: str, status: int, comment: str) -> Dataset:
        code = f"0x{status:04X}"
        QUERY_REQUESTS.labels(service=service, status=code).inc()
        LOG.warning("refused C-%s from %s: %s %s", service.upper(), calling, code, comment)
        return failure(status, comment)

    # --- C-MOVE ------------------------------------------------------------------------------------
    def handle_move(self, event: evt.Event) -> Iterator[Any]:
        calling = str(event.assoc.requestor.ae_title).strip()
        move_destination = event.move_destination
        target = (
            move_destination.decode("ascii", "replace")
            if isinstance(move_destination, bytes)
            else str(move_destination or "")
        ).strip()
        record_id = self.admitted(event.assoc)
        if record_id is None:
            LOG.warning("refused C-MOVE from %s: association not admitted", calling)
            QUERY_REQUESTS.labels(service="move", status="0xA801").inc()
            yield None, None
            return
        self.audit.queried(record_id, "move")
        destination = self.settings.move_destination(target)
        if destination is None or not self.settings.query_retrieve.may_move(calling, target):
            why = "is not a configured peer or destination" if destination is None else "is not allowed"
            LOG.warning(
                "refused C-MOVE from %s to %r: 0xA801, the move destination %s",
                calling,
                target,
                why,
                extra={"association_id": record_id, "calling_ae": calling, "move_destination": target},
            )
            QUERY_REQUESTS.labels(service="move", status="0xA801").inc()
            yield None, None
            return
        try:
            query, instances = self._select(event)
        except QueryError as error:
            # pynetdicom needs the destination before any status: it is known and allowed, so go there,
            # announce one sub-operation and answer the refusal with its comment instead.
            yield destination.host, destination.port, {"contexts": [build_context(Verification)]}
            yield 1
            yield self._refused("move", calling, error.status, str(error)), None
            return
        LOG.info(
            "C-MOVE %s level %s from %s to %s: %d instances",
            query.model.name,
            query.level,
            calling,
            destination.address,
            len(instances),
            extra={"association_id": record_id, "calling_ae": calling, "move_destination": target},
        )
        yield (
            destination.host,
            destination.port,
            {
                "contexts": _contexts(instances) or [build_context(Verification)],
                "evt_handlers": [(evt.EVT_CONN_OPEN, nodelay)],
            },
        )
        yield len(instances)
        yield from self._counted(event, "move", record_id, instances)

    def _counted(
        self, event: evt.Event, service: str, record_id: int, instances: list[StoredInstance]
    ) -> Iterator[Yield]:
        sent = 0
        for item in self._datasets(event, service, record_id, instances):
            yield item
            sent += item[0] == PENDING
        # pynetdicom counts outcomes itself; what was handed over is what the audit records.
        self.audit.sent(record_id, sent)
        QUERY_MATCHES.labels(service=service).inc(sent)

    # --- C-GET -------------------------------------------------------------------------------------
    def handle_get(self, event: evt.Event) -> Iterator[Any]:
        calling = str(event.assoc.requestor.ae_title).strip()
        record_id = self.admitted(event.assoc)
        if record_id is None:
            yield 1
            yield self._refused("get", calling, NOT_AUTHORIZED, "association was not admitted"), None
            return
        self.audit.queried(record_id, "get")
        try:
            query, instances = self._select(event)
        except QueryError as error:
            yield 1
            yield self._refused("get", calling, error.status, str(error)), None
            return
        LOG.info(
            "C-GET %s level %s from %s: %d instances",
            query.model.name,
            query.level,
            calling,
            len(instances),
            extra={"association_id": record_id, "calling_ae": calling},
        )
        yield len(instances)
        yield from self._counted(event, "get", record_id, instances)
