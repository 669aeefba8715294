"""Grayscale Softcopy Presentation States: the SR's outlines and labels, valid, stable, legible."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node import config as node_config
from dicom_node.config import load_settings
from dicom_node.jobs.registry import ResultContext, write_with_reports
from dicom_node.reports import DEFAULT_PROFILE, OHIF_PROFILE, UNTRAINED_NOTICE, ResultBasis, write_results
from dicom_node.reports import profile as report_profile
from dicom_node.reports.presentation import sr_regions
from dicom_node.reports.profile import resolve_profile
from pipelines.findings import ClassificationResult, Findings

from .conftest import classification_result, nodule_result, untrained, vertebra_result
from .data import ct_series, cxr
from .tools import dciodvfy_errors

GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
PIXELMED = Path("/usr/share/java/pixelmed.jar")
PIXELMED_FLAGS = [
    "-Djdk.xml.xpathExprOpLimit=0",
    "-Djdk.xml.xpathExprGrpLimit=0",
    "-Djdk.xml.xpathTotalOpLimit=0",
]
WITH_PR = {
    "standard": replace(DEFAULT_PROFILE, presentation_state=True),
    "ohif": replace(OHIF_PROFILE, presentation_state=True),
}


def _square(col: float, row: float, half: float) -> tuple[tuple[float, float], ...]:
    return (
        (col - half, row - half),
        (col + half, row - half),
        (col + half, row + half),
        (col - half, row + half),
        (col - half, row - half),
    )


def _with_regions(result: ClassificationResult) -> ClassificationResult:
    """The positive findings with a CAM region each (as pipelines/cam.py gives them), side by side."""
    places = iter([(300.0, 400.0), (330.0, 420.0)])  # close enough that labels would collide unmoved
    findings = tuple(
        replace(f, region=_square(*next(places), 40.0)) if f.positive else f for f in result.findings
    )
    return replace(result, findings=findings)


def _cases() -> list[tuple[str, Findings, list[pydicom.Dataset]]]:
    return [
        ("cxr", untrained(_with_regions(classification_result())), [cxr()]),
        ("nodules", nodule_result(), list(ct_series())),
        ("vertebrae", vertebra_result(), list(ct_series())),
    ]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[list[pydicom.Dataset], Path | None]]:
    """Per case/profile: every object written, and the file of its presentation state (if any)."""
    out = tmp_path_factory.mktemp("pr")
    cases: dict[str, tuple[list[pydicom.Dataset], Path | None]] = {}
    for case, result, sources in _cases():
        for name, profile in WITH_PR.items():
            objects = write_results(result, sources, profile)
            path = None
            for ds in objects:
                if str(ds.SOPClassUID) == GSPS:
                    path = out / f"{case}-{name}-PR.dcm"
                    ds.save_as(path, enforce_file_format=True)
            cases[f"{case}/{name}"] = (objects, path)
    return cases


def test_a_presentation_state_follows_every_sr_with_outlines(written) -> None:
    having = {key for key, (_, path) in written.items() if path is not None}
    # One SR shape: every SR draws something (outlines, or the summary group's point when nothing was
    # found), so every SR has its presentation state.
    assert having == set(written)
    for key, (objects, _) in written.items():
        kinds = [str(ds.Modality) for ds in objects]
        assert kinds.count("PR") == (1 if key in having else 0), (key, kinds)
        if key in having:
            assert kinds.index("PR") > kinds.index("SR"), kinds  # after the SR it draws


def test_presentation_states_pass_dciodvfy(written) -> None:
    for key, (_, path) in written.items():
        if path is None:
            continue
        errors, output = dciodvfy_errors(path)
        assert errors == [], (key, output)


def test_dcmtk_reads_every_presentation_state(written) -> None:
    """DCMTK's presentation-state checker (dcmpstat) loads each one as a viewer would."""
    for key, (_, path) in written.items():
        if path is None:
            continue
        run = subprocess.run(["dcmpschk", str(path)], capture_output=True, text=True, timeout=120)
        output = run.stdout + run.stderr
        assert run.returncode == 0 and "Test passed." in output, (key, output)
        assert not [line for line in output.splitlines() if line.startswith(("E:", "F:"))], (key, output)


@pytest.mark.skipif(not PIXELMED.exists(), reason=f"PixelMed ({PIXELMED}) is not installed")
def test_presentation_states_pass_pixelmed(written) -> None:
    java = shutil.which("java")
    assert java is not None, "PixelMed is installed but java is not"
    classpath = ":".join(
        str(PIXELMED.parent / j) for j in ("pixelmed.jar", "commons-codec.jar", "commons-compress.jar")
    )
    for key, (_, path) in written.items():
        if path is None:
            continue
        run = subprocess.run(
            [
                java,
                *PIXELMED_FLAGS,
                "-cp",
                classpath,
                "com.pixelmed.validate.DicomInstanceValidator",
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        output = run.stdout + run.stderr
        assert run.returncode == 0, (key, output)
        if "IOD (SOP Class) unrecognized" in output:
            # PixelMed 20220618 (Debian 12) has no description of the GSPS IOD: it checks nothing here.
            pytest.skip(f"this PixelMed does not know the GSPS IOD: {output.strip()}")
        assert not [line for line in output.splitlines() if line.startswith("Error")], (key, output)


def _graphics(pr: pydicom.Dataset) -> list[tuple[str, str, list[float], str | None]]:
    found = []
    for annotation in pr.GraphicAnnotationSequence:
        uid = str(annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID)
        for graphic in annotation.get("GraphicObjectSequence", []):
            tracking = str(graphic.TrackingUID) if "TrackingUID" in graphic else None
            found.append((uid, str(graphic.GraphicType), [float(v) for v in graphic.GraphicData], tracking))
    return found


def test_the_outlines_are_the_srs_regions_on_the_same_images(written) -> None:
    for key, (objects, path) in written.items():
        if path is None:
            continue
        sr = next(ds for ds in objects if ds.Modality == "SR")
        pr = pydicom.dcmread(path)
        expected = [
            # GraphicData is FL (32 bits) in both objects; written, both hold the same float32 values.
            (
                r.sop_instance_uid,
                r.graphic_type,
                [float(np.float32(v)) for v in r.graphic_data.ravel()],
                r.tracking_uid,
            )
            for r in sr_regions(sr)
        ]
        assert sorted(_graphics(pr)) == sorted(expected), key
        assert all(g[3] is not None for g in expected), key  # every outline names its SR group
        annotated = {g[0] for g in expected}
        referenced = {
            str(i.ReferencedSOPInstanceUID)
            for s in pr.ReferencedSeriesSequence
            for i in s.ReferencedImageSequence
        }
        assert referenced == annotated, key
        assert str(pr.StudyInstanceUID) == str(sr.StudyInstanceUID)
        assert pr.GraphicLayerSequence[0].GraphicLayer == "AI RESULTS"


def test_labels_name_the_finding_and_never_overlap(written) -> None:
    pr = pydicom.dcmread(written["cxr/standard"][1])
    texts = [t for a in pr.GraphicAnnotationSequence for t in a.TextObjectSequence]
    values = [str(t.UnformattedTextValue) for t in texts]
    assert values[0] == UNTRAINED_NOTICE.upper()  # untrained weights: said first, at the top
    assert "Atelectasis: Present, probability 0.71" in values
    assert not any(v.startswith("Cardiomegaly") for v in values)  # a negative has no place: not drawn
    nodule = pydicom.dcmread(written["nodules/standard"][1])
    assert [
        str(t.UnformattedTextValue) for a in nodule.GraphicAnnotationSequence for t in a.TextObjectSequence
    ] == ["Nodule: long axis 12 mm"]
    for key, (_, path) in written.items():
        if path is None:
            continue
        ds = pydicom.dcmread(path)
        for annotation in ds.GraphicAnnotationSequence:
            boxes = [
                (*t.BoundingBoxTopLeftHandCorner, *t.BoundingBoxBottomRightHandCorner)
                for t in annotation.TextObjectSequence
            ]
            for i, a in enumerate(boxes):
                assert 0 <= a[0] < a[2] and 0 <= a[1] < a[3], (key, a)
                for b in boxes[i + 1 :]:
                    assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (key, a, b)


def test_ct_keeps_the_modalitys_window(written) -> None:
    pr = pydicom.dcmread(written["nodules/standard"][1])
    first = ct_series()[0]
    voi = pr.SoftcopyVOILUTSequence[0]
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == (
        float(first.WindowCenter[0]),
        float(first.WindowWidth[0]),
    )


def test_identity_is_derived_and_the_same_bytes_each_time() -> None:
    basis = ResultBasis.of_sources(list(ct_series()))
    first, second = (
        next(
            ds
            for ds in write_results(nodule_result(), list(ct_series()), WITH_PR["ohif"], basis=basis)
            if ds.Modality == "PR"
        )
        for _ in range(2)
    )
    assert (
        first.SOPInstanceUID == second.SOPInstanceUID and first.SeriesInstanceUID == second.SeriesInstanceUID
    )
    assert first == second
    standard = next(
        ds
        for ds in write_results(nodule_result(), list(ct_series()), WITH_PR["standard"], basis=basis)
        if ds.Modality == "PR"
    )
    assert standard.SOPInstanceUID == first.SOPInstanceUID  # "ohif" is "standard": one SR, one state
    assert int(first.SeriesNumber) == 9205
    assert str(first.PresentationCreationDate) == str(first.InstanceCreationDate)
    assert "ContentDate" not in first


def test_a_destination_turns_presentation_states_on(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        '[[destinations]]\nname = "weasis"\nae_title = "WEASIS"\nhost = "10.1.2.3"\nport = 104\n'
        "presentation_state = true\n"
        '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "10.1.2.4"\nport = 104\n'
        'profile = "ohif"\n'
    )
    weasis, pacs = load_settings(config, environ={}).destinations
    assert weasis.report_profile == "standard+presentation-state"
    assert pacs.report_profile == "ohif"
    assert resolve_profile(weasis.report_profile) == replace(DEFAULT_PROFILE, presentation_state=True)
    assert resolve_profile("ohif") == OHIF_PROFILE
    assert report_profile.PRESENTATION_STATE_SUFFIX == node_config.PRESENTATION_STATE_SUFFIX
    context = ResultContext(pipeline="ct-lung-nodules", basis=ResultBasis.of_sources(list(ct_series())))
    written = write_with_reports(nodule_result(), list(ct_series()), weasis.report_profile, context)
    assert [str(ds.Modality) for ds in written] == ["SR", "PR"]
    for bad in ("standard+presentation", "fancy+presentation-state"):
        with pytest.raises(Exception, match="unknown report profile"):
            write_with_reports(nodule_result(), list(ct_series()), bad, context)


def test_no_region_no_presentation_state() -> None:
    assert [ds.Modality for ds in write_results(classification_result(), [cxr()], WITH_PR["standard"])] == [
        "SR"
    ]
    regions = sr_regions(write_results(nodule_result(), list(ct_series()))[0])
    assert len(regions) == 1 and regions[0].graphic_type == "POLYLINE"
    assert np.array_equal(regions[0].graphic_data[0], regions[0].graphic_data[-1])  # closed
