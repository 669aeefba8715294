"""CAM regions in the SR and the Parametric Maps, from an oracle DenseNet on the shared radiograph.

The oracle (tests/pipelines/cam_oracle.py) plants a bright and a dark spot on the real radiograph and
makes two labels respond to one spot each. The SR must outline each planted place with a closed
POLYLINE on the radiograph, labelled with finding and score, the Parametric Map of each finding must
peak inside that outline, and both must pass dciodvfy and PixelMed.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicom_node.reports import DEFAULT_PROFILE, OHIF_PROFILE, write_results
from dicom_node.reports.readback import read_classification
from dicom_node.reports.regions import label_anchor
from pipelines.cam import point_in_polygon
from pipelines.findings import ClassificationResult
from tests.pipelines.cam_oracle import (
    BRIGHT_CELL,
    BRIGHT_LABEL,
    DARK_CELL,
    DARK_LABEL,
    LABELS,
    cell_centre_in_source,
    oracle_pipeline,
    write_planted_radiograph,
)

from .tools import dciodvfy_errors, pixelmed_available, pixelmed_findings, pixelmed_reports, reread

PARAMETRIC_MAP_STORAGE = "1.2.840.10008.5.1.4.1.1.30"
PLACES = {
    LABELS[BRIGHT_LABEL]: (cell_centre_in_source(BRIGHT_CELL), cell_centre_in_source(DARK_CELL)),
    LABELS[DARK_LABEL]: (cell_centre_in_source(DARK_CELL), cell_centre_in_source(BRIGHT_CELL)),
}


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[pydicom.Dataset, ClassificationResult]:
    path = tmp_path_factory.mktemp("cam") / "planted.dcm"
    source = write_planted_radiograph(path)
    result = oracle_pipeline().run([path])
    assert isinstance(result, ClassificationResult)
    return source, result


@pytest.fixture(scope="module")
def written(
    planted: tuple[pydicom.Dataset, ClassificationResult], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[tuple[Path, pydicom.Dataset]]]:
    source, result = planted
    out = tmp_path_factory.mktemp("cam-objects")
    files: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
    shared: dict[object, list[pydicom.Dataset]] = {}
    for name, profile in (("default", DEFAULT_PROFILE), ("ohif", OHIF_PROFILE)):
        files[name] = []
        for i, ds in enumerate(write_results(result, [source], profile, shared=shared)):
            path = out / f"{name}-{i}-{ds.Modality}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files[name].append((path, pydicom.dcmread(path)))
    return files


def _regions(sr: pydicom.Dataset) -> dict[str, tuple[str, np.ndarray, str]]:
    """Tracking identifier → (finding, outline, referenced SOP Instance UID) of each planar ROI group."""
    report = cast(hd.sr.MeasurementReport, hd.sr.Comprehensive3DSR.from_dataset(sr).content)
    out = {}
    for group in report.get_planar_roi_measurement_groups():
        region = group.roi
        assert region is not None
        finding = group.finding_type
        assert finding is not None
        reference = region.ContentSequence[0].ReferencedSOPSequence[0]
        out[str(group.tracking_identifier)] = (
            finding.meaning,
            np.asarray(region.value, dtype=np.float64),
            str(reference.ReferencedSOPInstanceUID),
        )
    return out


@pytest.mark.parametrize("profile", ["default", "ohif"])
def test_sr_outlines_each_planted_place_labelled_with_finding_and_score(written, planted, profile):
    source, result = planted
    srs = [ds for _, ds in written[profile] if ds.Modality == "SR"]
    assert len(srs) == 1
    scores = {f.label: f.score for f in result.findings}
    expected = sorted(f"{label} {scores[label]:.2f}" for label in PLACES)
    # Negative findings are no outlines (the OHIF layout draws them as whole-image rectangles).
    regions = {k: v for k, v in _regions(srs[0]).items() if k in expected}
    assert sorted(regions) == expected
    for identifier, (finding, outline, referenced) in regions.items():
        label = identifier.rsplit(" ", 1)[0]
        assert finding == label  # private codes of these oracle labels carry the label as meaning
        assert referenced == source.SOPInstanceUID
        assert outline.shape[1] == 2 and len(outline) <= 48
        assert tuple(outline[0]) == tuple(outline[-1])  # closed
        polygon = tuple(map(tuple, outline))
        here, there = PLACES[label]
        assert point_in_polygon(polygon, *here)
        assert not point_in_polygon(polygon, *there)
    # Read back, the findings are what was computed, whatever group each one is in.
    read = {f.label: f for f in read_classification(srs[0])}
    assert len(read) == len(LABELS)
    for finding in result.findings:
        assert read[finding.label].positive == finding.positive
        assert read[finding.label].score == pytest.approx(finding.score)
        assert read[finding.label].source_sop_instance_uid == source.SOPInstanceUID


def test_labels_of_two_regions_are_placed_apart(planted):
    _, result = planted
    anchors = [label_anchor(f.region) for f in result.findings if f.region is not None]
    assert len(anchors) == 2
    (x1, y1), (x2, y2) = anchors
    # OHIF draws each label from its anchor to the right, a few text lines high (about 60 image pixels
    # of this 1024-pixel radiograph in the viewport): anchors this far apart cannot overlap.
    assert abs(y1 - y2) > 120 or abs(x1 - x2) > 300


def test_parametric_map_of_each_finding_peaks_inside_its_outline(written, planted):
    source, result = planted
    objects = written["default"]
    sr = next(ds for _, ds in objects if ds.Modality == "SR")
    outlines = {identifier.rsplit(" ", 1)[0]: outline for identifier, (_, outline, _) in _regions(sr).items()}
    maps = [ds for _, ds in objects if ds.SOPClassUID == PARAMETRIC_MAP_STORAGE]
    pms = [hd.pm.ParametricMap.from_dataset(ds) for ds in maps]
    assert len(pms) == 2
    assert len({pm.SeriesInstanceUID for pm in pms}) == 1
    activations = {f.label: f.activation for f in result.findings if f.activation is not None}
    for pm in pms:
        mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        label = str(mapping.LUTLabel)
        stored = pm.pixel_array
        assert stored.shape == (int(source.Rows), int(source.Columns))
        slope, intercept = float(mapping.RealWorldValueSlope), float(mapping.RealWorldValueIntercept)
        values = stored * slope + intercept  # the Real World Value Mapping gives back the map computed
        np.testing.assert_allclose(values, activations[label], rtol=0, atol=slope / 2 + 1e-6)
        row, col = np.unravel_index(int(np.argmax(values)), values.shape)
        assert point_in_polygon(tuple(map(tuple, outlines[label])), col + 0.5, row + 0.5)
        derivation = pm.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
        reference = derivation.SourceImageSequence[0]
        assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert reference.SpatialLocationsPreserved == "YES"
        assert pm.FrameOfReferenceUID != source.get("FrameOfReferenceUID")  # its own frame
    # The same objects in every profile (built once) and deterministic identity.
    ohif_maps = [ds for _, ds in written["ohif"] if ds.SOPClassUID == PARAMETRIC_MAP_STORAGE]
    assert sorted(ds.SOPInstanceUID for ds in ohif_maps) == sorted(ds.SOPInstanceUID for ds in maps)


def _distinct(written: dict[str, list[tuple[Path, pydicom.Dataset]]]) -> list[tuple[Path, pydicom.Dataset]]:
    """Each object once: the profiles share the Parametric Maps."""
    by_uid = {str(ds.SOPInstanceUID): (path, ds) for objects in written.values() for path, ds in objects}
    return list(by_uid.values())


def test_parametric_maps_and_sr_pass_dciodvfy(written):
    for path, _ in _distinct(written):
        errors, output = dciodvfy_errors(path)
        assert not errors, f"{path.name}:\n{output}"


@pytest.mark.slow  # PixelMed's XSLT template check takes about a minute per SR here
@pytest.mark.skipif(not pixelmed_available(), reason="PixelMed (Debian libpixelmed-java) is not installed")
def test_pixelmed_finds_no_error_in_the_cam_objects(written):
    # PixelMed 2022 knows no Parametric Map IOD and cannot decode its JPEG 2000 pixels: dciodvfy checks
    # the maps (test_parametric_maps_and_sr_pass_dciodvfy); PixelMed checks the SR.
    distinct = [(path, ds) for path, ds in _distinct(written) if ds.SOPClassUID != PARAMETRIC_MAP_STORAGE]
    reports = pixelmed_reports([path for path, _ in distinct])
    for path, ds in distinct:
        errors, _ = pixelmed_findings(reports[path])
        assert not errors, f"{path.name}:\n{reports[path]}"
        if ds.Modality == "SR":
            assert "Found Root Template TID_1500" in reports[path]


def test_a_region_outside_the_image_is_refused(planted):
    from dataclasses import replace

    source, result = planted
    findings = list(result.findings)
    k = next(i for i, f in enumerate(findings) if f.region is not None)
    findings[k] = replace(findings[k], region=((0.0, 0.0), (2000.0, 0.0), (2000.0, 10.0), (0.0, 0.0)))
    with pytest.raises(ValueError, match="outside the 1024x1024 image"):
        write_results(replace(result, findings=tuple(findings)), [reread(source)])
