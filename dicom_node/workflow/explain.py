"""Why a study goes (or does not go) to each pipeline: every rule, every condition, what each one saw.

``explain_study`` applies the rules exactly as ``routing.route_study`` does, but keeps every verdict
instead of the first refusal, and says which series each rule would choose and why; its ``decision`` is
``route_study``'s. ``dicom-node route --explain`` prints it. Nothing here writes to the index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dicom_node.index.models import Series, Study
from dicom_node.workflow.criteria import multiframe_note, series_images
from dicom_node.workflow.routing import Route, RoutingDecision, SeriesEvaluation, route_study

__all__ = ["RuleExplanation", "StudyExplanation", "explain_study", "series_label", "why_chosen"]


@dataclass(frozen=True)
class RuleExplanation:
    """One rule applied to every series of a study."""

    index: int
    route: Route
    series: tuple[SeriesEvaluation, ...]
    chosen: Series | None
    why_chosen: str | None
    shadowed_by: int | None
    """The earlier rule that already runs this pipeline on the study (this one is then not applied)."""


@dataclass(frozen=True)
class StudyExplanation:
    study: Study
    rules: tuple[RuleExplanation, ...]
    decision: RoutingDecision


def series_label(series: Series) -> str:
    """How routing reasons name a series: its number, else its UID."""
    return f"series {series.series_number or series.series_instance_uid}"


def _images(series: Series) -> str:
    """ "20 images", or "20 images, multi-frame: 20 frames in 1 instance"."""
    note = multiframe_note(series)
    return f"{series_images(series)[0]} images" + (f", {note}" if note else "")


def why_chosen(route: Route, chosen: Series, candidates: Sequence[Series]) -> str:
    """Why ``route.choose`` picked ``chosen`` among ``candidates``, in words."""
    among = f"of {len(candidates)} qualifying series"
    if route.select == "most_instances":
        return f"most instances {among} ({_images(chosen)})"
    if route.select == "thinnest":
        thickness = "unknown" if chosen.slice_thickness is None else f"{chosen.slice_thickness:g} mm"
        return f"thinnest {among} ({thickness}, {_images(chosen)})"
    return f"lowest series number {among} ({chosen.series_number})"


def explain_study(study: Study, routes: Sequence[Route]) -> StudyExplanation:
    """Every rule's verdicts on every series of ``study``, the series each would choose, and the decision."""
    rules: list[RuleExplanation] = []
    first_rule: dict[str, int] = {}
    for index, route in enumerate(routes):
        evaluations = tuple(route.evaluate(study, series) for series in study.series)
        candidates = [e.series for e in evaluations if e.qualifies]
        shadowed_by = first_rule.get(route.pipeline)
        chosen = route.choose(candidates) if candidates and shadowed_by is None else None
        if chosen is not None:
            first_rule[route.pipeline] = index
        reason = why_chosen(route, chosen, candidates) if chosen is not None else None
        rules.append(RuleExplanation(index, route, evaluations, chosen, reason, shadowed_by))
    return StudyExplanation(study, tuple(rules), route_study(study, routes))
