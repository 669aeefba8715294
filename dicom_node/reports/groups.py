"""Measurement groups of our TID 1500 SRs, one builder per result type (the layout in sr.py).

Each builder returns the groups, the document-level qualitative evaluations (TID 1500 row 13: image-level
findings and explicit negatives, outside any group because OHIF blanks an SR with a group it cannot
draw) and the evidence (source instances, and the SEG a volumetric group references). Every group has
an image region. Scores are coded for what they are (``codes.score_code``), never as probabilities
when they are calibrated scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from skimage import measure

from pipelines.findings import (
    ClassificationResult,
    ModelInfo,
    NoduleDetectionResult,
    SegmentationResult,
)

from . import codes as c
from . import nodules as nm
from .air import absent, evaluation, score_item, tracking_identifier
from .frames import plane_geometry, region_source, unique_instances
from .regions import region_group
from .seg import label_value_from_tracking_id, present_labels
from .sources import SourceIndex

Group = (
    hd.sr.MeasurementsAndQualitativeEvaluations
    | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
)


@dataclass
class Content:
    """What one result puts in its SR: groups, document-level evaluations, evidence."""

    groups: list[Group] = field(default_factory=list)
    evaluations: list[hd.sr.CodeContentItem] = field(default_factory=list)
    evidence: list[pydicom.Dataset] = field(default_factory=list)
    # What the summary group says when there is no other group: (concept, count, unit), the count never
    # 0 (OHIF prints a 0 as nothing), e.g. ("No nodule detected; images analysed", 20, {images}).
    count: tuple[hd.sr.CodedConcept, int, hd.sr.CodedConcept] | None = None


def _rectangle(cx: float, cy: float, half_w: float, half_h: float) -> npt.NDArray[np.float64]:
    """A closed 5-point POLYLINE around (cx, cy), in SCOORD image coordinates."""
    return np.array(
        [
            [cx - half_w, cy - half_h],
            [cx + half_w, cy - half_h],
            [cx + half_w, cy + half_h],
            [cx - half_w, cy + half_h],
            [cx - half_w, cy - half_h],
        ]
    )


def _region(
    graphic: npt.NDArray[np.float64], image: pydicom.Dataset, frame: int | None = None
) -> hd.sr.ImageRegion:
    """A closed POLYLINE on ``image`` (on its frame ``frame`` for a multi-frame image)."""
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=graphic,
        source_image=region_source(image, frame),
    )


def _algorithm(model: ModelInfo) -> hd.sr.AlgorithmIdentification:
    # Name and version only: TID 4019 as PixelMed validates it has no Algorithm Manufacturer row, and the
    # manufacturer is in the Contributing Equipment Sequence (air.algorithm_equipment).
    return hd.sr.AlgorithmIdentification(name=model.name, version=model.version)


def _unitless(name: hd.sr.CodedConcept, value: float) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=float(value), unit=c.NO_UNITS)


def classification_content(result: ClassificationResult, index: SourceIndex, sop_uid: str) -> Content:
    """Every finding as "<finding>: Present/Absent", inferred from its score and threshold (row 13).

    No group: an image-level finding has no region to draw (a CAM polygon group may add one).
    """
    image = index.get(result.source)
    score = c.score_code(result.score_kind)
    groups: list[Group] = []
    evaluations = []
    for finding in result.findings:
        if finding.positive and finding.region is not None:
            groups.append(region_group(result, finding, image, sop_uid))  # its CAM outline (regions.py)
            continue
        evaluations.append(
            evaluation(
                c.classification_code(finding.label),
                finding.positive,
                [score_item(score, finding.score), score_item(c.THRESHOLD_VALUE, finding.threshold)],
            )
        )
    positives = sum(1 for finding in result.findings if finding.positive)
    count = (
        (c.FINDINGS_ABOVE_THRESHOLD, positives, c.FINDINGS_UNIT)
        if positives
        else (c.NO_FINDING_ABOVE_THRESHOLD, len(result.findings), c.FINDINGS_UNIT)
    )
    return Content(groups=groups, evaluations=evaluations, evidence=[image], count=count)


def nodule_content(
    result: NoduleDetectionResult,
    index: SourceIndex,
    sop_uid: str,
    segmentation: hd.seg.Segmentation | None = None,
) -> Content:
    """Per nodule one planar group on the plane of its long axis: its box there as the region, long and
    short axis, mean diameter, volume and certainty, each NUM INFERRED FROM what it was measured on (the
    diameters' end points, the 3D box as SCOORD3D faces; ``reports/nodules.py``). One group, not a
    planar and a volumetric one: OHIF blanks an SR whose group has no image region. The nodule masks are
    in the SEG (``segmentation``, in the evidence)."""
    out = Content()
    evidence = {ref.sop_instance_uid: index.get(ref) for ref in result.source_images}
    if segmentation is not None:
        evidence[str(segmentation.SOPInstanceUID)] = segmentation
    for number, nodule in enumerate(result.nodules, start=1):
        image = index.get(nodule.measurement_image)
        evidence[str(image.SOPInstanceUID)] = image
        geometry = plane_geometry(image, nodule.measurement_image.frame_number)
        size = np.subtract(nodule.box_max, nodule.box_min)
        width, height = geometry.extent_in_pixels(size)
        column, row = geometry.to_pixel(nodule.center)
        # SCOORD image coordinates put the centre of the top-left pixel at (0.5, 0.5); ours at (0, 0).
        rect = _rectangle(column + 0.5, row + 0.5, max(width, 1.0) / 2, max(height, 1.0) / 2)
        measurements = nm.diameter_measurements(nodule)
        measurements.insert(1, nm.volume_measurement(nodule))
        segment = nm.segment_tracking(segmentation, number) if nodule.mask is not None else None
        group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            # A segmented nodule shares its SEG segment's Tracking Identifier and UID (one object).
            tracking_identifier=segment or tracking_identifier(sop_uid, f"nodule {number}"),
            referenced_region=_region(rect, image, nodule.measurement_image.frame_number),
            finding_type=c.NODULE,
            finding_sites=[hd.sr.FindingSite(anatomic_location=c.LUNG)],
            algorithm_id=_algorithm(result.model),
            measurements=measurements,
        )
        nm.attach_inferred_from(
            group, nm.measurement_coordinates(nodule, image, result.frame_of_reference_uid)
        )
        out.groups.append(group)
    if not result.nodules:
        out.evaluations.append(absent(c.NODULE))  # "no nodule detected"
    out.evidence = list(evidence.values())
    out.count = (c.NO_NODULE_DETECTED, len(result.source_images), c.IMAGES_UNIT)
    return out


def plane_outlines(mask: npt.NDArray[np.bool_]) -> list[npt.NDArray[np.float64]]:
    """The closed outlines (SCOORD image coordinates) of the regions of a 2D mask, largest first.

    The iso-0.5 contour of the mask (skimage marching squares) runs half a pixel outside the boundary
    pixels' centres, i.e. along their outer edges; the mask is padded so that regions at the border
    close. Holes are outlined too (a viewer draws them as lines); points within 0.25 pixel of a straight
    line are dropped.
    """
    contours = measure.find_contours(np.pad(mask.astype(np.float64), 1), 0.5)  # type: ignore[no-untyped-call]
    if not contours:
        raise ValueError("The mask is empty: it has no outline.")
    out = []
    for contour in sorted(contours, key=len, reverse=True):
        simplified = measure.approximate_polygon(contour, tolerance=0.25)  # type: ignore[no-untyped-call]
        if len(simplified) < 4:  # a region of one or two pixels: keep its diamond as it is
            simplified = contour
        rows, cols = simplified[:, 0] - 1, simplified[:, 1] - 1
        points = np.stack([cols + 0.5, rows + 0.5], axis=1)
        if not np.array_equal(points[0], points[-1]):
            points = np.vstack([points, points[:1]])
        if len(points) >= 4:  # a closed polygon of at least three corners
            out.append(points)
    return out


def central_plane(mask: npt.NDArray[np.bool_]) -> int:
    """The index of the middle plane among those a 3D mask occupies."""
    planes = np.flatnonzero(mask.any(axis=(1, 2)))
    return int(planes[len(planes) // 2])


def segmentation_content(
    result: SegmentationResult,
    index: SourceIndex,
    sop_uid: str,
    segmentation: hd.seg.Segmentation | None,
) -> Content:
    """A TID 1411 group per segment: the SEG segment and the outline on the segment's central slice."""
    planes = [index.get(ref) for ref in result.source_images]
    labels = {label.value: label for label in present_labels(result)}
    out = Content(evidence=unique_instances(planes), count=(c.NOTHING_SEGMENTED, len(planes), c.IMAGES_UNIT))
    if not labels:
        out.evaluations.append(absent(c.VERTEBRA))
        return out
    if segmentation is None:
        raise ValueError("A report of a segmentation needs the SEG it refers to (argument segmentation).")
    out.evidence.append(segmentation)
    for description in segmentation.SegmentSequence:
        if int(description.SegmentNumber) == 0:
            continue  # the background segment of a LABELMAP SEG
        value = label_value_from_tracking_id(str(description.TrackingID))
        label = labels[value]
        mask = result.label_map == value
        structure = hd.sr.CodedConcept.from_dataset(description.SegmentedPropertyTypeCodeSequence[0])
        group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            # The SEG segment's own Tracking Identifier and UID: the group and the segment are one object.
            tracking_identifier=hd.sr.TrackingIdentifier(
                identifier=str(description.TrackingID), uid=str(description.TrackingUID)
            ),
            referenced_regions=outlines(mask, planes, [ref.frame_number for ref in result.source_images]),
            finding_type=structure,
            # The structure itself as the finding site: what OHIF prints under the outline (e.g. "T12
            # vertebra"), which a finding site Spine would not tell apart.
            finding_sites=[hd.sr.FindingSite(anatomic_location=structure)],
            algorithm_id=_algorithm(result.model),
            measurements=_volume_measurements(label.volume_mm3, label.mean_attenuation_hu),
        )
        out.groups.append(group)
    return out


def summary_group(
    count: tuple[hd.sr.CodedConcept, int, hd.sr.CodedConcept],
    image: pydicom.Dataset,
    sop_uid: str,
    model: ModelInfo,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The one group of an SR that has no other: what was found, as a count, at a POINT.

    OHIF 3.13 throws on an SR without any measurement (its SR viewport jumps to the first one), so an
    SR that found nothing still holds one drawable group: TID 1501 on the analysed image, its source a
    POINT in the image's top-left corner (row 10c, not a region: it outlines nothing), labelled with
    the count. The explicit negative is the document-level "<finding>: Absent".
    """
    name, value, unit = count
    frames = int(image.get("NumberOfFrames", 1) or 1)
    frame = (frames + 1) // 2 if "NumberOfFrames" in image else None  # a multi-frame image: its middle frame
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking_identifier(sop_uid, "summary"),
        algorithm_id=_algorithm(model),
        measurements=[hd.sr.Measurement(name=name, value=float(value), unit=unit)],
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(
                referenced_sop_class_uid=str(image.SOPClassUID),
                referenced_sop_instance_uid=str(image.SOPInstanceUID),
                referenced_frame_numbers=None if frame is None else [frame],
            )
        ],
    )
    point = hd.sr.ScoordContentItem(
        name=c.IMAGE_REGION,
        graphic_type=hd.sr.GraphicTypeValues.POINT,
        graphic_data=np.array([[0.05 * int(image.Columns), 0.05 * int(image.Rows)]]),
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    point.ContentSequence = hd.sr.ContentSequence([region_source(image, frame)])
    items = group[0].ContentSequence
    at = next(i for i, item in enumerate(items) if item.ValueType == "IMAGE")
    # The SCOORD, SELECTED FROM the image, is the group's source (row 10c/10d) instead of the IMAGE.
    items.pop(at)
    items.insert(at, point)
    return group


def outlines(
    mask: npt.NDArray[np.bool_], planes: list[pydicom.Dataset], frames: list[int | None]
) -> list[hd.sr.ImageRegion]:
    """The segment's outlines on every plane it occupies, the central plane's first (what OHIF draws).

    TID 1411 defines a volume either by a segment reference or by its planar regions, never both
    (PixelMed: "Conditional content item present when condition not satisfied"); the regions are the
    form every viewer can draw, and the group shares the SEG segment's Tracking UID.
    """
    central = central_plane(mask)
    occupied = [int(k) for k in np.flatnonzero(mask.any(axis=(1, 2))) if k != central]
    return [
        _region(polygon, planes[k], frames[k])
        for k in (central, *occupied)
        for polygon in plane_outlines(mask[k])
    ]


def _volume_measurements(volume_mm3: float, mean_hu: float | None) -> list[hd.sr.Measurement]:
    out = [hd.sr.Measurement(name=c.VOLUME, value=float(volume_mm3), unit=c.CUBIC_MILLIMETER)]
    if mean_hu is not None:
        out.append(hd.sr.Measurement(name=c.MEAN_ATTENUATION, value=float(mean_hu), unit=c.HOUNSFIELD_UNIT))
    return out
