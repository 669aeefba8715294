"""TID 1500 Measurement Reports (Comprehensive 3D SR) of pipeline results.

The standard layout (default profile):

* classification: one TID 1501 measurement group per label, its finding type the finding's code, a
  qualitative evaluation (the finding: Present/Absent at the model's threshold), the probability and the
  operating threshold as NUMs, and the radiograph as the group's source image;
* nodules: one TID 1410 planar ROI per nodule on its centre slice (a closed POLYLINE rectangle, the
  nodule's box seen on that slice, centred on the nodule), finding type Nodule, finding site Lung, with
  long-axis diameter, volume and the detector's confidence;
* vertebrae: one TID 1411 volumetric ROI per segment of the SEG, referencing that segment, with volume
  and mean attenuation.

The OHIF layout (``ReportProfile.ohif_compatible``) gives every group a drawable image region, because
OHIF 3.13 blanks an SR in which any group lacks one, and also nests that region under the group's first
NUM, where OHIF looks for it when it hydrates measurements (docs/reports.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom

from pipelines.findings import (
    ClassificationResult,
    Findings,
    ModelInfo,
    NoduleDetectionResult,
    SegmentationResult,
)

from . import codes as c
from .naming import default_pipeline, series_description
from .profile import DEFAULT_PROFILE, ReportProfile
from .seg import label_value_from_tracking_id, present_labels
from .sources import SliceGeometry, SourceIndex, copy_study_attributes
from .uids import ResultKind, derive_uid, result_identity

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


def _observation_context(model: ModelInfo) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=derive_uid("device", model.name, model.version, model.weights_sha256),
        name=model.name[:64],
        manufacturer_name=model.manufacturer[:64],
        model_name=f"{model.name} {model.version}"[:64],
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
            observer_identifying_attributes=device,
        )
    )


def _tracking(identity_uid: str, identifier: str) -> hd.sr.TrackingIdentifier:
    return hd.sr.TrackingIdentifier(identifier=identifier[:64], uid=derive_uid(identity_uid, identifier))


def _probability(name: hd.sr.CodedConcept, value: float) -> hd.sr.Measurement:
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


def _classification_groups(
    result: ClassificationResult, index: SourceIndex, profile: ReportProfile, sop_uid: str
) -> tuple[list[Group], list[pydicom.Dataset]]:
    image = index.get(result.source)
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
                    _probability(c.PROBABILITY, finding.probability),
                    _probability(c.THRESHOLD_VALUE, finding.threshold),
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
                        _probability(c.PROBABILITY, finding.probability),
                        _probability(c.THRESHOLD_VALUE, finding.threshold),
                    ],
                    source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(image)],
                )
            )
    return groups, [image]


def _nodule_groups(
    result: NoduleDetectionResult, index: SourceIndex, profile: ReportProfile, sop_uid: str
) -> tuple[list[Group], list[pydicom.Dataset]]:
    groups: list[Group] = []
    evidence = {ref.sop_instance_uid: index.get(ref) for ref in result.source_images}
    for number, nodule in enumerate(result.nodules, start=1):
        image = index.get(nodule.source_slice)
        evidence[str(image.SOPInstanceUID)] = image
        geometry = SliceGeometry(image)
        size = np.subtract(nodule.box_max, nodule.box_min)
        width, height = geometry.extent_in_pixels(size)
        # SCOORD image coordinates put the centre of the top-left pixel at (0.5, 0.5); ours at (0, 0).
        rect = _rectangle(
            nodule.center_pixel[0] + 0.5,
            nodule.center_pixel[1] + 0.5,
            max(width, 1.0) / 2,
            max(height, 1.0) / 2,
        )
        region, coords = _region(rect, image)
        measurements = [
            hd.sr.Measurement(name=c.LONG_AXIS, value=float(nodule.long_axis_mm), unit=c.MILLIMETER),
            hd.sr.Measurement(name=c.VOLUME, value=float(nodule.volume_mm3), unit=c.CUBIC_MILLIMETER),
            _probability(c.CERTAINTY_OF_FINDING, nodule.confidence),
        ]
        group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=_tracking(sop_uid, f"nodule {number}"),
            referenced_region=region,
            finding_type=c.NODULE,
            finding_sites=[hd.sr.FindingSite(anatomic_location=c.LUNG)],
            algorithm_id=_algorithm(result.model),
            measurements=measurements,
        )
        if profile.ohif_compatible:
            _nest_under_first_num(group, coords)
        groups.append(group)
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


def _segmentation_groups(
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


def _uses_scheme(ds: pydicom.Dataset, designator: str) -> bool:
    """Whether any code anywhere in ``ds`` is of the coding scheme ``designator``."""
    for element in ds.iterall():
        if element.keyword == "CodingSchemeDesignator" and element.value == designator:
            return True
    return False


def write_measurement_report(
    result: Findings,
    sources: Sequence[pydicom.Dataset],
    profile: ReportProfile = DEFAULT_PROFILE,
    segmentation: hd.seg.Segmentation | None = None,
    *,
    pipeline: str | None = None,
) -> list[pydicom.Dataset]:
    """The TID 1500 SR(s) of one result: one object in both layouts today, a list for layouts to come."""
    pipeline = pipeline or default_pipeline(result)
    index = SourceIndex(sources)
    kind = ResultKind.SR_OHIF if profile.ohif_compatible else ResultKind.SR
    identity = result_identity(index.study_instance_uid, pipeline, result.model.version, kind)
    groups: Sequence[
        hd.sr.MeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
        | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    ]
    if isinstance(result, ClassificationResult):
        groups, evidence = _classification_groups(result, index, profile, identity.sop_instance_uid)
        procedure = c.PROCEDURE_CHEST_IMAGING
    elif isinstance(result, NoduleDetectionResult):
        groups, evidence = _nodule_groups(result, index, profile, identity.sop_instance_uid)
        procedure = c.PROCEDURE_CT_CHEST
    elif isinstance(result, SegmentationResult):
        groups, evidence = _segmentation_groups(
            result, index, profile, identity.sop_instance_uid, segmentation
        )
        procedure = c.PROCEDURE_CT
    else:  # pragma: no cover - the Findings union is closed
        raise TypeError(f"Unknown result type {type(result).__name__}.")

    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(result.model),
        procedure_reported=procedure,
        imaging_measurements=list(groups),
    )
    layout = "SR for OHIF" if profile.ohif_compatible else "SR"
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=identity.series_instance_uid,
        series_number=identity.series_number,
        sop_instance_uid=identity.sop_instance_uid,
        instance_number=identity.instance_number,
        manufacturer=result.model.manufacturer,
        manufacturer_model_name=result.model.name[:64],
        software_versions=result.model.version[:64],
        series_description=series_description(pipeline, result.model, layout),
        is_complete=True,
        is_final=False,  # an algorithm's result, not verified by a person
        is_verified=False,
    )
    if _uses_scheme(sr, c.PRIVATE_SCHEME):
        sr.CodingSchemeIdentificationSequence = [c.private_scheme_declaration()]
    copy_study_attributes(sr, index.first)
    return [sr]
