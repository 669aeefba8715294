"""Geometry on the real CT with oracle networks: results land on the right source voxels and points.

The segmentation oracle labels a HU band; the detection oracle boxes a planted marker. Expected values
come straight from each variant's own DICOM files (positions, orientation, pixel data), never from
``pipelines.io``. Variants: as stored, reversed, flipped (columns mirrored, slice normal reversed) and
resampled (2×2 in-plane averaging).
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from pipelines.ct_lung_nodules import LungNoduleDetectionPipeline, NoduleSettings
from pipelines.ct_vertebrae import VertebraSegmentationPipeline, VertebraSettings
from pipelines.findings import ModelInfo
from pipelines.io import load_ct_series
from tests.pipelines.conftest import (
    BONE_BAND_HU,
    MARKER_COLS,
    ct_paths,
    expected_marker_centre,
    marker_sop_uid,
    oracle_bone_band_segmenter,
    oracle_marker_detector,
)

ORACLE = ModelInfo(name="oracle", version="test-oracle")
VARIANTS = ("original", "reversed", "flipped", "resampled")
T12 = 23


def expected_band(paths) -> tuple[dict[str, np.ndarray], float]:
    """Largest 26-connected component of the HU band, per SOP Instance UID, from the files themselves."""
    slices = [pydicom.dcmread(p) for p in paths]
    row_dir, col_dir = np.array([float(v) for v in slices[0].ImageOrientationPatient]).reshape(2, 3)
    normal = np.cross(row_dir, col_dir)
    slices.sort(key=lambda d: float(np.dot([float(v) for v in d.ImagePositionPatient], normal)))
    hu = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in slices])
    band = (hu >= BONE_BAND_HU[0]) & (hu < BONE_BAND_HU[1])
    components, _ = ndimage.label(band, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(components.ravel())[1:]
    keep = components == (int(np.argmax(sizes)) + 1)
    dr, dc = (float(v) for v in slices[0].PixelSpacing)
    step = abs(float(slices[1].ImagePositionPatient[2]) - float(slices[0].ImagePositionPatient[2]))
    return {str(d.SOPInstanceUID): keep[i] for i, d in enumerate(slices)}, dr * dc * step


def vertebra_pipeline(spacing) -> VertebraSegmentationPipeline:
    settings = VertebraSettings(spacing_mm=spacing, kept_labels={T12: "vertebrae_T12"}, min_component_mm3=0.0)
    return VertebraSegmentationPipeline(
        model=ORACLE, segmenter=oracle_bone_band_segmenter(T12), settings=settings
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_label_map_lands_exactly_on_the_expected_source_voxels(variants, variant):
    paths = variants[variant]
    ds = pydicom.dcmread(paths[0])
    spacing = (float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0]), 2.0)  # the variant's own grid
    result = vertebra_pipeline(spacing).run(paths)
    expected, voxel_mm3 = expected_band(paths)
    assert result.label_map.shape[0] == len(paths)
    for plane, reference in zip(result.label_map, result.source_images, strict=True):
        np.testing.assert_array_equal(plane == T12, expected[reference.sop_instance_uid])
    (label,) = result.labels
    assert label.name == "T12 vertebra"
    assert label.volume_mm3 == pytest.approx(sum(m.sum() for m in expected.values()) * voxel_mm3)


@pytest.mark.parametrize("variant", ("original", "flipped"))
def test_label_map_through_the_bundle_grid_agrees_with_the_band(variants, variant):
    """At the bundle's 1.5 mm there is a resampling round trip: the agreement is close, not exact."""
    paths = variants[variant]
    result = vertebra_pipeline((1.5, 1.5, 1.5)).run(paths)
    expected, _ = expected_band(paths)
    got = np.stack([p == T12 for p in result.label_map])
    want = np.stack([expected[r.sop_instance_uid] for r in result.source_images])
    dice = 2 * (got & want).sum() / (got.sum() + want.sum())
    assert dice > 0.85


@pytest.mark.parametrize("variant", ("original", "flipped", "resampled"))
def test_marker_through_the_bundle_grid_comes_back_centred(marker_variants, variant):
    """Only the planted marker is labelled (band 2000–4000 HU); after 1.5 mm and back it is centred on
    the marker's patient position to within a quarter of a source pixel."""
    paths = marker_variants[variant]
    settings = VertebraSettings(
        spacing_mm=(1.5, 1.5, 1.5), kept_labels={T12: "vertebrae_T12"}, min_component_mm3=0.0
    )
    segmenter = oracle_bone_band_segmenter(T12, band=(2000.0, 4000.0))
    result = VertebraSegmentationPipeline(model=ORACLE, segmenter=segmenter, settings=settings).run(paths)
    volume = load_ct_series(paths)
    planes, rows, cols = np.nonzero(result.label_map == T12)
    points = volume.affine_lps @ np.stack([cols, rows, planes, np.ones_like(cols)]).astype(np.float64)
    centre = points[:3].mean(axis=1)
    quarter_pixel = np.array([volume.spacing_mm[0], volume.spacing_mm[1], volume.spacing_mm[2]]) / 4
    assert np.all(np.abs(centre - np.array(expected_marker_centre())) <= quarter_pixel)


@pytest.mark.parametrize("variant", VARIANTS)
def test_nodule_coordinates_equal_the_marker_within_half_a_voxel(marker_variants, variant):
    paths = marker_variants[variant]
    settings = NoduleSettings(spacing_mm=(0.703125, 0.703125, 1.25), report_score_thresh=0.5)
    pipeline = LungNoduleDetectionPipeline(model=ORACLE, detector=oracle_marker_detector, settings=settings)
    result = pipeline.run(paths)
    (nodule,) = result.nodules
    ds = pydicom.dcmread(paths[0])
    half_voxel = np.array([float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0]), 2.0]) / 2
    centre = np.array(expected_marker_centre())
    assert np.all(np.abs(np.array(nodule.center) - centre) <= half_voxel), (nodule.center, centre)
    assert nodule.source_slice.sop_instance_uid == marker_sop_uid()
    # The centre pixel, from that slice's own position and orientation.
    source = next(pydicom.dcmread(p) for p in paths if pydicom.dcmread(p).SOPInstanceUID == marker_sop_uid())
    iop = np.array([float(v) for v in source.ImageOrientationPatient])
    offset = centre - np.array([float(v) for v in source.ImagePositionPatient])
    column = offset @ iop[:3] / float(source.PixelSpacing[1])
    row = offset @ iop[3:] / float(source.PixelSpacing[0])
    assert nodule.center_pixel == pytest.approx((column, row), abs=0.5)
    assert np.all(np.array(nodule.box_min) < centre) and np.all(centre < np.array(nodule.box_max))
    # Measured on the marker's segmentation: the longest in-plane diameter of an 8 × 8 pixel square is
    # its diagonal (to within a pixel).
    column_mm = float(ds.PixelSpacing[1])  # the variant's own pixel
    diagonal = (
        (MARKER_COLS[1] - MARKER_COLS[0]) * float(pydicom.dcmread(ct_paths()[0]).PixelSpacing[1]) * np.sqrt(2)
    )
    assert abs(nodule.long_axis_mm - diagonal) <= column_mm, (nodule.long_axis_mm, diagonal)
