"""Patient-space exactness: the same anatomy in any layout gives the same results, voxel for voxel.

Variants of the real CT (``tests/pipelines/patient_variants.py``: feet-first, mirrored rows, rotated,
transposed, reversed and shuffled files) hold the same voxels at the same patient coordinates. Each
variant's label map is mapped back onto the original's grid by exact index mapping from its own
headers and must equal the original's in every voxel; nodule boxes must agree within half a voxel.
Networks: the bone-band oracle on the bundle's 1.5 mm grid (the full series: the resampling round trip
where rounding ties live) and the bundle's SegResNet with scaffold weights (a 144 × 144 crop, one 96³
window: 17–28 s per variant on the shared 2 cores; the full series takes 200–490 s per run, see
docs/geometry.md for that measurement), content-only detectors on the nodule grid.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from pipelines.ct_geometry import to_model_grid
from pipelines.ct_lung_nodules import GridDetections, LungNoduleDetectionPipeline, NoduleSettings
from pipelines.ct_vertebrae import VertebraSegmentationPipeline, VertebraSettings
from pipelines.findings import ModelInfo
from pipelines.io import load_ct_series
from pipelines.patient_space import PatientSpace
from tests.pipelines.conftest import oracle_bone_band_segmenter, oracle_marker_detector
from tests.pipelines.patient_variants import PATIENT_VARIANTS, to_reference_grid, write_patient_variant

ORACLE = ModelInfo(name="oracle", version="test-oracle")
T12 = 23
MOVED = PATIENT_VARIANTS[1:]
#: 144 × 144 pixels (141 mm) around the spine: 94 voxels at 1.5 mm, one sliding window of 96³.
SPINE_CROP = ((250, 394), (184, 328))
#: A 3000 HU marker anterior to the body, in the original's sorted (slice, row, column) layout.
MARKER = (slice(9, 12), slice(72, 80), slice(136, 144))


@pytest.fixture(scope="module")
def patient_variants(tmp_path_factory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("patient-variants")
    return {v: write_patient_variant(root / v, v, marker=MARKER) for v in PATIENT_VARIANTS}


@pytest.fixture(scope="module")
def cropped_variants(tmp_path_factory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("patient-variants-cropped")
    return {v: write_patient_variant(root / v, v, crop=SPINE_CROP) for v in PATIENT_VARIANTS}


def _hu_by_file(paths: list[Path]) -> tuple[np.ndarray, tuple]:
    """The stored HU planes and their image references, read with pydicom alone."""
    from pipelines.findings import ImageReference

    slices = [pydicom.dcmread(p) for p in paths]
    planes = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in slices])
    return planes, tuple(ImageReference(str(d.SOPClassUID), str(d.SOPInstanceUID)) for d in slices)


@pytest.mark.parametrize("variant", MOVED)
def test_variants_hold_the_same_voxels_at_the_same_patient_coordinates(patient_variants, variant):
    """The factory itself: every variant's pixels, placed by its own headers, are the original's."""
    original, _ = _hu_by_file(patient_variants["original"])
    planes, references = _hu_by_file(patient_variants[variant])
    on_reference = to_reference_grid(
        planes, references, patient_variants[variant], patient_variants["original"]
    )
    order = np.argsort(
        [float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in patient_variants["original"]]
    )
    np.testing.assert_array_equal(on_reference, original[order])


@pytest.mark.parametrize("variant", MOVED)
def test_every_layout_gives_the_same_canonical_volume(patient_variants, variant):
    reference = PatientSpace.of(load_ct_series(patient_variants["original"]))
    space = PatientSpace.of(load_ct_series(patient_variants[variant]))
    np.testing.assert_array_equal(space.voxels, reference.voxels)
    np.testing.assert_array_equal(space.affine_lps, reference.affine_lps)
    # The original is head-first with ImageOrientationPatient 1\0\0\0\1\0: already canonical.
    assert reference.source_axes == (0, 1, 2) and reference.flipped == (False, False, False)


def _vertebra_pipeline(segmenter, kept: dict[int, str], min_mm3: float) -> VertebraSegmentationPipeline:
    settings = VertebraSettings(spacing_mm=(1.5, 1.5, 1.5), kept_labels=kept, min_component_mm3=min_mm3)
    return VertebraSegmentationPipeline(model=ORACLE, segmenter=segmenter, settings=settings)


def _differing_voxels(results: dict, variants: dict[str, list[Path]]) -> dict[str, int]:
    reference = to_reference_grid(
        results["original"].label_map,
        results["original"].source_images,
        variants["original"],
        variants["original"],
    )
    differing = {}
    for variant in MOVED:
        result = results[variant]
        mapped = to_reference_grid(
            result.label_map, result.source_images, variants[variant], variants["original"]
        )
        differing[variant] = int(np.count_nonzero(mapped != reference))
    return differing


def test_bone_band_through_the_bundle_grid_is_identical_in_patient_space(patient_variants):
    """The oracle labels bone on the 1.5 mm grid; the return to each source grid rounds the same ties."""
    pipeline = _vertebra_pipeline(oracle_bone_band_segmenter(T12), {T12: "vertebrae_T12"}, 0.0)
    results = {v: pipeline.run(paths) for v, paths in patient_variants.items()}
    assert np.count_nonzero(results["original"].label_map) > 10_000  # a real bone mask, not an empty one
    assert _differing_voxels(results, patient_variants) == dict.fromkeys(MOVED, 0)
    (reference,) = results["original"].labels
    for variant in MOVED:
        (label,) = results[variant].labels
        assert (label.volume_mm3, label.mean_attenuation_hu) == (
            reference.volume_mm3,
            reference.mean_attenuation_hu,
        )


def _install_scaffold(work: Path, name: str) -> Path:
    from models.installer import import_weights, scaffold

    models_dir = work / "models"
    repo_models = Path(__file__).resolve().parents[2] / "models"
    shutil.copytree(repo_models / name / "configs", models_dir / name / "configs")
    import_weights(scaffold(name, work / f"{name}.pt"), models_dir, model=name)
    return models_dir


@pytest.mark.slow
def test_scaffold_segresnet_gives_identical_label_maps_in_patient_space(cropped_variants, tmp_path):
    """The bundle's network (scaffold weights), intensity normalisation, sliding window, argmax and
    postprocessing with the manifest's settings: 0 differing voxels for every variant."""
    from pipelines.registry import get_pipeline

    models_dir = _install_scaffold(tmp_path, "monai-wholebody-ct-segmentation")
    pipeline = get_pipeline("ct-vertebrae", models_dir, allow_untrained=True)
    results = {v: pipeline.run(paths) for v, paths in cropped_variants.items()}
    assert results["original"].labels, "the scaffold network labelled no vertebra: nothing is compared"
    assert _differing_voxels(results, cropped_variants) == dict.fromkeys(MOVED, 0)
    for variant in MOVED:
        assert results[variant].labels == results["original"].labels


def bone_blob_detector(image) -> GridDetections:
    """Content-only "detector": boxes around the five largest blobs above 300 HU on the model grid,
    scored by size; a fixed function of the grid's voxels."""
    hu = np.asarray(image)[0]
    components, _ = ndimage.label(hu > 300.0)
    sizes = np.bincount(components.ravel())[1:]
    objects = ndimage.find_objects(components)
    boxes, scores = [], []
    for i in np.argsort(-sizes, kind="stable")[:5]:
        found = objects[i]
        boxes.append([*(s.start - 0.5 for s in found), *(s.stop - 0.5 for s in found)])
        scores.append(0.5 + 0.5 * sizes[i] / sizes.max())
    return GridDetections(
        np.array(boxes, dtype=np.float64).reshape(-1, 6), np.array(scores, dtype=np.float64)
    )


@pytest.mark.parametrize("detector", [oracle_marker_detector, bone_blob_detector])
def test_nodule_boxes_agree_within_half_a_voxel_in_patient_space(patient_variants, detector):
    settings = NoduleSettings(spacing_mm=(0.703125, 0.703125, 1.25), report_score_thresh=0.5)
    pipeline = LungNoduleDetectionPipeline(model=ORACLE, detector=detector, settings=settings)
    results = {v: pipeline.run(paths) for v, paths in patient_variants.items()}
    reference = results["original"].nodules
    assert reference, "the detector found nothing: nothing is compared"
    half_voxel = np.array([0.9765625, 0.9765625, 2.0]) / 2  # of the source grid, the coarser one
    for variant in MOVED:
        nodules = results[variant].nodules
        assert len(nodules) == len(reference)
        for got, want in zip(nodules, reference, strict=True):
            for field in ("center", "box_min", "box_max"):
                deviation = np.abs(np.array(getattr(got, field)) - np.array(getattr(want, field)))
                assert np.all(deviation <= half_voxel), (variant, field, deviation)
                assert np.all(deviation < 1e-9), (variant, field, deviation)  # in fact: the same boxes
            # The measurements run on each variant's own source grid (pipelines/nodule_measure.py), so
            # the order of summation differs with the layout: equal to the last few bits, no more.
            assert (got.long_axis_mm, got.volume_mm3, got.confidence) == pytest.approx(
                (want.long_axis_mm, want.volume_mm3, want.confidence), rel=1e-12, abs=1e-9
            )


def test_model_grid_is_the_same_for_every_layout(patient_variants):
    reference = to_model_grid(load_ct_series(patient_variants["original"]), (1.5, 1.5, 1.5))
    for variant in MOVED:
        image = to_model_grid(load_ct_series(patient_variants[variant]), (1.5, 1.5, 1.5))
        assert np.array_equal(np.asarray(image), np.asarray(reference)), variant
        assert np.array_equal(np.asarray(image.affine), np.asarray(reference.affine)), variant


def test_a_nodule_half_way_between_two_slices_names_the_same_image_in_every_layout(patient_variants):
    """A box centred exactly between two source slices: the source slice is chosen in patient space
    (towards the head), not by the array order of each variant."""
    from pipelines.ct_geometry import model_affine_lps

    settings = NoduleSettings(spacing_mm=(0.703125, 0.703125, 1.25), report_score_thresh=0.5)
    slices = sorted(
        (pydicom.dcmread(p, stop_before_pixels=True) for p in patient_variants["original"]),
        key=lambda d: float(d.ImagePositionPatient[2]),
    )
    below, above = slices[9], slices[10]
    point = (
        np.array([float(v) for v in below.ImagePositionPatient])
        + [float(v) for v in above.ImagePositionPatient]
    ) / 2
    point[:2] += 200.0  # inside the body, 200 mm from the corner in x and y
    grid = to_model_grid(load_ct_series(patient_variants["original"]), settings.spacing_mm)
    index = np.linalg.solve(model_affine_lps(grid), [*point, 1.0])[:3]

    def fixed_box(image) -> GridDetections:  # the same box on the (identical) grid of every variant
        return GridDetections(np.array([[*(index - 3.0), *(index + 3.0)]]), np.array([0.9]))

    pipeline = LungNoduleDetectionPipeline(model=ORACLE, detector=fixed_box, settings=settings)
    named = {
        v: pipeline.run(paths).nodules[0].source_slice.sop_instance_uid
        for v, paths in patient_variants.items()
    }
    assert set(named.values()) == {str(above.SOPInstanceUID)}, named


def _rotation_z(degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize("degrees", [0.0, 20.0])
def test_all_48_axis_orders_and_signs_give_one_canonical_volume(degrees):
    """A small synthetic volume (axial, or oblique by 20°) written in every signed permutation of its
    index axes, each with the affine that keeps every voxel at its patient position."""
    from itertools import permutations, product

    from pipelines.findings import ImageReference
    from pipelines.io import CtVolume

    rng = np.random.default_rng(5)
    canonical = rng.normal(size=(4, 5, 6)).astype(np.float32)  # (k, j, i)
    affine = np.eye(4)
    affine[:3, :3] = _rotation_z(degrees) @ np.diag([0.7, 0.8, 2.5])
    affine[:3, 3] = [-120.25, 33.5, -700.0]
    sizes_ijk = canonical.shape[::-1]
    seen = set()
    for perm, signs in product(permutations(range(3)), product((1, -1), repeat=3)):
        # Source index axis n (column, row, slice) runs along canonical index axis perm[n].
        t = np.zeros((4, 4))
        t[3, 3] = 1.0
        for n in range(3):
            t[perm[n], n] = signs[n]
            t[perm[n], 3] = 0.0 if signs[n] > 0 else sizes_ijk[perm[n]] - 1
        shape = tuple(sizes_ijk[perm[n]] for n in (2, 1, 0))  # (slices, rows, columns)
        s, r, c = np.meshgrid(*(np.arange(x) for x in shape), indexing="ij")
        ijk = t[:3, :3] @ np.stack([c.ravel(), r.ravel(), s.ravel()]) + t[:3, 3:]
        voxels = canonical[ijk[2].astype(int), ijk[1].astype(int), ijk[0].astype(int)].reshape(shape)
        references = tuple(ImageReference("1.2.3", f"1.2.3.{k}") for k in range(shape[0]))
        volume = CtVolume(voxels, affine @ t, references, "1.2.3.9", "1.2.3.8")
        space = PatientSpace.of(volume)
        np.testing.assert_array_equal(space.voxels, canonical)
        np.testing.assert_array_equal(space.affine_lps, np.round(affine, 8) + 0.0)
        np.testing.assert_array_equal(space.to_source(space.voxels), voxels)  # and exactly back
        seen.add((perm, signs))
    assert len(seen) == 48
