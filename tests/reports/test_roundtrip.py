"""Findings → SR/SEG → bytes → highdicom → the same findings (property tests over findings)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicom_node.reports import DEFAULT_PROFILE, LABELMAP_PROFILE, ReportProfile, write_results
from dicom_node.reports.codes import CLASSIFICATION_FINDINGS
from dicom_node.reports.readback import read_classification, read_label_map, read_nodules, read_volumes
from pipelines.findings import (
    ClassificationFinding,
    ClassificationResult,
    ImageReference,
    ModelInfo,
    Nodule,
    NoduleDetectionResult,
    ScoreKind,
    SegmentationResult,
    SegmentLabel,
)

from .data import ct_series, cxr
from .tools import reread

FEW = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROFILES = st.sampled_from([DEFAULT_PROFILE, LABELMAP_PROFILE])
unit = st.floats(0.0, 1.0, allow_nan=False)
versions = st.from_regex(r"[0-9]\.[0-9]{1,2}(\.[0-9])?", fullmatch=True)
labels = st.one_of(
    st.sampled_from(sorted(CLASSIFICATION_FINDINGS)),
    st.from_regex(r"[A-Z][a-z]{2,12}( [a-z]{3,8})?", fullmatch=True),
)


def _ref(ds: object) -> ImageReference:
    return ImageReference(str(ds.SOPClassUID), str(ds.SOPInstanceUID))  # type: ignore[attr-defined]


@FEW
@given(
    findings=st.lists(st.tuples(labels, unit, unit), min_size=1, max_size=6, unique_by=lambda t: t[0]),
    version=versions,
    profile=PROFILES,
    score_kind=st.sampled_from(list(ScoreKind)),
)
def test_classification_round_trip(
    findings: list[tuple[str, float, float]], version: str, profile: ReportProfile, score_kind: ScoreKind
) -> None:
    image = cxr()
    result = ClassificationResult(
        model=ModelInfo("txrv-densenet121-res224-all", version),
        source=_ref(image),
        findings=tuple(ClassificationFinding(label, p, t) for label, p, t in findings),
        score_kind=score_kind,
    )
    (sr,) = write_results(result, [image], profile)
    read = read_classification(reread(sr))
    assert [(f.label, f.positive) for f in read] == [(f.label, f.positive) for f in result.findings]
    # A DS holds 16 characters: 0.5000000000000001 reads back as 0.5.
    assert [(f.score, f.threshold) for f in read] == [
        (pytest.approx(f.score, abs=1e-13), pytest.approx(f.threshold, abs=1e-13)) for f in result.findings
    ]
    assert {f.score_kind for f in read} == {score_kind}
    assert {f.source_sop_instance_uid for f in read} == {str(image.SOPInstanceUID)}


@st.composite
def nodules(draw: st.DrawFn) -> Nodule:
    series = ct_series()
    ds = series[draw(st.integers(0, len(series) - 1))]
    col = draw(st.floats(20, 490, allow_nan=False))
    row = draw(st.floats(20, 490, allow_nan=False))
    half = draw(st.tuples(*(st.floats(1.0, 15.0) for _ in range(3))))
    x0, y0, z0 = (float(v) for v in ds.ImagePositionPatient)
    centre = (x0 + col * float(ds.PixelSpacing[1]), y0 + row * float(ds.PixelSpacing[0]), z0)
    return Nodule(
        center=centre,
        box_min=tuple(c - h for c, h in zip(centre, half, strict=True)),  # type: ignore[arg-type]
        box_max=tuple(c + h for c, h in zip(centre, half, strict=True)),  # type: ignore[arg-type]
        long_axis_mm=draw(st.floats(0.0, 60.0)),
        volume_mm3=draw(st.floats(0.0, 1e5)),
        confidence=draw(unit),
        source_slice=_ref(ds),
        center_pixel=(col, row),
    )


@FEW
@given(found=st.lists(nodules(), max_size=4), profile=PROFILES)
def test_nodule_round_trip(found: list[Nodule], profile: ReportProfile) -> None:
    series = ct_series()
    result = NoduleDetectionResult(
        model=ModelInfo("monai-lung-nodule-ct-detection", "0.6.9"),
        series_instance_uid=str(series[0].SeriesInstanceUID),
        frame_of_reference_uid=str(series[0].FrameOfReferenceUID),
        source_images=tuple(_ref(ds) for ds in series),
        nodules=tuple(found),
    )
    (sr,) = write_results(result, list(series), profile)
    read = read_nodules(reread(sr))
    assert len(read) == len(found)
    for got, want in zip(read, found, strict=True):
        assert got.source_sop_instance_uid == want.source_slice.sop_instance_uid
        # SCOORD graphic data is 32-bit float: sub-millipixel agreement on a 512 grid.
        assert got.center_pixel == pytest.approx(want.center_pixel, abs=1e-3)
        assert (got.long_axis_mm, got.volume_mm3, got.confidence) == (
            want.long_axis_mm,
            want.volume_mm3,
            want.confidence,
        )


@st.composite
def label_maps(draw: st.DrawFn) -> SegmentationResult:
    series = ct_series()[:6]
    values = draw(st.lists(st.integers(1, 60), min_size=0, max_size=4, unique=True))
    names = ["vertebrae_T12", "vertebrae_L1", "liver", "T11"]
    label_map = np.zeros((len(series), 512, 512), dtype=np.uint16)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    for value in values:
        k, r, c = rng.integers(0, len(series)), rng.integers(0, 480), rng.integers(0, 480)
        label_map[k : k + 2, r : r + rng.integers(1, 30), c : c + rng.integers(1, 30)] = value
    present = [int(v) for v in np.unique(label_map) if v]
    return SegmentationResult(
        model=ModelInfo("monai-wholebody-ct-segmentation", "0.2.0"),
        series_instance_uid=str(series[0].SeriesInstanceUID),
        frame_of_reference_uid=str(series[0].FrameOfReferenceUID),
        source_images=tuple(_ref(ds) for ds in series),
        label_map=label_map,
        labels=tuple(
            SegmentLabel(
                value=v,
                name=names[i % len(names)] + ("" if i < len(names) else f"_{i}"),
                volume_mm3=draw(st.floats(0, 1e6)),
                mean_attenuation_hu=draw(st.one_of(st.none(), st.floats(-1024, 3000))),
            )
            for i, v in enumerate(present)
        ),
    )


@FEW
@given(result=label_maps(), profile=PROFILES)
def test_segmentation_round_trip(result: SegmentationResult, profile: ReportProfile) -> None:
    sources = list(ct_series()[:6])
    objects = [reread(ds) for ds in write_results(result, sources, profile)]
    if not result.labels:  # nothing segmented: no SEG, an SR saying so
        (sr,) = objects
        assert sr.Modality == "SR" and read_volumes(sr) == []
        return
    seg, sr = objects
    label_map, names = read_label_map(seg, [ref.sop_instance_uid for ref in result.source_images])
    assert np.array_equal(label_map, result.label_map)
    assert names == {label.value: label.name for label in result.labels}
    volumes = {v.label_value: v for v in read_volumes(sr)}
    assert sorted(volumes) == sorted(label.value for label in result.labels)
    for label in result.labels:
        got = volumes[label.value]
        assert got.volume_mm3 == label.volume_mm3
        assert got.mean_attenuation_hu == label.mean_attenuation_hu
        # The group is the SEG segment: it carries the segment's Tracking UID (docs/reports.md).
        assert got.tracking_uid in {str(d.TrackingUID) for d in seg.SegmentSequence if d.SegmentNumber > 0}
