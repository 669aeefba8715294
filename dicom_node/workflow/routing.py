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

Without ``[[routes]]`` in the settings the shipped ``DEFAULT_ROUTES`` apply. One study can start several
pipelines (one job each); a study that matches nothing is kept, with the reason in ``Study.routing_reason``.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_node.errors import ConfigError
from dicom_node.index.models import Job, JobState, Series, Study, utcnow

TEXT_ATTRIBUTES = {
    "modality": "modality",
    "body_part": "body_part_examined",
    "view_position": "view_position",
    "orientation": "orientation",
}
PATTERN_ATTRIBUTES = {"series_description": "series_description", "protocol_name": "protocol_name"}
NUMBER_ATTRIBUTES = ("slice_thickness", "num_instances", "kvp", "extent_mm")
IMAGE_TYPE_ATTRIBUTES = ("image_type", "image_type_not")
STUDY_ATTRIBUTES = ("calling_ae",)
KNOWN = (
    set(TEXT_ATTRIBUTES)
    | set(PATTERN_ATTRIBUTES)
    | set(NUMBER_ATTRIBUTES)
    | set(IMAGE_TYPE_ATTRIBUTES)
    | set(STUDY_ATTRIBUTES)
)
SELECTIONS = ("thinnest", "most_instances", "first")

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

_COMPARISON = re.compile(r"^\s*(<=|>=|==|!=|<|>)\s*(-?[0-9.]+)\s*$")
_RANGE = re.compile(r"^\s*(-?[0-9.]+)\s*\.\.\s*(-?[0-9.]+)\s*$")
_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
    "==": operator.eq, "!=": operator.ne,
}  # fmt: skip


@dataclass(frozen=True)
class NumberTest:
    """A numeric criterion: ``low <= value <= high`` or one comparison, as written in the rule."""

    text: str
    test: Callable[[float], bool]

    def __call__(self, value: float | None) -> bool:
        return value is not None and self.test(value)


def parse_number_test(value: Any, *, name: str) -> NumberTest:
    """``5``, ``"<= 2.5"``, ``"0.5..3"`` or ``{min = 0.5, max = 3}``."""
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected a number, comparison or range, got {value!r}")
    if isinstance(value, int | float):
        number = float(value)
        return NumberTest(f"== {value}", lambda v: v == number)
    if isinstance(value, Mapping):
        unknown = set(value) - {"min", "max"}
        if unknown or not value:
            raise ConfigError(f"{name}: a range table takes min and/or max, got {dict(value)!r}")
        low = float(value["min"]) if "min" in value else float("-inf")
        high = float(value["max"]) if "max" in value else float("inf")
        return NumberTest(f"{low}..{high}", lambda v: low <= v <= high)
    if isinstance(value, str):
        if match := _COMPARISON.match(value):
            op, bound = _OPERATORS[match.group(1)], float(match.group(2))
            return NumberTest(value.strip(), lambda v: op(v, bound))
        if match := _RANGE.match(value):
            low, high = float(match.group(1)), float(match.group(2))
            return NumberTest(value.strip(), lambda v: low <= v <= high)
    raise ConfigError(
        f"{name}: expected a number, comparison (e.g. '<= 2.5') or range ('1..3'), got {value!r}"
    )


def _strings(value: Any, *, name: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items or not all(isinstance(i, str) for i in items):
        raise ConfigError(f"{name}: expected a string or a list of strings, got {value!r}")
    return tuple(i.strip().upper() for i in items)


SeriesTest = Callable[[Study, Series], str | None]
"""Returns ``None`` when the series passes, else why it does not."""


def _series_value(series: Series, key: str) -> Any:
    if key == "extent_mm":
        if series.slice_thickness is None:
            return None
        return series.slice_thickness * series.num_instances
    return getattr(series, key)


def _compile_criterion(key: str, value: Any, *, name: str) -> SeriesTest:
    label = f"{name}.{key}"
    if key in TEXT_ATTRIBUTES:
        allowed = _strings(value, name=label)
        attribute = TEXT_ATTRIBUTES[key]

        def text_test(_study: Study, series: Series) -> str | None:
            actual = (getattr(series, attribute) or "").strip().upper()
            return None if actual in allowed else f"{key} {actual or '(none)'} not in {list(allowed)}"

        return text_test
    if key in PATTERN_ATTRIBUTES:
        try:
            pattern = re.compile(str(value))
        except re.error as error:
            raise ConfigError(f"{label}: not a regular expression: {error}") from None
        pattern_attribute = PATTERN_ATTRIBUTES[key]

        def pattern_test(_study: Study, series: Series) -> str | None:
            actual = getattr(series, pattern_attribute) or ""
            return None if pattern.search(actual) else f"{key} does not match {pattern.pattern!r}"

        return pattern_test
    if key in NUMBER_ATTRIBUTES:
        number_test = parse_number_test(value, name=label)

        def numeric_test(_study: Study, series: Series) -> str | None:
            actual = _series_value(series, key)
            return None if number_test(actual) else f"{key} {actual} is not {number_test.text}"

        return numeric_test
    if key in IMAGE_TYPE_ATTRIBUTES:
        wanted = set(_strings(value, name=label))
        must_hold = key == "image_type"

        def image_type_test(_study: Study, series: Series) -> str | None:
            values = {v.strip().upper() for v in (series.image_type or "").split("\\") if v.strip()}
            if must_hold and not wanted <= values:
                return f"image type {sorted(values)} lacks {sorted(wanted - values)}"
            if not must_hold and wanted & values:
                return f"image type holds {sorted(wanted & values)}"
            return None

        return image_type_test
    if key == "calling_ae":
        titles = _strings(value, name=label)

        def calling_test(study: Study, _series: Series) -> str | None:
            actual = (study.calling_ae_title or "").strip().upper()
            return None if actual in titles else f"calling AE {actual or '(none)'} not in {list(titles)}"

        return calling_test
    raise ConfigError(f"{label}: unknown criterion; known: {sorted(KNOWN)}")


def _compile_block(block: Any, *, name: str) -> tuple[SeriesTest, ...]:
    if not isinstance(block, Mapping):
        raise ConfigError(f"{name}: expected a table of criteria, got {block!r}")
    return tuple(_compile_criterion(str(k), v, name=name) for k, v in block.items())


@dataclass(frozen=True)
class Route:
    """One compiled ``[[routes]]`` rule."""

    pipeline: str
    match: tuple[SeriesTest, ...]
    match_any: tuple[tuple[SeriesTest, ...], ...]
    select: str = "thinnest"

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


def compile_route(table: Mapping[str, Any], index: int = 0) -> Route:
    """Check and compile one ``[[routes]]`` table."""
    name = f"routes[{index}]"
    pipeline = table.get("pipeline")
    if not isinstance(pipeline, str) or not pipeline:
        raise ConfigError(f"{name}: every route needs a pipeline name")
    name = f"routes[{index}] ({pipeline})"
    unknown = set(table) - {"pipeline", "match", "match_any", "select", "quiet_period", "enabled"}
    if unknown:
        raise ConfigError(f"{name}: unknown keys {sorted(unknown)}")
    match = dict(table.get("match", {}))
    if "modality" not in match:
        # Free-text descriptions are typed at the scanner; a modality keeps a rule honest.
        raise ConfigError(f"{name}: match.modality is required (a series description alone is not trusted)")
    alternatives = table.get("match_any", [])
    if not isinstance(alternatives, list):
        raise ConfigError(f"{name}: match_any must be a list of tables ([[routes.match_any]])")
    select_how = str(table.get("select", "thinnest"))
    if select_how not in SELECTIONS:
        raise ConfigError(f"{name}: select must be one of {list(SELECTIONS)}, got {select_how!r}")
    return Route(
        pipeline=pipeline,
        match=_compile_block(match, name=f"{name}.match"),
        match_any=tuple(_compile_block(a, name=f"{name}.match_any") for a in alternatives),
        select=select_how,
    )


def compile_routes(tables: Iterable[Mapping[str, Any]]) -> tuple[Route, ...]:
    """The routes from the settings (or the shipped defaults when none are configured)."""
    tables = tuple(tables) or DEFAULT_ROUTES
    return tuple(compile_route(t, i) for i, t in enumerate(tables) if t.get("enabled", True) is not False)


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
