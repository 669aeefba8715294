"""STOW-RS: instances POSTed as ``multipart/related; type="application/dicom"`` (PS3.18 §10.5).

Each part goes through the same steps as a C-STORE data set: written to the store's temporary folder
and fsynced (behind File Meta Information the node writes itself, naming the caller as Source AE),
checked for completeness and parsed once (``storage.incoming.read_received``), then committed and
indexed by ``storage.ingest.Ingest.store_file``. An instance is listed as stored only after that has
returned ("ack means durable"). A refused part is listed in the FailedSOPSequence with the DICOM status
a C-STORE would have got (its Failure Reason), and leaves nothing behind.

The response status (PS3.18 §10.5.3): 200 every instance stored, 202 some stored and some failed,
409 none stored.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from dicom_node.errors import IngestError, InvalidIdentifierError, UnreadableDatasetError
from dicom_node.ops.metrics import REFUSED_INSTANCES
from dicom_node.storage.incoming import read_received
from dicom_node.storage.ingest import Ingest
from dicom_node.storage.part10 import PREAMBLE, dataset_offset, file_meta
from dicom_node.web.multipart import Part

LOG = logging.getLogger(__name__)

# PS3.18 Table 10.5.3-1 / PS3.4 Annex B: Failure Reasons
PROCESSING_FAILURE = 0x0110
STUDY_MISMATCH = 0xA900  # "Data Set does not match SOP Class" is the nearest C-STORE status
NOT_DICOM = 0xC210


@dataclass
class StowOutcome:
    """What one STOW-RS request did, instance by instance."""

    stored: list[tuple[str, str, str]] = field(default_factory=list)
    """(SOP Class UID, SOP Instance UID, retrieve path) of every instance kept."""
    failed: list[tuple[str, str, int, str]] = field(default_factory=list)
    """(SOP Class UID, SOP Instance UID, Failure Reason, why) of every part refused."""

    @property
    def http_status(self) -> int:
        if not self.failed:
            return 200
        return 202 if self.stored else 409

    def response(self, base_url: str, study_instance_uid: str | None) -> Dataset:
        ds = Dataset()
        if study_instance_uid:
            ds.RetrieveURL = f"{base_url}/studies/{study_instance_uid}"
        if self.stored:
            items = []
            for sop_class, sop_instance, path in self.stored:
                item = Dataset()
                item.ReferencedSOPClassUID = sop_class
                item.ReferencedSOPInstanceUID = sop_instance
                item.RetrieveURL = base_url + path
                items.append(item)
            ds.ReferencedSOPSequence = DicomSequence(items)
        if self.failed:
            items = []
            for sop_class, sop_instance, reason, _why in self.failed:
                item = Dataset()
                if sop_class:
                    item.ReferencedSOPClassUID = sop_class
                if sop_instance:
                    item.ReferencedSOPInstanceUID = sop_instance
                item.FailureReason = reason
                items.append(item)
            ds.FailedSOPSequence = DicomSequence(items)
        return ds


def store_parts(
    ingest: Ingest, parts: list[Part], caller: str, study_instance_uid: str | None
) -> StowOutcome:
    """Store each ``application/dicom`` part; the others are refused one by one."""
    outcome = StowOutcome()
    for index, part in enumerate(parts, start=1):
        seen: dict[str, str] = {}
        try:
            if part.content_type not in ("", "application/dicom"):
                raise UnreadableDatasetError(f"part {index} is {part.content_type}, not application/dicom")
            path = _store_one(ingest, part, caller, study_instance_uid, seen)
            outcome.stored.append((seen["class"], seen["instance"], path))
        except IngestError as error:
            sop_class, sop_instance = seen.get("class", ""), seen.get("instance", "")
            status = error.status if not isinstance(error, _StudyMismatch) else STUDY_MISMATCH
            outcome.failed.append((sop_class, sop_instance, status, str(error)))
            REFUSED_INSTANCES.labels(status=f"0x{status:04X}", reason="stow").inc()
            LOG.warning(
                "STOW-RS refused part %d (%s): 0x%04X %s",
                index,
                sop_instance or "no SOP Instance UID",
                status,
                error,
                extra={"sop_instance_uid": sop_instance, "status": f"0x{status:04X}", "caller": caller},
            )
    return outcome


class _StudyMismatch(InvalidIdentifierError):
    """The instance belongs to another study than the one the request was POSTed to."""


def _store_one(ingest: Ingest, part: Part, caller: str, study: str | None, seen: dict[str, str]) -> str:
    """Store one part; its retrieve path. ``seen`` gets its SOP Class and Instance UIDs once read."""
    data = part.body
    if len(data) < 132 or bytes(data[128:132]) != b"DICM":
        raise UnreadableDatasetError("not a DICOM Part 10 file: no DICM prefix at byte 128")
    try:
        offset = dataset_offset(data[: min(len(data), 65536)])
    except ValueError as error:
        raise UnreadableDatasetError(str(error)) from None
    # The sender's file meta is read from its own bytes, then replaced by the node's (as a C-STORE's).
    try:
        meta = dcmread(io.BytesIO(bytes(data[:offset]))).file_meta
    except Exception as error:  # pydicom raises several types on a broken meta group
        raise UnreadableDatasetError(f"cannot read the File Meta Information: {error}") from error
    sop_class = str(meta.get("MediaStorageSOPClassUID", "") or "").rstrip("\x00 ")
    sop_instance = str(meta.get("MediaStorageSOPInstanceUID", "") or "").rstrip("\x00 ")
    syntax = str(meta.get("TransferSyntaxUID", "") or "").rstrip("\x00 ")
    seen.update({"class": sop_class, "instance": sop_instance})
    if not (sop_class and sop_instance and syntax):
        raise InvalidIdentifierError("the File Meta Information lacks its SOP Class, Instance or syntax")
    header = PREAMBLE + file_meta(sop_class, sop_instance, syntax, caller[:16])
    tmp_path, written = ingest.store.write_temporary([header, data[offset:]], dataset_offset=len(header))
    try:
        received = read_received(
            tmp_path,
            len(header),
            syntax,
            requested_sop_class_uid=sop_class,
            requested_sop_instance_uid=sop_instance,
        )
        if study is not None and received.study_instance_uid != study:
            raise _StudyMismatch(f"the instance is of study {received.study_instance_uid}, not {study}")
        ingest.store_file(received, tmp_path, written, calling_ae_title=caller[:16])
    finally:
        ingest.store.discard(tmp_path)
    return (
        f"/studies/{received.study_instance_uid}/series/{received.series_instance_uid}"
        f"/instances/{received.sop_instance_uid}"
    )
