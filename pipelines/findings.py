"""Typed, DICOM-free results of the analysis pipelines.

These types are the contract between ``pipelines/`` (which produce them) and ``dicom_node/reports/``
(which encodes them as DICOM SR and SEG). They carry UIDs as plain strings so that a result can point at
the source images it was computed from, but nothing in here imports pydicom or knows about DICOM
encoding. Coordinates are patient coordinates in millimetres in the DICOM patient system (LPS: +x to
the patient's left, +y posterior, +z head), the same system as ImagePositionPatient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import numpy.typing as npt

Point3D = tuple[float, float, float]
Polygon = tuple[tuple[float, float], ...]
"""A closed outline on an image: (column, row) points, (0, 0) the top-left corner of the top-left pixel
(DICOM SCOORD image coordinates), the first point repeated last."""


@dataclass(frozen=True)
class ModelInfo:
    """Which model produced a result: shown as the algorithm in every SR and SEG.

    ``untrained`` is set for scaffold weights (``models scaffold``): every object written from such a
    result says so where a reader looks first (Series Description, SR text, SEG segment descriptions).
    """

    name: str
    version: str
    manufacturer: str = "dicom-node"
    weights_sha256: str = ""
    untrained: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError('Argument "name" must not be empty.')
        if not self.version:
            raise ValueError('Argument "version" must not be empty.')


@dataclass(frozen=True)
class ImageReference:
    """One source image (or one frame of a multi-frame image)."""

    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None = None


class ScoreKind(StrEnum):
    """What a classifier's score in [0, 1] is, so that it is coded for what it is.

    ``PROBABILITY``: an estimate of the probability that the finding is present.
    ``CALIBRATED``: a monotone rescaling of the model's output that puts its operating threshold at a
    fixed point (TorchXRayVision's ``op_norm`` puts it at 0.5); above the threshold means "present at
    the model's operating point", and the value is no probability.
    """

    PROBABILITY = "probability"
    CALIBRATED = "calibrated"


@dataclass(frozen=True)
class ClassificationFinding:
    """One label of an image-level multi-label classifier: its score and the threshold it is read at.

    For a positive finding the pipeline may add where it comes from: ``activation``, the class
    activation map on the source image's pixel grid (rows, columns; float32, unitless), and ``region``,
    the closed outline of the area that drives it (``pipelines.cam``). Both stay None otherwise.
    """

    label: str
    score: float
    threshold: float
    region: Polygon | None = None
    activation: npt.NDArray[np.float32] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f'Argument "score" must be in [0, 1], got {self.score}.')
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f'Argument "threshold" must be in [0, 1], got {self.threshold}.')
        if self.region is not None and (len(self.region) < 4 or self.region[0] != self.region[-1]):
            raise ValueError('Argument "region" must be a closed polygon (at least 4 points, first = last).')
        if self.activation is not None and self.activation.ndim != 2:
            raise ValueError('Argument "activation" must be a 2D map (rows, columns).')

    @property
    def positive(self) -> bool:
        """Whether the score reaches the model's operating threshold."""
        return self.score >= self.threshold


@dataclass(frozen=True)
class ClassificationResult:
    """Image-level findings on one radiograph; ``score_kind`` says what every finding's score is."""

    model: ModelInfo
    source: ImageReference
    findings: tuple[ClassificationFinding, ...]
    score_kind: ScoreKind

    def __post_init__(self) -> None:
        object.__setattr__(self, "score_kind", ScoreKind(self.score_kind))


class NoduleMeasurement(StrEnum):
    """Where a nodule's diameters and volume come from."""

    SEGMENTATION = "segmentation"
    BOX = "box"


@dataclass(frozen=True)
class Nodule:
    """One detected lung nodule, in patient coordinates (mm).

    ``box_min``/``box_max`` are opposite corners of the axis-aligned box in patient coordinates;
    ``source_slice`` is the source image whose plane contains (or is nearest to) the centre.
    ``center_pixel`` is (column, row) of the centre on that slice, in pixels (0-based, pixel centres
    at integers), so that writers can draw it as an image region.

    Measurements (``pipelines.nodule_measure``): ``long_axis_mm`` is the longest in-plane diameter of
    the nodule's segmentation, on ``measurement_slice`` (the plane where it is longest),
    ``short_axis_mm`` the longest diameter perpendicular to it on that plane, ``mean_diameter_mm``
    their mean, ``volume_mm3`` voxel count × voxel volume; ``*_endpoints`` are the two ends of each
    diameter in patient coordinates, on that plane. ``measurement`` says where they come from: the
    segmentation, or (``BOX``, when it failed, ``measurement_note`` says why) the detection box's
    in-plane sides and the ellipsoid inscribed in the box. ``mask`` is the segmentation as a boolean
    (plane, row, column) array whose voxel [0, 0, 0] is source voxel ``mask_offset`` (planes in the
    order of the result's ``source_images``).
    """

    center: Point3D
    box_min: Point3D
    box_max: Point3D
    long_axis_mm: float
    volume_mm3: float
    confidence: float
    source_slice: ImageReference
    center_pixel: tuple[float, float]
    short_axis_mm: float | None = None
    mean_diameter_mm: float | None = None
    measurement: NoduleMeasurement = NoduleMeasurement.BOX
    measurement_note: str = ""
    measurement_slice: ImageReference | None = None
    long_axis_endpoints: tuple[Point3D, Point3D] | None = None
    short_axis_endpoints: tuple[Point3D, Point3D] | None = None
    mask: npt.NDArray[np.bool_] | None = field(default=None, compare=False, repr=False)
    mask_offset: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f'Argument "confidence" must be in [0, 1], got {self.confidence}.')
        if self.long_axis_mm < 0 or self.volume_mm3 < 0:
            raise ValueError('Arguments "long_axis_mm" and "volume_mm3" must not be negative.')
        object.__setattr__(self, "measurement", NoduleMeasurement(self.measurement))
        if self.short_axis_mm is not None and not 0 <= self.short_axis_mm <= self.long_axis_mm + 1e-6:
            raise ValueError('Argument "short_axis_mm" must be in [0, long_axis_mm].')
        if (self.mask is None) != (self.mask_offset is None):
            raise ValueError('Arguments "mask" and "mask_offset" must be given together.')
        if self.mask is not None and self.mask.ndim != 3:
            raise ValueError('Argument "mask" must have three dimensions (planes, rows, columns).')

    @property
    def measurement_image(self) -> ImageReference:
        """The image the diameters were measured on (the centre slice when none is named)."""
        return self.measurement_slice or self.source_slice


@dataclass(frozen=True)
class NoduleDetectionResult:
    """All nodules found in one CT series (possibly none)."""

    model: ModelInfo
    series_instance_uid: str
    frame_of_reference_uid: str
    source_images: tuple[ImageReference, ...]
    nodules: tuple[Nodule, ...]


@dataclass(frozen=True)
class SegmentLabel:
    """One label of a label map: its value, name and what was measured on it."""

    value: int
    name: str
    volume_mm3: float
    mean_attenuation_hu: float | None = None


@dataclass(frozen=True)
class SegmentationResult:
    """A label map on the source grid.

    ``label_map`` has shape (len(source_images), rows, columns); plane ``i`` lies on
    ``source_images[i]``. Value 0 is background; every other value present is described in ``labels``.
    """

    model: ModelInfo
    series_instance_uid: str
    frame_of_reference_uid: str
    source_images: tuple[ImageReference, ...]
    label_map: npt.NDArray[np.uint16]
    labels: tuple[SegmentLabel, ...]
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.label_map.ndim != 3:
            raise ValueError('Argument "label_map" must have three dimensions (slices, rows, columns).')
        if self.label_map.shape[0] != len(self.source_images):
            raise ValueError(
                f'Argument "label_map" has {self.label_map.shape[0]} planes but '
                f"{len(self.source_images)} source images were given."
            )
        values = [label.value for label in self.labels]
        if len(set(values)) != len(values) or any(v <= 0 for v in values):
            raise ValueError('Argument "labels" must have distinct positive values.')


Findings = ClassificationResult | NoduleDetectionResult | SegmentationResult
