"""The TotalSegmentator labels of the real CT, written as SEG, read back voxel-identical and aligned."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest

from dicom_node.reports import DEFAULT_PROFILE, LABELMAP_PROFILE, ReportProfile, write_segmentation
from dicom_node.reports.readback import read_label_map
from dicom_node.reports.seg import write_segmentation as _write  # same object, imported for clarity

from .data import TOTALSEG_NAMES, ct_series, nifti_label_map, nifti_segmentation
from .tools import reread


def test_nifti_mapping_from_affines_puts_t11_above_t12() -> None:
    # LPS +z is head: T11 must lie above (greater z than) T12 wherever both are labelled.
    label_map = nifti_label_map()
    z = np.array([float(ds.ImagePositionPatient[2]) for ds in ct_series()])
    mean_z = {v: float(z[np.nonzero((label_map == v).any(axis=(1, 2)))[0]].mean()) for v in TOTALSEG_NAMES}
    assert mean_z[33] > mean_z[32]
    # The spine is posterior (+y in LPS: larger row index) and near the midline column.
    rows, cols = np.nonzero((label_map == 32).any(axis=0))
    assert rows.mean() > 256 and abs(cols.mean() - 256) < 60


@pytest.mark.parametrize("profile", [DEFAULT_PROFILE, LABELMAP_PROFILE], ids=["binary", "labelmap"])
def test_all_labels_read_back_voxel_identical(profile: ReportProfile) -> None:
    result = nifti_segmentation()
    seg = reread(write_segmentation(result, ct_series(), profile))
    uids = [ref.sop_instance_uid for ref in result.source_images]
    label_map, names = read_label_map(seg, uids)
    assert label_map.dtype == np.uint16
    assert np.array_equal(label_map, result.label_map)
    assert names[32] == "vertebrae_T12" and names[33] == "vertebrae_T11"
    assert sorted(names) == sorted(label.value for label in result.labels)


@pytest.mark.parametrize("profile", [DEFAULT_PROFILE, LABELMAP_PROFILE], ids=["binary", "labelmap"])
def test_every_frame_lies_on_the_slice_it_references(profile: ReportProfile) -> None:
    result = nifti_segmentation(vertebrae_only=True)
    seg = reread(_write(result, ct_series(), profile))
    sources = {str(ds.SOPInstanceUID): ds for ds in ct_series()}
    plane_of = {ref.sop_instance_uid: i for i, ref in enumerate(result.source_images)}
    pixels = seg.pixel_array if int(seg.NumberOfFrames) > 1 else seg.pixel_array[None]
    assert int(seg.NumberOfFrames) == len(seg.PerFrameFunctionalGroupsSequence)
    for frame, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        source = sources[str(ref.ReferencedSOPInstanceUID)]  # the reference exists in the study
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert position == pytest.approx([float(v) for v in source.ImagePositionPatient], abs=1e-4)
        expected_plane = result.label_map[plane_of[str(source.SOPInstanceUID)]]
        if profile.seg_type == hd.seg.SegmentationTypeValues.BINARY:
            number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
            value = {1: 32, 2: 33}[number]
            assert np.array_equal(pixels[frame].astype(bool), expected_plane == value), f"frame {frame + 1}"
        else:
            assert np.array_equal(pixels[frame] > 0, expected_plane > 0), f"frame {frame + 1}"
    # Empty frames were left out, and only empty ones.
    nonempty = int((result.label_map > 0).any(axis=(1, 2)).sum())
    if profile.seg_type == hd.seg.SegmentationTypeValues.LABELMAP:
        assert int(seg.NumberOfFrames) == nonempty


def test_segments_carry_snomed_codes_and_colours() -> None:
    seg = write_segmentation(nifti_segmentation(vertebrae_only=True), ct_series())
    types = {
        str(item.SegmentLabel): item.SegmentedPropertyTypeCodeSequence[0] for item in seg.SegmentSequence
    }
    assert (types["vertebrae_T12"].CodeValue, types["vertebrae_T12"].CodingSchemeDesignator) == (
        "23215003",
        "SCT",
    )
    assert (types["vertebrae_T11"].CodeValue, types["vertebrae_T11"].CodingSchemeDesignator) == (
        "12989004",
        "SCT",
    )
    for item in seg.SegmentSequence:
        assert len(item.RecommendedDisplayCIELabValue) == 3
    assert "CodingSchemeIdentificationSequence" not in seg  # no private code needed for vertebrae
    private = write_segmentation(nifti_segmentation(), ct_series())
    assert private.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99DCMNODE"


def test_empty_label_map_is_refused() -> None:
    result = nifti_segmentation(vertebrae_only=True)
    empty = type(result)(
        model=result.model,
        series_instance_uid=result.series_instance_uid,
        frame_of_reference_uid=result.frame_of_reference_uid,
        source_images=result.source_images,
        label_map=np.zeros_like(result.label_map),
        labels=result.labels,
    )
    with pytest.raises(ValueError, match="empty"):
        write_segmentation(empty, ct_series())
