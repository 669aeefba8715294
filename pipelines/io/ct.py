"""DICOM input for the pipelines: a CT series as an oriented volume, a radiograph as a float image.

Geometry conventions (the same as DICOM's and the result types'):

* ``CtVolume.voxels`` has shape (slices, rows, columns) and holds Hounsfield units.
* ``CtVolume.affine_lps`` maps a voxel index written as (column, row, slice, 1) to patient coordinates
  in mm (LPS: +x left, +y posterior, +z head), so voxel centres sit at integer indices. Its first two
  columns are ImageOrientationPatient times PixelSpacing; its third is the step between slices.
* Slices are ordered by their position projected on the slice normal (row direction × column
  direction), never by file order or InstanceNumber: a series that arrives reversed or shuffled gives
  the same volume. ``source_images[i]`` is the image (or frame) that plane ``i`` came from.
* For MONAI the volume is handed over as a channel-first ``MetaTensor`` of shape (1, columns, rows,
  slices) with a RAS affine, which is what MONAI's ITK reader with ``affine_lps_to_ras=True`` gives and
  what the bundles' ``Orientationd(axcodes="RAS")`` expects.

A series whose slices are not evenly spaced (a missing slice, mixed acquisitions) or whose slices are
sheared against their normal (gantry tilt) is refused with ``PipelineInputError``: resampling it would
silently move findings, and the bundles were not trained on it.
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
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

from pipelines.errors import PipelineInputError
from pipelines.findings import ImageReference

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"

#: Largest accepted deviation of one slice step from the median step, relative to the median.
SLICE_STEP_TOLERANCE = 0.01
#: Largest accepted in-plane drift between consecutive slice origins (mm): more is gantry tilt.
SHEAR_TOLERANCE_MM = 0.01
#: LPS ↔ RAS: negate x and y.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class CtVolume:
    """A CT series as one regular volume in Hounsfield units with its exact patient geometry."""

    voxels: FloatArray
    affine_lps: npt.NDArray[np.float64]
    source_images: tuple[ImageReference, ...]
    series_instance_uid: str
    frame_of_reference_uid: str

    def __post_init__(self) -> None:
        if self.voxels.ndim != 3:
            raise ValueError('Argument "voxels" must have three dimensions (slices, rows, columns).')
        if self.voxels.shape[0] != len(self.source_images):
            raise ValueError('Argument "source_images" must name one image per plane of "voxels".')
        if self.affine_lps.shape != (4, 4):
            raise ValueError('Argument "affine_lps" must be a 4×4 matrix.')

    @property
    def shape(self) -> tuple[int, int, int]:
        """(slices, rows, columns)."""
        s, r, c = self.voxels.shape
        return (s, r, c)

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size along (column, row, slice) in mm."""
        norms = np.linalg.norm(self.affine_lps[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.affine_lps[:3, :3])))

    def patient_point(self, column: float, row: float, plane: float) -> tuple[float, float, float]:
        """Patient (LPS) coordinates of a continuous voxel index."""
        p = self.affine_lps @ np.array([column, row, plane, 1.0])
        return (float(p[0]), float(p[1]), float(p[2]))

    def voxel_index(self, point_lps: Sequence[float]) -> tuple[float, float, float]:
        """Continuous (column, row, plane) index of a patient point."""
        v = np.linalg.solve(self.affine_lps, np.array([*point_lps, 1.0]))
        return (float(v[0]), float(v[1]), float(v[2]))

    def to_metatensor(self) -> Any:
        """The volume as MONAI sees it: a (1, columns, rows, slices) ``MetaTensor`` with a RAS affine."""
        import torch
        from monai.data.meta_tensor import MetaTensor

        array = torch.from_numpy(np.ascontiguousarray(self.voxels.transpose(2, 1, 0)))[None]
        affine = torch.as_tensor(LPS_TO_RAS @ self.affine_lps, dtype=torch.float64)
        return MetaTensor(array, affine=affine, meta={"space": "RAS"})


@dataclass(frozen=True)
class Radiograph:
    """One projection radiograph as a float image, brighter = more attenuation.

    ``pixels`` holds the modality LUT output, passed through the VOI LUT when the image has one, with
    MONOCHROME1 inverted so that every image reads the same way. ``value_range`` is the range those
    values can take (from BitsStored and the LUTs), which is what a network's normalisation needs —
    not the min/max of this particular image.
    """

    pixels: FloatArray
    value_range: tuple[float, float]
    pixel_spacing_mm: tuple[float, float] | None
    view_position: str
    modality: str
    source: ImageReference


@dataclass(frozen=True)
class _Plane:
    """One 2-D plane of a CT series before sorting: a classic image or one frame of an enhanced one."""

    pixels: FloatArray
    position: npt.NDArray[np.float64]
    row_direction: npt.NDArray[np.float64]
    column_direction: npt.NDArray[np.float64]
    spacing: tuple[float, float]  # (between rows, between columns) as in PixelSpacing
    reference: ImageReference


def read_dataset(path: str | Path) -> Dataset:
    """Read a DICOM file, turning any read error into ``PipelineInputError``."""
    try:
        return pydicom.dcmread(str(path))
    except Exception as exc:  # pydicom raises several unrelated types for broken files
        raise PipelineInputError(f"{Path(path).name}: not a readable DICOM file ({exc})") from exc


def _pixels(ds: Dataset, name: str) -> npt.NDArray[Any]:
    # Decoding is deferred until pixel_array is touched, so a broken JPEG 2000 stream only shows here.
    try:
        return ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise PipelineInputError(
            f"{name}: pixel data cannot be decoded (transfer syntax {syntax}: {exc})"
        ) from exc


def _required_uid(ds: Dataset, keyword: str, name: str) -> str:
    value = str(ds.get(keyword, "") or "")
    if not value:
        raise PipelineInputError(f"{name}: {keyword} is empty, so results could not refer to this image")
    return value


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


def _classic_plane(ds: Dataset, name: str) -> _Plane:
    stored = _pixels(ds, name)
    if stored.ndim != 2:
        raise PipelineInputError(f"{name}: expected one greyscale plane, pixel data has shape {stored.shape}")
    hu = np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    row, col = _orientation(ds.get("ImageOrientationPatient"), name)
    spacing = _vector(ds.get("PixelSpacing"), 2, "PixelSpacing", name)
    return _Plane(
        pixels=hu,
        position=_vector(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", name),
        row_direction=row,
        column_direction=col,
        spacing=(float(spacing[0]), float(spacing[1])),
        reference=ImageReference(
            _required_uid(ds, "SOPClassUID", name), _required_uid(ds, "SOPInstanceUID", name)
        ),
    )


def _functional_item(ds: Dataset, frame: int, sequence: str, name: str) -> Dataset | None:
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


def _enhanced_planes(ds: Dataset, name: str) -> list[_Plane]:
    stored = _pixels(ds, name)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if stored.ndim == 2:
        stored = stored[None]
    if stored.ndim != 3 or stored.shape[0] != frames:
        raise PipelineInputError(
            f"{name}: expected {frames} greyscale frames, pixel data has shape {stored.shape}"
        )
    sop_class = _required_uid(ds, "SOPClassUID", name)
    sop_instance = _required_uid(ds, "SOPInstanceUID", name)
    planes = []
    for i in range(frames):
        where = f"{name} frame {i + 1}"
        position = _functional_item(ds, i, "PlanePositionSequence", where)
        orientation = _functional_item(ds, i, "PlaneOrientationSequence", where)
        measures = _functional_item(ds, i, "PixelMeasuresSequence", where)
        if position is None or orientation is None or measures is None:
            raise PipelineInputError(f"{where}: plane position, orientation or pixel measures are missing")
        transform = _functional_item(ds, i, "PixelValueTransformationSequence", where)
        slope = float(transform.get("RescaleSlope", 1.0)) if transform is not None else 1.0
        intercept = float(transform.get("RescaleIntercept", 0.0)) if transform is not None else 0.0
        row, col = _orientation(orientation.get("ImageOrientationPatient"), where)
        spacing = _vector(measures.get("PixelSpacing"), 2, "PixelSpacing", where)
        planes.append(
            _Plane(
                pixels=(stored[i].astype(np.float32) * np.float32(slope) + np.float32(intercept)),
                position=_vector(position.get("ImagePositionPatient"), 3, "ImagePositionPatient", where),
                row_direction=row,
                column_direction=col,
                spacing=(float(spacing[0]), float(spacing[1])),
                reference=ImageReference(sop_class, sop_instance, frame_number=i + 1),
            )
        )
    return planes


def load_ct_series(paths: Sequence[str | Path]) -> CtVolume:
    """Read a CT series (classic single-frame files and/or enhanced multi-frame files) into a volume.

    Raises ``PipelineInputError`` with the reason when the files are not one regular CT volume.
    """
    if not paths:
        raise PipelineInputError("the series has no images")
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
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            raise PipelineInputError(f"{name}: colour CT images cannot be analysed")
        series_uids.add(_required_uid(ds, "SeriesInstanceUID", name))
        frame_uids.add(str(ds.get("FrameOfReferenceUID", "") or ""))
        if "PerFrameFunctionalGroupsSequence" in ds:
            planes.extend(_enhanced_planes(ds, name))
        else:
            planes.append(_classic_plane(ds, name))
    if len(series_uids) != 1:
        raise PipelineInputError(f"the images belong to {len(series_uids)} different series")
    if len(frame_uids) != 1:
        raise PipelineInputError("the images do not share one Frame of Reference UID")
    return _assemble(planes, series_uids.pop(), frame_uids.pop())


def _assemble(planes: list[_Plane], series_uid: str, frame_uid: str) -> CtVolume:
    if len(planes) < 2:
        raise PipelineInputError("a CT volume needs at least two slices; this series has one")
    first = planes[0]
    shape = first.pixels.shape
    for plane in planes[1:]:
        if plane.pixels.shape != shape:
            raise PipelineInputError(f"slices have different sizes ({shape} and {plane.pixels.shape})")
        if not (
            np.allclose(plane.row_direction, first.row_direction, atol=1e-4)
            and np.allclose(plane.column_direction, first.column_direction, atol=1e-4)
        ):
            raise PipelineInputError("slices have different orientations (a localizer or a mixed series?)")
        if not np.allclose(plane.spacing, first.spacing, rtol=1e-4):
            raise PipelineInputError("slices have different pixel spacings")
    normal = np.cross(first.row_direction, first.column_direction)
    planes = sorted(planes, key=lambda p: float(p.position @ normal))
    positions = np.stack([p.position for p in planes])
    along = positions @ normal
    steps = np.diff(along)
    if np.any(steps <= 1e-3):
        raise PipelineInputError(
            "two images lie at the same slice position (duplicate images or two acquisitions in one series)"
        )
    median = float(np.median(steps))
    worst = float(np.max(np.abs(steps - median)))
    if worst > SLICE_STEP_TOLERANCE * median:
        raise PipelineInputError(
            f"slice spacing is irregular: steps range from {steps.min():.3f} to {steps.max():.3f} mm "
            "(a missing slice, or variable-thickness reconstruction); resend the complete series or a "
            "reconstruction with even spacing"
        )
    deltas = np.diff(positions, axis=0)
    in_plane = deltas - np.outer(steps, normal)
    drift = float(np.max(np.linalg.norm(in_plane, axis=1)))
    if drift > SHEAR_TOLERANCE_MM:
        angle = math.degrees(math.atan2(drift, median))
        raise PipelineInputError(
            f"slices are sheared against their normal by {angle:.1f}° (gantry tilt); send a reconstruction "
            "without tilt or one resampled to an orthogonal grid"
        )
    row_spacing, column_spacing = first.spacing
    affine = np.eye(4)
    affine[:3, 0] = first.row_direction * column_spacing
    affine[:3, 1] = first.column_direction * row_spacing
    affine[:3, 2] = (positions[-1] - positions[0]) / (len(planes) - 1)
    affine[:3, 3] = positions[0]
    voxels = np.stack([p.pixels for p in planes]).astype(np.float32, copy=False)
    return CtVolume(
        voxels=voxels,
        affine_lps=affine,
        source_images=tuple(p.reference for p in planes),
        series_instance_uid=series_uid,
        frame_of_reference_uid=frame_uid,
    )


def _modality_range(ds: Dataset) -> tuple[float, float]:
    """The range of the modality LUT's output over all storable values."""
    if "ModalityLUTSequence" in ds:
        bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 1:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    else:
        lo, hi = 0.0, float(2**bits - 1)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    a, b = lo * slope + intercept, hi * slope + intercept
    return (min(a, b), max(a, b))


def _voi_range(ds: Dataset, modality_range: tuple[float, float]) -> tuple[float, float] | None:
    """The output range of the image's VOI LUT, as pydicom's apply_voi_lut produces it; None if none."""
    if "VOILUTSequence" in ds:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        # pydicom's apply_windowing maps the window onto the range of the modality output.
        return modality_range
    return None


def _view_position(ds: Dataset) -> str:
    view = str(ds.get("ViewPosition", "") or "").strip().upper()
    if view:
        return view
    for item in ds.get("ViewCodeSequence", []):
        meaning = str(item.get("CodeMeaning", "")).lower()
        if "lateral" in meaning:
            return "LATERAL"
        if "postero-anterior" in meaning or "posteroanterior" in meaning:
            return "PA"
        if "antero-posterior" in meaning or "anteroposterior" in meaning:
            return "AP"
    return ""


def load_radiograph(path: str | Path) -> Radiograph:
    """Read one projection radiograph (CR, DX, or a Secondary Capture of one) as a float image."""
    name = Path(path).name
    ds = read_dataset(path)
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise PipelineInputError(
            f"{name}: photometric interpretation {photometric or 'missing'} is not greyscale"
        )
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise PipelineInputError(f"{name}: a radiograph must have a single frame")
    stored = _pixels(ds, name)
    modality_range = _modality_range(ds)
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    voi_range = _voi_range(ds, modality_range)
    if voi_range is not None:
        values = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
        lo, hi = voi_range
    else:
        lo, hi = modality_range
    values = np.clip(values, lo, hi)
    if photometric == "MONOCHROME1":
        values = lo + hi - values
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    pixel_spacing = (float(spacing[0]), float(spacing[1])) if spacing else None
    return Radiograph(
        pixels=values.astype(np.float32),
        value_range=(lo, hi),
        pixel_spacing_mm=pixel_spacing,
        view_position=_view_position(ds),
        modality=str(ds.get("Modality", "")),
        source=ImageReference(
            _required_uid(ds, "SOPClassUID", name), _required_uid(ds, "SOPInstanceUID", name)
        ),
    )
