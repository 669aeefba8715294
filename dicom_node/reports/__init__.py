"""DICOM encoding of pipeline results: TID 1500 SR, SEG and an optional secondary-capture companion.

Writers take the typed results of ``pipelines/findings.py`` and the source instances, and return
pydicom/highdicom datasets; they never write to disk or to the network. UIDs derive from what a result
depends on (``ResultBasis``: the source series and its instances' hash; pipeline, model version and
weights; kind), dates and times from the basis, so the same input gives byte-identical objects
(``uids``). Results of untrained weights are marked UNTRAINED (``naming``).
"""

from __future__ import annotations

from .companion import write_companion
from .naming import UNTRAINED_MARK, UNTRAINED_NOTICE
from .profile import DEFAULT_PROFILE, LABELMAP_PROFILE, OHIF_PROFILE, CompanionType, ReportProfile
from .results import write_results
from .seg import write_segmentation
from .sr import write_measurement_report
from .uids import DocumentReference, ResultBasis, ResultKind, derive_uid, result_identity

__all__ = [
    "DEFAULT_PROFILE",
    "LABELMAP_PROFILE",
    "OHIF_PROFILE",
    "UNTRAINED_MARK",
    "UNTRAINED_NOTICE",
    "CompanionType",
    "DocumentReference",
    "ReportProfile",
    "ResultBasis",
    "ResultKind",
    "derive_uid",
    "result_identity",
    "write_companion",
    "write_measurement_report",
    "write_results",
    "write_segmentation",
]
