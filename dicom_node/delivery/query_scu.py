"""A C-FIND and C-MOVE SCU for the ``find`` and ``move`` commands (``delivery/scu.py`` does the rest).

``find`` yields each match as a data set; ``move`` returns the final response's counts. Both raise
``ConnectionError`` naming the reason when no association is made, and ``QueryFailed`` with the status
and Error Comment when the peer answers a failure.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from dicom_node.config import DEFAULT_TIMEOUTS, Destination, DimseTimeouts
from dicom_node.delivery.scu import associate, make_ae

FIND = {
    "patient": PatientRootQueryRetrieveInformationModelFind,
    "study": StudyRootQueryRetrieveInformationModelFind,
}
MOVE = {
    "patient": PatientRootQueryRetrieveInformationModelMove,
    "study": StudyRootQueryRetrieveInformationModelMove,
}


class QueryFailed(Exception):
    """The peer answered a failure status; ``status`` and ``comment`` say which."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(f"status 0x{status:04X}{': ' + comment if comment else ''}")
        self.status = status
        self.comment = comment


def identifier(level: str, keys: Mapping[str, str]) -> Dataset:
    """A query identifier: Query/Retrieve Level plus each ``keyword → value`` (``""`` asks for it).

    ``ValueError`` naming the keyword that is not in the DICOM dictionary.
    """
    ds = Dataset()
    ds.QueryRetrieveLevel = level.upper()
    for keyword, value in keys.items():
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise ValueError(f"{keyword!r} is not a DICOM keyword")
        vr = dictionary_VR(tag)
        ds.add_new(tag, vr, [] if vr == "SQ" else (value or None))
    return ds


def _status(response: Dataset) -> tuple[int, str]:
    status = int(response.Status) if "Status" in response else -1
    return status, str(response.get("ErrorComment", "") or "")


def find(
    destination: Destination,
    calling_ae_title: str,
    query: Dataset,
    *,
    model: str = "study",
    timeouts: DimseTimeouts = DEFAULT_TIMEOUTS,
) -> Iterator[Dataset]:
    """C-FIND ``query``; yields each match's identifier."""
    sop_class = FIND[model]
    ae = make_ae(calling_ae_title, timeouts)
    ae.add_requested_context(sop_class)
    assoc = associate(ae, destination)
    try:
        for response, match in assoc.send_c_find(query, sop_class):
            status, comment = _status(response)
            if status in (0xFF00, 0xFF01):
                if match is not None:
                    yield match
            elif status == 0x0000:
                return
            else:
                raise QueryFailed(status, comment)
        raise ConnectionError(f"{destination.address} ended the association during the C-FIND")
    finally:
        if assoc.is_established:
            assoc.release()


@dataclass
class MoveReport:
    status: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    comment: str = ""
    failed_instances: list[str] = field(default_factory=list)


def move(
    destination: Destination,
    calling_ae_title: str,
    query: Dataset,
    move_destination: str,
    *,
    model: str = "study",
    timeouts: DimseTimeouts = DEFAULT_TIMEOUTS,
) -> MoveReport:
    """C-MOVE ``query`` to the AE titled ``move_destination``; the final response's counts."""
    sop_class = MOVE[model]
    ae = make_ae(calling_ae_title, timeouts)
    ae.add_requested_context(sop_class)
    assoc = associate(ae, destination)
    report = MoveReport(status=-1)
    try:
        for response, extra in assoc.send_c_move(query, move_destination, sop_class):
            status, comment = _status(response)
            report = MoveReport(
                status,
                int(response.get("NumberOfCompletedSuboperations", 0) or 0),
                int(response.get("NumberOfFailedSuboperations", 0) or 0),
                int(response.get("NumberOfWarningSuboperations", 0) or 0),
                comment,
            )
            if extra is not None and "FailedSOPInstanceUIDList" in extra:
                failed = extra.FailedSOPInstanceUIDList
                report.failed_instances = [str(u) for u in (failed if isinstance(failed, list) else [failed])]
    finally:
        if assoc.is_established:
            assoc.release()
    return report
