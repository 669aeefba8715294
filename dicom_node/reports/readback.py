"""Reading our SR and SEG objects back into plain values, with highdicom.

The inverse of the writers, for round-trip tests and for anyone auditing what a destination received:
it reads only what the writers put there (the layouts in docs/reports.md), not arbitrary TID 1500.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom

from pipelines.findings import NoduleMeasurement, ScoreKind

from . import codes as c
from .seg import label_value_from_tracking_id

Group = (
    hd.sr.MeasurementsAndQualitativeEvaluations
    | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
)


@dataclass(frozen=True)
class ReadFinding:
    """One classification group read back."""

    label: str
    score: float
    score_kind: ScoreKind
    threshold: float
    positive: bool
    source_sop_instance_uid: str


@dataclass(frozen=True)
class ReadNodule:
    """One nodule group read back; ``center_pixel`` is 0-based with pixel centres at integers."""

    source_sop_instance_uid: str
    center_pixel: tuple[float, float]
    long_axis_mm: float
    volume_mm3: float
    confidence: float
    short_axis_mm: float | None = None
    mean_diameter_mm: float | None = None
    measurement: NoduleMeasurement | None = None
    segment_number: int | None = None
    box_faces: tuple[tuple[tuple[float, float, float], ...], ...] = ()
    tracking_uid: str | None = None


@dataclass(frozen=True)
class ReadVolume:
    """One vertebra (label) group read back."""

    label_value: int | None
    finding_type: hd.sr.CodedConcept
    volume_mm3: float
    mean_attenuation_hu: float | None
    segment_number: int | None
    segmentation_sop_instance_uid: str | None
    tracking_uid: str = ""


def _report(sr: pydicom.Dataset) -> hd.sr.Comprehensive3DSR:
    return hd.sr.Comprehensive3DSR.from_dataset(sr)


def _content(report: hd.sr.Comprehensive3DSR) -> hd.sr.MeasurementReport:
    # highdicom parses the content tree of a TID 1500 document as a MeasurementReport.
    return cast(hd.sr.MeasurementReport, report.content)


def _finding_type(group: Group) -> hd.sr.CodedConcept:
    code = group.finding_type
    if code is None:
        raise ValueError("A measurement group of ours always has a finding type; this one has none.")
    return code


def _value(group: Group, name: hd.sr.CodedConcept) -> float:
    found = group.get_measurements(name=name)
    if len(found) != 1:
        raise ValueError(f"Expected one {name.meaning} measurement, found {len(found)}.")
    return float(found[0].value)


def _groups(sr: pydicom.Dataset) -> list[Group]:
    report = _content(_report(sr))
    return [
        *report.get_image_measurement_groups(),
        *report.get_planar_roi_measurement_groups(),
        *report.get_volumetric_roi_measurement_groups(),
    ]


def _evaluations_container(sr: pydicom.Dataset) -> list[pydicom.Dataset]:
    """The items of the document's Qualitative Evaluations container (TID 1500 row 12), if any."""
    items: list[pydicom.Dataset] = []
    for item in sr.ContentSequence:
        if item.ValueType != "CONTAINER":
            continue
        name = item.ConceptNameCodeSequence[0]
        if (name.CodeValue, name.CodingSchemeDesignator) == (
            c.QUALITATIVE_EVALUATIONS.value,
            c.QUALITATIVE_EVALUATIONS.scheme_designator,
        ):
            items += list(item.get("ContentSequence", []))
    return items


def read_evaluations(sr: pydicom.Dataset) -> list[tuple[hd.sr.CodedConcept, bool]]:
    """The document-level "<finding>: Present/Absent" items, as (finding, present)."""
    out = []
    for item in _evaluations_container(sr):
        if item.ValueType == "CODE":
            value = hd.sr.CodedConcept.from_dataset(item.ConceptCodeSequence[0])
            out.append((hd.sr.CodedConcept.from_dataset(item.ConceptNameCodeSequence[0]), value == c.PRESENT))
    return out


def read_classification(sr: pydicom.Dataset) -> list[ReadFinding]:
    """The classification findings of an SR: the planar groups of findings with a region (their CAM
    outline, ``regions.py``), then the document's Qualitative Evaluations, each in document order."""
    out = _region_findings(sr)
    source = str(
        sr.CurrentRequestedProcedureEvidenceSequence[0]
        .ReferencedSeriesSequence[0]
        .ReferencedSOPSequence[0]
        .ReferencedSOPInstanceUID
    )
    for item in _evaluations_container(sr):
        if item.ValueType != "CODE":
            continue
        code = hd.sr.CodedConcept.from_dataset(item.ConceptNameCodeSequence[0])
        nums = {
            (
                n.ConceptNameCodeSequence[0].CodeValue,
                n.ConceptNameCodeSequence[0].CodingSchemeDesignator,
            ): float(n.MeasuredValueSequence[0].NumericValue)
            for n in item.get("ContentSequence", [])
            if n.ValueType == "NUM"
        }
        scores = [
            (kind, value)
            for (value_code, scheme), value in nums.items()
            if (kind := c.score_kind_of(hd.sr.CodedConcept(value_code, scheme, "score"))) is not None
        ]
        if len(scores) != 1:
            raise ValueError(f"Expected one score (probability or calibrated score), found {len(scores)}.")
        threshold = nums.get((c.THRESHOLD_VALUE.value, c.THRESHOLD_VALUE.scheme_designator))
        if threshold is None:
            raise ValueError(f"The evaluation of {code.meaning} has no Threshold Value.")
        out.append(
            ReadFinding(
                label=c.code_to_classification_label(code),
                score=scores[0][1],
                score_kind=scores[0][0],
                threshold=threshold,
                positive=hd.sr.CodedConcept.from_dataset(item.ConceptCodeSequence[0]) == c.PRESENT,
                source_sop_instance_uid=source,
            )
        )
    return out


def _region_findings(sr: pydicom.Dataset) -> list[ReadFinding]:
    report = _report(sr)
    out = []
    for group in _groups(sr):
        if getattr(group, "roi", None) is None:
            continue  # not a planar group (e.g. the summary group of an SR without findings)
        code = _finding_type(group)
        if code == c.NODULE:
            continue  # not a radiograph finding's outline
        evaluations = group.get_qualitative_evaluations(name=code)
        if not evaluations:
            continue
        found = [
            (kind, float(m.value))
            for m in group.get_measurements()
            if (kind := c.score_kind_of(m.name)) is not None
        ]
        if len(found) != 1:
            raise ValueError(f"Expected one score (probability or calibrated score), found {len(found)}.")
        out.append(
            ReadFinding(
                label=c.code_to_classification_label(code),
                score=found[0][1],
                score_kind=found[0][0],
                threshold=_value(group, c.THRESHOLD_VALUE),
                positive=evaluations[0].value == c.PRESENT,
                source_sop_instance_uid=_group_source(report, group),
            )
        )
    return out


def read_notices(sr: pydicom.Dataset) -> list[str]:
    """The TEXT items of the document's Qualitative Evaluations container (the untrained notice)."""
    return [str(i.TextValue) for i in _evaluations_container(sr) if i.ValueType == "TEXT"]


def _group_source(report: hd.sr.Comprehensive3DSR, group: object) -> str:
    roi = getattr(group, "roi", None)
    if roi is not None:
        return str(roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
    for item in group[0].ContentSequence:  # type: ignore[index]
        if item.ValueType == "IMAGE":
            return str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
    raise ValueError("The group names no source image.")


def read_nodules(sr: pydicom.Dataset) -> list[ReadNodule]:
    """The nodules of an SR: the planar group's values (and, in SRs of earlier versions, the volume and
    SEG segment from a volumetric group of the same Tracking UID). A nodule's SEG segment is the one
    whose Tracking UID is the group's (``tracking_uid``)."""
    out = []
    report = _report(sr)
    content = _content(report)
    volumetric = {str(g.tracking_uid): g for g in content.get_volumetric_roi_measurement_groups()}
    for group in content.get_planar_roi_measurement_groups():
        if not group.get_measurements(name=c.LONG_AXIS):
            continue  # the "Nodule: Absent" group of a series without detections
        if group.roi is None:
            raise ValueError("A nodule group of ours always has an image region; this one has none.")
        data = np.asarray(group.roi.value, dtype=float)  # the rectangle, SCOORD coordinates
        centre = (data[:4].min(axis=0) + data[:4].max(axis=0)) / 2 - 0.5
        volume_group = volumetric.get(str(group.tracking_uid))
        volume_source = group if volume_group is None else volume_group
        segment = getattr(volume_group, "referenced_segment", None) if volume_group is not None else None
        long_axis = group.get_measurements(name=c.LONG_AXIS)[0]
        out.append(
            ReadNodule(
                source_sop_instance_uid=_group_source(report, group),
                center_pixel=(float(centre[0]), float(centre[1])),
                long_axis_mm=float(long_axis.value),
                volume_mm3=_value(volume_source, c.VOLUME),
                confidence=_value(group, c.CERTAINTY_OF_FINDING),
                short_axis_mm=_optional(group, c.SHORT_AXIS),
                mean_diameter_mm=_optional(group, c.DIAMETER),
                measurement=_measurement_kind(long_axis.method),
                segment_number=int(segment[0].ReferencedSOPSequence[0].ReferencedSegmentNumber)
                if segment is not None
                else None,
                box_faces=_box_faces(group),
                tracking_uid=str(group.tracking_uid),
            )
        )
    return out


def _optional(group: Group, name: hd.sr.CodedConcept) -> float | None:
    found = group.get_measurements(name=name)
    return float(found[0].value) if found else None


def _measurement_kind(method: hd.sr.CodedConcept | None) -> NoduleMeasurement | None:
    if method is None:
        return None
    if method == c.NODULE_SEGMENTATION_METHOD:
        return NoduleMeasurement.SEGMENTATION
    if method == c.NODULE_BOX_METHOD:
        return NoduleMeasurement.BOX
    return None


def _box_faces(group: Group) -> tuple[tuple[tuple[float, float, float], ...], ...]:
    """The SCOORD3D polygons the Certainty of Finding is INFERRED FROM (the box), standard layout."""
    faces = []
    (measurement,) = group.get_measurements(name=c.CERTAINTY_OF_FINDING)
    for item in measurement[0].get("ContentSequence", []):
        if item.ValueType == "SCOORD3D":
            points = np.asarray(item.GraphicData, dtype=float).reshape(-1, 3)
            faces.append(tuple((float(p[0]), float(p[1]), float(p[2])) for p in points))
    return tuple(faces)


def read_volumes(sr: pydicom.Dataset) -> list[ReadVolume]:
    out = []
    for group in _groups(sr):
        if not group.get_measurements(name=c.VOLUME):
            continue  # the "Vertebra: Absent" group of a label map without foreground
        identifier = str(group.tracking_identifier)
        try:
            value: int | None = label_value_from_tracking_id(identifier)
        except ValueError:
            value = None
        means = group.get_measurements(name=c.MEAN_ATTENUATION)
        segment = getattr(group, "referenced_segment", None)
        out.append(
            ReadVolume(
                label_value=value,
                finding_type=_finding_type(group),
                volume_mm3=_value(group, c.VOLUME),
                mean_attenuation_hu=float(means[0].value) if means else None,
                segment_number=int(segment[0].ReferencedSOPSequence[0].ReferencedSegmentNumber)
                if segment is not None
                else None,
                segmentation_sop_instance_uid=str(
                    segment[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                )
                if segment is not None
                else None,
                tracking_uid=str(group.tracking_uid),
            )
        )
    return out


def read_label_map(
    seg: pydicom.Dataset, source_sop_instance_uids: Sequence[str]
) -> tuple[npt.NDArray[np.uint16], dict[int, str]]:
    """The label map on the given source instances (plane i on uid i), and the label names by value.

    Frames the SEG left out because they were empty read as background.
    """
    segmentation = hd.seg.Segmentation.from_dataset(seg)
    to_value: dict[int, int] = {}
    names: dict[int, str] = {}
    for description in segmentation.SegmentSequence:
        number = int(description.SegmentNumber)
        if number == 0:
            continue
        value = label_value_from_tracking_id(str(description.TrackingID))
        to_value[number] = value
        names[value] = str(description.SegmentLabel)
    numbers = segmentation.get_pixels_by_source_instance(
        source_sop_instance_uids=list(source_sop_instance_uids),
        combine_segments=True,
        assert_missing_frames_are_empty=True,
        dtype=np.uint16,
    )
    lut = np.zeros(max(to_value, default=0) + 1, dtype=np.uint16)
    for number, value in to_value.items():
        lut[number] = value
    return lut[numbers], names
