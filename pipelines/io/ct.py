"""Loading a CT series into a ``CtVolume`` (conventions in ``pipelines.io.volume``).

The volume itself (decoding, modality transform to HU, sorting, affine) is highdicom's volume API:
``get_volume_from_series`` for single-frame images, ``Image.get_volume`` for one enhanced or
legacy-converted multi-frame image. This module adds the refusals, checked on the headers first so
that each gets its own message, and the map from each plane back to its source image (or frame).

A series whose slices are not evenly spaced (a missing slice, mixed acquisitions), lie twice at one
position, differ in orientation, size or pixel spacing, or are sheared against their normal (gantry
tilt) is refused with ``PipelineInputError``: resampling it would silently move findings, and the
bundles were not trained on it. So is an image with an empty UID: results could not refer to it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from pipelines.errors import PipelineInputError
from pipelines.findings import ImageReference
from pipelines.io.dicom import decode_pixels, read_dataset, required_uid
from pipelines.io.volume import CtVolume

#: Largest accepted deviation of one slice step from the mean step, relative to the mean.
SLICE_STEP_TOLERANCE = 0.01
#: Largest accepted in-plane drift between consecutive slice origins (mm): more is gantry tilt.
SHEAR_TOLERANCE_MM = 0.01


@dataclass(frozen=True)
class _Plane:
    """The header geometry of one plane of a CT series: a classic image or one frame of a multi-frame one."""

    dataset: int  # index of the data set it is in, in the order the files were given
    size: tuple[int, int]  # (rows, columns)
    position: npt.NDArray[np.float64]
    row_direction: npt.NDArray[np.float64]
    column_direction: npt.NDArray[np.float64]
    spacing: tuple[float, float]  # (between rows, between columns) as in PixelSpacing
    reference: ImageReference


#: How highdicom turns stored values into HU: the modality transform (rescale slope/intercept, or a
#: Modality LUT) and nothing after it — no real-world value map, presentation LUT or colour.
_HU_TRANSFORM: dict[str, Any] = {
    "dtype": np.float32,
    "apply_real_world_transform": False,
    "apply_voi_transform": False,
    "apply_presentation_lut": False,
    "apply_palette_color_lut": False,
    "apply_icc_profile": False,
}


def _vector(values: Any, length: int, what: str, name: str) -> npt.NDArray[np.float64]:
    try:
        array = np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise PipelineInputError(f"{name}: {what} is missing or not numeric") from exc
    if array.shape != (length,):
        raise PipelineInputError(f"{name}: {what} must have {length} values, has {array.size}")
    return array


def _orientation(iop: Any, name: str) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    v = _vector(iop, 6, "ImageOrientationPatient", name)
    row, col = v[:3], v[3:]
    if not (
        math.isclose(np.linalg.norm(row), 1.0, abs_tol=1e-3)
        and math.isclose(np.linalg.norm(col), 1.0, abs_tol=1e-3)
    ):
        raise PipelineInputError(f"{name}: ImageOrientationPatient does not hold unit vectors")
    if abs(float(row @ col)) > 1e-3:
        raise PipelineInputError(f"{name}: ImageOrientationPatient rows and columns are not perpendicular")
    return row / np.linalg.norm(row), col / np.linalg.norm(col)


def _size(ds: Dataset, name: str) -> tuple[int, int]:
    if "PixelData" not in ds:
        raise PipelineInputError(f"{name}: the image has no pixel data")
    return (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0))


def _classic_plane(ds: Dataset, index: int, name: str) -> _Plane:
    row, col = _orientation(ds.get("ImageOrientationPatient"), name)
    spacing = _vector(ds.get("PixelSpacing"), 2, "PixelSpacing", name)
    return _Plane(
        dataset=index,
        size=_size(ds, name),
        position=_vector(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", name),
        row_direction=row,
        column_direction=col,
        spacing=(float(spacing[0]), float(spacing[1])),
        reference=ImageReference(
            required_uid(ds, "SOPClassUID", name), required_uid(ds, "SOPInstanceUID", name)
        ),
    )


def _functional_item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """The functional group macro for one frame: per-frame first, then shared, as PS3.3 C.7.6.16 says."""
    for groups_keyword, index in (
        ("PerFrameFunctionalGroupsSequence", frame),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        groups = ds.get(groups_keyword)
        if groups is None or len(groups) <= index:
            continue
        item = groups[index].get(sequence)
        if item is not None and len(item) > 0:
            result: Dataset = item[0]
            return result
    return None


def _enhanced_planes(ds: Dataset, index: int, name: str) -> list[_Plane]:
    """The planes of a multi-frame image, from its functional groups (highdicom reads them for the
    pixels too, but keeps the per-frame geometry to itself)."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    size = _size(ds, name)
    sop_class = required_uid(ds, "SOPClassUID", name)
    sop_instance = required_uid(ds, "SOPInstanceUID", name)
    planes = []
    for i in range(frames):
        where = f"{name} frame {i + 1}"
        position = _functional_item(ds, i, "PlanePositionSequence")
        orientation = _functional_item(ds, i, "PlaneOrientationSequence")
        measures = _functional_item(ds, i, "PixelMeasuresSequence")
        if position is None or orientation is None or measures is None:
            raise PipelineInputError(f"{where}: plane position, orientation or pixel measures are missing")
        row, col = _orientation(orientation.get("ImageOrientationPatient"), where)
        spacing = _vector(measures.get("PixelSpacing"), 2, "PixelSpacing", where)
        planes.append(
            _Plane(
                dataset=index,
                size=size,
                position=_vector(position.get("ImagePositionPatient"), 3, "ImagePositionPatient", where),
                row_direction=row,
                column_direction=col,
                spacing=(float(spacing[0]), float(spacing[1])),
                reference=ImageReference(sop_class, sop_instance, frame_number=i + 1),
            )
        )
    return planes


def _check_geometry(planes: list[_Plane]) -> float:
    """Refuse what is not one regular volume, each with its own message; returns the slice step (mm)."""
    if len(planes) < 2:
        raise PipelineInputError("a CT volume needs at least two slices; this series has one")
    first = planes[0]
    for plane in planes[1:]:
        if plane.size != first.size:
            raise PipelineInputError(f"slices have different sizes ({first.size} and {plane.size})")
        if not (
            np.allclose(plane.row_direction, first.row_direction, atol=1e-4)
            and np.allclose(plane.column_direction, first.column_direction, atol=1e-4)
        ):
            raise PipelineInputError("slices have different orientations (a localizer or a mixed series?)")
        if not np.allclose(plane.spacing, first.spacing, rtol=1e-4):
            raise PipelineInputError("slices have different pixel spacings")
    normal = np.cross(first.row_direction, first.column_direction)
    positions = np.stack([p.position for p in sorted(planes, key=lambda p: float(p.position @ normal))])
    steps = np.diff(positions @ normal)
    if np.any(steps <= 1e-3):
        raise PipelineInputError(
            "two images lie at the same slice position (duplicate images or two acquisitions in one series)"
        )
    step = float((positions[-1] - positions[0]) @ normal) / (len(planes) - 1)
    if float(np.max(np.abs(steps - step))) > SLICE_STEP_TOLERANCE * step:
        raise PipelineInputError(
            f"slice spacing is irregular: steps range from {steps.min():.3f} to {steps.max():.3f} mm "
            "(a missing slice, or variable-thickness reconstruction); resend the complete series or a "
            "reconstruction with even spacing"
        )
    in_plane = np.diff(positions, axis=0) - np.outer(steps, normal)
    drift = float(np.max(np.linalg.norm(in_plane, axis=1)))
    if drift > SHEAR_TOLERANCE_MM:
        angle = math.degrees(math.atan2(drift, step))
        raise PipelineInputError(
            f"slices are sheared against their normal by {angle:.1f}° (gantry tilt); send a reconstruction "
            "without tilt or one resampled to an orthogonal grid"
        )
    return step


def _highdicom_volume(
    datasets: list[Dataset], planes: list[_Plane], step: float, frame_uid: str
) -> hd.Volume:
    # Against the hand-written assembly this replaced (identical voxels, affine and source order), best of
    # 3 on the shared 2-core machine: the real 20-slice JPEG 2000 series 0.44 s vs 0.43 s; 300 generated
    # uncompressed slices 0.77 s vs 0.38 s (about 1 ms per file in highdicom's IOD look-ups) and peak
    # memory 1.07 vs 0.67 GB (all data sets stay open until the volume is stacked); one enhanced image of
    # 300 frames 0.17 s vs 0.31 s.
    multiframe = [ds for ds in datasets if "PerFrameFunctionalGroupsSequence" in ds]
    if not multiframe:
        return hd.get_volume_from_series(
            datasets, rtol=SLICE_STEP_TOLERANCE, orientation_tol=1e-4, **_HU_TRANSFORM
        )
    if len(datasets) == 1:
        image = hd.Image.from_dataset(datasets[0], copy=False)
        return image.get_volume(rtol=SLICE_STEP_TOLERANCE, **_HU_TRANSFORM)
    # Hand-written stacking because highdicom's volume API reads a series of single-frame images or one
    # multi-frame image, not a series whose frames are spread over several instances (a concatenation,
    # or multi-frame and single-frame images mixed). highdicom still decodes and rescales each frame and
    # makes the Volume; the frames go in its slice order (right-handed: against row × column direction).
    images = [hd.Image.from_dataset(ds, copy=False) for ds in datasets]
    first = planes[0]
    normal = np.cross(first.row_direction, first.column_direction)
    ordered = sorted(planes, key=lambda p: -float(p.position @ normal))
    array = np.stack(
        [images[p.dataset].get_frame(p.reference.frame_number or 1, **_HU_TRANSFORM) for p in ordered]
    )
    return hd.Volume.from_attributes(
        array=array,
        image_position=ordered[0].position.tolist(),
        image_orientation=[*first.row_direction.tolist(), *first.column_direction.tolist()],
        pixel_spacing=list(first.spacing),
        spacing_between_slices=step,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        frame_of_reference_uid=frame_uid,
    )


def _ct_volume(volume: hd.Volume, planes: list[_Plane], series_uid: str, frame_uid: str) -> CtVolume:
    """Our conventions on highdicom's volume, and each plane's source image found by its position."""
    # highdicom stacks slices so that (slice, row, column) is right-handed, i.e. against our normal.
    volume = volume.ensure_handedness(hd.AxisHandedness.LEFT_HANDED, flip_axis=0)
    index = volume.map_reference_to_indices(np.stack([p.position for p in planes]))
    plane_of = np.rint(index[:, 0]).astype(np.int64)
    if sorted(plane_of.tolist()) != list(range(len(planes))) or np.any(np.abs(index[:, 1:]) >= 0.5):
        raise PipelineInputError("the assembled volume does not hold every image at its own position")
    references: list[ImageReference] = [planes[0].reference] * len(planes)
    for plane, k in zip(planes, plane_of.tolist(), strict=True):
        references[k] = plane.reference
    # highdicom indexes (slice, row, column); CtVolume.affine_lps takes (column, row, slice).
    affine = np.asarray(volume.affine, dtype=np.float64)[:, [2, 1, 0, 3]]
    return CtVolume(
        voxels=volume.array,
        affine_lps=affine,
        source_images=tuple(references),
        series_instance_uid=series_uid,
        frame_of_reference_uid=frame_uid,
    )


def load_ct_series(paths: Sequence[str | Path]) -> CtVolume:
    """Read a CT series (classic single-frame files and/or enhanced multi-frame files) into a volume.

    Raises ``PipelineInputError`` with the reason when the files are not one regular CT volume.
    """
    if not paths:
        raise PipelineInputError("the series has no images")
    datasets: list[Dataset] = []
    planes: list[_Plane] = []
    series_uids: set[str] = set()
    frame_uids: set[str] = set()
    for path in paths:
        name = Path(path).name
        ds = read_dataset(path)
        modality = str(ds.get("Modality", ""))
        if modality != "CT":
            raise PipelineInputError(
                f"{name}: modality is {modality or 'missing'}, this pipeline reads CT only"
            )
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
        if int(ds.get("SamplesPerPixel", 1)) != 1 or not photometric.startswith("MONOCHROME"):
            raise PipelineInputError(f"{name}: colour CT images cannot be analysed")
        series_uids.add(required_uid(ds, "SeriesInstanceUID", name))
        frame_uids.add(required_uid(ds, "FrameOfReferenceUID", name))
        if "PerFrameFunctionalGroupsSequence" in ds:
            planes.extend(_enhanced_planes(ds, len(datasets), name))
        else:
            planes.append(_classic_plane(ds, len(datasets), name))
        datasets.append(ds)
    if len(series_uids) != 1:
        raise PipelineInputError(f"the images belong to {len(series_uids)} different series")
    if len(frame_uids) != 1:
        raise PipelineInputError("the images do not share one Frame of Reference UID")
    series_uid, frame_uid = series_uids.pop(), frame_uids.pop()
    step = _check_geometry(planes)
    try:
        volume = _highdicom_volume(datasets, planes, step, frame_uid)
    except Exception as exc:  # the decoders and highdicom raise many types (ValueError, RuntimeError, …)
        for path in paths:  # name the file whose pixel data is broken, if one is
            decode_pixels(read_dataset(path), Path(path).name)
        raise PipelineInputError(f"the images cannot be assembled into one volume ({exc})") from exc
    return _ct_volume(volume, planes, series_uid, frame_uid)
