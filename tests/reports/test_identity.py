"""Result identity: derived from the input, byte-stable for the same input, new (with a predecessor
reference) for a changed one; one study, and every reference resolvable in the study."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime

import pydicom

from dicom_node.reports import (
    DEFAULT_PROFILE,
    LABELMAP_PROFILE,
    OHIF_PROFILE,
    CompanionType,
    DocumentReference,
    ReportProfile,
    ResultBasis,
    derive_uid,
    write_results,
)
from dicom_node.reports.uids import instances_digest

from .conftest import classification_result, nodule_result, untrained, vertebra_result
from .data import ct_series, cxr
from .tools import to_bytes

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

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
    basis = ResultBasis.of_sources(sources, WHEN)
    seen: dict[str, str] = {}
    seen_bytes: dict[str, bytes] = {}
    for profile in (DEFAULT_PROFILE, LABELMAP_PROFILE, OHIF_PROFILE):
        for ds in write_results(result, sources, profile, basis=basis):
            key = f"{ds.Modality}:{ds.get('SegmentationType', '')}:{ds.SeriesDescription}"
            if str(ds.SOPInstanceUID) in seen:
                # Same UID only for the very same content (the SR of BINARY and of LABELMAP differ).
                assert seen[str(ds.SOPInstanceUID)] == key
                assert seen_bytes[str(ds.SOPInstanceUID)] == to_bytes(ds)
            seen[str(ds.SOPInstanceUID)] = key
            seen_bytes[str(ds.SOPInstanceUID)] = to_bytes(ds)
    # The standard SR of the BINARY and of the LABELMAP profile reference different SEGs: two UIDs.
    srs = {
        str(ds.SOPInstanceUID)
        for profile in (DEFAULT_PROFILE, LABELMAP_PROFILE)
        for ds in write_results(result, sources, profile, basis=basis)
        if ds.Modality == "SR"
    }
    assert len(srs) == 2


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


CASES = (
    ("cxr", classification_result, lambda: [cxr()]),
    ("nodules", nodule_result, lambda: list(ct_series())),
    ("vertebrae", vertebra_result, lambda: list(ct_series())),
)


def test_the_same_input_gives_byte_identical_objects() -> None:
    """Every date/time comes from the basis and every UID is derived: nothing of "now", nothing random
    (highdicom's creation times, its own Contributing Equipment time, a SEG's Dimension Organization UID)."""
    for _, make, sources_of in CASES:
        result, sources = untrained(make()), sources_of()
        basis = ResultBasis.of_sources(sources, WHEN)
        first = [to_bytes(ds) for ds in write_results(result, sources, FULL, basis=basis)]
        time.sleep(1.1)  # "now" has moved on by whole seconds
        again = [to_bytes(ds) for ds in write_results(result, list(reversed(sources)), FULL, basis=basis)]
        assert first == again
        for ds in write_results(result, sources, OHIF_PROFILE, basis=basis):
            assert (ds.ContentDate, ds.ContentTime) == (ds.InstanceCreationDate, ds.InstanceCreationTime)
            local = WHEN.astimezone()
            assert (str(ds.ContentDate), str(ds.ContentTime)) == (
                local.strftime("%Y%m%d"),
                local.strftime("%H%M%S"),
            )
            for item in ds.get("DimensionOrganizationSequence", []):
                assert item.DimensionOrganizationUID == derive_uid(
                    str(ds.SOPInstanceUID), "dimension-organization"
                )


def test_a_changed_input_or_model_gives_new_uids() -> None:
    for _, make, sources_of in CASES:
        result, sources = make(), sources_of()
        pairs = [(str(ds.SOPInstanceUID), str(ds.SOPInstanceUID)) for ds in sources]
        basis = ResultBasis(str(sources[0].SeriesInstanceUID), instances_digest(pairs), WHEN)
        corrected = [(uid, "corrected" if i == 0 else h) for i, (uid, h) in enumerate(pairs)]
        variants = [
            dataclasses.replace(basis, instances_sha256=instances_digest(corrected)),  # one instance changed
            dataclasses.replace(basis, series_instance_uid="1.2.3.4"),  # another series chosen
        ]
        original = write_results(result, sources, FULL, basis=basis)
        uids = {str(ds.SOPInstanceUID) for ds in original} | {str(ds.SeriesInstanceUID) for ds in original}
        for other in variants:
            changed = write_results(result, sources, FULL, basis=other)
            assert uids.isdisjoint({str(ds.SOPInstanceUID) for ds in changed})
            assert uids.isdisjoint({str(ds.SeriesInstanceUID) for ds in changed})
            assert [int(ds.SeriesNumber) for ds in changed] == [int(ds.SeriesNumber) for ds in original]
        retrained = dataclasses.replace(
            result, model=dataclasses.replace(result.model, weights_sha256="cd" * 32)
        )
        assert uids.isdisjoint(
            {str(ds.SOPInstanceUID) for ds in write_results(retrained, sources, FULL, basis=basis)}
        )


def test_the_new_sr_names_the_one_it_replaces() -> None:
    result, sources = vertebra_result(), list(ct_series())
    old = write_results(result, sources, DEFAULT_PROFILE, basis=ResultBasis.of_sources(sources, WHEN))
    old_sr = next(ds for ds in old if ds.Modality == "SR")
    replaced = DocumentReference(
        str(old_sr.StudyInstanceUID),
        str(old_sr.SeriesInstanceUID),
        str(old_sr.SOPInstanceUID),
        str(old_sr.SOPClassUID),
    )
    basis = dataclasses.replace(ResultBasis.of_sources(sources, WHEN), instances_sha256="0" * 64)
    new = write_results(result, sources, DEFAULT_PROFILE, basis=basis, predecessors=[replaced])
    new_sr = next(ds for ds in new if ds.Modality == "SR")
    assert new_sr.SOPInstanceUID != old_sr.SOPInstanceUID
    (study,) = new_sr.PredecessorDocumentsSequence
    assert study.StudyInstanceUID == old_sr.StudyInstanceUID
    (series,) = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == old_sr.SeriesInstanceUID
    (instance,) = series.ReferencedSOPSequence
    assert (instance.ReferencedSOPInstanceUID, instance.ReferencedSOPClassUID) == (
        old_sr.SOPInstanceUID,
        old_sr.SOPClassUID,
    )
    assert "PredecessorDocumentsSequence" not in next(ds for ds in new if ds.Modality == "SEG")


def test_profiles_of_one_job_share_each_object_they_have_in_common() -> None:
    result, sources = vertebra_result(), list(ct_series())
    basis = ResultBasis.of_sources(sources, WHEN)
    shared: dict = {}
    standard = write_results(result, sources, DEFAULT_PROFILE, basis=basis, shared=shared)
    ohif = write_results(result, sources, OHIF_PROFILE, basis=basis, shared=shared)
    labelmap = write_results(result, sources, LABELMAP_PROFILE, basis=basis, shared=shared)
    # "ohif" is the standard profile now: the same SEG and SR, built once.
    assert standard[0] is ohif[0] and standard[1] is ohif[1]
    assert labelmap[0] is not standard[0] and labelmap[0].SOPInstanceUID != standard[0].SOPInstanceUID
    assert len({str(ds.SOPInstanceUID) for ds in standard + ohif + labelmap}) == 4
