"""Results on a multi-frame CT (Legacy Converted Enhanced CT, Enhanced CT) reference its frames.

The same findings as on the single-frame series, re-pointed at the frames each slice became: the SEG has
the multi-frame image as its one source (Referenced Series Sequence) and each frame derived from its
source frame by Referenced Frame Number, with the same pixels at the same positions; the SRs' image
regions (SCOORD) and group source images carry Referenced Frame Number; all pass dciodvfy.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pydicom
import pytest

from dicom_node.reports import OHIF_PROFILE, write_measurement_report, write_segmentation
from pipelines.findings import ImageReference
from tests.conftest import CT_DIR
from tests.multiframe import enhanced_ct, legacy_converted_ct
from tests.reports.conftest import nodule_result, vertebra_result
from tests.reports.data import ct_series
from tests.reports.tools import dciodvfy_errors, reread


def _source_frames(image: pydicom.Dataset) -> dict[str, int]:
    """Source slice SOP Instance UID → the frame it became."""
    frames = {}
    for number, item in enumerate(image.PerFrameFunctionalGroupsSequence, start=1):
        if "ConversionSourceAttributesSequence" in item:
            source = item.ConversionSourceAttributesSequence[0]
        else:
            source = item.DerivationImageSequence[0].SourceImageSequence[0]
        frames[str(source.ReferencedSOPInstanceUID)] = number
    return frames


@pytest.fixture(scope="module", params=["legacy", "enhanced"])
def multiframe(request, tmp_path_factory) -> pydicom.Dataset:
    convert = legacy_converted_ct if request.param == "legacy" else enhanced_ct
    path = convert(sorted(CT_DIR.glob("*.dcm")), tmp_path_factory.mktemp("mf") / f"{request.param}.dcm")
    return pydicom.dcmread(path)


def _on_frames(refs: tuple[ImageReference, ...], image: pydicom.Dataset) -> tuple[ImageReference, ...]:
    frames = _source_frames(image)
    return tuple(
        ImageReference(str(image.SOPClassUID), str(image.SOPInstanceUID), frames[r.sop_instance_uid])
        for r in refs
    )


def _frames_by_position(seg: pydicom.Dataset) -> dict[tuple[tuple[float, ...], str], bytes]:
    labels = {int(item.SegmentNumber): str(item.SegmentLabel) for item in seg.SegmentSequence}
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    return {
        (
            tuple(round(float(v), 3) for v in item.PlanePositionSequence[0].ImagePositionPatient),
            labels[int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)],
        ): frame.tobytes()
        for item, frame in zip(seg.PerFrameFunctionalGroupsSequence, pixels, strict=True)
    }


def _check_valid(ds: pydicom.Dataset, path: Path) -> None:
    ds.save_as(path, enforce_file_format=True)
    errors, output = dciodvfy_errors(path)
    assert errors == [], output


def _frame_numbers(ds: pydicom.Dataset, keyword: str = "ReferencedFrameNumber") -> list[int]:
    found: list[int] = []
    for element in ds.iterall():
        if element.keyword == keyword:
            value = element.value
            found.extend(
                int(v) for v in (value if isinstance(value, list | pydicom.multival.MultiValue) else [value])
            )
    return found


def test_seg_of_frames_equals_the_single_frame_seg_with_per_frame_derivation(multiframe, tmp_path):
    single = vertebra_result()
    result = replace(
        single,
        series_instance_uid=str(multiframe.SeriesInstanceUID),
        source_images=_on_frames(single.source_images, multiframe),
    )
    seg = reread(write_segmentation(result, [multiframe]))
    reference = reread(write_segmentation(single, ct_series()))
    assert _frames_by_position(seg) == _frames_by_position(reference)
    (series_ref,) = seg.ReferencedSeriesSequence
    assert series_ref.SeriesInstanceUID == multiframe.SeriesInstanceUID
    assert [i.ReferencedSOPInstanceUID for i in series_ref.ReferencedInstanceSequence] == [
        multiframe.SOPInstanceUID
    ]
    positions = {
        n: [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        for n, item in enumerate(multiframe.PerFrameFunctionalGroupsSequence, start=1)
    }
    for item in seg.PerFrameFunctionalGroupsSequence:
        (source,) = item.DerivationImageSequence[0].SourceImageSequence
        assert source.ReferencedSOPInstanceUID == multiframe.SOPInstanceUID
        assert positions[int(source.ReferencedFrameNumber)] == pytest.approx(
            [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        )
    _check_valid(seg, tmp_path / "seg.dcm")
    for profile in (None, OHIF_PROFILE):
        kwargs = {} if profile is None else {"profile": profile}
        (sr,) = write_measurement_report(result, [multiframe], segmentation=seg, **kwargs)
        sr = reread(sr)
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        instances = [i.ReferencedSOPInstanceUID for s in evidence for i in s.ReferencedSOPSequence]
        assert instances.count(multiframe.SOPInstanceUID) == 1
        if profile is not None:  # OHIF layout: a planar region on the frame where each label is largest
            assert _frame_numbers(sr) and set(_frame_numbers(sr)) <= set(positions)
        _check_valid(sr, tmp_path / f"sr-{profile is None}.dcm")


def test_nodule_regions_name_their_frame(multiframe, tmp_path):
    single = nodule_result()
    frames = _source_frames(multiframe)
    (nodule,) = single.nodules
    moved = replace(nodule, source_slice=_on_frames((nodule.source_slice,), multiframe)[0])
    result = replace(
        single,
        series_instance_uid=str(multiframe.SeriesInstanceUID),
        source_images=_on_frames(single.source_images, multiframe),
        nodules=(moved,),
    )
    for profile in (None, OHIF_PROFILE):
        kwargs = {} if profile is None else {"profile": profile}
        (sr,) = write_measurement_report(result, [multiframe], **kwargs)
        sr = reread(sr)
        assert set(_frame_numbers(sr)) == {frames[nodule.source_slice.sop_instance_uid]}
        (expected,) = write_measurement_report(single, ct_series(), **kwargs)
        scoord = [e.value for e in sr.iterall() if e.keyword == "GraphicData"]
        assert scoord == [e.value for e in reread(expected).iterall() if e.keyword == "GraphicData"]
        _check_valid(sr, tmp_path / f"nodule-{profile is None}.dcm")
