"""TID 1500 Measurement Reports (Comprehensive 3D SR) of pipeline results: one shape for every viewer.

Every measurement group carries an image region, because OHIF 3.13 blanks an SR in which any group
lacks one; image-level findings and explicit negatives are document-level Qualitative Evaluations
(TID 1500 row 12), outside any group (docs/reports.md has the layout and the IHE AIR field table):

* classification: per label "<finding>: Present/Absent" at the model's threshold, INFERRED FROM its
  score — coded as a Probability only when it is one, else as a calibrated score (docs/codes.md) — and
  the operating threshold;
* nodules: one TID 1410 planar ROI per nodule on the slice of its long axis (a closed POLYLINE
  rectangle, the nodule's box seen on that slice), finding type Nodule, finding site Lung, with long-
  and short-axis diameter, mean diameter, volume and the detector's confidence, the diameters INFERRED
  FROM their end points and the confidence from the 3D box (SCOORD3D; reports/nodules.py); the masks
  in a SEG; none detected: "Nodule: Absent";
* vertebrae: one TID 1411 volumetric ROI per segment of the SEG, referencing that segment and holding
  the segment's outline on its central slice, with volume and mean attenuation; none: "Vertebra: Absent".

Every SR names the algorithm in its Contributing Equipment Sequence and as the observer device, lists
the images it used in an Image Library (with the region the procedure looked at), and reports the
imaging procedure analysed (CID 100). A result of untrained weights carries the TEXT item "NOT FOR
CLINICAL USE: untrained model weights" among the Qualitative Evaluations, and its Series Description
starts with UNTRAINED. An SR that replaces an earlier one (the input changed) names it in the
Predecessor Documents Sequence; every date/time and UID is derived (``uids.settle``).
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
from .air import (
    add_algorithm_equipment,
    add_query_keys,
    device_uid,
    procedure_reported,
    qualitative_evaluations,
    target_region,
)
from .groups import Content, classification_content, nodule_content, segmentation_content, summary_group
from .naming import UNTRAINED_NOTICE, default_pipeline, series_description
from .profile import DEFAULT_PROFILE, ReportProfile
from .sources import SourceIndex, copy_study_attributes
from .uids import DocumentReference, ResultBasis, ResultKind, result_identity, settle


def _observation_context(model: ModelInfo) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_uid(model),
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


def _describable(ds: pydicom.Dataset) -> bool:
    """Whether highdicom can write TID 1602 descriptors for ``ds``.

    It needs a radiograph's Patient Orientation and Imager Pixel Spacing; the test radiograph, a real
    de-identified CR, has an empty Patient Orientation and only Pixel Spacing.
    """
    try:
        hd.sr.ImageLibraryEntryDescriptors(ds)
    except (AttributeError, IndexError):
        return False
    return True


def _plain_entry(ds: pydicom.Dataset) -> hd.sr.ImageContentItem:
    """An Image Library entry with the descriptors every image has: modality, rows and columns."""
    item = hd.sr.ImageContentItem(
        name=c.SOURCE,
        referenced_sop_class_uid=str(ds.SOPClassUID),
        referenced_sop_instance_uid=str(ds.SOPInstanceUID),
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    context = hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT
    item.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.CodeContentItem(name=c.MODALITY, value=c.modality_code(ds), relationship_type=context),
            hd.sr.NumContentItem(
                name=c.PIXEL_DATA_ROWS, value=int(ds.Rows), unit=c.PIXELS, relationship_type=context
            ),
            hd.sr.NumContentItem(
                name=c.PIXEL_DATA_COLUMNS, value=int(ds.Columns), unit=c.PIXELS, relationship_type=context
            ),
        ]
    )
    return item


def _image_library(images: Sequence[pydicom.Dataset], region: hd.sr.CodedConcept) -> pydicom.Dataset:
    """TID 1600 of the source images, each entry naming the region the procedure looked at."""
    described = [ds for ds in images if _describable(ds)]
    plain = [ds for ds in images if not _describable(ds)]
    if described:
        library = hd.sr.ImageLibrary(described)[0]
    else:
        library = hd.sr.ContainerContentItem(
            name=c.IMAGE_LIBRARY, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
        library.ContentSequence = hd.sr.ContentSequence()
    if plain:
        group = hd.sr.ContainerContentItem(
            name=c.IMAGE_LIBRARY_GROUP, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
        group.ContentSequence = hd.sr.ContentSequence([_plain_entry(ds) for ds in plain])
        library.ContentSequence.append(group)
    for group in library.ContentSequence:
        for entry in group.ContentSequence:
            if entry.ValueType == "IMAGE":
                entry.ContentSequence.append(target_region(region))
    return library


def _build_report(
    content: Content,
    model: ModelInfo,
    procedure: hd.sr.CodedConcept,
    region: hd.sr.CodedConcept,
    sop_uid: str,
) -> hd.sr.MeasurementReport:
    images = [ds for ds in content.evidence if ds.get("Modality") != "SEG"]
    groups = list(content.groups)
    if not groups:
        if content.count is None:
            raise ValueError("A result without groups needs a count for its summary group.")
        groups = [summary_group(content.count, images[len(images) // 2], sop_uid, model)]
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(model),
        procedure_reported=procedure,
        imaging_measurements=list(groups),
    )
    root = report[0].ContentSequence
    for i, item in enumerate(root):
        if item.ValueType == "CONTAINER" and item.ConceptNameCodeSequence[0].CodeValue == "126010":
            root.insert(i, _image_library(images, region))
            break
    notes: list[hd.sr.CodeContentItem | hd.sr.TextContentItem] = list(content.evaluations)
    if model.untrained:
        notes.append(
            hd.sr.TextContentItem(
                name=c.COMMENT,
                value=UNTRAINED_NOTICE,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    if notes:
        root.append(qualitative_evaluations(notes))
    return report


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
    """The TID 1500 SR of one result (a list, for layouts that may need more than one object).

    ``basis`` is what the identity derives from (default: the sources' UIDs, now); ``predecessors``
    are the SRs this one replaces. The SR's content does not depend on ``profile``.
    """
    pipeline = pipeline or default_pipeline(result)
    index = SourceIndex(sources)
    basis = basis or ResultBasis.of_sources(sources)
    # An SR that references a SEG differs with it (BINARY or LABELMAP), so the SEG is part of its identity.
    variant = () if segmentation is None else (str(segmentation.SOPInstanceUID),)
    identity = result_identity(basis, pipeline, result.model, ResultKind.SR, *variant)
    sop_uid = identity.sop_instance_uid
    if isinstance(result, ClassificationResult):
        content = classification_content(result, index, sop_uid)
        region = c.CHEST
    elif isinstance(result, NoduleDetectionResult):
        content = nodule_content(result, index, sop_uid, segmentation)
        region = c.CHEST
    elif isinstance(result, SegmentationResult):
        content = segmentation_content(result, index, sop_uid, segmentation)
        region = c.SPINE
    else:  # pragma: no cover - the Findings union is closed
        raise TypeError(f"Unknown result type {type(result).__name__}.")
    procedure = procedure_reported(str(index.first.get("Modality", "")))
    report = _build_report(content, result.model, procedure, region, sop_uid)
    sr = hd.sr.Comprehensive3DSR(
        evidence=content.evidence,
        content=report,
        series_instance_uid=identity.series_instance_uid,
        series_number=identity.series_number,
        sop_instance_uid=sop_uid,
        instance_number=identity.instance_number,
        manufacturer=result.model.manufacturer,
        manufacturer_model_name=result.model.name[:64],
        software_versions=result.model.version[:64],
        series_description=series_description(pipeline, result.model, "SR"),
        is_complete=True,
        is_final=False,  # an algorithm's result, not verified by a person
        is_verified=False,
        previous_versions=[p.as_dataset() for p in predecessors] or None,
    )
    if _uses_scheme(sr, c.PRIVATE_SCHEME):
        sr.CodingSchemeIdentificationSequence = [c.private_scheme_declaration()]
    add_algorithm_equipment(sr, result.model)
    add_query_keys(sr, c.RESULT_SERIES)
    copy_study_attributes(sr, index.first)
    settle(sr, basis)
    return [sr]
