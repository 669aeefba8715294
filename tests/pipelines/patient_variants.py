"""Variants of the real CT that hold the same anatomy at the same patient coordinates.

Each variant rewrites the 20 real slices (optionally a crop of them) with another array layout and the
headers that keep every voxel at its patient position: ``feet_first`` (columns mirrored with the row
vector negated, so the slice normal points to the feet; PatientPosition FFS, instance numbers from the
feet, files given head to feet), ``mirrored_rows`` (rows mirrored, column vector negated),
``rotated_180`` (both), ``transposed`` (rows and columns swapped, orientation vectors and pixel
spacings swapped), ``rotated_90`` (transposed, then columns mirrored), ``reversed`` (instance numbers
and file order reversed) and ``shuffled`` (files and instance numbers in a seeded random order).

``to_reference_grid`` maps a label map on a variant's own (slices, rows, columns) back onto the
``original`` variant's grid by exact index mapping, computed from the variant's DICOM headers alone
(never from ``pipelines.io``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from pipelines.findings import ImageReference
from tests.pipelines.conftest import read_sorted, write_uncompressed

PATIENT_VARIANTS = (
    "original",
    "feet_first",
    "mirrored_rows",
    "rotated_180",
    "transposed",
    "rotated_90",
    "reversed",
    "shuffled",
)

#: (rows, columns) kept of each 512×512 slice: the spine and the tissue around it.
Crop = tuple[tuple[int, int], tuple[int, int]]


def _vectors(ds: pydicom.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    dr, dc = (float(v) for v in ds.PixelSpacing)
    return ipp, iop[:3], iop[3:], dr, dc


def write_patient_variant(
    out: Path, variant: str, *, crop: Crop | None = None, marker: tuple[slice, slice, slice] | None = None
) -> list[Path]:
    """The real series (cropped to ``crop``) written as ``variant``; the files in the order to send.

    ``marker`` (slices, rows, columns in the original's sorted layout) is set to 3000 HU first.
    """
    if variant not in PATIENT_VARIANTS:
        raise ValueError(variant)
    out.mkdir(parents=True, exist_ok=True)
    slices = read_sorted()
    n = len(slices)
    order = np.random.default_rng(14).permutation(n) if variant == "shuffled" else np.arange(n)
    paths = []
    for k, ds in enumerate(slices):
        stored = ds.pixel_array.astype(np.float64)
        if marker is not None and marker[0].start <= k < marker[0].stop:
            stored[marker[1], marker[2]] = (3000.0 - float(ds.RescaleIntercept)) / float(ds.RescaleSlope)
        ipp, row_dir, col_dir, dr, dc = _vectors(ds)
        if crop is not None:
            (r0, r1), (c0, c1) = crop
            stored = stored[r0:r1, c0:c1]
            ipp = ipp + c0 * dc * row_dir + r0 * dr * col_dir
        rows, cols = stored.shape
        if variant in ("transposed", "rotated_90"):
            stored = stored.T
            row_dir, col_dir, dr, dc = col_dir, row_dir, dc, dr
            rows, cols = cols, rows
        if variant in ("feet_first", "rotated_180", "rotated_90"):
            stored = stored[:, ::-1]
            ipp = ipp + (cols - 1) * dc * row_dir
            row_dir = -row_dir
        if variant in ("mirrored_rows", "rotated_180"):
            stored = stored[::-1, :]
            ipp = ipp + (rows - 1) * dr * col_dir
            col_dir = -col_dir
        ds.ImageOrientationPatient = [*row_dir.tolist(), *col_dir.tolist()]
        ds.ImagePositionPatient = [float(v) for v in ipp]
        ds.PixelSpacing = [dr, dc]
        if variant == "feet_first":
            ds.PatientPosition = "FFS"
        if variant == "reversed":
            ds.InstanceNumber = n - k
        elif variant == "shuffled":
            ds.InstanceNumber = int(order[k]) + 1
        else:
            ds.InstanceNumber = k + 1
        path = out / f"{k:03d}.dcm"
        write_uncompressed(ds, np.rint(stored), path)
        paths.append(path)
    if variant in ("feet_first", "reversed"):
        return paths[::-1]
    if variant == "shuffled":
        return [paths[i] for i in order]
    return paths


def to_reference_grid(
    label_map: np.ndarray, source_images: tuple[ImageReference, ...], paths: list[Path], reference: list[Path]
) -> np.ndarray:
    """``label_map`` (planes in ``source_images`` order) on the ``reference`` series' sorted grid.

    Every voxel's patient position comes from its own file's headers; it must land on a reference
    voxel centre to within 10⁻³ of a voxel, and every reference voxel must be hit exactly once.
    """
    ref = sorted(
        (pydicom.dcmread(p, stop_before_pixels=True) for p in reference),
        key=lambda d: d.ImagePositionPatient[2],
    )
    origin, row_ref, col_ref, dr_ref, dc_ref = _vectors(ref[0])
    step = float(ref[1].ImagePositionPatient[2]) - float(ref[0].ImagePositionPatient[2])
    axes = np.stack([row_ref * dc_ref, col_ref * dr_ref, np.array([0.0, 0.0, step])], axis=1)
    shape = (len(ref), int(ref[0].Rows), int(ref[0].Columns))
    headers = {str(d.SOPInstanceUID): d for d in (pydicom.dcmread(p, stop_before_pixels=True) for p in paths)}
    out = np.zeros(shape, dtype=label_map.dtype)
    hits = np.zeros(shape, dtype=np.int64)
    for plane, image in zip(label_map, source_images, strict=True):
        ipp, row_dir, col_dir, dr, dc = _vectors(headers[image.sop_instance_uid])
        r, c = np.meshgrid(np.arange(plane.shape[0]), np.arange(plane.shape[1]), indexing="ij")
        points = ipp[:, None] + np.outer(row_dir * dc, c.ravel()) + np.outer(col_dir * dr, r.ravel())
        index = np.linalg.solve(axes, points - origin[:, None])  # (column, row, slice) on the reference
        rounded = np.rint(index).astype(np.int64)
        assert np.max(np.abs(index - rounded)) < 1e-3, "a variant voxel is not on a reference voxel centre"
        out[rounded[2], rounded[1], rounded[0]] = plane.ravel()
        np.add.at(hits, (rounded[2], rounded[1], rounded[0]), 1)
    assert np.all(hits == 1), "the variant does not cover the reference grid one to one"
    return out
