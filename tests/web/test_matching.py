"""C-FIND attribute matching as QIDO-RS applies it, on real pydicom data sets."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from dicom_node.web.matching import QueryKeyError, key
from dicom_node.web.multipart import MultipartError, encode_parts, split_parts


def _ds() -> Dataset:
    ds = Dataset()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "ID-7"
    ds.StudyDate = "20240315"
    ds.StudyTime = "101500"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.ModalitiesInStudy = ["CT", "SEG"]
    ds.StudyDescription = ""
    return ds


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("PatientName", "doe^jane", True),  # PN: case-insensitive
        ("PatientName", "Doe*", True),
        ("PatientName", "D?e^Jane", True),
        ("PatientName", "Smith*", False),
        ("PatientID", "id-7", False),  # LO: case-sensitive
        ("PatientID", "", True),  # universal
        ("StudyInstanceUID", "9.9,1.2.3.4", True),  # UID list (QIDO commas)
        ("StudyInstanceUID", "9.9\\8.8", False),
        ("StudyDate", "20240101-20241231", True),
        ("StudyDate", "20240316-", False),
        ("StudyDate", "-20240315", True),
        ("StudyTime", "1000-1015", True),  # a bound matches at its own precision
        ("StudyTime", "1016-", False),
        ("ModalitiesInStudy", "SEG", True),  # any value of a multi-valued element
        ("ModalitiesInStudy", "MR\\CT", True),  # a list of values
        ("PatientName", "Smith*\\doe^*", True),
        ("StudyDescription", "x*", False),  # empty matches only universally
        ("AccessionNumber", "A1", False),  # absent likewise
        ("00100020", "ID-7", True),  # by tag
    ],
)
def test_matching(name: str, value: str, expected: bool) -> None:
    assert key(name, value).matches(_ds()) is expected


def test_keys_that_name_nothing_are_refused() -> None:
    with pytest.raises(QueryKeyError, match="NoSuchThing"):
        key("NoSuchThing", "1")
    with pytest.raises(QueryKeyError, match="sequence"):
        key("ReferencedStudySequence", "1")


def test_multipart_round_trip_keeps_bytes() -> None:
    parts = [b"\r\n--not-the-boundary\r\n\x00\xff", b"", bytes(range(256)) * 4]
    body = b"preamble\r\n" + b"".join(encode_parts(iter(("application/dicom", p) for p in parts), "bnd"))
    assert [bytes(p.body) for p in split_parts(body, "bnd")] == parts
    assert {p.content_type for p in split_parts(body, "bnd")} == {"application/dicom"}
    with pytest.raises(MultipartError, match="closing boundary"):
        split_parts(body[:-12], "bnd")
    with pytest.raises(MultipartError, match="does not occur"):
        split_parts(body, "other")
