"""All objects of one pipeline result, in the order a destination should receive them."""

from __future__ import annotations

from collections.abc import Hashable, MutableMapping, Sequence
from typing import cast

import highdicom as hd
import numpy as np
import pydicom

from pipelines.findings import Findings, NoduleDetectionResult, SegmentationResult

from .companion import write_companion
from .naming import default_pipeline
from .nodules import nodule_segmentation
from .profile import DEFAULT_PROFILE, CompanionType, ReportProfile
from .seg import seg_kind, write_segmentation
from .sources import SourceIndex
from .sr import write_measurement_report
from .uids import DocumentReference, ResultBasis

SharedObjects = MutableMapping[Hashable, list[pydicom.Dataset]]
"""Objects already built for a job's other profiles, by what their content depends on."""


def write_results(
    result: Findings,
    sources: Sequence[pydicom.Dataset],
    profile: ReportProfile = DEFAULT_PROFILE,
    *,
    pipeline: str | None = None,
    basis: ResultBasis | None = None,
    predecessors: Sequence[DocumentReference] = (),
    shared: SharedObjects | None = None,
) -> list[pydicom.Dataset]:
    """SEG first (for a segmentation with any foreground), then the SR(s), then the companion if asked.

    The SEG goes first because the SR references it: a PACS that checks references sees it already.
    ``basis`` is what every object's identity and date/time derive from (default: the sources' UIDs,
    now); ``predecessors`` the SRs the new SR replaces. Pass the same ``shared`` mapping for every
    profile of one job: an object whose content another profile already produced (the BINARY SEG of
    the standard and the OHIF profile) is then that very object, built once.
    """
    basis = basis or ResultBasis.of_sources(sources)
    built: SharedObjects = {} if shared is None else shared
    objects: list[pydicom.Dataset] = []
    segmentation: hd.seg.Segmentation | None = None
    masks = (
        nodule_segmentation(result, SourceIndex(sources))
        if isinstance(result, NoduleDetectionResult)
        else None
    )
    if masks is not None or (isinstance(result, SegmentationResult) and np.any(result.label_map)):
        key: Hashable = ("seg", seg_kind(profile))
        if key not in built:
            # A nodule result's SEG holds its masks; it is still the nodule pipeline's object.
            seg_pipeline = pipeline or default_pipeline(result)
            built[key] = [
                write_segmentation(
                    masks or cast(SegmentationResult, result),
                    sources,
                    profile,
                    pipeline=seg_pipeline,
                    basis=basis,
                )
            ]
        segmentation = cast(hd.seg.Segmentation, built[key][0])
        objects.append(segmentation)
    # The SR's content depends on the layout and on the SEG it references, nothing else of the profile.
    key = ("sr", profile.ohif_compatible, None if segmentation is None else str(segmentation.SOPInstanceUID))
    if key not in built:
        built[key] = write_measurement_report(
            result, sources, profile, segmentation, pipeline=pipeline, basis=basis, predecessors=predecessors
        )
    objects.extend(built[key])
    if profile.companion == CompanionType.SECONDARY_CAPTURE:
        if "companion" not in built:
            built["companion"] = [write_companion(result, sources, pipeline=pipeline, basis=basis)]
        objects.extend(built["companion"])
    return objects
