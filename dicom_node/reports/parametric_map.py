"""DICOM Parametric Maps of the class activation maps of positive radiograph findings.

One single-frame Parametric Map per finding that carries an ``activation`` (``pipelines.cam``), all in
one series, on the radiograph's pixel grid pixel for pixel. The value is the CAM itself (the share of
the label's logit each place contributes, unitless; its spatial mean plus the classifier's bias is the
logit), stored as 16-bit unsigned integers over the map's range with a Real World Value Mapping
(slope, intercept) back to it — a step of (max − min)/65535 — so that the map can be compressed
losslessly (JPEG 2000 lossless: about 130 kB instead of 4 MB of floats for a 1024 × 1024 radiograph).
The mapping is labelled with the finding (LUT Label: the finding, cut to 16 characters; LUT
Explanation: "CAM <finding> <score>"), and the window spans the whole range.

The Parametric Map IOD requires a Frame of Reference and plane position and orientation; a projection
radiograph has neither (and highdicom 0.28 cannot build a map of an image without one). So each map
gets a Frame of Reference of its own (a derived UID, no Position Reference Indicator), its plane at the
origin with the identity orientation and the radiograph's pixel spacing (Pixel Spacing, else Imager
Pixel Spacing, else 1 mm): it says nothing about the patient. What ties the map to the radiograph is
its Derivation Image Sequence (the radiograph, Spatial Locations Preserved YES) on the same grid.

Every frame states its anatomy (Frame Anatomy: Chest, Frame Laterality B, both sides on a frontal
radiograph), which also answers General Series Laterality's condition (a paired body part without an
image or frame laterality) that dciodvfy checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from copy import deepcopy

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import JPEG2000Lossless

from pipelines.findings import ClassificationFinding, ClassificationResult

from . import codes as c
from .naming import default_pipeline, marked, series_description
from .sources import SourceIndex, copy_study_attributes
from .uids import ResultBasis, ResultKind, derive_uid, result_identity, settle

LUT_LABEL_MAX = 16  # SH
LEVELS = 65535  # the largest stored value (16 bits)
CHEST = hd.sr.CodedConcept.from_code(codes.SCT.Chest)  # SCT 816094009


def _frame_anatomy() -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.AnatomicRegionSequence = [CHEST]
    item.FrameLaterality = "B"
    return item


def _with_own_frame_of_reference(image: pydicom.Dataset, uid: str) -> pydicom.Dataset:
    """The radiograph's attributes (no pixels) with the plane geometry the Parametric Map IOD needs."""
    view = pydicom.Dataset()
    for element in image:
        if element.keyword not in ("PixelData", "FrameOfReferenceUID"):
            view.add(deepcopy(element))
    spacing = image.get("PixelSpacing") or image.get("ImagerPixelSpacing") or [1.0, 1.0]
    view.FrameOfReferenceUID = uid
    view.ImagePositionPatient = [0.0, 0.0, 0.0]
    view.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    view.PixelSpacing = [float(v) for v in spacing]
    view.SliceThickness = 1.0
    return view


def quantize(activation: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.uint16], float, float]:
    """Stored values 0..65535 over the map's range, and the (slope, intercept) that map them back."""
    lo, hi = float(activation.min()), float(activation.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("The activation map holds values that are not finite.")
    slope = (hi - lo) / LEVELS if hi > lo else 1.0
    stored = np.rint((activation.astype(np.float64) - lo) / slope).clip(0, LEVELS).astype(np.uint16)
    return stored, slope, lo


def _mapping(finding: ClassificationFinding, slope: float, intercept: float) -> hd.pm.RealWorldValueMapping:
    return hd.pm.RealWorldValueMapping(
        lut_label=finding.label[:LUT_LABEL_MAX],
        lut_explanation=f"CAM {finding.label} {finding.score:.2f}"[:64],
        unit=c.NO_UNITS,
        value_range=(0, LEVELS),
        slope=slope,
        intercept=intercept,
    )


def write_parametric_maps(
    result: ClassificationResult,
    sources: Sequence[pydicom.Dataset],
    *,
    pipeline: str | None = None,
    basis: ResultBasis | None = None,
) -> list[hd.pm.ParametricMap]:
    """One Parametric Map per finding with an activation map; none when no finding has one."""
    findings = [f for f in result.findings if f.activation is not None]
    if not findings:
        return []
    pipeline = pipeline or default_pipeline(result)
    index = SourceIndex(sources)
    basis = basis or ResultBasis.of_sources(sources)
    image = index.get(result.source)
    identity = result_identity(basis, pipeline, result.model, ResultKind.PARAMETRIC_MAP)
    frame_of_reference = derive_uid(identity.series_instance_uid, "frame-of-reference")
    source = _with_own_frame_of_reference(image, frame_of_reference)
    maps = []
    for number, finding in enumerate(findings, start=1):
        activation = finding.activation
        assert activation is not None  # selected above
        if activation.shape != (int(image.Rows), int(image.Columns)):
            raise ValueError(
                f'The activation map of "{finding.label}" is {activation.shape[0]}x{activation.shape[1]}, '
                f"the radiograph {image.Rows}x{image.Columns}."
            )
        stored, slope, intercept = quantize(activation)
        pm = hd.pm.ParametricMap(
            source_images=[source],
            pixel_array=stored,
            series_instance_uid=identity.series_instance_uid,
            series_number=identity.series_number,
            sop_instance_uid=derive_uid(identity.sop_instance_uid, finding.label),
            instance_number=number,
            manufacturer=result.model.manufacturer,
            manufacturer_model_name=result.model.name[:64],
            software_versions=result.model.version[:64],
            device_serial_number=(result.model.weights_sha256 or "unknown")[:64],
            contains_recognizable_visual_features=False,
            real_world_value_mappings=[_mapping(finding, slope, intercept)],
            voi_lut_transformations=[
                hd.VOILUTTransformation(window_center=(LEVELS + 1) / 2, window_width=LEVELS + 1)
            ],
            transfer_syntax_uid=JPEG2000Lossless,
            content_label="CAM",
            content_description=marked(result.model, f"Class activation map: {finding.label}"),
            series_description=series_description(pipeline, result.model, "CAM"),
        )
        pm.SharedFunctionalGroupsSequence[0].FrameAnatomySequence = [_frame_anatomy()]
        copy_study_attributes(pm, image)
        settle(pm, basis)
        maps.append(pm)
    return maps
