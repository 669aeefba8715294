"""Pipeline names and Series Descriptions of result objects."""

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


def default_pipeline(result: Findings) -> str:
    return DEFAULT_PIPELINES[type(result)]


def series_description(pipeline: str, model: ModelInfo, what: str) -> str:
    """E.g. ``"AI ct-vertebrae SEG (monai-wholebody-ct-segmentation 0.2.0)"``, cut to 64 characters."""
    return f"AI {pipeline} {what} ({model.name} {model.version})"[:64]
