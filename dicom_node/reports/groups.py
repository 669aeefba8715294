"""Measurement groups of our TID 1500 SRs, one builder per result type (the layouts in sr.py).

Each builder returns the groups and the evidence (source instances, and the SEG a volumetric group
references). Scores are coded for what they are (``codes.score_code``), never as probabilities when
they are calibrated scores.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom

from pipelines.findings import (
    ClassificationResult,
    ModelInfo,
    NoduleDetectionResult,
    SegmentationResult,
)

from . import codes as c
from . import nodules as nm
from .profile import ReportProfile
from .seg import label_value_from_tracking_id, present_labels
from .sources import SliceGeometry, SourceIndex
from .uids import derive_uid

Group = (
    hd.sr.MeasurementsAndQualitativeEvaluations
    | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
)

# A whole-image region is drawn this fraction of the image inside the border, so that viewers show it.
WHOLE_IMAGE_INSET = 0.02


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
    graphic: npt.NDArray[np.float64], image: pydicom.Dataset
) -> tuple[hd.sr.ImageRegion, hd.sr.CoordinatesForMeasurement]:
    """The same rectangle as a group-level image region and as the coordinates of a measurement."""
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=graphic,
        source_image=hd.sr.SourceImageForRegion.from_source_image(image),
    )
    coordinates = hd.sr.CoordinatesForMeasurement(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=graphic,
        source_image=hd.sr.SourceImageForRegion.from_source_image(image),
    )
    return region, coordinates


def _algorithm(model: ModelInfo) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=model.name, version=model.version, manufacturer=model.manufacturer
    )


def _tracking(identity_uid: str, identifier: str) -> hd.sr.TrackingIdentifier:
    return hd.sr.TrackingIdentifier(identifier=identifier[:64], uid=derive_uid(identity_uid, identifier))


def _unitless(name: hd.sr.CodedConcept, value: float) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=float(value), unit=c.NO_UNITS)


def _nest_under_first_num(
    group: hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations, coordinates: hd.sr.CoordinatesForMeasurement
) -> None:
    """Repeat the group's region under its first NUM (INFERRED FROM), where OHIF looks for it.

    TID 300 allows a NUM to be INFERRED FROM a SCOORD; highdicom refuses it inside TID 1410 groups, so
    the OHIF layout adds it after the group is built. The group-level region stays the ROI.
    """
    for item in group[0].ContentSequence:
        if item.ValueType == "NUM":
            if "ContentSequence" in item:
                item.ContentSequence.append(coordinates)
            else:
                item.ContentSequence = [coordinates]
            return
    raise ValueError("The group has no NUM to nest its region under.")


def classification_groups(
    result: ClassificationResult, index: SourceIndex, profile: ReportProfile, sop_uid: str
) -> tuple[list[Group], list[pydicom.Dataset]]:
    image = index.get(result.source)
    score = c.score_code(result.score_kind)
    groups: list[Group] = []
    for finding in result.findings:
        code = c.classification_code(finding.label)
        evaluation = hd.sr.QualitativeEvaluation(name=code, value=c.PRESENT if finding.positive else c.ABSENT)
        tracking = _tracking(sop_uid, f"{finding.label}")
        if profile.ohif_compatible:
            rows, cols = int(image.Rows), int(image.Columns)
            rect = _rectangle(
                cols / 2, rows / 2, cols * (0.5 - WHOLE_IMAGE_INSET), rows * (0.5 - WHOLE_IMAGE_INSET)
            )
            region, coords = _region(rect, image)
            group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                referenced_region=region,
                finding_type=code,
                algorithm_id=_algorithm(result.model),
                qualitative_evaluations=[evaluation],
                measurements=[
                    _unitless(score, finding.score),
                    _unitless(c.THRESHOLD_VALUE, finding.threshold),
                ],
            )
            _nest_under_first_num(group, coords)
            groups.append(group)
        else:
            groups.append(
                hd.sr.MeasurementsAndQualitativeEvaluations(
                    tracking_identifier=tracking,
                    finding_type=code,
                    algorithm_id=_algorithm(result.model),
                    qualitative_evaluations=[evaluation],
                    measurements=[
                        _unitless(score, finding.score),
                        _unitless(c.THRESHOLD_VALUE, finding.threshold),
                    ],
                    source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(image)],
                )
            )
    return groups, [image]


def nodule_groups(
    result: NoduleDetectionResult,
    index: SourceIndex,
    profile: ReportProfile,
    sop_uid: str,
    segmentation: hd.seg.Segmentation | None = None,
) -> tuple[list[Group], list[pydicom.Dataset]]:
    """Per nodule a planar group on the plane of its long axis (and, standard layout, a volumetric
    group of its volume on its SEG segment or its box): the content in ``reports/nodules.py``."""
    groups: list[Group] = []
    evidence = {ref.sop_instance_uid: index.get(ref) for ref in result.source_images}
    if segmentation is not None:
        evidence[str(segmentation.SOPInstanceUID)] = segmentation
    for number, nodule in enumerate(result.nodules, start=1):
        image = index.get(nodule.measurement_image)
        evidence[str(image.SOPInstanceUID)] = image
        geometry = SliceGeometry(image)
        size = np.subtract(nodule.box_max, nodule.box_min)
        width, height = geometry.extent_in_pixels(size)
        column, row = geometry.to_pixel(nodule.center)
        # SCOORD image coordinates put the centre of the top-left pixel at (0.5, 0.5); ours at (0, 0).
        rect = _rectangle(column + 0.5, row + 0.5, max(width, 1.0) / 2, max(height, 1.0) / 2)
        region, coords = _region(rect, image)
        measurements = nm.diameter_measurements(nodule)
        if profile.ohif_compatible:
            measurements.insert(1, nm.volume_measurement(nodule))
        tracking = _tracking(sop_uid, f"nodule {number}")
        group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_region=region,
            finding_type=c.NODULE,
            finding_sites=[hd.sr.FindingSite(anatomic_location=c.LUNG)],
            algorithm_id=_algorithm(result.model),
            measurements=measurements,
        )
        if profile.ohif_compatible:
            _nest_under_first_num(group, coords)
        else:
            nm.attach_inferred_from(
                group, nm.measurement_coordinates(nodule, image, result.frame_of_reference_uid)
            )
        groups.append(group)
        if not profile.ohif_compatible:
            groups.append(
                nm.volume_group(nodule, number, result, tracking, _algorithm(result.model), segmentation)
            )
    if not groups:
        images = [index.get(ref) for ref in result.source_images]
        groups.append(_nothing_found_group(result.model, images, c.NODULE, c.LUNG, profile, sop_uid))
    return groups, list(evidence.values())


def _nothing_found_group(
    model: ModelInfo,
    images: list[pydicom.Dataset],
    finding: hd.sr.CodedConcept,
    site: hd.sr.CodedConcept | None,
    profile: ReportProfile,
    sop_uid: str,
) -> hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """An "<finding>: Absent" group for a series analysed with no result (TID 1500 needs one group).

    Standard layout: an image-level group on the series' images. OHIF layout: the same evaluation on
    the middle slice's whole image, because OHIF cannot draw a group without an image region.
    """
    evaluation = hd.sr.QualitativeEvaluation(name=finding, value=c.ABSENT)
    tracking = _tracking(sop_uid, f"no {finding.meaning}".lower())
    sites = [hd.sr.FindingSite(anatomic_location=site)] if site is not None else None
    if profile.ohif_compatible:
        image = images[len(images) // 2]
        rows, cols = int(image.Rows), int(image.Columns)
        rect = _rectangle(
            cols / 2, rows / 2, cols * (0.5 - WHOLE_IMAGE_INSET), rows * (0.5 - WHOLE_IMAGE_INSET)
        )
        region, _ = _region(rect, image)
        return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_region=region,
            finding_type=finding,
            finding_sites=sites,
            algorithm_id=_algorithm(model),
            qualitative_evaluations=[evaluation],
        )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_type=finding,
        finding_sites=sites,
        algorithm_id=_algorithm(model),
        qualitative_evaluations=[evaluation],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in images],
    )


def segmentation_groups(
    result: SegmentationResult,
    index: SourceIndex,
    profile: ReportProfile,
    sop_uid: str,
    segmentation: hd.seg.Segmentation | None,
) -> tuple[list[Group], list[pydicom.Dataset]]:
    planes = [index.get(ref) for ref in result.source_images]
    labels = {label.value: label for label in present_labels(result)}
    groups: list[Group] = []
    evidence: list[pydicom.Dataset] = list(planes)
    if profile.ohif_compatible:
        # A planar ROI per label on the slice where it is largest: its bounding box there, carrying the
        # volumetric measurements. OHIF can draw it; a segment reference alone it cannot.
        for index_, label in enumerate(labels.values()):
            mask = result.label_map == label.value
            k = int(np.argmax(mask.sum(axis=(1, 2))))
            rows, cols = np.nonzero(mask[k])
            rect = _rectangle(
                (cols.min() + cols.max() + 1) / 2,
                (rows.min() + rows.max() + 1) / 2,
                (cols.max() - cols.min() + 1) / 2,
                (rows.max() - rows.min() + 1) / 2,
            )
            region, coords = _region(rect, planes[k])
            coding = c.segment_coding(label.name, index_)
            group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=_tracking(sop_uid, f"label {label.value}: {label.name}"),
                referenced_region=region,
                finding_type=coding.property_type,
                algorithm_id=_algorithm(result.model),
                measurements=_volume_measurements(label.volume_mm3, label.mean_attenuation_hu),
            )
            _nest_under_first_num(group, coords)
            groups.append(group)
        if not groups:
            groups.append(_nothing_found_group(result.model, planes, c.VERTEBRA, None, profile, sop_uid))
        return groups, evidence
    if not labels:
        groups.append(_nothing_found_group(result.model, planes, c.VERTEBRA, None, profile, sop_uid))
        return groups, evidence
    if segmentation is None:
        raise ValueError("A report of a segmentation needs the SEG it refers to (argument segmentation).")
    evidence.append(segmentation)
    for description in segmentation.SegmentSequence:
        if int(description.SegmentNumber) == 0:
            continue  # the background segment of a LABELMAP SEG
        value = label_value_from_tracking_id(str(description.TrackingID))
        label = labels[value]
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    identifier=str(description.TrackingID), uid=str(description.TrackingUID)
                ),
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=str(segmentation.SOPClassUID),
                    sop_instance_uid=str(segmentation.SOPInstanceUID),
                    segment_number=int(description.SegmentNumber),
                    source_series=hd.sr.SourceSeriesForSegmentation(result.series_instance_uid),
                ),
                finding_type=hd.sr.CodedConcept.from_dataset(
                    description.SegmentedPropertyTypeCodeSequence[0]
                ),
                algorithm_id=_algorithm(result.model),
                measurements=_volume_measurements(label.volume_mm3, label.mean_attenuation_hu),
            )
        )
    return groups, evidence


def _volume_measurements(volume_mm3: float, mean_hu: float | None) -> list[hd.sr.Measurement]:
    out = [hd.sr.Measurement(name=c.VOLUME, value=float(volume_mm3), unit=c.CUBIC_MILLIMETER)]
    if mean_hu is not None:
        out.append(hd.sr.Measurement(name=c.MEAN_ATTENUATION, value=float(mean_hu), unit=c.HOUNSFIELD_UNIT))
    return out
