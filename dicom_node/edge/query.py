"""The C-FIND SCP (Patient Root and Study Root): identifiers in, pending responses streamed out.

The matching is ``index/query.py``'s; this module turns a received identifier into a ``Query`` and each
``Match`` into a response identifier holding only the keys asked for, plus Query/Retrieve Level,
Specific Character Set (always ISO_IR 192, UTF-8: the index holds decoded text) and Retrieve AE Title.
Statuses: 0xFF00 pending per match, 0x0000 at the end, 0xFE00 after a C-CANCEL (checked before each
pending response; every ``CANCEL_CHECK_EVERY`` responses the handler lets the network thread read the
socket, which it does not do while responses are queued: ``edge/wakeup.py``), 0xA900 an identifier that
does not fit the information model (with the reason as Error Comment), 0xC310 one that cannot be
decoded, 0xC001 an index that cannot be read, 0x0124 an association the access check did not admit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from sqlalchemy.exc import SQLAlchemyError

from dicom_node.edge.wakeup import let_the_peer_speak
from dicom_node.errors import QueryError
from dicom_node.index.audit import AuditTrail
from dicom_node.index.database import Database
from dicom_node.index.query import InformationModel, Match, Query, find, parse_level, put_value
from dicom_node.ops.metrics import QUERY_MATCHES, QUERY_REQUESTS

LOG = logging.getLogger(__name__)

PENDING = 0xFF00
CANCEL = 0xFE00
SUCCESS = 0x0000
NOT_AUTHORIZED = 0x0124
UNABLE_TO_DECODE = 0xC310
INDEX_UNAVAILABLE = 0xC001
CHARACTER_SET = "ISO_IR 192"
ERROR_COMMENT_MAX = 64
CANCEL_CHECK_EVERY = 16
"""Pending responses between two turns given to the network thread to read a C-CANCEL."""

MODELS: dict[str, InformationModel] = {
    str(PatientRootQueryRetrieveInformationModelFind): InformationModel.PATIENT_ROOT,
    str(StudyRootQueryRetrieveInformationModelFind): InformationModel.STUDY_ROOT,
    str(PatientRootQueryRetrieveInformationModelMove): InformationModel.PATIENT_ROOT,
    str(StudyRootQueryRetrieveInformationModelMove): InformationModel.STUDY_ROOT,
    str(PatientRootQueryRetrieveInformationModelGet): InformationModel.PATIENT_ROOT,
    str(StudyRootQueryRetrieveInformationModelGet): InformationModel.STUDY_ROOT,
}
"""The Q/R SOP classes the node serves, and their information models."""

_SKIPPED = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle"}
"""Set by the node in every response, whatever the request held."""

Admission = Callable[[Any], int | None]
"""The audit row id of an association the access check admitted (``None``: not admitted)."""


def failure(status: int, comment: str) -> Dataset:
    """A status data set with an Error Comment (LO, 64 characters at most)."""
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment.replace("\\", "/")[:ERROR_COMMENT_MAX]
    return ds


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def read_identifier(identifier: Dataset, model: InformationModel) -> tuple[Query, Dataset]:
    """The ``Query`` of a received identifier, and the requested elements that the index does not answer
    (sequences, returned empty; Instance Availability, ONLINE). ``QueryError`` if it does not fit."""
    level = parse_level(_text(identifier.get("QueryRetrieveLevel")))
    keys: dict[str, str] = {}
    unknown = Dataset()
    for element in identifier:
        keyword = element.keyword
        if not keyword or keyword in _SKIPPED or element.tag.group in (0x0000, 0x0002):
            continue
        if element.VR == "SQ":
            unknown.add_new(element.tag, "SQ", [])
            continue
        if keyword == "InstanceAvailability":
            unknown.InstanceAvailability = "ONLINE"  # every indexed instance is in the store
            continue
        keys[keyword] = _text(element.value).strip()
    return Query(model, level, keys), unknown


def response_identifier(query: Query, match: Match, unknown: Dataset, ae_title: str) -> Dataset:
    """A pending response's identifier: the keys asked for (and the level's unique keys)."""
    ds = Dataset()
    ds.SpecificCharacterSet = CHARACTER_SET
    ds.QueryRetrieveLevel = query.level.value
    ds.RetrieveAETitle = ae_title
    for keyword, value in match.items():
        tag = tag_for_keyword(keyword)
        if tag is None:
            continue
        put_value(ds, tag, dictionary_VR(tag), value)
    for element in unknown:
        ds.add(element)
    return ds


@dataclass
class FindService:
    """C-FIND over the index, on admitted associations only."""

    ae_title: str
    database: Database
    audit: AuditTrail
    admitted: Admission

    def bindings(self) -> list[tuple[Any, Callable[..., Any]]]:
        return [(evt.EVT_C_FIND, self.handle_find)]

    def handle_find(self, event: evt.Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        record_id = self.admitted(event.assoc)
        calling = str(event.assoc.requestor.ae_title).strip()
        if record_id is None:
            QUERY_REQUESTS.labels(service="find", status="0x0124").inc()
            comment = "association not admitted, or its audit row cannot be written"
            yield failure(NOT_AUTHORIZED, comment), None
            return
        self.audit.queried(record_id, "find")
        model = MODELS[str(event.context.abstract_syntax)]
        try:
            query, unknown = read_identifier(event.identifier, model)
        except QueryError as error:
            yield self._refused("find", record_id, calling, error.status, str(error)), None
            return
        except Exception as error:  # pydicom raises many types on a malformed identifier
            LOG.debug("undecodable C-FIND identifier", exc_info=True)
            yield self._refused("find", record_id, calling, UNABLE_TO_DECODE, f"cannot decode: {error}"), None
            return
        LOG.info(
            "C-FIND %s level %s from %s (association %d)",
            model.name,
            query.level,
            calling,
            record_id,
            extra={"association_id": record_id, "calling_ae": calling, "level": str(query.level)},
        )
        LOG.debug("C-FIND keys: %s", query.keys)  # PHI: DEBUG only
        sent = 0
        try:
            for match in find(self.database, query):
                if sent and sent % CANCEL_CHECK_EVERY == 0:
                    let_the_peer_speak(event.assoc)
                if event.is_cancelled:
                    LOG.info("C-FIND cancelled by %s after %d matches", calling, sent)
                    QUERY_REQUESTS.labels(service="find", status="0xFE00").inc()
                    QUERY_MATCHES.labels(service="find").inc(sent)
                    yield CANCEL, None
                    return
                yield PENDING, response_identifier(query, match, unknown, self.ae_title)
                sent += 1
        except SQLAlchemyError as error:
            LOG.exception("C-FIND could not read the index")
            yield (
                self._refused("find", record_id, calling, INDEX_UNAVAILABLE, f"index unavailable: {error}"),
                None,
            )
            return
        QUERY_REQUESTS.labels(service="find", status="0x0000").inc()
        QUERY_MATCHES.labels(service="find").inc(sent)
        yield SUCCESS, None

    def _refused(self, service: str, record_id: int, calling: str, status: int, comment: str) -> Dataset:
        code = f"0x{status:04X}"
        QUERY_REQUESTS.labels(service=service, status=code).inc()
        LOG.warning(
            "refused C-%s from %s: %s %s",
            service.upper(),
            calling,
            code,
            comment,
            extra={"association_id": record_id, "calling_ae": calling, "status": code},
        )
        return failure(status, comment)
