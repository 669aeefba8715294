"""What IHE Radiology AI Results (AIR) asks of every result object, in one place for SR, SEG and others.

* :func:`algorithm_equipment`: the algorithm as an item of the Contributing Equipment Sequence
  (Purpose of Reference DCM 109102 "Processing Equipment", Manufacturer, Manufacturer's Model Name,
  Software Versions, Device Serial Number and a Device UID that changes with the weights);
* :func:`tracking_identifier`: the Tracking Identifier and Tracking UID of a measurement group;
* :func:`evaluation`, :func:`absent`, :func:`qualitative_evaluations`: explicit results outside
  measurement groups (TID 1500 row 12), "finding evaluated as absent" included, so that "found
  nothing" is never confused with "did not run";
* :func:`procedure_reported` (TID 1500 row 4, CID 100) and :func:`target_region` (TID 1602, what the
  imaging procedure looked at), :func:`add_query_keys` (Series Description Code Sequence).

docs/reports.md has the table of every field, where it is and which value it has.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import pydicom
from highdicom.base_content import ContributingEquipment
from pydicom.sr.codedict import codes

from pipelines.findings import ModelInfo

from . import codes as c
from .uids import derive_uid

# DCM 109102 (CID 7005): the equipment that processed the source images into this object.
PROCESSING_EQUIPMENT = c.cc(codes.DCM.ProcessingEquipment)


def device_uid(model: ModelInfo) -> str:
    """The Device UID of an algorithm: its name, version and weights, so new weights are a new device."""
    return derive_uid("device", model.name, model.version, model.weights_sha256)


def algorithm_equipment(model: ModelInfo) -> ContributingEquipment:
    """The algorithm's item of the Contributing Equipment Sequence (AIR: the "AI Model" equipment)."""
    item = ContributingEquipment(
        manufacturer=model.manufacturer[:64],
        purpose_of_reference=PROCESSING_EQUIPMENT,
        manufacturer_model_name=model.name[:64],
        software_versions=model.version[:64],
        device_serial_number=(model.weights_sha256 or "unknown")[:64],
        contribution_description=(
            f"AI algorithm {model.name} {model.version}" + (" (untrained weights)" if model.untrained else "")
        )[:1024],
    )
    item.DeviceUID = device_uid(model)
    return item


def add_algorithm_equipment(ds: pydicom.Dataset, model: ModelInfo) -> None:
    """Append the algorithm's item to ``ds``'s Contributing Equipment Sequence (once)."""
    uid = device_uid(model)
    equipment = ds.get("ContributingEquipmentSequence")
    if equipment is None:
        ds.ContributingEquipmentSequence = pydicom.Sequence()
        equipment = ds.ContributingEquipmentSequence
    if not any(item.get("DeviceUID") == uid for item in equipment):
        equipment.append(algorithm_equipment(model))


def tracking_identifier(owner_uid: str, identifier: str) -> hd.sr.TrackingIdentifier:
    """Tracking Identifier and a Tracking UID derived from the owner (the SR) and the identifier."""
    return hd.sr.TrackingIdentifier(identifier=identifier[:64], uid=derive_uid(owner_uid, identifier))


def evaluation(
    finding: hd.sr.CodedConcept, present: bool, inferred_from: Sequence[hd.sr.NumContentItem] = ()
) -> hd.sr.CodeContentItem:
    """A TID 1500 row 13 item: ``finding`` = Present or Absent, inferred from ``inferred_from`` NUMs."""
    item = hd.sr.CodeContentItem(
        name=finding,
        value=c.PRESENT if present else c.ABSENT,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    if inferred_from:
        item.ContentSequence = hd.sr.ContentSequence(list(inferred_from))
    return item


def absent(finding: hd.sr.CodedConcept) -> hd.sr.CodeContentItem:
    """The explicit negative: ``finding`` evaluated as Absent (e.g. "Nodule: Absent", no nodule detected)."""
    return evaluation(finding, present=False)


def score_item(name: hd.sr.CodedConcept, value: float) -> hd.sr.NumContentItem:
    """A unitless NUM a qualitative evaluation is inferred from (a score, its threshold)."""
    return hd.sr.NumContentItem(
        name=name,
        value=float(value),
        unit=c.NO_UNITS,
        relationship_type=hd.sr.RelationshipTypeValues.INFERRED_FROM,
    )


def qualitative_evaluations(
    items: Sequence[hd.sr.CodeContentItem | hd.sr.TextContentItem],
) -> hd.sr.ContainerContentItem:
    """TID 1500's document-level Qualitative Evaluations container (row 12) holding ``items``."""
    container = hd.sr.ContainerContentItem(
        name=c.QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(list(items))
    return container


def procedure_reported(modality: str) -> hd.sr.CodedConcept:
    """The imaging procedure analysed, from CID 100 as PixelMed knows it (docs/reports.md).

    CID 100 (2019) has no chest or spine CT and no radiograph: a CT is "CT unspecified body region";
    anything else the group's generic "Imaging procedure". The region goes in the Image Library
    (:func:`target_region`).
    """
    if modality == "CT":
        return c.PROCEDURE_CT
    return c.PROCEDURE_IMAGING


def target_region(region: hd.sr.CodedConcept) -> hd.sr.CodeContentItem:
    """TID 1602's Target Region descriptor of an Image Library entry (what the procedure looked at)."""
    return hd.sr.CodeContentItem(
        name=c.TARGET_REGION, value=region, relationship_type=hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT
    )


def add_query_keys(ds: pydicom.Dataset, series_code: hd.sr.CodedConcept) -> None:
    """Series Description Code Sequence, the key an image manager indexes AI result series by."""
    ds.SeriesDescriptionCodeSequence = [series_code]


def add_image_laterality(ds: pydicom.Dataset, source: pydicom.Dataset, default: str = "U") -> None:
    """Image Laterality (General Image, Type 3) for a SEG: the source's side, else ``default``.

    General Series Laterality is Type 2C, "required if the body part examined is a paired structure
    and Image Laterality or Frame Laterality are not sent". PixelMed requires it whenever neither is
    sent; dciodvfy forbids it (even empty) when the body part is not known to be paired. Image
    Laterality satisfies both and says what is true: U (unpaired) for vertebrae, B (both) for a
    series of both lungs, R or L where the source names its side.
    """
    side = source.get("ImageLaterality") or source.get("Laterality")
    ds.ImageLaterality = side if side in ("R", "L", "B", "U") else default
    if "Laterality" in ds:
        del ds.Laterality
