"""All objects of one pipeline result, in the order a destination should receive them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pydicom

from pipelines.findings import Findings, SegmentationResult

from .companion import write_companion
from .profile import DEFAULT_PROFILE, CompanionType, ReportProfile
from .seg import write_segmentation
from .sr import write_measurement_report


def write_results(
    result: Findings,
    sources: Sequence[pydicom.Dataset],
    profile: ReportProfile = DEFAULT_PROFILE,
    *,
    pipeline: str | None = None,
) -> list[pydicom.Dataset]:
    """SEG first (for a segmentation with any foreground), then the SR(s), then the companion if asked.

    The SEG goes first because the SR references it: a PACS that checks references sees it already.
    """
    objects: list[pydicom.Dataset] = []
    segmentation = None
    if isinstance(result, SegmentationResult) and np.any(result.label_map):
        segmentation = write_segmentation(result, sources, profile, pipeline=pipeline)
        objects.append(segmentation)
    objects.extend(write_measurement_report(result, sources, profile, segmentation, pipeline=pipeline))
    if profile.companion == CompanionType.SECONDARY_CAPTURE:
        objects.append(write_companion(result, sources, pipeline=pipeline))
    return objects
