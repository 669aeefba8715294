"""Routing: declarative ``[[routes]]`` rules decide which pipelines run on a complete study, on which series.

A rule names a pipeline and criteria that one series must meet (all of ``match``, and at least one entry
of ``match_any`` when given)::

    [[routes]]
    pipeline = "ct-lung-nodules"
    select = "thinnest"                      # thinnest | most_instances | first
    [routes.match]
    modality = ["CT"]                        # a string or a list of allowed values
    orientation = "axial"                    # derived from ImageOrientationPatient at ingest
    slice_thickness = "<= 3"                 # <, <=, >, >=, ==, != or a range "0.5..3" or {min, max}
    extent_mm = ">= 100"                     # from the slice positions, not the instance count
    image_type_not = ["LOCALIZER"]           # ImageType must hold none of these values
    body_part_not = ["HEAD", "BRAIN"]
    [[routes.match_any]]
    body_part = ["CHEST", "LUNG", "THORAX"]
    [[routes.match_any]]
    description = "(?i)chest|thorax|lung"    # a regular expression searched in every description
    [[routes.match_any]]
    body_part = ["PARTIALBODY", ""]          # "" admits a series without the attribute
    description_not = "(?i)head|brain"
    extent_mm = ">= 150"

``workflow.criteria`` says what every criterion reads. A series description or protocol name is free
text typed at the scanner, so a rule must also constrain ``modality``: a rule that trusts the
description alone is refused at load time.

The settings check every rule when they load (``dicom_node.config.routes``: criteria, values, regular
expressions, selections, pipeline names); this module compiles checked rules into conditions on index
rows. Without ``[[routes]]`` in the settings the shipped ``DEFAULT_ROUTES`` (``workflow.defaults``)
apply. One study can start several pipelines (one job each); a study that matches nothing is kept, with
the reason in ``Study.routing_reason``. ``workflow.explain`` shows every condition's verdict.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticCustomError
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_node.config import CRITERIA, RouteSpec
from dicom_node.config.routes import SELECTIONS, NumberTest, number_test
from dicom_node.config.sources import InvalidSettingsError, describe
from dicom_node.errors import ConfigError
from dicom_node.index.models import Job, JobState, Series, Study, utcnow
from dicom_node.workflow.criteria import (
    IMAGE_TYPE_ATTRIBUTES,
    NUMBER_ATTRIBUTES,
    PATTERN_ATTRIBUTES,
    STUDY_ATTRIBUTES,
    TEXT_ATTRIBUTES,
    Condition,
    Verdict,
    compile_criterion,
    series_images,
)
from dicom_node.workflow.defaults import DEFAULT_ROUTES

KNOWN = set(CRITERIA)

__all__ = [
    "DEFAULT_ROUTES",
    "IMAGE_TYPE_ATTRIBUTES",
    "KNOWN",
    "NUMBER_ATTRIBUTES",
    "PATTERN_ATTRIBUTES",
    "SELECTIONS",
    "STUDY_ATTRIBUTES",
    "TEXT_ATTRIBUTES",
    "NumberTest",
    "Route",
    "SeriesEvaluation",
    "compile_route",
    "compile_routes",
    "route_study",
]


def parse_number_test(value: Any, *, name: str) -> NumberTest:
    """``5``, ``"<= 2.5"``, ``"0.5..3"`` or ``{min = 0.5, max = 3}`` (``ConfigError`` naming ``name``)."""
    try:
        return number_test(value)
    except PydanticCustomError as error:
        raise ConfigError(f"{name}: {error.message()}") from None


@dataclass(frozen=True)
class SeriesEvaluation:
    """Every condition of one rule applied to one series, and the refusal ``why_not`` gives."""

    series: Series
    match: tuple[Verdict, ...]
    match_any: tuple[tuple[Verdict, ...], ...]
    reason: str | None

    @property
    def qualifies(self) -> bool:
        return self.reason is None


def _refusal(match: Sequence[Verdict], match_any: Sequence[Sequence[Verdict]]) -> str | None:
    """The first refusal of ``match``, else (when no alternative holds) the first of each alternative."""
    if (failed := next((v.reason for v in match if not v.passed), None)) is not None:
        return failed
    if not match_any:
        return None
    reasons = []
    for alternative in match_any:
        first = next((v.reason for v in alternative if not v.passed), None)
        if first is None:
            return None
        reasons.append(first)
    return " and ".join(reasons)


@dataclass(frozen=True)
class Route:
    """One compiled ``[[routes]]`` rule."""

    pipeline: str
    match: tuple[Condition, ...]
    match_any: tuple[tuple[Condition, ...], ...]
    select: str = "thinnest"
    quiet_period: float | None = None
    modalities: tuple[str, ...] = ()
    calling_ae_titles: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    """Content checks of the chosen series before the pipeline runs (``jobs.content``)."""
    complete_on: str = "quiet"
    """The completion evidence this rule accepts besides its quiet period (``workflow.completion``)."""

    def may_match(self, study: Study) -> bool:
        """Whether the study's modalities and calling AE allow this rule (study-level, any case)."""
        modalities = {m.strip().upper() for m in (study.modalities or "").split("\\") if m.strip()}
        if self.modalities and not modalities & set(self.modalities):
            return False
        calling = (study.calling_ae_title or "").strip().upper()
        return not self.calling_ae_titles or calling in self.calling_ae_titles

    def why_not(self, study: Study, series: Series) -> str | None:
        """``None`` if ``series`` of ``study`` qualifies, else the first reason it does not."""
        for test in self.match:
            if (reason := test(study, series)) is not None:
                return reason
        if not self.match_any:
            return None
        reasons = []
        for alternative in self.match_any:
            failed = next((r for t in alternative if (r := t(study, series)) is not None), None)
            if failed is None:
                return None
            reasons.append(failed)
        return " and ".join(reasons)

    def evaluate(self, study: Study, series: Series) -> SeriesEvaluation:
        """Every condition's verdict on ``series`` (``why_not`` stops at the first refusal instead)."""
        match = tuple(c.verdict(study, series) for c in self.match)
        match_any = tuple(tuple(c.verdict(study, series) for c in block) for block in self.match_any)
        return SeriesEvaluation(series, match, match_any, _refusal(match, match_any))

    def choose(self, candidates: Sequence[Series]) -> Series:
        """The series this pipeline analyses among those that qualify."""
        if self.select == "most_instances":
            return max(candidates, key=lambda s: (series_images(s)[0], -s.id))
        if self.select == "thinnest":
            return min(candidates, key=lambda s: (s.slice_thickness or 1e9, -series_images(s)[0], s.id))
        return min(
            candidates, key=lambda s: (s.series_number if s.series_number is not None else 1 << 30, s.id)
        )


def route_spec(table: Mapping[str, Any] | RouteSpec, index: int = 0) -> RouteSpec:
    """A ``[[routes]]`` table checked as the settings check it (``ConfigError`` listing every problem)."""
    if isinstance(table, RouteSpec):
        return table
    try:
        return RouteSpec.model_validate(table)
    except ValidationError as error:
        data = {"routes": [*([None] * index), table]}
        raise InvalidSettingsError(
            describe(e["type"], ("routes", index, *e["loc"]), e["msg"], e["input"], data, {})
            for e in error.errors()
        ) from None


def _compile(spec: RouteSpec) -> Route:
    return Route(
        pipeline=spec.pipeline,
        match=tuple(compile_criterion(k, v) for k, v in spec.match.criteria()),
        match_any=tuple(
            tuple(compile_criterion(k, v) for k, v in block.criteria()) for block in spec.match_any
        ),
        select=spec.select,
        quiet_period=spec.quiet_period,
        modalities=spec.match.modality or (),
        calling_ae_titles=spec.match.calling_ae or (),
        requires=spec.requires,
        complete_on=spec.complete_on,
    )


def compile_route(table: Mapping[str, Any] | RouteSpec, index: int = 0) -> Route:
    """Check (if not checked yet) and compile one ``[[routes]]`` rule."""
    return _compile(route_spec(table, index))


@functools.lru_cache(maxsize=32)
def _compiled(specs: tuple[RouteSpec, ...]) -> tuple[Route, ...]:
    return tuple(_compile(spec) for spec in specs if spec.enabled)


@functools.cache
def _default_specs() -> tuple[RouteSpec, ...]:
    return tuple(route_spec(table, index) for index, table in enumerate(DEFAULT_ROUTES))


def compile_routes(tables: Iterable[Mapping[str, Any] | RouteSpec]) -> tuple[Route, ...]:
    """The enabled routes of the settings (or the shipped defaults when none are configured).

    Settings hold checked ``RouteSpec``s; their compiled form is cached, so the reconciler and the
    assembler, which ask on every pass, compile each configuration once.
    """
    specs = tuple(route_spec(table, index) for index, table in enumerate(tables)) or _default_specs()
    return _compiled(specs)


@dataclass(frozen=True)
class RouteMatch:
    pipeline: str
    series_id: int
    series_instance_uid: str
    requires: tuple[str, ...] = ()


@dataclass(frozen=True)
class RoutingDecision:
    """The pipelines to run on a study; ``reason`` says why none matched when ``matches`` is empty."""

    matches: tuple[RouteMatch, ...]
    reason: str | None


def route_study(
    study: Study, routes: Sequence[Route], series_list: Sequence[Series] | None = None
) -> RoutingDecision:
    """Apply ``routes`` to the series of ``study`` (or to ``series_list``): at most one job per pipeline."""
    matches: dict[str, RouteMatch] = {}
    reasons: list[str] = []
    for route in routes:
        if route.pipeline in matches:
            continue
        candidates: list[Series] = []
        refusals: list[str] = []
        for series in study.series if series_list is None else series_list:
            why = route.why_not(study, series)
            if why is None:
                candidates.append(series)
            else:
                refusals.append(f"series {series.series_number or series.series_instance_uid}: {why}")
        if candidates:
            chosen = route.choose(candidates)
            matches[route.pipeline] = RouteMatch(
                route.pipeline, chosen.id, chosen.series_instance_uid, route.requires
            )
        else:
            reasons.append(f"{route.pipeline}: " + ("; ".join(refusals[:3]) or "no series"))
    if matches:
        return RoutingDecision(tuple(matches.values()), None)
    return RoutingDecision((), "no route matched — " + " | ".join(reasons) if reasons else "no routes")


def _unchanged_since_last_run(session: Session, study: Study, match: RouteMatch) -> bool:
    """Whether an earlier revision already ran this pipeline on this series, and the series is the same.

    A new revision re-runs a pipeline only if its chosen series changed: result objects the node stores
    in the study (and instances added to other series) re-open the study but need no new analysis.
    """
    previous = session.scalar(
        select(Job)
        .where(Job.study_id == study.id, Job.pipeline == match.pipeline, Job.study_revision < study.revision)
        .order_by(Job.study_revision.desc())
        .limit(1)
    )
    if previous is None or previous.series_id != match.series_id:
        return False
    series = session.get(Series, match.series_id)
    if series is None:
        return False
    changed = series.last_received_at > previous.created_at
    return not changed


def create_jobs(session: Session, study: Study, decision: RoutingDecision) -> list[int]:
    """Insert one queued job per match for the study's current revision (idempotent); return new ids."""
    existing = {
        j.pipeline: j
        for j in session.scalars(
            select(Job).where(Job.study_id == study.id, Job.study_revision == study.revision)
        ).all()
    }
    now = utcnow()
    created: list[Job] = []
    for match in decision.matches:
        if match.pipeline in existing or _unchanged_since_last_run(session, study, match):
            continue
        job = Job(
            study_id=study.id,
            series_id=match.series_id,
            study_revision=study.revision,
            pipeline=match.pipeline,
            state=JobState.QUEUED,
            attempts=0,
            stable_at=study.completed_at,
            created_at=now,
            requires=",".join(match.requires) or None,
        )
        session.add(job)
        created.append(job)
    study.routed_revision = study.revision
    study.routing_reason = decision.reason
    session.flush()
    return [job.id for job in created]
