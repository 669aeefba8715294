"""Deterministic identity of result objects: derived from what a result depends on, nothing random.

A result depends on its input — the source series and the exact instances in it (``ResultBasis``: the
series UID and a hash over each instance's SOP Instance UID and stored sha256) — and on the pipeline,
the model version and the weights' sha256, and on its kind. Its Series and SOP Instance UIDs are made
by hashing exactly those parts with pydicom's ``generate_uid(entropy_srcs=...)`` under pydicom's root:

* the same input gives the same UIDs, and — because every other UID in the object is derived too and
  every date/time is the basis' ``content_datetime`` (the first start of the analysis) — the same
  bytes, so a PACS that already holds the object is sent exactly what it holds;
* a changed input (a corrected instance, another chosen series) or another model gives new UIDs, so
  no PACS keeps a stale object under a reused UID; the new SR names the one it replaces in its
  Predecessor Documents Sequence (``DocumentReference``).

Objects whose content differs by destination profile (a LABELMAP SEG, the OHIF layout of an SR, an SR
that references the LABELMAP SEG) are another ``ResultKind`` or carry the difference as an identity
part, so one SOP Instance UID never names two contents. Series numbers come from a fixed table per
pipeline so that they, too, are the same on every run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import pydicom
from pydicom.uid import PYDICOM_ROOT_UID, generate_uid
from pydicom.valuerep import DA, DT, TM

from pipelines.findings import ModelInfo

UID_PREFIX = PYDICOM_ROOT_UID
PROCESSING_EQUIPMENT = "109102"  # DCM "Processing Equipment": the software that wrote the object, now


def derive_uid(*parts: str) -> str:
    """A UID that depends on ``parts`` only: the same parts always give the same UID."""
    if not parts:
        raise ValueError("derive_uid needs at least one part.")
    return str(generate_uid(prefix=UID_PREFIX, entropy_srcs=["dicom-node", *parts]))


class ResultKind(StrEnum):
    """What kind of object a result series holds; part of its identity."""

    SEG = "seg"
    SEG_LABELMAP = "seg-labelmap"
    SR = "sr"
    SR_OHIF = "sr-ohif"  # the former OHIF layout (no longer written; kept so old rows still parse)
    COMPANION = "companion"
    PARAMETRIC_MAP = "parametric-map"  # the CAMs of positive radiograph findings (parametric_map.py)
    PRESENTATION_STATE = "presentation-state"  # the GSPS of one SR (its SOP Instance UID the variant)


# First series number of each pipeline's results; each kind adds its offset. Source series numbers from
# modalities are small, so results at 9000+ sort after them and never collide with each other.
PIPELINE_SERIES_BASE: dict[str, int] = {
    "cxr-classification": 9100,
    "ct-lung-nodules": 9200,
    "ct-vertebrae": 9300,
}
KIND_SERIES_OFFSET: dict[ResultKind, int] = {
    ResultKind.SEG: 0,
    ResultKind.SEG_LABELMAP: 1,
    ResultKind.SR: 2,
    ResultKind.SR_OHIF: 3,
    ResultKind.PARAMETRIC_MAP: 4,
    ResultKind.PRESENTATION_STATE: 5,
    ResultKind.COMPANION: 9,
}


def instances_digest(instances: Sequence[tuple[str, str]]) -> str:
    """sha256 over ``(SOP Instance UID, content hash)`` pairs, in UID order: the order sent is irrelevant."""
    digest = hashlib.sha256()
    for sop_instance_uid, content in sorted(instances):
        digest.update(f"{sop_instance_uid}\t{content}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class ResultBasis:
    """The input a result was computed from, and when its analysis first started.

    ``instances_sha256`` is :func:`instances_digest` of the analysed series' instances (the node uses
    the sha256 its index holds for each stored instance). ``content_datetime`` (timezone-aware) becomes
    every date/time of the objects, in the worker's local time as DICOM expects.
    """

    series_instance_uid: str
    instances_sha256: str
    content_datetime: datetime

    def __post_init__(self) -> None:
        if self.content_datetime.tzinfo is None:
            raise ValueError('Argument "content_datetime" must be timezone-aware.')

    @classmethod
    def of_sources(
        cls, sources: Sequence[pydicom.Dataset], content_datetime: datetime | None = None
    ) -> ResultBasis:
        """A basis for callers without an index (tools, tests): the sources' series and SOP Instance UIDs.

        Without stored hashes a corrected instance under the same UID is not told apart; the node
        always passes the basis it built from its index. ``content_datetime`` defaults to now.
        """
        series = sorted({str(ds.get("SeriesInstanceUID", "")) for ds in sources})
        instances = [(str(ds.get("SOPInstanceUID", "")), "") for ds in sources]
        when = content_datetime or datetime.now(UTC).replace(microsecond=0)
        return cls("\\".join(series), instances_digest(instances), when)


@dataclass(frozen=True)
class DocumentReference:
    """An earlier result object (an SR this one replaces), by its four identifiers."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str

    def as_dataset(self) -> pydicom.Dataset:
        """The attributes highdicom's ``previous_versions`` reads."""
        ds = pydicom.Dataset()
        ds.StudyInstanceUID = self.study_instance_uid
        ds.SeriesInstanceUID = self.series_instance_uid
        ds.SOPInstanceUID = self.sop_instance_uid
        ds.SOPClassUID = self.sop_class_uid
        return ds


@dataclass(frozen=True)
class ResultIdentity:
    """The identifiers of one result object."""

    series_instance_uid: str
    sop_instance_uid: str
    series_number: int
    instance_number: int = 1


def series_base(pipeline: str) -> int:
    base = PIPELINE_SERIES_BASE.get(pipeline)
    if base is None:
        # An unlisted pipeline still gets a stable number: 9400..9990 in steps of 10.
        digest = int(hashlib.sha256(pipeline.encode()).hexdigest(), 16)
        base = 9400 + 10 * (digest % 60)
    return base


def result_identity(
    basis: ResultBasis, pipeline: str, model: ModelInfo, kind: ResultKind | str, *variant: str
) -> ResultIdentity:
    """Series and instance identifiers of the ``kind`` object of ``pipeline`` on ``basis``.

    ``variant`` holds whatever else the object's content depends on (the SOP Instance UID of the SEG
    an SR references).
    """
    kind = ResultKind(kind)
    parts = (
        basis.series_instance_uid,
        basis.instances_sha256,
        pipeline,
        model.version,
        model.weights_sha256,
        kind.value,
        *variant,
    )
    return ResultIdentity(
        series_instance_uid=derive_uid(*parts, "series"),
        sop_instance_uid=derive_uid(*parts, "instance"),
        series_number=series_base(pipeline) + KIND_SERIES_OFFSET[kind],
    )


def settle(ds: pydicom.Dataset, basis: ResultBasis) -> None:
    """Make a written object byte-stable: every date/time from the basis, no random UID left.

    highdicom stamps Instance Creation (and, for a secondary capture, the capture) date/time and its
    own Contributing Equipment entry with "now", and gives an image a random Dimension Organization
    UID; those are replaced here.
    """
    local = basis.content_datetime.astimezone().replace(microsecond=0)
    date, time = DA(local.date()), TM(local.time().replace(tzinfo=None))
    for date_keyword, time_keyword in (
        ("ContentDate", "ContentTime"),
        ("InstanceCreationDate", "InstanceCreationTime"),
        ("DateOfSecondaryCapture", "TimeOfSecondaryCapture"),
    ):
        if date_keyword in ds or date_keyword in ("ContentDate", "InstanceCreationDate"):
            setattr(ds, date_keyword, date)
            setattr(ds, time_keyword, time)
    for equipment in ds.get("ContributingEquipmentSequence", []):
        purposes = equipment.get("PurposeOfReferenceCodeSequence", [])
        if "ContributionDateTime" in equipment and any(
            p.get("CodeValue") == PROCESSING_EQUIPMENT for p in purposes
        ):
            equipment.ContributionDateTime = DT(local.replace(tzinfo=None))
    dimension_uid = derive_uid(str(ds.SOPInstanceUID), "dimension-organization")
    for keyword in ("DimensionOrganizationSequence", "DimensionIndexSequence"):
        for item in ds.get(keyword, []):
            if "DimensionOrganizationUID" in item:
                item.DimensionOrganizationUID = dimension_uid
