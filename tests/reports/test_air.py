"""IHE AI Results (AIR) content of every SR and SEG, read back field by field with highdicom.

Each object goes through bytes and ``hd.sr.srread`` / ``hd.seg.segread``; the table of fields is in
docs/reports.md ("IHE AI Results content").
"""

from __future__ import annotations

from dataclasses import replace
from io import BytesIO

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from scipy import ndimage
from skimage import measure

from dicom_node.reports import DEFAULT_PROFILE, LABELMAP_PROFILE, CompanionType, ReportProfile, write_results
from dicom_node.reports.air import device_uid
from dicom_node.reports.readback import read_evaluations
from pipelines.findings import Findings

from .conftest import classification_result, nodule_result, untrained, vertebra_result
from .data import ct_series, cxr
from .tools import to_bytes

PROCESSING_EQUIPMENT = ("109102", "DCM")
AI = ("123110", "DCM")
# CID 100 as PixelMed 2022 validates it (a subset of what pydicom 3 lists): the codes we may use.
CID_100 = {
    (code.value, code.scheme_designator)
    for code in (codes.LN.CTUnspecifiedBodyRegion, codes.SCT.ImagingProcedure)
}


def _cases() -> list[tuple[str, Findings, list[pydicom.Dataset]]]:
    return [
        ("cxr", classification_result(), [cxr()]),
        ("nodules", nodule_result(), list(ct_series())),
        ("no-nodules", replace(nodule_result(), nodules=()), list(ct_series())),
        ("vertebrae", vertebra_result(), list(ct_series())),
        ("vertebrae-untrained", untrained(vertebra_result()), list(ct_series())),
    ]


def _read(ds: pydicom.Dataset) -> hd.sr.Comprehensive3DSR | hd.seg.Segmentation:
    data = BytesIO(to_bytes(ds))
    return hd.seg.segread(data) if ds.Modality == "SEG" else hd.sr.srread(data)


def _code(item: pydicom.Dataset) -> tuple[str, str]:
    return (str(item.CodeValue), str(item.CodingSchemeDesignator))


@pytest.fixture(scope="module")
def objects() -> list[
    tuple[str, Findings, list[pydicom.Dataset], hd.sr.Comprehensive3DSR | hd.seg.Segmentation]
]:
    out = []
    for case, result, sources in _cases():
        for profile in (DEFAULT_PROFILE, LABELMAP_PROFILE):
            for ds in write_results(result, sources, profile):
                out.append((case, result, sources, _read(ds)))
    return out


def test_the_algorithm_is_contributing_equipment_with_a_device_uid_of_its_weights(objects) -> None:
    for case, result, _, obj in objects:
        items = [
            item
            for item in obj.ContributingEquipmentSequence
            if _code(item.PurposeOfReferenceCodeSequence[0]) == PROCESSING_EQUIPMENT and "DeviceUID" in item
        ]
        assert len(items) == 1, f"{case} {obj.Modality}: the algorithm's equipment item"
        (item,) = items
        assert item.Manufacturer == result.model.manufacturer
        assert item.ManufacturerModelName == result.model.name
        assert item.SoftwareVersions == result.model.version
        assert item.DeviceUID == device_uid(result.model)
        assert item.DeviceSerialNumber == (result.model.weights_sha256 or "unknown")
    # The companion image names the algorithm in the same way.
    result = classification_result()
    (_, companion) = write_results(result, [cxr()], ReportProfile(companion=CompanionType.SECONDARY_CAPTURE))
    assert [i.DeviceUID for i in companion.ContributingEquipmentSequence if "DeviceUID" in i] == [
        device_uid(result.model)
    ]
    model = result.model
    assert device_uid(model) != device_uid(replace(model, weights_sha256="ab" * 32))
    assert device_uid(model) != device_uid(replace(model, version="9.9"))


def test_every_series_has_its_description_code(objects) -> None:
    for case, _, _, obj in objects:
        assert [_code(i) for i in obj.SeriesDescriptionCodeSequence] == [AI], case


def test_sr_observer_procedure_library_groups_and_negatives(objects) -> None:
    for case, result, sources, sr in objects:
        if not isinstance(sr, hd.sr.Comprehensive3DSR):
            continue
        report = sr.content
        assert isinstance(report, hd.sr.MeasurementReport)
        # The algorithm is the observer device, with the same Device UID.
        (observer,) = [
            i
            for i in sr.ContentSequence
            if i.ValueType == "UIDREF" and i.RelationshipType == "HAS OBS CONTEXT"
        ]
        assert device_uid(result.model) == observer.UID
        # Procedure Reported: from CID 100, naming the imaging (CT for CT, else "Imaging procedure").
        (procedure,) = [
            i
            for i in sr.ContentSequence
            if i.ValueType == "CODE" and _code(i.ConceptNameCodeSequence[0]) == ("121058", "DCM")
        ]
        value = _code(procedure.ConceptCodeSequence[0])
        assert value in CID_100
        assert (value == ("25045-6", "LN")) == (sources[0].Modality == "CT")
        # Image Library: every source image, with its modality and the region looked at.
        (library,) = [
            i for i in sr.ContentSequence if _code(i.ConceptNameCodeSequence[0]) == ("111028", "DCM")
        ]
        entries = [e for g in library.ContentSequence for e in g.ContentSequence if e.ValueType == "IMAGE"]
        assert {e.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for e in entries} == {
            str(s.SOPInstanceUID) for s in sources
        }
        for entry in entries:
            descriptors = {_code(d.ConceptNameCodeSequence[0]): d for d in entry.ContentSequence}
            assert _code(descriptors[("121139", "DCM")].ConceptCodeSequence[0])[0] == sources[0].Modality
            region = _code(descriptors[("123014", "DCM")].ConceptCodeSequence[0])
            assert region == (("421060004", "SCT") if case.startswith("vertebrae") else ("51185008", "SCT"))
        # Tracking Identifier and Tracking UID in every measurement group, and a region to draw.
        groups = [
            *report.get_planar_roi_measurement_groups(),
            *report.get_volumetric_roi_measurement_groups(),
            *report.get_image_measurement_groups(),
        ]
        uids = [str(g.tracking_uid) for g in groups]
        assert all(uids) and len(set(uids)) == len(uids), case
        assert all(g.tracking_identifier for g in groups), case
        for group in groups:
            assert any(i.ValueType in ("SCOORD", "SCOORD3D") for i in group[0].ContentSequence), case
        # Explicit results: what was evaluated, present or absent; "found nothing" is said.
        evaluations = {(f.value, f.scheme_designator): present for f, present in read_evaluations(sr)}
        summaries = [g for g in groups if str(g.tracking_identifier) == "summary"]
        if case == "cxr":
            assert evaluations == {
                (c.value, c.scheme_designator): f.positive
                for f, c in zip(result.findings, _finding_codes(result), strict=True)
            }
            # No region-bearing finding group: one summary group OHIF can show, counting the positives.
            positives = sum(f.positive for f in result.findings)
            assert groups == summaries and _count(summaries[0]) == (positives or len(result.findings))
        elif case == "no-nodules":
            assert evaluations == {("27925004", "SCT"): False}  # "no nodule detected"
            assert groups == summaries and _count(summaries[0]) == len(sources)  # images analysed
        elif case == "nodules":
            assert len(groups) == len(result.nodules) and evaluations == {} and not summaries
        else:
            assert len(groups) == len(result.labels) and not summaries


def _count(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> float:
    (measurement,) = group.get_measurements()
    point = next(i for i in group[0].ContentSequence if i.ValueType == "SCOORD")
    assert point.GraphicType == "POINT"  # a place for the label, outlining nothing
    return float(measurement.value)


def _finding_codes(result: Findings) -> list[hd.sr.CodedConcept]:
    from dicom_node.reports.codes import classification_code

    return [classification_code(f.label) for f in result.findings]  # type: ignore[union-attr]


def test_vertebra_groups_are_the_seg_segments_drawn_on_their_central_slice(objects) -> None:
    by_case: dict[tuple[str, str], list] = {}
    for case, result, sources, obj in objects:
        if case == "vertebrae":
            by_case.setdefault((case, obj.Modality), []).append((result, sources, obj))
    pairs = zip(by_case[("vertebrae", "SEG")], by_case[("vertebrae", "SR")], strict=True)
    for (_, _, seg), (result, sources, sr) in pairs:
        segments = {str(d.TrackingUID): d for d in seg.SegmentSequence if int(d.SegmentNumber) > 0}
        groups = sr.content.get_volumetric_roi_measurement_groups()
        assert {str(g.tracking_uid) for g in groups} == set(segments)
        planes = {str(s.SOPInstanceUID): k for k, s in enumerate(sources)}
        for group in groups:
            segment = segments[str(group.tracking_uid)]
            assert group.finding_type == hd.sr.CodedConcept.from_dataset(
                segment.SegmentedPropertyTypeCodeSequence[0]
            )
            value = int(str(segment.TrackingID).split()[1].rstrip(":"))
            mask = result.label_map == value
            occupied = np.flatnonzero(mask.any(axis=(1, 2)))
            regions = [i for i in group[0].ContentSequence if i.ValueType == "SCOORD"]
            source = regions[0].ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            # The first outline lies on the segment's central plane and encloses its pixels there.
            central = int(occupied[len(occupied) // 2])
            assert planes[str(source)] == central
            # Every pixel of the segment on the central plane lies inside one of the outlines there, and
            # the pixels off the segment by more than one pixel inside none.
            outlines = [
                np.asarray(r.GraphicData, dtype=float).reshape(-1, 2)
                for r in regions
                if r.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source
            ]
            rows, cols = np.mgrid[0 : mask.shape[1], 0 : mask.shape[2]]
            centres = np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5], axis=1)
            inside = np.zeros(len(centres), dtype=bool)
            for polygon in outlines:
                inside |= measure.points_in_poly(centres, polygon)
            inside = inside.reshape(mask.shape[1:])
            assert inside[mask[central]].all()
            far = ~ndimage.binary_dilation(mask[central], iterations=2)
            assert not inside[far].any()
            # Outlines on every occupied plane, none elsewhere.
            on = {
                planes[str(r.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)]
                for r in regions
            }
            assert on == {int(k) for k in occupied}


def test_seg_segments_carry_their_anatomy_and_the_image_laterality(objects) -> None:
    for case, _, _, seg in objects:
        if not isinstance(seg, hd.seg.Segmentation):
            continue
        assert seg.ImageLaterality == "U", case  # vertebrae: an unpaired structure
        assert "Laterality" not in seg, case
        for description in seg.SegmentSequence:
            if int(description.SegmentNumber) == 0:
                continue
            assert _code(description.AnatomicRegionSequence[0]) == ("421060004", "SCT")
            assert _code(description.PrimaryAnatomicStructureSequence[0]) == _code(
                description.SegmentedPropertyTypeCodeSequence[0]
            )
            assert description.TrackingID and description.TrackingUID
            assert description.SegmentAlgorithmType == "AUTOMATIC"


def test_the_ohif_profile_is_a_deprecated_alias_of_standard(caplog: pytest.LogCaptureFixture) -> None:
    from dicom_node.reports.profile import profile_named

    with caplog.at_level("WARNING", logger="dicom_node.reports.profile"):
        assert profile_named("ohif") is profile_named("standard") is DEFAULT_PROFILE
    assert [r.getMessage() for r in caplog.records] == [
        'report profile "ohif" is deprecated: it is the "standard" profile now '
        "(one SR shape that OHIF displays)"
    ]
    with pytest.raises(KeyError):
        profile_named("fancy")


@pytest.mark.parametrize("seed", range(8))
def test_outlines_enclose_every_pixel_of_a_mask_and_no_far_one(seed: int) -> None:
    """Random blobs, single pixels and border-touching regions: each pixel centre is inside an outline."""
    from dicom_node.reports.groups import plane_outlines

    rng = np.random.default_rng(seed)
    mask = ndimage.binary_opening(rng.random((40, 40)) > 0.55) | (rng.random((40, 40)) > 0.985)
    mask[0, : seed + 1] = True  # a region on the border
    rows, cols = np.mgrid[0:40, 0:40]
    centres = np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5], axis=1)
    inside = np.zeros(len(centres), dtype=bool)
    for polygon in plane_outlines(mask):
        assert np.array_equal(polygon[0], polygon[-1]) and len(polygon) >= 4  # closed
        inside ^= measure.points_in_poly(centres, polygon)  # even-odd: holes are outlined too
    inside = inside.reshape(mask.shape)
    assert inside[mask].all()
    assert not inside[~ndimage.binary_dilation(mask)].any()
