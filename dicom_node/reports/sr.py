"""TID 1500 Measurement Reports (Comprehensive 3D SR) of pipeline results.

The standard layout (default profile):

* classification: one TID 1501 measurement group per label, its finding type the finding's code, a
  qualitative evaluation (the finding: Present/Absent at the model's threshold), the score — coded as a
  Probability only when it is one, else as a calibrated score (docs/codes.md) — and the operating
  threshold as NUMs, and the radiograph as the group's source image;
* nodules: one TID 1410 planar ROI per nodule on the slice of its long axis (a closed POLYLINE
  rectangle, the nodule's box seen on that slice), finding type Nodule, finding site Lung, with long-
  and short-axis diameter, mean diameter and the detector's confidence, and a TID 1411 volumetric ROI
  with its volume on its SEG segment or its box (reports/nodules.py);
* vertebrae: one TID 1411 volumetric ROI per segment of the SEG, referencing that segment, with volume
  and mean attenuation.

The OHIF layout (``ReportProfile.ohif_compatible``) gives every group a drawable image region, because
OHIF 3.13 blanks an SR in which any group lacks one, and also nests that region under the group's first
NUM, where OHIF looks for it when it hydrates measurements (docs/reports.md).

Both layouts: a result of untrained weights carries the TEXT item "NOT FOR CLINICAL USE: untrained model
weights" in the document's Qualitative Evaluations container (TID 1500 row 12), and its Series
Description starts with UNTRAINED. An SR that replaces an earlier one (the input changed) names it in
the Predecessor Documents Sequence; every date/time and UID is derived (``uids.settle``).
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import pydicom

from pipelines.findings import (
    ClassificationResult,
    Findings,
    ModelInfo,
    NoduleDetectionResult,
    SegmentationResult,
)

from . import codes as c
from .groups import Group, classification_groups, nodule_groups, segmentation_groups
from .naming import UNTRAINED_NOTICE, default_pipeline, series_description
from .profile import DEFAULT_PROFILE, ReportProfile
from .sources import SourceIndex, copy_study_attributes
from .uids import DocumentReference, ResultBasis, ResultKind, derive_uid, result_identity, settle


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


def _uses_scheme(ds: pydicom.Dataset, designator: str) -> bool:
    """Whether any code anywhere in ``ds`` is of the coding scheme ``designator``."""
    for element in ds.iterall():
        if element.keyword == "CodingSchemeDesignator" and element.value == designator:
            return True
    return False


def _untrained_notice() -> hd.sr.ContainerContentItem:
    """TID 1500's Qualitative Evaluations container holding the untrained-weights notice as TEXT."""
    container = hd.sr.ContainerContentItem(
        name=c.QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=c.COMMENT,
                value=UNTRAINED_NOTICE,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        ]
    )
    return container


def write_measurement_report(
    result: Findings,
    sources: Sequence[pydicom.Dataset],
    profile: ReportProfile = DEFAULT_PROFILE,
    segmentation: hd.seg.Segmentation | None = None,
    *,
    pipeline: str | None = None,
    basis: ResultBasis | None = None,
    predecessors: Sequence[DocumentReference] = (),
) -> list[pydicom.Dataset]:
    """The TID 1500 SR(s) of one result: one object in both layouts today, a list for layouts to come.

    ``basis`` is what the identity derives from (default: the sources' UIDs, now); ``predecessors``
    are the SRs this one replaces.
    """
    pipeline = pipeline or default_pipeline(result)
    index = SourceIndex(sources)
    basis = basis or ResultBasis.of_sources(sources)
    kind = ResultKind.SR_OHIF if profile.ohif_compatible else ResultKind.SR
    # An SR that references a SEG differs with it (BINARY or LABELMAP), so the SEG is part of its identity.
    variant = () if segmentation is None else (str(segmentation.SOPInstanceUID),)
    identity = result_identity(basis, pipeline, result.model, kind, *variant)
    groups: Sequence[Group]
    if isinstance(result, ClassificationResult):
        groups, evidence = classification_groups(result, index, profile, identity.sop_instance_uid)
        procedure = c.PROCEDURE_CHEST_IMAGING
    elif isinstance(result, NoduleDetectionResult):
        groups, evidence = nodule_groups(result, index, profile, identity.sop_instance_uid, segmentation)
        procedure = c.PROCEDURE_CT_CHEST
    elif isinstance(result, SegmentationResult):
        groups, evidence = segmentation_groups(
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
    if result.model.untrained:
        report[0].ContentSequence.append(_untrained_notice())
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
        previous_versions=[p.as_dataset() for p in predecessors] or None,
    )
    if _uses_scheme(sr, c.PRIVATE_SCHEME):
        sr.CodingSchemeIdentificationSequence = [c.private_scheme_declaration()]
    copy_study_attributes(sr, index.first)
    settle(sr, basis)
    return [sr]
