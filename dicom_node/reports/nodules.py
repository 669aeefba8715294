"""What a nodule result puts in the SR and the SEG beyond its planar group (the layout in sr.py).

Per nodule, in the TID 1410 planar group on the plane of the longest diameter: the long-axis and
short-axis diameters (SCT 103339001, 103340004), their mean (SCT 81827009 Diameter, derivation SCT
373098007 Mean) and the volume, each with its Measurement Method (segmentation, or the box where
segmentation failed; docs/codes.md), and the detector's Certainty of Finding. Each diameter is INFERRED
FROM its two end points (a 2-point SCOORD POLYLINE on that image), and the certainty INFERRED FROM the
detection box as SCOORD3D: its six faces, each a closed POLYGON in patient coordinates. A segmented
nodule's group carries its SEG segment's Tracking Identifier and UID (``segment_tracking``). There is
no separate volumetric group: OHIF blanks an SR that has a group without an image region.

The SEG: one segment per segmented nodule, "Nodule <n>" (n its number in the SR), Segmented Property
Category Morphologically Abnormal Structure, Type Nodule, Anatomic Region Lung; where two masks
overlap, the voxel stays with the nodule of higher confidence (the earlier one).
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom

from pipelines.findings import (
    Nodule,
    NoduleDetectionResult,
    NoduleMeasurement,
    SegmentationResult,
    SegmentLabel,
)

from . import codes as c
from .sources import SliceGeometry, SourceIndex


def nodule_label_name(number: int) -> str:
    """The SEG segment label of the ``number``-th nodule (1-based, as in the SR)."""
    return f"Nodule {number}"


def nodule_segmentation(result: NoduleDetectionResult, index: SourceIndex) -> SegmentationResult | None:
    """The nodules' masks as a label map on the source images (value n: the n-th nodule), or ``None``
    if no nodule was segmented."""
    segmented = [(n, nodule) for n, nodule in enumerate(result.nodules, start=1) if nodule.mask is not None]
    if not segmented:
        return None
    first = index.get(result.source_images[0])
    shape = (len(result.source_images), int(first.Rows), int(first.Columns))
    label_map = np.zeros(shape, dtype=np.uint16)
    labels = []
    for number, nodule in segmented:
        assert nodule.mask is not None and nodule.mask_offset is not None
        k, r, col = nodule.mask_offset
        depth, rows, cols = nodule.mask.shape
        if k < 0 or r < 0 or col < 0 or k + depth > shape[0] or r + rows > shape[1] or col + cols > shape[2]:
            raise ValueError(f"The mask of nodule {number} lies outside the source images {shape}.")
        window = label_map[k : k + depth, r : r + rows, col : col + cols]
        window[nodule.mask & (window == 0)] = number
        labels.append(
            SegmentLabel(value=number, name=nodule_label_name(number), volume_mm3=nodule.volume_mm3)
        )
    present = {int(v) for v in np.unique(label_map)}
    return SegmentationResult(
        model=result.model,
        series_instance_uid=result.series_instance_uid,
        frame_of_reference_uid=result.frame_of_reference_uid,
        source_images=result.source_images,
        label_map=label_map,
        labels=tuple(label for label in labels if label.value in present),
    )


def method_code(nodule: Nodule) -> hd.sr.CodedConcept:
    """The Measurement Method of a nodule's diameters and volume."""
    if nodule.measurement == NoduleMeasurement.SEGMENTATION:
        return c.NODULE_SEGMENTATION_METHOD
    return c.NODULE_BOX_METHOD


def box_faces(nodule: Nodule) -> list[npt.NDArray[np.float64]]:
    """The detection box's six faces, each a closed planar POLYGON (5 points, first = last), LPS mm."""
    lo, hi = np.array(nodule.box_min), np.array(nodule.box_max)
    faces = []
    for axis in range(3):
        u, v = [a for a in range(3) if a != axis]
        for side in (lo[axis], hi[axis]):
            square = []
            for du, dv in ((0, 0), (1, 0), (1, 1), (0, 1), (0, 0)):
                point = lo.copy()
                point[axis] = side
                point[u] = hi[u] if du else lo[u]
                point[v] = hi[v] if dv else lo[v]
                square.append(point)
            faces.append(np.array(square))
    return faces


def _segment(
    image: pydicom.Dataset, ends: tuple[tuple[float, float, float], tuple[float, float, float]] | None
) -> list[hd.sr.CoordinatesForMeasurement] | None:
    """A diameter's two end points as a SCOORD POLYLINE on ``image`` (SCOORD puts pixel centres at .5)."""
    if ends is None:
        return None
    geometry = SliceGeometry(image)
    points = np.array([geometry.to_pixel(p) for p in ends]) + 0.5
    return [
        hd.sr.CoordinatesForMeasurement(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=points,
            source_image=hd.sr.SourceImageForRegion.from_source_image(image),
        )
    ]


def diameter_measurements(nodule: Nodule) -> list[hd.sr.Measurement]:
    """Long axis, short axis, mean diameter and certainty of finding, for the planar group (the short
    axis and the mean only where the nodule has them: nothing is made up for a result without)."""
    method = method_code(nodule)
    out = [
        hd.sr.Measurement(
            name=c.LONG_AXIS, value=float(nodule.long_axis_mm), unit=c.MILLIMETER, method=method
        )
    ]
    if nodule.short_axis_mm is not None:
        out.append(
            hd.sr.Measurement(
                name=c.SHORT_AXIS, value=float(nodule.short_axis_mm), unit=c.MILLIMETER, method=method
            )
        )
    if nodule.mean_diameter_mm is not None:
        out.append(
            hd.sr.Measurement(
                name=c.DIAMETER,
                value=float(nodule.mean_diameter_mm),
                unit=c.MILLIMETER,
                method=method,
                derivation=c.MEAN,
            )
        )
    out.append(
        hd.sr.Measurement(name=c.CERTAINTY_OF_FINDING, value=float(nodule.confidence), unit=c.NO_UNITS)
    )
    return out


def measurement_coordinates(
    nodule: Nodule, image: pydicom.Dataset, frame_of_reference_uid: str
) -> list[tuple[hd.sr.CodedConcept, list[pydicom.Dataset]]]:
    """What each NUM of the planar group is INFERRED FROM: each diameter its end points on ``image``,
    the certainty the detection box (SCOORD3D, its six faces)."""
    box: list[pydicom.Dataset] = [
        hd.sr.CoordinatesForMeasurement3D(
            graphic_type=hd.sr.GraphicTypeValues3D.POLYGON,
            graphic_data=face,
            frame_of_reference_uid=frame_of_reference_uid,
        )
        for face in box_faces(nodule)
    ]
    out = [(c.CERTAINTY_OF_FINDING, box)]
    for name, ends in (
        (c.LONG_AXIS, nodule.long_axis_endpoints),
        (c.SHORT_AXIS, nodule.short_axis_endpoints),
    ):
        segment = _segment(image, ends)
        if segment is not None:
            out.append((name, list(segment)))
    return out


def attach_inferred_from(
    group: hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations,
    coordinates: list[tuple[hd.sr.CodedConcept, list[pydicom.Dataset]]],
) -> None:
    """Put each list of SCOORD/SCOORD3D items under the group's NUM of that concept (INFERRED FROM).

    TID 300 allows a NUM to be INFERRED FROM coordinates (TID 320); highdicom refuses it inside TID 1410
    groups, so it is added after the group is built, as the OHIF layout does with the region.
    """
    items = {
        (
            str(i.ConceptNameCodeSequence[0].CodeValue),
            str(i.ConceptNameCodeSequence[0].CodingSchemeDesignator),
        ): i
        for i in group[0].ContentSequence
        if i.ValueType == "NUM"
    }
    for name, scoords in coordinates:
        item = items.get((name.value, name.scheme_designator))
        if item is None:
            raise ValueError(f"The group has no {name.meaning} measurement to attach coordinates to.")
        if "ContentSequence" in item:
            item.ContentSequence.extend(scoords)
        else:
            item.ContentSequence = scoords


def volume_measurement(nodule: Nodule) -> hd.sr.Measurement:
    return hd.sr.Measurement(
        name=c.VOLUME, value=float(nodule.volume_mm3), unit=c.CUBIC_MILLIMETER, method=method_code(nodule)
    )


def segment_tracking(
    segmentation: hd.seg.Segmentation | None, number: int
) -> hd.sr.TrackingIdentifier | None:
    """The Tracking Identifier and UID of the ``number``-th nodule's SEG segment (``None`` without one):
    the SR group of that nodule carries them, so that group and segment are one tracked object."""
    if segmentation is None:
        return None
    for description in segmentation.SegmentSequence:
        if str(description.SegmentLabel) == nodule_label_name(number):
            return hd.sr.TrackingIdentifier(
                identifier=str(description.TrackingID), uid=str(description.TrackingUID)
            )
    return None
