"""DICOM encoding of pipeline results: TID 1500 SR, SEG and an optional secondary-capture companion.

Writers take the typed results of ``pipelines/findings.py`` and the source instances, and return
pydicom/highdicom datasets; they never write to disk or to the network. UIDs and series numbers are
derived from (study, pipeline, model version, kind), so re-running gives identical identifiers.
"""

from __future__ import annotations

from .companion import write_companion
from .profile import DEFAULT_PROFILE, LABELMAP_PROFILE, OHIF_PROFILE, CompanionType, ReportProfile
from .results import write_results
from .seg import write_segmentation
from .sr import write_measurement_report
from .uids import ResultKind, derive_uid, result_identity

__all__ = [
    "DEFAULT_PROFILE",
    "LABELMAP_PROFILE",
    "OHIF_PROFILE",
    "CompanionType",
    "ReportProfile",
    "ResultKind",
    "derive_uid",
    "result_identity",
    "write_companion",
    "write_measurement_report",
    "write_results",
    "write_segmentation",
]
