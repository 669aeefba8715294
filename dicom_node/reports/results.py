"""All objects of one pipeline result, in the order a destination should receive them."""

from __future__ import annotations

from collections.abc import Hashable, MutableMapping, Sequence
from typing import cast

import highdicom as hd
import numpy as np
import pydicom

from pipelines.findings import ClassificationResult, Findings, NoduleDetectionResult, SegmentationResult

from .companion import write_companion
from .naming import default_pipeline
from .nodules import nodule_segmentation
from .parametric_map import write_parametric_maps
from .presentation import write_presentation_state
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
    """SEG first (for a segmentation with any foreground), then the SR(s), then the Parametric Maps of a
    classification's activation maps (if any), then the companion if asked.

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
    # The SR's content depends on the SEG it references, nothing else of the profile.
    key = ("sr", None if segmentation is None else str(segmentation.SOPInstanceUID))
    if key not in built:
        built[key] = write_measurement_report(
            result, sources, profile, segmentation, pipeline=pipeline, basis=basis, predecessors=predecessors
        )
    objects.extend(built[key])
    if profile.presentation_state:  # one GSPS per SR that has outlines (reports/presentation.py)
        for sr in built[key]:
            pr_key = ("pr", str(sr.SOPInstanceUID))
            if pr_key not in built:
                pr = write_presentation_state(sr, result, sources, pipeline=pipeline, basis=basis)
                built[pr_key] = [] if pr is None else [pr]
            objects.extend(built[pr_key])
    if isinstance(result, ClassificationResult):
        # The CAMs of positive findings, the same for every profile (parametric_map.py).
        if "parametric-maps" not in built:
            built["parametric-maps"] = list(
                write_parametric_maps(result, sources, pipeline=pipeline, basis=basis)
            )
        objects.extend(built["parametric-maps"])
    if profile.companion == CompanionType.SECONDARY_CAPTURE:
        if "companion" not in built:
            built["companion"] = [write_companion(result, sources, pipeline=pipeline, basis=basis)]
        objects.extend(built["companion"])
    return objects
