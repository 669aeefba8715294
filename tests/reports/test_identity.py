"""Result identity: stable UIDs across runs, one study, and every reference resolvable in the study."""

from __future__ import annotations

import pydicom

from dicom_node.reports import (
    DEFAULT_PROFILE,
    LABELMAP_PROFILE,
    OHIF_PROFILE,
    CompanionType,
    ReportProfile,
    derive_uid,
    write_results,
)

from .conftest import classification_result, nodule_result, vertebra_result
from .data import ct_series, cxr

FULL = ReportProfile(companion=CompanionType.SECONDARY_CAPTURE)


def _uids(objects: list[pydicom.Dataset]) -> list[tuple[str, str, int]]:
    return [(str(o.SeriesInstanceUID), str(o.SOPInstanceUID), int(o.SeriesNumber)) for o in objects]


def _referenced_uids(ds: pydicom.Dataset) -> set[str]:
    """Every Referenced SOP Instance UID, except in Referenced Study Sequence: highdicom copies that
    General Study attribute from the source, and it names the RIS's study object, not an instance."""
    found: set[str] = set()
    for element in ds:
        if element.keyword == "ReferencedStudySequence":
            continue
        if element.VR == "SQ":
            for item in element.value:
                found |= _referenced_uids(item)
        elif element.keyword == "ReferencedSOPInstanceUID" and element.value:
            found.add(str(element.value))
    return found


def test_uids_and_series_numbers_are_stable_across_runs() -> None:
    for result, sources in ((vertebra_result(), list(ct_series())), (classification_result(), [cxr()])):
        first = _uids(write_results(result, sources, FULL))
        second = _uids(write_results(result, list(reversed(sources)), FULL))
        assert first == second
        assert len({uid for _, uid, _ in first}) == len(first)
        assert len({series for series, _, _ in first}) == len(first)  # a new series per object


def test_profiles_with_other_content_get_other_uids() -> None:
    result, sources = vertebra_result(), list(ct_series())
    seen: dict[str, str] = {}
    for profile in (DEFAULT_PROFILE, LABELMAP_PROFILE, OHIF_PROFILE):
        for ds in write_results(result, sources, profile):
            key = f"{ds.Modality}:{ds.get('SegmentationType', '')}:{ds.SeriesDescription}"
            if str(ds.SOPInstanceUID) in seen:
                # Same UID only for the very same content (the SR of BINARY and of LABELMAP differ).
                assert seen[str(ds.SOPInstanceUID)] == key
            seen[str(ds.SOPInstanceUID)] = key


def test_derive_uid_depends_on_every_part() -> None:
    assert derive_uid("1.2.3", "ct-vertebrae", "1") == derive_uid("1.2.3", "ct-vertebrae", "1")
    assert derive_uid("1.2.3", "ct-vertebrae", "1") != derive_uid("1.2.3", "ct-vertebrae", "2")
    assert derive_uid("1.2.3", "ct-vertebrae", "1") != derive_uid("1.2.4", "ct-vertebrae", "1")


def test_same_study_and_references_resolve_in_the_study() -> None:
    cases = [
        (classification_result(), [cxr()]),
        (nodule_result(), list(ct_series())),
        (vertebra_result(), list(ct_series())),
    ]
    for result, sources in cases:
        for profile in (DEFAULT_PROFILE, OHIF_PROFILE, LABELMAP_PROFILE):
            objects = write_results(result, sources, profile)
            known = {str(s.SOPInstanceUID) for s in sources} | {str(o.SOPInstanceUID) for o in objects}
            for ds in objects:
                assert ds.StudyInstanceUID == sources[0].StudyInstanceUID
                assert ds.PatientID == sources[0].PatientID
                assert ds.Manufacturer == result.model.manufacturer
                assert ds.SoftwareVersions == result.model.version
                missing = _referenced_uids(ds) - known
                assert not missing, f"{ds.Modality} references instances outside the study: {missing}"
