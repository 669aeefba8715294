"""What the index keeps of a received data set: its identifiers, checked, and the attributes routing reads.

``describe_instance`` runs for every received instance, in the C-STORE handler, before anything is
written: it reads text values as encoded (no pydicom conversion, see ``_raw_value``) and the few
sequences routing needs (procedure codes, anatomic region), and derives the orientation and the slice
position along the normal from the geometry (``orientation_of``, ``slice_position_of``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from dicom_node.errors import InvalidIdentifierError, UnreadableDatasetError
from dicom_node.index.models import coded_text
from dicom_node.storage.frames import frame_planes, number_of_frames
from dicom_node.storage.store import validate_uid

LOG = logging.getLogger(__name__)

# ``describe_instance`` reads nothing after group 0040 (the request attributes and procedure codes
# routing reads; Pixel Data is 7FE0), so the edge parses a received data set only up to there
# (``incoming.read_received``), and a multi-frame one again up to its functional groups
# (``frames.LAST_FRAME_TAG``). A new indexed attribute from a later group must move this.
LAST_INDEXED_TAG = 0x0040FFFF


def _raw_value(ds: Dataset, keyword: str) -> str | None:
    """A text value exactly as received, without pydicom's conversion.

    Conversion validates (and warns about) every value and dominates the handler's time; the index only
    needs the text. Non-ASCII bytes fall back to pydicom, which decodes them with the data set's
    Specific Character Set. Multiple values stay joined by backslashes, as encoded.
    """
    tag = tag_for_keyword(keyword)
    if tag is None or tag not in ds:
        return None
    element = ds.get_item(tag)
    value = element.value if element is not None else None
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            return value.decode("ascii").rstrip("\x00 ")
        except UnicodeDecodeError:
            value = ds.get(keyword)
    if isinstance(value, list | tuple) or (hasattr(value, "__iter__") and not isinstance(value, str)):
        return "\\".join(str(v) for v in value)
    return str(value).rstrip("\x00 ")


def _raw_uid(ds: Dataset, keyword: str) -> str | None:
    """A UI value as received: validation is ``validate_uid``'s job, not a warnings filter's."""
    return _raw_value(ds, keyword)


def _text(ds: Dataset, keyword: str, limit: int = 64) -> str | None:
    text = _raw_value(ds, keyword)
    return text[:limit].strip() or None if text else None


def _numbers(ds: Dataset, keyword: str) -> list[float] | None:
    text = _raw_value(ds, keyword)
    if not text:
        return None
    try:
        return [float(part) for part in text.split("\\")]
    except ValueError:
        return None


def _integer(ds: Dataset, keyword: str) -> int | None:
    value = _number(ds, keyword)
    return int(value) if value is not None else None


def _number(ds: Dataset, keyword: str) -> float | None:
    values = _numbers(ds, keyword)
    return values[0] if values else None


def _slice_normal(ds: Dataset) -> tuple[float, float, float] | None:
    """The normal of the image plane (row × column direction of Image Orientation (Patient))."""
    iop = _numbers(ds, "ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return None
    r, c = iop[:3], iop[3:]
    return (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])


def orientation_of(ds: Dataset) -> str | None:
    """axial / coronal / sagittal / oblique from Image Orientation (Patient), if present."""
    normal = _slice_normal(ds)
    if normal is None:
        return None
    axis = max(range(3), key=lambda i: abs(normal[i]))
    if abs(normal[axis]) < 0.8:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def slice_position_of(ds: Dataset) -> float | None:
    """Where the slice lies along its normal (mm): Image Position (Patient) projected on the normal.

    The normal's sign is fixed (its largest component positive), so a feet-first series and a head-first
    one, or rows or columns mirrored, give the same positions; the range of them over a series is how far
    it reaches (``extent_mm``), whatever its instance count.
    """
    normal = _slice_normal(ds)
    ipp = _numbers(ds, "ImagePositionPatient")
    if normal is None or ipp is None or len(ipp) != 3:
        return None
    length = math.sqrt(sum(n * n for n in normal))
    if length < 1e-6:
        return None
    sign = 1.0 if max(normal, key=abs) > 0 else -1.0
    return round(sign * sum(p * n for p, n in zip(ipp, normal, strict=True)) / length, 3)


_CODE_SEQUENCES_OF_STUDY = ("ProcedureCodeSequence", "RequestedProcedureCodeSequence")


def _coded(items: Any) -> list[tuple[str, str, str]]:
    entries = []
    for item in items or ():
        value = _text(item, "CodeValue", 64) or _text(item, "LongCodeValue", 64) or ""
        scheme = _text(item, "CodingSchemeDesignator", 16) or ""
        meaning = _text(item, "CodeMeaning") or ""
        if value or meaning:
            entries.append((value, scheme, meaning))
    return entries


def _study_codes(ds: Dataset) -> str | None:
    """Procedure codes: the study's and the requested procedure's (from Request Attributes Sequence when
    the data set has none of its own: parsing sequences is most of what this function costs)."""
    entries = [e for keyword in _CODE_SEQUENCES_OF_STUDY if keyword in ds for e in _coded(ds.get(keyword))]
    if not entries and "RequestAttributesSequence" in ds:
        for request in ds.RequestAttributesSequence:
            entries += _coded(request.get("RequestedProcedureCodeSequence"))
    return coded_text(entries[:16])


def _requested_procedure_description(ds: Dataset) -> str | None:
    """(0032,1060), else the first Request Attributes Sequence item's requested or scheduled step's."""
    if text := _text(ds, "RequestedProcedureDescription"):
        return text
    for request in ds.get("RequestAttributesSequence") or ():
        if text := _text(request, "RequestedProcedureDescription") or _text(
            request, "ScheduledProcedureStepDescription"
        ):
            return text
    return None


def _optional(read: Callable[[Dataset], str | None], ds: Dataset) -> str | None:
    """A routing attribute the index can do without: a malformed sequence is logged, not fatal."""
    try:
        return read(ds)
    except Exception as error:  # pydicom raises many types on a malformed sequence
        LOG.debug("ignoring an unreadable routing attribute: %s", error)
        return None


def _optional_planes(ds: Dataset) -> list[Dataset]:
    """A multi-frame image's planes; malformed functional groups are logged, not fatal: the instance is
    kept and indexed without the geometry (as a single-frame image without Image Position would be)."""
    try:
        return frame_planes(ds)
    except Exception as error:  # pydicom raises many types on a malformed sequence
        LOG.debug("ignoring unreadable functional groups: %s", error)
        return []


@dataclass(frozen=True)
class ReceivedInstance:
    """The identifiers and indexable attributes of one received data set.

    ``produced_here`` marks the node's own result objects: they are stored and indexed like any
    instance, but change none of their study's received facts (calling AE, modalities, counts, state).
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    instance_number: int | None
    study: dict[str, Any]
    series: dict[str, Any]
    slice_range: tuple[float, float] | None = None
    """The lowest and highest slice position this instance holds (one slice: both the same; a multi-frame
    object gives its frames' range); they widen the series' range at ingest."""
    produced_here: bool = False
    number_of_frames: int | None = None
    """Number of Frames of a multi-frame image (``None``: one frame); the series counts its images."""

    @property
    def images(self) -> int:
        """The images (planes) this instance adds to its series."""
        return self.number_of_frames or 1


def describe_instance(
    ds: Dataset,
    *,
    transfer_syntax_uid: str,
    requested_sop_class_uid: str | None = None,
    requested_sop_instance_uid: str | None = None,
) -> ReceivedInstance:
    """Validate the identifiers of ``ds`` and pick the attributes the index keeps.

    Raises ``InvalidIdentifierError`` naming the attribute, or ``UnreadableDatasetError`` when the
    data set cannot be parsed (a truncated or corrupt stream).
    """
    try:
        study_uid = validate_uid(_raw_uid(ds, "StudyInstanceUID"), "Study Instance UID (0020,000D)")
        series_uid = validate_uid(_raw_uid(ds, "SeriesInstanceUID"), "Series Instance UID (0020,000E)")
        sop_uid = validate_uid(_raw_uid(ds, "SOPInstanceUID"), "SOP Instance UID (0008,0018)")
        sop_class = validate_uid(_raw_uid(ds, "SOPClassUID"), "SOP Class UID (0008,0016)")
        if requested_sop_instance_uid and requested_sop_instance_uid.rstrip("\x00 ") != sop_uid:
            raise InvalidIdentifierError(
                "SOP Instance UID (0008,0018) in the data set differs from Affected SOP Instance UID"
            )
        if requested_sop_class_uid and requested_sop_class_uid.rstrip("\x00 ") != sop_class:
            raise InvalidIdentifierError(
                "SOP Class UID (0008,0016) in the data set differs from Affected SOP Class UID"
            )
        instance_number = _integer(ds, "InstanceNumber")
        series_number = _integer(ds, "SeriesNumber")
        study = {
            "patient_id": _text(ds, "PatientID"),
            "patient_name": _text(ds, "PatientName", 324),
            "patient_birth_date": _text(ds, "PatientBirthDate", 8),
            "patient_sex": _text(ds, "PatientSex", 16),
            "study_id": _text(ds, "StudyID", 16),
            "referring_physician_name": _text(ds, "ReferringPhysicianName", 324),
            "accession_number": _text(ds, "AccessionNumber"),
            "study_date": _text(ds, "StudyDate", 8),
            "study_time": _text(ds, "StudyTime", 16),
            "study_description": _text(ds, "StudyDescription"),
            "requested_procedure_description": _optional(_requested_procedure_description, ds),
            "procedure_codes": _optional(_study_codes, ds),
        }
        # A multi-frame image's geometry lies in its functional groups: orientation and thickness of its
        # first frame, the range of all its frames' positions (storage/frames.py).
        frames = number_of_frames(ds)
        planes = _optional_planes(ds) or [ds]
        geometry = planes[0]
        positions = [p for p in map(slice_position_of, planes) if p is not None]
        position = min(positions) if positions else None
        slice_range = (min(positions), max(positions)) if positions else None
        series = {
            "modality": _text(ds, "Modality", 16),
            "body_part_examined": _text(ds, "BodyPartExamined"),
            "series_description": _text(ds, "SeriesDescription"),
            "series_number": series_number,
            "series_date": _text(ds, "SeriesDate", 8),
            "series_time": _text(ds, "SeriesTime", 16),
            "protocol_name": _text(ds, "ProtocolName"),
            "image_type": _text(ds, "ImageType", 128),
            "orientation": orientation_of(geometry),
            "view_position": _text(ds, "ViewPosition", 16),
            "slice_thickness": _number(geometry, "SliceThickness") or _number(ds, "SliceThickness"),
            "kvp": _number(ds, "KVP"),
            "manufacturer": _text(ds, "Manufacturer"),
            "frame_of_reference_uid": _text(ds, "FrameOfReferenceUID"),
            "anatomic_region": _optional(lambda d: coded_text(_coded(d.get("AnatomicRegionSequence"))), ds),
            "slice_position_min": position,
            "slice_position_max": slice_range[1] if slice_range else None,
        }
    except InvalidIdentifierError:
        raise
    except Exception as error:  # pydicom raises many types on corrupt input
        raise UnreadableDatasetError(f"the data set cannot be decoded: {error}") from error
    return ReceivedInstance(
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
        sop_class_uid=sop_class,
        transfer_syntax_uid=transfer_syntax_uid,
        instance_number=instance_number,
        study=study,
        series=series,
        slice_range=slice_range,
        number_of_frames=frames,
    )
