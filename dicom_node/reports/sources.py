"""The source instances a result was computed from: lookup by UID, study attributes, slice geometry."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom import config
from pydicom.valuerep import validate_value

from pipelines.findings import ImageReference

# Patient and study attributes that highdicom does not copy itself, copied from the source so that a
# result sorts under the same patient and study in every PACS (Patient Study and General Study modules).
EXTRA_STUDY_KEYWORDS = (
    "IssuerOfPatientID",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "StudyDescription",
)


class SourceIndex:
    """The source instances of one study, by SOP Instance UID."""

    def __init__(self, sources: Sequence[pydicom.Dataset]) -> None:
        if not sources:
            raise ValueError('Argument "sources" must hold at least one source instance.')
        self._by_uid: dict[str, pydicom.Dataset] = {}
        studies = set()
        for ds in sources:
            uid = str(ds.get("SOPInstanceUID", ""))
            if not uid:
                raise ValueError("A source instance has no SOP Instance UID.")
            add_missing_type2(ds)
            studies.add(str(ds.get("StudyInstanceUID", "")))
            self._by_uid[uid] = ds
        if len(studies) != 1 or "" in studies:
            raise ValueError(f"The source instances must belong to one study, got {sorted(studies)}.")
        self.study_instance_uid = studies.pop()
        self.first = sources[0]

    def __contains__(self, uid: object) -> bool:
        return uid in self._by_uid

    def get(self, ref: ImageReference | str) -> pydicom.Dataset:
        """The source instance a reference points at; ``ValueError`` if it is not among the sources."""
        uid = ref if isinstance(ref, str) else ref.sop_instance_uid
        try:
            ds = self._by_uid[uid]
        except KeyError:
            raise ValueError(
                f"The result references SOP Instance {uid}, which is not among the sources."
            ) from None
        if not isinstance(ref, str) and str(ds.SOPClassUID) != ref.sop_class_uid:
            raise ValueError(f"SOP Instance {uid} is of class {ds.SOPClassUID}, not {ref.sop_class_uid}.")
        return ds

    def all(self) -> list[pydicom.Dataset]:
        return list(self._by_uid.values())


def copy_study_attributes(target: pydicom.Dataset, source: pydicom.Dataset) -> None:
    """Copy the patient and study attributes highdicom leaves out, then drop invalid copied values."""
    for keyword in EXTRA_STUDY_KEYWORDS:
        if keyword not in source or keyword in target:
            continue
        element = source[keyword]
        if element.value in (None, ""):
            continue
        try:
            # A source's invalid value (e.g. Patient's Age "62" instead of "062Y") is not copied: the
            # result must stay valid even where the modality's object is not.
            validate_value(element.VR, element.value, config.RAISE)
        except ValueError:
            continue
        target.add_new(element.tag, element.VR, element.value)
    drop_invalid_values(target)


# Type 2 attributes of the Patient and General Study modules: present always, possibly empty.
_TYPE2_KEYWORDS = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
        "StudyID",
        "AccessionNumber",
    }
)


def add_missing_type2(ds: pydicom.Dataset) -> list[str]:
    """Give a source the Type 2 patient and study attributes it lacks, empty; returns their keywords.

    Modalities leave them out (a de-identified radiograph without Patient's Name or Birth Date is common)
    although they are Type 2; highdicom reads them from the first source as attributes and would fail
    with a bare ``AttributeError``. Empty is what the standard says an unknown Type 2 value is, so the
    result carries them empty too. Only the in-memory data set changes, never the stored file.
    """
    added = sorted(keyword for keyword in _TYPE2_KEYWORDS if keyword not in ds)
    for keyword in added:
        setattr(ds, keyword, None)
    return added


def drop_invalid_values(ds: pydicom.Dataset) -> list[str]:
    """Remove (Type 3) or empty (Type 2) top-level values copied from a source that are invalid for their VR.

    highdicom copies the whole Patient and Study modules from the source; a modality's invalid value
    (the test radiograph has Patient's Age "62" where AS needs "062Y") would make our object invalid.
    Returns the keywords it changed.
    """
    changed = []
    for element in list(ds):
        # Only text values as read or copied; numbers highdicom set itself are typed and valid.
        if type(element.value) is not str or element.value == "":
            continue
        try:
            validate_value(element.VR, element.value, config.RAISE)
        except ValueError:
            changed.append(element.keyword)
            if element.keyword in _TYPE2_KEYWORDS:
                element.value = None
            else:
                del ds[element.tag]
    return changed


class SliceGeometry:
    """Where the pixels of one image lie in patient coordinates (LPS, mm)."""

    def __init__(self, ds: pydicom.Dataset) -> None:
        orientation = np.asarray(ds.ImageOrientationPatient, dtype=float)
        self.row_direction = orientation[:3]  # direction of increasing column index
        self.column_direction = orientation[3:]  # direction of increasing row index
        self.position = np.asarray(ds.ImagePositionPatient, dtype=float)  # centre of pixel (0, 0)
        spacing = [float(v) for v in ds.PixelSpacing]
        self.row_spacing, self.column_spacing = spacing  # between rows, between columns

    def to_pixel(self, point: Sequence[float]) -> tuple[float, float]:
        """(column, row) of a patient point projected onto this plane; pixel centres at integers."""
        offset = np.asarray(point, dtype=float) - self.position
        return (
            float(offset @ self.row_direction / self.column_spacing),
            float(offset @ self.column_direction / self.row_spacing),
        )

    def extent_in_pixels(self, size_mm: npt.ArrayLike) -> tuple[float, float]:
        """(columns, rows) spanned by an axis-aligned box of ``size_mm`` (x, y, z) seen on this plane."""
        size = np.abs(np.asarray(size_mm, dtype=float))
        return (
            float(size @ np.abs(self.row_direction) / self.column_spacing),
            float(size @ np.abs(self.column_direction) / self.row_spacing),
        )
