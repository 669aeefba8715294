"""Pipeline names, Series Descriptions and the marks of results from untrained weights."""

from __future__ import annotations

from pipelines.findings import (
    ClassificationResult,
    Findings,
    ModelInfo,
    NoduleDetectionResult,
    SegmentationResult,
)

# The pipeline that produces each result type (DESIGN.md, "Pipeline names"). Callers that run another
# pipeline with the same result type pass its name explicitly.
DEFAULT_PIPELINES: dict[type, str] = {
    ClassificationResult: "cxr-classification",
    NoduleDetectionResult: "ct-lung-nodules",
    SegmentationResult: "ct-vertebrae",
}

#: First word of the Series Description (and Content Description) of every object from untrained weights.
UNTRAINED_MARK = "UNTRAINED"
#: The SR's text item, the SEG's segment descriptions and the companion's first line for such objects.
UNTRAINED_NOTICE = "NOT FOR CLINICAL USE: untrained model weights"

LO_MAX = 64  # Series Description and the other LO attributes hold at most 64 characters


def default_pipeline(result: Findings) -> str:
    return DEFAULT_PIPELINES[type(result)]


def marked(model: ModelInfo, text: str) -> str:
    """``text`` with the UNTRAINED mark in front for untrained weights, cut to 64 characters after it."""
    if model.untrained:
        text = f"{UNTRAINED_MARK} {text}"
    return text[:LO_MAX]


def series_description(pipeline: str, model: ModelInfo, what: str) -> str:
    """E.g. ``"AI ct-vertebrae SEG (monai-wholebody-ct-segmentation 0.2.0)"``, at most 64 characters.

    Untrained weights put ``UNTRAINED`` first, where a cut never reaches. When the whole text does not
    fit, the model's name is left out before anything else, so that the version (``scaffold-…``) stays.
    """
    full = f"AI {pipeline} {what} ({model.name} {model.version})"
    short = f"AI {pipeline} {what} ({model.version})"
    room = LO_MAX - (len(UNTRAINED_MARK) + 1 if model.untrained else 0)
    return marked(model, full if len(full) <= room else short)
