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
    num_instances = ">= 40"
    image_type_not = ["LOCALIZER"]           # ImageType must hold none of these values
    [[routes.match_any]]
    body_part = ["CHEST", "LUNG", "THORAX"]
    [[routes.match_any]]
    series_description = "(?i)chest|thorax|lung"   # a regular expression (search)

Series attributes: ``modality``, ``body_part`` (BodyPartExamined), ``series_description``,
``protocol_name``, ``view_position``, ``orientation``, ``image_type`` (must hold all listed values),
``image_type_not``, and numbers ``slice_thickness``, ``num_instances``, ``kvp``, ``extent_mm``
(instances × slice thickness, how far a series reaches). Study attribute: ``calling_ae``. A series
description or protocol name is free text typed at the scanner, so a rule must also constrain
``modality``: a rule that trusts the description alone is refused at load time.

The settings check every rule when they load (``dicom_node.config.routes``: criteria, values, regular
expressions, selections, pipeline names); this module compiles checked rules into tests of index rows.
Without ``[[routes]]`` in the settings the shipped ``DEFAULT_ROUTES`` apply. One study can start several
pipelines (one job each); a study that matches nothing is kept, with the reason in ``Study.routing_reason``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticCustomError
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_node.config import CRITERIA, RouteSpec
from dicom_node.config.routes import (
    IMAGE_TYPE_CRITERIA,
    NUMBER_CRITERIA,
    SELECTIONS,
    STUDY_CRITERIA,
    NumberTest,
    number_test,
)
from dicom_node.config.sources import InvalidSettingsError, describe
from dicom_node.errors import ConfigError
from dicom_node.index.models import Job, JobState, Series, Study, utcnow

TEXT_ATTRIBUTES = {
    "modality": "modality",
    "body_part": "body_part_examined",
    "view_position": "view_position",
    "orientation": "orientation",
}
PATTERN_ATTRIBUTES = {"series_description": "series_description", "protocol_name": "protocol_name"}
NUMBER_ATTRIBUTES = NUMBER_CRITERIA
IMAGE_TYPE_ATTRIBUTES = IMAGE_TYPE_CRITERIA
STUDY_ATTRIBUTES = STUDY_CRITERIA
KNOWN = set(CRITERIA)

__all__ = ["DEFAULT_ROUTES", "KNOWN", "SELECTIONS", "NumberTest", "Route", "compile_route", "compile_routes"]

_SPINE_BODY_PARTS = [
    "SPINE", "CSPINE", "TSPINE", "LSPINE", "CHEST", "THORAX", "ABDOMEN", "CHESTABDOMEN", "ABDOMENPELVIS",
    "CHESTABDOMENPELVIS", "CHEST_ABDOMEN_PELVIS", "TRUNK", "WHOLEBODY", "WHOLE BODY",
]  # fmt: skip

DEFAULT_ROUTES: tuple[Mapping[str, Any], ...] = (
    {
        "pipeline": "cxr-classification",
        "select": "first",
        "match": {
            "modality": ["CR", "DX"],
            "view_position": ["PA", "AP"],
            "image_type_not": ["LOCALIZER"],
        },
        "match_any": [
            {"body_part": ["CHEST", "THORAX", "LUNG"]},
            {"series_description": r"(?i)\b(chest|thorax|thx|cxr|lung)"},
        ],
    },
    {
        "pipeline": "ct-lung-nodules",
        "select": "thinnest",
        "match": {
            "modality": "CT",
            "orientation": "axial",
            "slice_thickness": "<= 3",
            "num_instances": ">= 40",
            "image_type_not": ["LOCALIZER"],
        },
        "match_any": [
            {"body_part": ["CHEST", "THORAX", "LUNG", "CHESTABDOMEN", "CHESTABDOMENPELVIS", "TRUNK"]},
            {"series_description": r"(?i)chest|thora|lung|thx"},
        ],
    },
    {
        "pipeline": "ct-vertebrae",
        "select": "thinnest",
        "match": {
            "modality": "CT",
            "orientation": "axial",
            "slice_thickness": "<= 5",
            "extent_mm": ">= 100",
            "image_type_not": ["LOCALIZER"],
        },
        "match_any": [
            {"body_part": _SPINE_BODY_PARTS},
            {"series_description": r"(?i)spine|vertebr|whole.?body|chest|abdom|thora"},
        ],
    },
)


def parse_number_test(value: Any, *, name: str) -> NumberTest:
    """``5``, ``"<= 2.5"``, ``"0.5..3"`` or ``{min = 0.5, max = 3}`` (``ConfigError`` naming ``name``)."""
    try:
        return number_test(value)
    except PydanticCustomError as error:
        raise ConfigError(f"{name}: {error.message()}") from None


SeriesTest = Callable[[Study, Series], str | None]
"""Returns ``None`` when the series passes, else why it does not."""


def _series_value(series: Series, key: str) -> Any:
    if key == "extent_mm":
        if series.slice_thickness is None:
            return None
        return series.slice_thickness * series.num_instances
    return getattr(series, key)


def _compile_criterion(key: str, value: Any) -> SeriesTest:
    """One checked criterion (see ``config.routes.MatchBlock``) as a test of a series of a study."""
    if key in TEXT_ATTRIBUTES:
        allowed: tuple[str, ...] = value
        attribute = TEXT_ATTRIBUTES[key]

        def text_test(_study: Study, series: Series) -> str | None:
            actual = (getattr(series, attribute) or "").strip().upper()
            return None if actual in allowed else f"{key} {actual or '(none)'} not in {list(allowed)}"

        return text_test
    if key in PATTERN_ATTRIBUTES:
        pattern = value
        pattern_attribute = PATTERN_ATTRIBUTES[key]

        def pattern_test(_study: Study, series: Series) -> str | None:
            actual = getattr(series, pattern_attribute) or ""
            return None if pattern.search(actual) else f"{key} does not match {pattern.pattern!r}"

        return pattern_test
    if key in NUMBER_ATTRIBUTES:
        number: NumberTest = value

        def numeric_test(_study: Study, series: Series) -> str | None:
            actual = _series_value(series, key)
            return None if number(actual) else f"{key} {actual} is not {number.text}"

        return numeric_test
    if key in IMAGE_TYPE_ATTRIBUTES:
        wanted = set(value)
        must_hold = key == "image_type"

        def image_type_test(_study: Study, series: Series) -> str | None:
            values = {v.strip().upper() for v in (series.image_type or "").split("\\") if v.strip()}
            if must_hold and not wanted <= values:
                return f"image type {sorted(values)} lacks {sorted(wanted - values)}"
            if not must_hold and wanted & values:
                return f"image type holds {sorted(wanted & values)}"
            return None

        return image_type_test
    titles: tuple[str, ...] = value

    def calling_test(study: Study, _series: Series) -> str | None:
        actual = (study.calling_ae_title or "").strip().upper()
        return None if actual in titles else f"calling AE {actual or '(none)'} not in {list(titles)}"

    return calling_test


@dataclass(frozen=True)
class Route:
    """One compiled ``[[routes]]`` rule."""

    pipeline: str
    match: tuple[SeriesTest, ...]
    match_any: tuple[tuple[SeriesTest, ...], ...]
    select: str = "thinnest"
    quiet_period: float | None = None
    modalities: tuple[str, ...] = ()
    calling_ae_titles: tuple[str, ...] = ()

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

    def choose(self, candidates: Sequence[Series]) -> Series:
        """The series this pipeline analyses among those that qualify."""
        if self.select == "most_instances":
            return max(candidates, key=lambda s: (s.num_instances, -s.id))
        if self.select == "thinnest":
            return min(candidates, key=lambda s: (s.slice_thickness or 1e9, -s.num_instances, s.id))
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
        match=tuple(_compile_criterion(k, v) for k, v in spec.match.criteria()),
        match_any=tuple(
            tuple(_compile_criterion(k, v) for k, v in block.criteria()) for block in spec.match_any
        ),
        select=spec.select,
        quiet_period=spec.quiet_period,
        modalities=spec.match.modality or (),
        calling_ae_titles=spec.match.calling_ae or (),
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
            matches[route.pipeline] = RouteMatch(route.pipeline, chosen.id, chosen.series_instance_uid)
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
        )
        session.add(job)
        created.append(job)
    study.routed_revision = study.revision
    study.routing_reason = decision.reason
    session.flush()
    return [job.id for job in created]
