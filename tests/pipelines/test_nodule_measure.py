"""Nodule diameters and volume on a sphere and a rotated ellipsoid planted in the shared CT's lungs.

The truth is analytic (tests/pipelines/phantoms.py): on the slice through the centre the long axis is
2a and the short axis 2b; the measurements must be within one voxel (the pixel spacing, 0.977 mm) of
it, and the volume within 10 % of 4/3·π·a·b·c (the threshold sits half-way, so partial-volume voxels
count when at least half inside; on 0.98 × 0.98 × 2 mm voxels that leaves a few per cent).
The boxes come through the real detection path: an oracle detector returns, on the model grid, the
box around each planted nodule, and ``LungNoduleDetectionPipeline.postprocess`` maps it back.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from pipelines.ct_lung_nodules import LungNoduleDetectionPipeline, NoduleSettings
from pipelines.findings import ImageReference, ModelInfo, Nodule, NoduleMeasurement
from pipelines.io import load_ct_series
from pipelines.nodule_measure import measure_nodule
from tests.pipelines.phantoms import (
    PlantedNodule,
    PlantedVessel,
    air_centres,
    box_detector,
    pulmonary_slices,
    write_planted,
)

ORACLE = ModelInfo(name="oracle", version="test-oracle")
SPHERE_RADIUS = 5.0
ELLIPSOID_AXES = (8.0, 5.0, 4.0)
ELLIPSOID_ANGLE = 30.0
VOLUME_TOLERANCE = 0.15


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[list[PlantedNodule], list]:
    shapes = [
        # The largest first: the series' enclosed air has room for it in one place only.
        PlantedNodule(center=(0.0, 0.0, 0.0), semi_axes=ELLIPSOID_AXES, angle_deg=ELLIPSOID_ANGLE),
        PlantedNodule(center=(0.0, 0.0, 0.0), semi_axes=(SPHERE_RADIUS,) * 3),
        PlantedNodule(center=(0.0, 0.0, 0.0), semi_axes=(4.0, 3.0, 2.0)),  # left empty: the fallback case
    ]
    # Off the pixel grid in-plane, so that nothing relies on a centre at a pixel centre.
    nodules = [
        PlantedNodule((n.center[0] + 0.3, n.center[1] - 0.2, n.center[2]), n.semi_axes, n.angle_deg)
        for n in air_centres(shapes, clearance_mm=1.5)
    ]
    return nodules, write_planted(tmp_path_factory.mktemp("planted"), nodules[:2])


@pytest.fixture(scope="module")
def detected(planted):
    nodules, paths = planted
    settings = NoduleSettings(spacing_mm=(0.9765625, 0.9765625, 2.0), report_score_thresh=0.5)
    pipeline = LungNoduleDetectionPipeline(
        model=ORACLE, detector=box_detector([n.box(margin_mm=1.5) for n in nodules[:2]]), settings=settings
    )
    result = pipeline.run(paths)
    assert len(result.nodules) == 2
    # The oracle scores are equal: match each found nodule to the planted one nearest to it.
    found = {
        min(range(2), key=lambda i: np.linalg.norm(np.subtract(n.center, nodules[i].center))): n
        for n in result.nodules
    }
    return nodules, paths, result, found


def _pixel_mm(paths) -> float:
    return float(pydicom.dcmread(paths[0]).PixelSpacing[0])


@pytest.mark.parametrize("which", [0, 1], ids=["ellipsoid", "sphere"])
def test_diameters_are_within_one_voxel_of_the_truth(detected, which):
    planted, paths, _, found = detected
    truth, nodule = planted[which], found[which]
    voxel = _pixel_mm(paths)
    assert nodule.measurement == NoduleMeasurement.SEGMENTATION, nodule.measurement_note
    assert abs(nodule.long_axis_mm - truth.long_axis_mm) <= voxel, (nodule.long_axis_mm, truth.long_axis_mm)
    assert nodule.short_axis_mm is not None
    assert abs(nodule.short_axis_mm - truth.short_axis_mm) <= voxel, (
        nodule.short_axis_mm,
        truth.short_axis_mm,
    )
    assert nodule.mean_diameter_mm == pytest.approx((nodule.long_axis_mm + nodule.short_axis_mm) / 2)
    assert abs(nodule.volume_mm3 - truth.volume_mm3) <= VOLUME_TOLERANCE * truth.volume_mm3, (
        nodule.volume_mm3,
        truth.volume_mm3,
    )


def test_the_diameters_lie_on_the_slice_through_the_centre_and_along_the_axes(detected):
    planted, paths, _, found = detected
    truth, nodule = planted[0], found[0]
    by_uid = {str(pydicom.dcmread(p).SOPInstanceUID): pydicom.dcmread(p) for p in paths}
    assert nodule.measurement_slice is not None
    plane_z = float(by_uid[nodule.measurement_slice.sop_instance_uid].ImagePositionPatient[2])
    assert plane_z == pytest.approx(truth.center[2])
    assert nodule.long_axis_endpoints is not None and nodule.short_axis_endpoints is not None
    long_vector = np.subtract(*nodule.long_axis_endpoints)
    short_vector = np.subtract(*nodule.short_axis_endpoints)
    assert long_vector[2] == 0 and short_vector[2] == 0
    assert np.linalg.norm(long_vector) == pytest.approx(nodule.long_axis_mm)
    assert np.linalg.norm(short_vector) == pytest.approx(nodule.short_axis_mm)
    assert abs(long_vector @ short_vector) < 1e-6 * nodule.long_axis_mm**2
    # The long axis runs along the ellipse's major axis (30° from +x), to within a few degrees.
    angle = np.degrees(np.arctan2(long_vector[1], long_vector[0])) % 180.0
    assert abs(angle - ELLIPSOID_ANGLE) < 5.0, angle
    # Its midpoint is the centre, to within a voxel.
    middle = np.mean(nodule.long_axis_endpoints, axis=0)
    assert np.linalg.norm(middle[:2] - np.array(truth.center[:2])) <= _pixel_mm(paths)


@pytest.mark.parametrize("which", [0, 1], ids=["ellipsoid", "sphere"])
def test_the_mask_lies_on_the_planted_voxels(detected, which):
    planted, paths, result, found = detected
    truth, nodule = planted[which], found[which]
    assert nodule.mask is not None and nodule.mask_offset is not None
    volume = load_ct_series(paths)
    planes, rows, cols = np.nonzero(nodule.mask)
    k0, r0, c0 = nodule.mask_offset
    points = volume.affine_lps @ np.stack([cols + c0, rows + r0, planes + k0, np.ones_like(cols)]).astype(
        float
    )
    # Every mask voxel centre lies within one voxel of the ellipsoid (grow it by the voxel diagonal).
    grown = PlantedNodule(truth.center, tuple(a + 1.2 for a in truth.semi_axes), truth.angle_deg)
    assert grown.inside(points[:3].T).all()
    assert len(result.source_images) == volume.shape[0]


def test_a_box_in_aerated_lung_falls_back_to_the_box_and_says_so(planted):
    nodules, paths = planted
    volume = load_ct_series(paths)
    x, y, z = nodules[2].center  # enclosed air where nothing was planted
    box = Nodule(
        center=(x, y, z),
        box_min=(x - 4, y - 3, z - 2),
        box_max=(x + 4, y + 3, z + 2),
        long_axis_mm=8.0,
        volume_mm3=50.0,
        confidence=0.7,
        source_slice=volume.source_images[0],
        center_pixel=(0.0, 0.0),
    )
    measured = measure_nodule(volume, box)
    assert measured.measurement == NoduleMeasurement.BOX
    assert "segmentation failed" in measured.measurement_note and "-400 HU" in measured.measurement_note
    assert measured.long_axis_mm == pytest.approx(8.0) and measured.short_axis_mm == pytest.approx(6.0)
    assert measured.mean_diameter_mm == pytest.approx(7.0)
    assert measured.volume_mm3 == pytest.approx(np.pi / 6 * 8 * 6 * 4)
    assert measured.mask is None and measured.mask_offset is None
    assert isinstance(measured.measurement_slice, ImageReference)


def test_a_box_on_the_chest_wall_falls_back_to_the_box(planted):
    """Soft tissue that runs out of the box (the wall, the mediastinum) is no nodule segmentation."""
    _, paths = planted
    volume = load_ct_series(paths)
    hu = volume.voxels[10]
    row = hu.shape[0] // 2
    column = int(np.argmax(hu[row] > 0))  # the first soft tissue from the patient's right: the wall
    x, y, z = volume.patient_point(column + 3, row, 10)
    box = Nodule(
        center=(x, y, z),
        box_min=(x - 4, y - 4, z - 3),
        box_max=(x + 4, y + 4, z + 3),
        long_axis_mm=8.0,
        volume_mm3=50.0,
        confidence=0.7,
        source_slice=volume.source_images[10],
        center_pixel=(float(column + 3), float(row)),
    )
    measured = measure_nodule(volume, box)
    assert measured.measurement == NoduleMeasurement.BOX
    assert "reaches beyond the box" in measured.measurement_note


def test_a_vessel_running_out_of_the_box_is_cut_off(tmp_path):
    """A sphere with a 2 mm vessel leaving it in-plane and running out of the box: the in-plane opening
    cuts the vessel, and the diameters are the sphere's, within one voxel."""
    (sphere,) = air_centres([PlantedNodule((0.0, 0.0, 0.0), (SPHERE_RADIUS,) * 3)], clearance_mm=1.5)
    x, y, z = sphere.center
    vessel = PlantedVessel(start=(x, y, z), end=(x + 25.0, y + 10.0, z), radius=1.0)
    paths = write_planted(tmp_path / "vessel", [sphere, vessel])
    volume = load_ct_series(paths)
    lo, hi = sphere.box(margin_mm=1.5)
    nodule = Nodule(
        center=sphere.center,
        box_min=lo,  # type: ignore[arg-type]
        box_max=hi,  # type: ignore[arg-type]
        long_axis_mm=0.0,
        volume_mm3=0.0,
        confidence=0.9,
        source_slice=volume.source_images[0],
        center_pixel=(0.0, 0.0),
    )
    measured = measure_nodule(volume, nodule)
    voxel = _pixel_mm(paths)
    assert measured.measurement == NoduleMeasurement.SEGMENTATION, measured.measurement_note
    assert abs(measured.long_axis_mm - sphere.long_axis_mm) <= voxel, measured.long_axis_mm
    assert measured.short_axis_mm is not None
    assert abs(measured.short_axis_mm - sphere.short_axis_mm) <= voxel, measured.short_axis_mm
    assert abs(measured.volume_mm3 - sphere.volume_mm3) <= VOLUME_TOLERANCE * sphere.volume_mm3, (
        measured.volume_mm3
    )


@pytest.fixture(scope="module")
def in_real_lung(tmp_path_factory):
    """The same nodules planted in the parenchyma of a real chest CT cropped to the lungs (1.5 mm,
    vessels and all; tests/data/ct/nifti), boxes through the detection path."""
    slices = pulmonary_slices()
    shapes = [
        PlantedNodule(center=(0.0, 0.0, 0.0), semi_axes=ELLIPSOID_AXES, angle_deg=ELLIPSOID_ANGLE),
        PlantedNodule(center=(0.0, 0.0, 0.0), semi_axes=(SPHERE_RADIUS,) * 3),
    ]
    nodules = [
        PlantedNodule((n.center[0] + 0.3, n.center[1] - 0.2, n.center[2]), n.semi_axes, n.angle_deg)
        for n in air_centres(shapes, clearance_mm=1.5, slices=slices, enclosed=False)
    ]
    paths = write_planted(tmp_path_factory.mktemp("real-lung"), nodules, slices)
    settings = NoduleSettings(spacing_mm=(1.5, 1.5, 1.5), report_score_thresh=0.5)
    pipeline = LungNoduleDetectionPipeline(
        model=ORACLE, detector=box_detector([n.box(margin_mm=1.5) for n in nodules]), settings=settings
    )
    result = pipeline.run(paths)
    found = {
        min(range(2), key=lambda i: np.linalg.norm(np.subtract(n.center, nodules[i].center))): n
        for n in result.nodules
    }
    return nodules, paths, found


@pytest.mark.parametrize("which", [0, 1], ids=["ellipsoid", "sphere"])
def test_diameters_in_real_lung_parenchyma_are_within_one_voxel(in_real_lung, which):
    planted, paths, found = in_real_lung
    truth, nodule = planted[which], found[which]
    voxel = _pixel_mm(paths)  # 1.5 mm
    assert nodule.measurement == NoduleMeasurement.SEGMENTATION, nodule.measurement_note
    assert abs(nodule.long_axis_mm - truth.long_axis_mm) <= voxel, (nodule.long_axis_mm, truth.long_axis_mm)
    assert nodule.short_axis_mm is not None
    assert abs(nodule.short_axis_mm - truth.short_axis_mm) <= voxel, (
        nodule.short_axis_mm,
        truth.short_axis_mm,
    )
    assert abs(nodule.volume_mm3 - truth.volume_mm3) <= VOLUME_TOLERANCE * truth.volume_mm3, (
        nodule.volume_mm3,
        truth.volume_mm3,
    )
