"""Nodule measurements from a segmentation inside the detection box (RECIST / Fleischner diameters).

Segmentation, on the source CT in HU (never the model grid, so that the mask lies on the source voxels
a SEG encodes):

1. the detection box, mapped to source voxel indices, grown by ``MARGIN_FRACTION`` of its size on each
   side (at least ``MIN_MARGIN_MM``), and clipped to the volume: the *crop*;
2. voxels above ``THRESHOLD_HU`` (−400 HU: half-way between aerated lung, about −850 HU, and a solid
   nodule, about +40 HU, so that a partial-volume voxel counts when it is at least half nodule);
3. the 6-connected component that contains the box centre voxel, else the one nearest to it (mm);
4. a component that touches the crop's border is attached to something larger than the nodule (a
   vessel, the chest wall, the mediastinum): it is opened in-plane (erosion then dilation by a disc of
   ``OPENING_RADIUS_MM``) to cut thin attachments and chosen again; if it still touches the border, or
   nothing is above the threshold, the segmentation has failed.

Measurements from the mask, in patient mm (pixel spacing and the slice step): the long-axis diameter
is the longest in-plane diameter (the Feret diameter of the sub-pixel outline where the HU crosses the
threshold) over the source image planes (axial for an axial series), on the plane where it is longest;
the short axis the outline's extent perpendicular to it on that same plane; their mean; and the
volume the voxel count times the voxel volume. Where the segmentation failed the measurements are
the box's: its larger and smaller in-plane side, their mean and the ellipsoid inscribed in it
(π/6·w·h·d), flagged ``NoduleMeasurement.BOX`` with the reason in ``measurement_note``.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from pipelines.findings import Nodule, NoduleMeasurement, Point3D
from pipelines.io.volume import CtVolume

THRESHOLD_HU = -400.0
MARGIN_FRACTION = 0.25
MIN_MARGIN_MM = 3.0
OPENING_RADIUS_MM = 1.5


def _crop(volume: CtVolume, nodule: Nodule) -> tuple[slice, slice, slice]:
    """The box grown by the margin, as (plane, row, column) slices of the source volume."""
    lo, hi = np.array(nodule.box_min), np.array(nodule.box_max)
    margin = np.maximum((hi - lo) * MARGIN_FRACTION, MIN_MARGIN_MM)
    lo, hi = lo - margin, hi + margin
    corners = [(x, y, z) for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    index = np.array([volume.voxel_index(c) for c in corners])  # (column, row, plane)
    first = np.floor(index.min(axis=0) + 0.5).astype(int)
    last = np.floor(index.max(axis=0) + 0.5).astype(int)
    size = (volume.shape[2], volume.shape[1], volume.shape[0])
    bounds = [
        slice(max(int(first[a]), 0), min(int(last[a]) + 1, size[a])) for a in (2, 1, 0)
    ]  # (plane, row, column)
    return (bounds[0], bounds[1], bounds[2])


def _touches_border(
    mask: npt.NDArray[np.bool_], crop: tuple[slice, slice, slice], shape: tuple[int, ...]
) -> bool:
    """Whether the mask reaches a side of the crop that is not also the side of the volume."""
    for axis, bound in enumerate(crop):
        moved = np.moveaxis(mask, axis, 0)
        if bound.start > 0 and moved[0].any():
            return True
        if bound.stop < shape[axis] and moved[-1].any():
            return True
    return False


def _component(
    mask: npt.NDArray[np.bool_], centre: npt.NDArray[np.float64], mm: npt.NDArray[np.float64]
) -> npt.NDArray[np.bool_]:
    """The 6-connected component of ``mask`` at (or nearest to, in mm) ``centre`` (plane, row, col)."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros_like(mask)
    at = tuple(round(float(v)) for v in centre)
    if all(0 <= at[a] < mask.shape[a] for a in range(3)) and labels[at] > 0:
        return np.asarray(labels == labels[at])
    points = np.argwhere(labels > 0)
    distances = np.linalg.norm((points - centre) * mm, axis=1)
    nearest = points[int(np.argmin(distances))]
    return np.asarray(labels == labels[tuple(nearest)])


def segment_nodule(
    volume: CtVolume, nodule: Nodule
) -> tuple[npt.NDArray[np.bool_], tuple[int, int, int], str]:
    """The nodule's mask in the crop, the crop's (plane, row, column) offset, and why it failed.

    The reason is "" where the segmentation succeeded.
    """
    crop = _crop(volume, nodule)
    offset = (crop[0].start, crop[1].start, crop[2].start)
    if any(s.stop <= s.start for s in crop):
        return np.zeros((0, 0, 0), dtype=bool), offset, "the box lies outside the volume"
    hu = volume.voxels[crop]
    column, row, plane = volume.voxel_index(nodule.center)
    centre = np.array([plane, row, column]) - np.array(offset, dtype=np.float64)
    spacing = volume.spacing_mm
    mm = np.array([spacing[2], spacing[1], spacing[0]])
    above = hu > THRESHOLD_HU
    mask = _component(above, centre, mm)
    if not mask.any():
        return mask, offset, f"no voxel above {THRESHOLD_HU:g} HU in the box"
    if _touches_border(mask, crop, volume.shape):
        radius = np.maximum(np.rint(OPENING_RADIUS_MM / mm[1:]), 1).astype(int)
        yy, xx = np.ogrid[-radius[0] : radius[0] + 1, -radius[1] : radius[1] + 1]
        disc = ((yy / radius[0]) ** 2 + (xx / radius[1]) ** 2 <= 1.0)[None]
        mask = _component(ndimage.binary_opening(above, structure=disc), centre, mm)
        if not mask.any() or _touches_border(mask, crop, volume.shape):
            return (
                mask,
                offset,
                (
                    f"the region above {THRESHOLD_HU:g} HU reaches beyond the box (attached to a vessel, "
                    "the wall or the mediastinum)"
                ),
            )
    return mask, offset, ""


def _boundary(hu: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    """Sub-pixel points of the mask's outline on one plane, as continuous (column, row) indices.

    On every edge from a mask pixel to a face neighbour outside the mask, the point where the HU,
    interpolated linearly between the two pixel centres, crosses the threshold (the face itself where
    the neighbour is above it too, e.g. a vessel cut off by the opening): the iso-contour that marching
    squares would give, without the bias of pixel corners (up to half a pixel's diagonal each side).
    """
    padded_mask = np.pad(mask, 1)
    padded_hu = np.pad(hu.astype(np.float64), 1, constant_values=-1000.0)
    points = []
    for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        neighbour_mask = np.roll(padded_mask, (-dr, -dc), axis=(0, 1))
        neighbour_hu = np.roll(padded_hu, (-dr, -dc), axis=(0, 1))
        rows, cols = np.nonzero(padded_mask & ~neighbour_mask)
        inside, outside = padded_hu[rows, cols], neighbour_hu[rows, cols]
        crossing = np.where(
            outside < THRESHOLD_HU,
            (inside - THRESHOLD_HU) / np.maximum(inside - outside, 1e-6),
            0.5,
        ).clip(0.0, 1.0)
        points.append(np.stack([cols - 1 + crossing * dc, rows - 1 + crossing * dr], axis=1))
    return np.unique(np.concatenate(points), axis=0)


def _hull(points: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    try:
        vertices: npt.NDArray[np.intp] = np.asarray(ConvexHull(points).vertices)
        return points[vertices]
    except QhullError:  # collinear points (a one-pixel-wide mask): all of them
        return points


def _axes(points_mm: npt.NDArray[np.float64]) -> tuple[float, int, int, npt.NDArray[np.float64], float, int]:
    """Long axis (length, endpoint indices), the unit vector perpendicular to it, the short axis
    (the extent along that vector) and the index of the point where the short axis starts."""
    diff = points_mm[:, None, :] - points_mm[None, :, :]
    distances = np.linalg.norm(diff, axis=2)
    i, j = np.unravel_index(int(np.argmax(distances)), distances.shape)
    long_axis = float(distances[i, j])
    direction = (points_mm[j] - points_mm[i]) / long_axis
    normal = np.array([-direction[1], direction[0]])
    projection = points_mm @ normal
    return (
        long_axis,
        int(i),
        int(j),
        normal,
        float(projection.max() - projection.min()),
        int(np.argmin(projection)),
    )


def measure_nodule(volume: CtVolume, nodule: Nodule) -> Nodule:
    """``nodule`` with its diameters, volume and mask from the segmentation, or from its box (flagged)."""
    mask, offset, failure = segment_nodule(volume, nodule)
    if failure:
        return box_measurements(volume, nodule, failure)
    spacing = volume.spacing_mm
    in_plane = np.array([spacing[0], spacing[1]])  # (column, row) mm
    best: (
        tuple[float, int, npt.NDArray[np.float64], tuple[int, int], npt.NDArray[np.float64], float, int]
        | None
    ) = None
    hu = volume.voxels[
        offset[0] : offset[0] + mask.shape[0],
        offset[1] : offset[1] + mask.shape[1],
        offset[2] : offset[2] + mask.shape[2],
    ]
    for k in range(mask.shape[0]):
        if not mask[k].any():
            continue
        points = _hull(_boundary(hu[k], mask[k]))
        long_axis, i, j, normal, short_axis, start = _axes(points * in_plane)
        if best is None or long_axis > best[0] + 1e-9:
            best = (long_axis, k, points, (i, j), normal, short_axis, start)
    assert best is not None  # the mask is not empty
    long_axis, k, points, (i, j), normal, short_axis, start = best
    plane = k + offset[0]

    def patient(column_row: npt.NDArray[np.float64]) -> Point3D:
        return volume.patient_point(column_row[0] + offset[2], column_row[1] + offset[1], plane)

    short_end = points[start] + normal * short_axis / in_plane
    return replace(
        nodule,
        long_axis_mm=long_axis,
        short_axis_mm=short_axis,
        mean_diameter_mm=(long_axis + short_axis) / 2.0,
        volume_mm3=float(mask.sum()) * volume.voxel_volume_mm3,
        measurement=NoduleMeasurement.SEGMENTATION,
        measurement_note=f"voxels above {THRESHOLD_HU:g} HU connected to the box centre",
        measurement_slice=volume.source_images[plane],
        long_axis_endpoints=(patient(points[i]), patient(points[j])),
        short_axis_endpoints=(patient(points[start]), patient(short_end)),
        mask=mask,
        mask_offset=offset,
    )


def box_measurements(volume: CtVolume, nodule: Nodule, reason: str) -> Nodule:
    """The fallback: the box's in-plane sides as the diameters, the inscribed ellipsoid as the volume."""
    plane = volume.voxel_index(nodule.center)[2]
    k = int(min(max(math.floor(plane + 0.5), 0), volume.shape[0] - 1))
    directions = volume.affine_lps[:3, :3] / np.linalg.norm(volume.affine_lps[:3, :3], axis=0)
    size = np.abs(np.subtract(nodule.box_max, nodule.box_min))
    sides = np.abs(directions.T) @ size  # extent along (column, row, slice normal), mm
    width, height, depth = (float(v) for v in sides)
    centre = np.array(nodule.center)
    along_columns = directions[:, 0] * width / 2
    along_rows = directions[:, 1] * height / 2
    first, second = (along_columns, along_rows) if width >= height else (along_rows, along_columns)

    def point(v: npt.NDArray[np.float64]) -> Point3D:
        return (float(v[0]), float(v[1]), float(v[2]))

    return replace(
        nodule,
        long_axis_mm=max(width, height),
        short_axis_mm=min(width, height),
        mean_diameter_mm=(width + height) / 2.0,
        volume_mm3=math.pi / 6.0 * width * height * depth,
        measurement=NoduleMeasurement.BOX,
        measurement_note=f"segmentation failed ({reason}): detection box size",
        measurement_slice=volume.source_images[k],
        long_axis_endpoints=(point(centre - first), point(centre + first)),
        short_axis_endpoints=(point(centre - second), point(centre + second)),
        mask=None,
        mask_offset=None,
    )
