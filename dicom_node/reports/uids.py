"""Deterministic identifiers of result objects.

A re-run of the same pipeline with the same model version on the same study must produce objects with
the same UIDs, so that a PACS that already holds them replaces them instead of keeping duplicates
(DESIGN.md: "Result UIDs are derived from (study, pipeline, model version)"). UIDs are made by hashing
their parts with pydicom's ``generate_uid(entropy_srcs=...)`` under pydicom's UID root; series numbers
come from a fixed table per pipeline so that they, too, are the same on every run. Objects whose content
differs by destination profile (a LABELMAP SEG, the OHIF layout of an SR) are another ``ResultKind`` and
so get other UIDs: one SOP Instance UID never names two different contents.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum

from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

UID_PREFIX = PYDICOM_ROOT_UID


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
    SR_OHIF = "sr-ohif"  # the OHIF profile's layout: other content, so another UID
    COMPANION = "companion"


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
    ResultKind.COMPANION: 9,
}


@dataclass(frozen=True)
class ResultIdentity:
    """The identifiers of one result object."""

    series_instance_uid: str
    sop_instance_uid: str
    series_number: int
    instance_number: int = 1


def result_identity(
    study_instance_uid: str, pipeline: str, model_version: str, kind: ResultKind | str
) -> ResultIdentity:
    """Series and instance identifiers of the ``kind`` object of ``pipeline`` on a study."""
    kind = ResultKind(kind)
    base = PIPELINE_SERIES_BASE.get(pipeline)
    if base is None:
        # An unlisted pipeline still gets a stable number: 9400..9990 in steps of 10.
        digest = int(hashlib.sha256(pipeline.encode()).hexdigest(), 16)
        base = 9400 + 10 * (digest % 60)
    return ResultIdentity(
        series_instance_uid=derive_uid(study_instance_uid, pipeline, model_version, kind.value, "series"),
        sop_instance_uid=derive_uid(study_instance_uid, pipeline, model_version, kind.value, "instance"),
        series_number=base + KIND_SERIES_OFFSET[kind],
    )
