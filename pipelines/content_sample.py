"""A CT series at low resolution for the content checks: every k-th slice, every s-th pixel, in HU.

Only the headers of every file are read (to order the slices by position) and only the sampled slices'
pixels are decoded; a multi-frame image (Enhanced or Legacy Converted Enhanced CT) is read once and only
its sampled frames are decoded. Positions are projected on the slice normal, so slice order, feet-first
acquisition and mirrored rows or columns change nothing; each pixel's patient coordinates are kept so
that "posterior" and "midline" are patient directions, not array directions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels.utils import pixel_array

from pipelines.errors import PipelineInputError

__all__ = ["MAX_SAMPLES", "PIXEL_MM", "SLICE_GAP_MM", "SeriesSample", "read_sample"]

MAX_SAMPLES = 16
"""At most this many slices are decoded, whatever the series' length."""
SLICE_GAP_MM = 5.0
"""Sampled slices are at least this far apart (a 40 mm series gives about 8 samples)."""
PIXEL_MM = 2.5
"""Pixels are subsampled to about this size (a 512² slice of 0.7–1 mm pixels becomes about 170²)."""


@dataclass(frozen=True)
class _Frame:
    source: int  # index into the datasets
    frame: int | None  # frame index in a multi-frame image, None for a single-frame one
    position: npt.NDArray[np.float64]
    row_direction: npt.NDArray[np.float64]  # patient direction of increasing column index
    column_direction: npt.NDArray[np.float64]  # patient direction of increasing row index
    spacing: tuple[float, float]  # (between rows, between columns) in mm
    slope: float
    intercept: float


@dataclass(frozen=True)
class SeriesSample:
    """Sampled slices in HU, with each pixel's patient x (left) and y (posterior) in mm."""

    hu: npt.NDArray[np.float32]  # (samples, rows, columns)
    x_mm: npt.NDArray[np.float32]  # (samples, rows, columns): patient x of each pixel
    y_mm: npt.NDArray[np.float32]  # (samples, rows, columns): patient y of each pixel
    pixel_area_mm2: float
    slab_mm: float
    """The thickness along the slice axis each sampled slice stands for (extent / samples)."""
    extent_mm: float
    slices: int
    """Slices (or frames) in the series; ``hu`` holds ``len(hu)`` of them."""
    normal_z: float
    """|z component| of the slice normal: 1 for axial slices."""


def _floats(value: Any, count: int, what: str, where: str) -> npt.NDArray[np.float64]:
    try:
        numbers = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        numbers = np.array([], dtype=np.float64)
    if numbers.shape != (count,) or not np.all(np.isfinite(numbers)):
        raise PipelineInputError(f"{where}: {what} is missing or malformed ({value!r})")
    return numbers


def _group(ds: Dataset, frame: int, keyword: str) -> Dataset | None:
    """A functional group macro of one frame: per-frame first, then shared (PS3.3 C.7.6.16)."""
    for groups_keyword, index in (
        ("PerFrameFunctionalGroupsSequence", frame),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        groups = ds.get(groups_keyword)
        if groups is not None and len(groups) > index and len(item := groups[index].get(keyword) or []):
            found: Dataset = item[0]
            return found
    return None


def _frame(
    source: int, frame: int | None, geometry: Dataset, position: Dataset, transform: Dataset, where: str
) -> _Frame:
    orientation = _floats(geometry.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", where)
    spacing = _floats(geometry.get("PixelSpacing"), 2, "PixelSpacing", where)
    return _Frame(
        source=source,
        frame=frame,
        position=_floats(position.get("ImagePositionPatient"), 3, "ImagePositionPatient", where),
        row_direction=orientation[:3],
        column_direction=orientation[3:],
        spacing=(float(spacing[0]), float(spacing[1])),
        slope=float(transform.get("RescaleSlope", 1) or 1),
        intercept=float(transform.get("RescaleIntercept", 0) or 0),
    )


def _frames(ds: Dataset, source: int, name: str) -> list[_Frame]:
    if "PerFrameFunctionalGroupsSequence" not in ds:
        return [_frame(source, None, ds, ds, ds, name)]
    frames = []
    for i in range(int(ds.get("NumberOfFrames", 1) or 1)):
        where = f"{name} frame {i + 1}"
        position = _group(ds, i, "PlanePositionSequence")
        orientation = _group(ds, i, "PlaneOrientationSequence")
        measures = _group(ds, i, "PixelMeasuresSequence")
        transform = _group(ds, i, "PixelValueTransformationSequence") or ds
        if position is None or orientation is None or measures is None:
            raise PipelineInputError(f"{where}: plane position, orientation or pixel measures are missing")
        geometry = Dataset()
        geometry.ImageOrientationPatient = orientation.get("ImageOrientationPatient")
        geometry.PixelSpacing = measures.get("PixelSpacing")
        frames.append(_frame(source, i, geometry, position, transform, where))
    return frames


def _read(path: Path, pixels: bool) -> Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except Exception as exc:  # pydicom raises several unrelated types for broken files
        raise PipelineInputError(f"{path.name}: not a readable DICOM file ({exc})") from exc


def read_sample(paths: Sequence[str | Path]) -> SeriesSample:
    """Read ``paths`` (one series) at low resolution; ``PipelineInputError`` if it cannot be measured."""
    files = [Path(p) for p in paths]
    if not files:
        raise PipelineInputError("the series has no instances")
    headers = [_read(path, pixels=False) for path in files]
    frames = [f for index, ds in enumerate(headers) for f in _frames(ds, index, files[index].name)]
    first = frames[0]
    normal = np.cross(first.row_direction, first.column_direction)
    length = float(np.linalg.norm(normal))
    if length < 1e-3:
        raise PipelineInputError(f"{files[0].name}: ImageOrientationPatient is degenerate")
    normal /= length
    # The normal's sign is fixed (towards the head, or +x/+y for other planes) so that a feet-first
    # series or mirrored rows give the same positions as the head-first one.
    axis = int(np.argmax(np.abs(normal)))
    normal = normal if normal[axis] >= 0 else -normal
    frames.sort(key=lambda f: float(f.position @ normal))
    positions = np.array([float(f.position @ normal) for f in frames])
    steps = np.diff(positions)
    step = float(np.median(steps)) if len(steps) else 0.0
    extent = float(positions[-1] - positions[0]) + (step if step > 0 else 0.0)
    wanted = max(1, min(len(frames), MAX_SAMPLES, math.ceil(extent / SLICE_GAP_MM)))
    chosen = sorted({round(float(i)) for i in np.linspace(0, len(frames) - 1, wanted)})
    decoded: dict[int, Dataset] = {}
    hu, xs, ys = [], [], []
    for index in chosen:
        f = frames[index]
        if f.source not in decoded:
            decoded[f.source] = _read(files[f.source], pixels=True)
        ds = decoded[f.source]
        stride_r = max(1, round(PIXEL_MM / f.spacing[0]))
        stride_c = max(1, round(PIXEL_MM / f.spacing[1]))
        try:
            raw = pixel_array(ds) if f.frame is None else pixel_array(ds, index=f.frame)
        except Exception as exc:
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
            raise PipelineInputError(
                f"{files[f.source].name}: pixel data cannot be decoded (transfer syntax {syntax}: {exc})"
            ) from exc
        if raw.ndim != 2:
            raise PipelineInputError(f"{files[f.source].name}: not a single-channel image ({raw.shape})")
        small = raw[::stride_r, ::stride_c].astype(np.float32) * f.slope + f.intercept
        rows = np.arange(0, raw.shape[0], stride_r, dtype=np.float64)[:, None] * f.spacing[0]
        cols = np.arange(0, raw.shape[1], stride_c, dtype=np.float64)[None, :] * f.spacing[1]
        # Patient coordinates of each pixel: position + column index along the row direction, etc.
        xs.append(
            (f.position[0] + cols * f.row_direction[0] + rows * f.column_direction[0]).astype(np.float32)
        )
        ys.append(
            (f.position[1] + cols * f.row_direction[1] + rows * f.column_direction[1]).astype(np.float32)
        )
        hu.append(small)
    shapes = {a.shape for a in hu}
    if len(shapes) != 1:
        raise PipelineInputError(f"the series' slices differ in size ({sorted(shapes)})")
    row_mm = first.spacing[0] * max(1, round(PIXEL_MM / first.spacing[0]))
    col_mm = first.spacing[1] * max(1, round(PIXEL_MM / first.spacing[1]))
    return SeriesSample(
        hu=np.stack(hu),
        x_mm=np.stack([np.broadcast_to(x, hu[0].shape) for x in xs]),
        y_mm=np.stack([np.broadcast_to(y, hu[0].shape) for y in ys]),
        pixel_area_mm2=row_mm * col_mm,
        slab_mm=extent / len(chosen) if extent > 0 else max(step, 1.0),
        extent_mm=extent,
        slices=len(frames),
        normal_z=float(abs(normal[2])),
    )
