"""Synthetic nodules planted in real CT slices, with their analytic truth.

An ellipsoid (centre, semi-axes, in-plane rotation) is written into the real slices with partial
volume: each voxel's value becomes f·HU_nodule + (1 − f)·HU_before, f the fraction of the voxel inside
the ellipsoid (5 × 5 × 5 sub-samples). Centres are placed in air (HU < −800 all around) and on a slice
plane, so that the slice through the centre holds the ellipse of semi-axes (a, b): long axis 2a,
short axis 2b, the truth the measurements are held to. In the shared CT, whose lung is only slivers
at its bases, that air is gastric or bowel gas (not connected to the air outside the body); in the
lung-cropped chest CT of tests/data/ct/nifti (written as DICOM by ``pulmonary_slices``) it is the
lung parenchyma.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.uid import generate_uid
from scipy import ndimage

from pipelines.ct_geometry import model_affine_lps
from pipelines.ct_lung_nodules import GridDetections
from tests.conftest import DATA
from tests.factories import ct_slice
from tests.pipelines.conftest import read_sorted, write_uncompressed

NODULE_HU = 50.0
SUBSAMPLES = 5


@dataclass(frozen=True)
class PlantedNodule:
    """An ellipsoid in patient LPS mm: semi-axes (a, b) in-plane, rotated by ``angle_deg`` from +x,
    and c along z."""

    center: tuple[float, float, float]
    semi_axes: tuple[float, float, float]
    angle_deg: float = 0.0

    @property
    def long_axis_mm(self) -> float:
        return 2 * max(self.semi_axes[:2])

    @property
    def short_axis_mm(self) -> float:
        return 2 * min(self.semi_axes[:2])

    @property
    def volume_mm3(self) -> float:
        a, b, c = self.semi_axes
        return 4.0 / 3.0 * math.pi * a * b * c

    def inside(self, points: np.ndarray) -> np.ndarray:
        """Whether each (…, 3) patient point lies in the ellipsoid."""
        d = points - np.array(self.center)
        t = math.radians(self.angle_deg)
        u = d[..., 0] * math.cos(t) + d[..., 1] * math.sin(t)
        v = -d[..., 0] * math.sin(t) + d[..., 1] * math.cos(t)
        a, b, c = self.semi_axes
        return np.asarray((u / a) ** 2 + (v / b) ** 2 + (d[..., 2] / c) ** 2 <= 1.0)

    def box(self, margin_mm: float = 1.0) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """An axis-aligned box around it (its exact bounding box grown by ``margin_mm``)."""
        a, b, c = self.semi_axes
        t = math.radians(self.angle_deg)
        half = (
            math.hypot(a * math.cos(t), b * math.sin(t)) + margin_mm,
            math.hypot(a * math.sin(t), b * math.cos(t)) + margin_mm,
            c + margin_mm,
        )
        lo = tuple(p - h for p, h in zip(self.center, half, strict=True))
        hi = tuple(p + h for p, h in zip(self.center, half, strict=True))
        return lo, hi


@dataclass(frozen=True)
class PlantedVessel:
    """A straight cylinder of ``radius`` from ``start`` to ``end`` (patient LPS mm): a vessel."""

    start: tuple[float, float, float]
    end: tuple[float, float, float]
    radius: float

    def inside(self, points: np.ndarray) -> np.ndarray:
        a, b = np.array(self.start), np.array(self.end)
        axis = b - a
        t = np.clip(((points - a) @ axis) / float(axis @ axis), 0.0, 1.0)
        nearest = a + t[..., None] * axis
        return np.asarray(np.linalg.norm(points - nearest, axis=-1) <= self.radius)

    def box(self, margin_mm: float = 1.0) -> tuple[tuple[float, ...], tuple[float, ...]]:
        lo = np.minimum(self.start, self.end) - self.radius - margin_mm
        hi = np.maximum(self.start, self.end) + self.radius + margin_mm
        return tuple(float(v) for v in lo), tuple(float(v) for v in hi)


def _geometry(slices: list[pydicom.Dataset]) -> tuple[np.ndarray, np.ndarray, float]:
    """(origin of each slice (S, 3), pixel spacing (row, column)), slice step; axial slices."""
    origins = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in slices])
    spacing = np.array([float(v) for v in slices[0].PixelSpacing])
    return origins, spacing, float(origins[1, 2] - origins[0, 2])


def _hu(slices: list[pydicom.Dataset]) -> np.ndarray:
    return np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in slices])


def enclosed_air(slices: list[pydicom.Dataset] | None = None, *, enclosed: bool = True) -> np.ndarray:
    """Voxels (plane, row, column) below −800 HU that are not connected to the air outside the body
    (``enclosed=False``: all of them, for a volume cropped to the lungs)."""
    hu = _hu(slices or read_sorted())
    air = hu < -800.0
    if not enclosed:
        return np.asarray(air)
    labels, _ = ndimage.label(air)
    border = np.unique(np.concatenate([labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]]))
    return np.asarray(air & ~np.isin(labels, border[border > 0]))


def air_centres(
    shapes: list[PlantedNodule],
    clearance_mm: float = 2.0,
    slices: list[pydicom.Dataset] | None = None,
    *,
    enclosed: bool = True,
) -> list[PlantedNodule]:
    """``shapes`` moved to centres on slice planes where each, grown by ``clearance_mm``, lies wholly in
    enclosed air, inside the volume and apart from the others: the deepest such places first.
    ``slices``: another axial series, sorted by z (default: the shared CT)."""
    slices = slices or read_sorted()
    origins, spacing, step = _geometry(slices)
    air = enclosed_air(slices, enclosed=enclosed)
    free = air.copy()
    # Outside the volume counts as no air: a nodule must lie wholly inside.
    padded = np.pad(air, 1, constant_values=False)
    depth = ndimage.distance_transform_edt(padded, sampling=(step, spacing[0], spacing[1]))[1:-1, 1:-1, 1:-1]
    order = np.argsort(-depth, axis=None)
    points = _voxel_points(origins, spacing, air.shape)
    placed: list[PlantedNodule] = []
    for shape in shapes:
        grown = PlantedNodule(shape.center, tuple(a + clearance_mm for a in shape.semi_axes), shape.angle_deg)
        for flat in order:
            k, r, c = np.unravel_index(flat, depth.shape)
            if depth[k, r, c] < min(grown.semi_axes):
                raise AssertionError(f"the shared CT has no enclosed air for {shape}")
            centre = origins[k] + np.array([c * spacing[1], r * spacing[0], 0.0])
            if not origins[0, 2] + grown.semi_axes[2] <= centre[2] <= origins[-1, 2] - grown.semi_axes[2]:
                continue
            candidate = PlantedNodule(
                (float(centre[0]), float(centre[1]), float(centre[2])), shape.semi_axes, shape.angle_deg
            )
            reach = max(grown.semi_axes)
            window = (
                slice(max(k - math.ceil(reach / step), 0), k + math.ceil(reach / step) + 1),
                slice(max(r - math.ceil(reach / spacing[0]), 0), r + math.ceil(reach / spacing[0]) + 1),
                slice(max(c - math.ceil(reach / spacing[1]), 0), c + math.ceil(reach / spacing[1]) + 1),
            )
            grown_here = PlantedNodule(candidate.center, grown.semi_axes, shape.angle_deg)
            want = grown_here.inside(points[window])
            if (want & ~free[window]).any():
                continue
            free[window] &= ~want
            placed.append(candidate)
            break
        else:
            raise AssertionError(f"the shared CT has no enclosed air for {shape}")
    return placed


def _voxel_points(origins: np.ndarray, spacing: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Patient points (S, R, C, 3) of every voxel centre (axial slices)."""
    rows = np.arange(shape[1]) * spacing[0]
    cols = np.arange(shape[2]) * spacing[1]
    points = np.empty((*shape, 3))
    points[..., 0] = origins[:, None, None, 0] + cols[None, None, :]
    points[..., 1] = origins[:, None, None, 1] + rows[None, :, None]
    points[..., 2] = origins[:, None, None, 2]
    return points


def write_planted(
    out: Path, nodules: Sequence[PlantedNodule | PlantedVessel], slices: list[pydicom.Dataset] | None = None
) -> list[Path]:
    """The shared CT with ``nodules`` (and vessels) planted, in this order, as uncompressed slices in
    ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    slices = slices or read_sorted()
    hu = _hu(slices)
    origins, spacing, step = _geometry(slices)
    offsets = (np.arange(SUBSAMPLES) + 0.5) / SUBSAMPLES - 0.5
    for nodule in nodules:
        lo, hi = nodule.box(margin_mm=2.0)
        ks = [k for k in range(len(slices)) if lo[2] - step <= origins[k, 2] <= hi[2] + step]
        height, width = hu.shape[1:]
        cols = np.arange(
            max(math.floor((lo[0] - origins[0, 0]) / spacing[1]), 0),
            min(math.ceil((hi[0] - origins[0, 0]) / spacing[1]) + 1, width),
        )
        rows = np.arange(
            max(math.floor((lo[1] - origins[0, 1]) / spacing[0]), 0),
            min(math.ceil((hi[1] - origins[0, 1]) / spacing[0]) + 1, height),
        )
        for k in ks:
            dz, dy, dx = np.meshgrid(
                offsets * step, offsets * spacing[0], offsets * spacing[1], indexing="ij"
            )
            sub = np.stack([dx.ravel(), dy.ravel(), dz.ravel()], axis=1)  # (n, 3)
            cc, rr = np.meshgrid(cols, rows)
            centres = origins[k] + np.stack(
                [cc * spacing[1], rr * spacing[0], np.zeros_like(cc, dtype=float)], axis=-1
            )
            fraction = nodule.inside(centres[:, :, None, :] + sub[None, None]).mean(axis=2)
            before = hu[k][rr, cc]
            hu[k][rr, cc] = fraction * NODULE_HU + (1 - fraction) * before
    paths = []
    for k, ds in enumerate(slices):
        stored = np.rint((hu[k] - float(ds.RescaleIntercept)) / float(ds.RescaleSlope))
        path = out / f"{k:03d}.dcm"
        write_uncompressed(ds, stored, path)
        paths.append(path)
    return paths


def box_detector(boxes_lps: list[tuple[tuple[float, ...], tuple[float, ...]]]):
    """Oracle detector: the given patient boxes, as grid boxes of the image it is given."""

    def detect(image) -> GridDetections:
        inverse = np.linalg.inv(model_affine_lps(image))
        grid = []
        for lo, hi in boxes_lps:
            corners = np.array(
                [[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
            )
            index = (inverse @ corners.T).T[:, :3]
            grid.append([*index.min(axis=0), *index.max(axis=0)])
        return GridDetections(np.array(grid, dtype=np.float64), np.full(len(grid), 0.9))

    return detect


PULMONARY_CT = DATA / "ct" / "nifti" / "chest_ct_cropped_pulmonary.nii.gz"


def pulmonary_slices() -> list[pydicom.Dataset]:
    """The chest CT cropped to the lungs (tests/data, NIfTI, 1.5 mm isotropic) as axial DICOM slices
    sorted by z: the same voxels, at the patient positions its affine gives (RAS → LPS)."""
    image = nib.load(PULMONARY_CT)
    hu = np.asarray(image.get_fdata(), dtype=np.float64)  # (i, j, k): i along −x RAS = +x LPS, j +y LPS
    affine = np.asarray(image.affine, dtype=np.float64)
    if not np.allclose(affine[:3, :3], np.diag([-1.5, -1.5, 1.5])):
        raise AssertionError(f"unexpected affine of {PULMONARY_CT}: {affine}")
    origin_lps = np.array([-affine[0, 3], -affine[1, 3], affine[2, 3]])
    study, series, frame = (generate_uid(entropy_srcs=[str(PULMONARY_CT), what]) for what in "abc")
    slices = []
    columns, rows, count = hu.shape
    for k in range(count):
        ds = ct_slice(
            k,
            study_uid=study,
            series_uid=series,
            frame_uid=frame,
            rows=rows,
            columns=columns,
            spacing=1.5,
            thickness=1.5,
        )
        ds.ImagePositionPatient = [float(origin_lps[0]), float(origin_lps[1]), float(origin_lps[2] + 1.5 * k)]
        ds.SliceLocation = float(origin_lps[2] + 1.5 * k)
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        stored = np.clip(np.rint(hu[:, :, k].T + 1024), 0, 4095).astype(np.uint16)
        ds.PixelData = stored.tobytes()
        slices.append(ds)
    return slices
