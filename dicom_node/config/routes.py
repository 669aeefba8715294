"""``[[routes]]`` specs: checked at load into typed values; ``workflow.routing`` compiles them into tests.

Here lives the vocabulary (criteria, selections, pipeline names) and every check that needs no index:
strings are upper-cased, regular expressions compiled, numeric tests parsed, ``quiet_period`` is a
duration. The pipeline name is checked against the settings' ``[jobs] plugins`` in ``settings.py``.
"""

from __future__ import annotations

import difflib
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from dicom_node.config.values import Seconds, invalid

PIPELINES = ("cxr-classification", "ct-lung-nodules", "ct-vertebrae")
"""The pipelines the node ships (``pipelines.registry.PIPELINE_NAMES``); plugins may add more."""
SELECTIONS = ("thinnest", "most_instances", "first")
COMPLETE_ON = ("quiet", "association", "commitment", "mpps")
"""What tells a route that a study is complete (``workflow.completion``); the quiet period always does."""
CONTENT_CHECKS = ("lungs", "spine")
"""Checks of the chosen series' pixels a route may require (``pipelines.content_checks.CHECKS``)."""
ORIENTATIONS = ("AXIAL", "CORONAL", "SAGITTAL", "OBLIQUE")

TEXT_CRITERIA = ("modality", "body_part", "body_part_not", "view_position", "orientation", "anatomic_region")
PATTERN_CRITERIA = (
    "series_description",
    "protocol_name",
    "study_description",
    "requested_procedure_description",
    "description",
    "description_not",
)
NUMBER_CRITERIA = ("slice_thickness", "num_instances", "kvp", "extent_mm")
IMAGE_TYPE_CRITERIA = ("image_type", "image_type_not")
STUDY_CRITERIA = ("calling_ae", "procedure_code")
CRITERIA = TEXT_CRITERIA + PATTERN_CRITERIA + NUMBER_CRITERIA + IMAGE_TYPE_CRITERIA + STUDY_CRITERIA

_COMPARISON = re.compile(r"^\s*(<=|>=|==|!=|<|>)\s*(-?[0-9]+(?:\.[0-9]*)?)\s*$")
_RANGE = re.compile(r"^\s*(-?[0-9]+(?:\.[0-9]*)?)\s*\.\.\s*(-?[0-9]+(?:\.[0-9]*)?)\s*$")
_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
    "==": operator.eq, "!=": operator.ne,
}  # fmt: skip


@dataclass(frozen=True)
class NumberTest:
    """A numeric criterion as written (``text``): one comparison ``op bound``, or ``op == "range"``."""

    text: str
    op: str
    bound: float = 0.0
    high: float = 0.0

    def __call__(self, value: float | None) -> bool:
        if value is None:
            return False
        if self.op == "range":
            return self.bound <= value <= self.high
        return _OPERATORS[self.op](value, self.bound)

    def __str__(self) -> str:
        return self.text


def number_test(value: Any) -> NumberTest:
    """``5``, ``"<= 2.5"``, ``"0.5..3"`` or ``{min = 0.5, max = 3}``; pydantic error otherwise."""
    if isinstance(value, NumberTest):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return NumberTest(f"== {value}", "==", float(value))
    if isinstance(value, Mapping):
        if not value or set(value) - {"min", "max"}:
            raise invalid(f"a range table takes min and/or max, got {dict(value)!r}")
        try:
            low = float(value.get("min", float("-inf")))
            high = float(value.get("max", float("inf")))
        except (TypeError, ValueError):
            raise invalid(f"a range table takes numbers, got {dict(value)!r}") from None
        return NumberTest(f"{low}..{high}", "range", low, high)
    if isinstance(value, str):
        if match := _COMPARISON.match(value):
            return NumberTest(value.strip(), match.group(1), float(match.group(2)))
        if match := _RANGE.match(value):
            return NumberTest(value.strip(), "range", float(match.group(1)), float(match.group(2)))
    raise invalid(f"expected a number, comparison (e.g. '<= 2.5') or range ('1..3'), got {value!r}")


def _upper_strings(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items or not all(isinstance(i, str) for i in items):
        raise invalid(f"expected a string or a list of strings, got {value!r}")
    return tuple(i.strip().upper() for i in items)


def _orientations(value: Any) -> tuple[str, ...]:
    wanted = _upper_strings(value)
    if unknown := [v for v in wanted if v not in ORIENTATIONS and v != ""]:
        raise invalid(f"orientation is one of {', '.join(o.lower() for o in ORIENTATIONS)}, got {unknown}")
    return wanted


def _regex(value: Any) -> re.Pattern[str]:
    if isinstance(value, re.Pattern):
        return value
    if not isinstance(value, str):
        raise invalid(f"expected a regular expression, got {value!r}")
    try:
        return re.compile(value)
    except re.error as error:
        raise invalid(f"not a regular expression: {error}") from None


def _pattern_text(pattern: re.Pattern[str]) -> str:
    return pattern.pattern


def _test_text(test: NumberTest) -> str:
    return test.text


Values = Annotated[tuple[str, ...], BeforeValidator(_upper_strings)]
Orientations = Annotated[tuple[str, ...], BeforeValidator(_orientations)]
Pattern = Annotated[re.Pattern[str], PlainValidator(_regex), PlainSerializer(_pattern_text, return_type=str)]
Number = Annotated[NumberTest, PlainValidator(number_test), PlainSerializer(_test_text, return_type=str)]


class MatchBlock(BaseModel):
    """Criteria one series must all meet (a ``[routes.match]`` or ``[[routes.match_any]]`` table).

    In a list of values, ``""`` admits a series (or study) that lacks the attribute; ``*_not`` criteria
    refuse what they list or match. What each criterion reads is in ``workflow.criteria``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    modality: Values | None = None
    body_part: Values | None = None
    body_part_not: Values | None = None
    view_position: Values | None = None
    orientation: Orientations | None = None
    anatomic_region: Values | None = None
    series_description: Pattern | None = None
    protocol_name: Pattern | None = None
    study_description: Pattern | None = None
    requested_procedure_description: Pattern | None = None
    description: Pattern | None = None
    description_not: Pattern | None = None
    slice_thickness: Number | None = None
    num_instances: Number | None = None
    kvp: Number | None = None
    extent_mm: Number | None = None
    image_type: Values | None = None
    image_type_not: Values | None = None
    calling_ae: Values | None = None
    procedure_code: Values | None = None
    _order: tuple[str, ...] = PrivateAttr(default=())

    @model_validator(mode="wrap")
    @classmethod
    def _keep_order(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        # Criteria are tried in the order written, so a refusal names the first one that failed.
        block = handler(data)
        if isinstance(data, Mapping) and isinstance(block, MatchBlock):
            block._order = tuple(str(key) for key in data)
        return block

    def criteria(self) -> list[tuple[str, Any]]:
        """The criteria that are set, as ``(name, checked value)``, in the order they were written."""
        given = [name for name in self._order if getattr(self, name, None) is not None]
        rest = [name for name in CRITERIA if name not in given and getattr(self, name) is not None]
        return [(name, getattr(self, name)) for name in given + rest]


class RouteSpec(BaseModel):
    """One ``[[routes]]`` rule, checked: a pipeline, how to choose its series, and what it matches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pipeline: str
    select: Literal["thinnest", "most_instances", "first"] = "thinnest"
    match: MatchBlock = Field(default_factory=MatchBlock, validate_default=True)
    match_any: tuple[MatchBlock, ...] = ()
    quiet_period: Seconds | None = None
    """Widens the completion window of the studies this rule may match (seconds)."""
    complete_on: Literal["quiet", "association", "commitment", "mpps"] = "quiet"
    """Besides the quiet period: the sender's association released (plus ``association_settle``), a
    Storage Commitment request covering the study, or a COMPLETED MPPS whose instances are all present."""
    enabled: bool = True
    requires: tuple[str, ...] = ()
    """Content checks the chosen series must pass before the pipeline runs (else the job is skipped)."""

    @field_validator("requires", mode="before")
    @classmethod
    def _requires(cls, value: Any) -> Any:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise invalid(
                f"requires is a list of content checks ({', '.join(CONTENT_CHECKS)}), got {value!r}"
            )
        names = tuple(dict.fromkeys(i.strip().lower() for i in items))
        if unknown := [n for n in names if n not in CONTENT_CHECKS]:
            close = difflib.get_close_matches(unknown[0], CONTENT_CHECKS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise invalid(
                f"unknown content check {unknown[0]!r}{hint}: requires takes {', '.join(CONTENT_CHECKS)}"
            )
        return names

    @field_validator("pipeline", mode="before")
    @classmethod
    def _pipeline(cls, value: Any) -> Any:
        if not isinstance(value, str) or not value.strip():
            raise invalid(f"every route needs a pipeline name, got {value!r}")
        return value.strip()

    @field_validator("complete_on", mode="before")
    @classmethod
    def _complete_on(cls, value: Any) -> Any:
        if value not in COMPLETE_ON:
            close = difflib.get_close_matches(str(value), COMPLETE_ON, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise invalid(f"complete_on is one of {', '.join(COMPLETE_ON)}, got {value!r}{hint}")
        return value

    @field_validator("select", mode="before")
    @classmethod
    def _select(cls, value: Any) -> Any:
        if value not in SELECTIONS:
            raise invalid(f"select is one of {', '.join(SELECTIONS)}, got {value!r}")
        return value

    @field_validator("match")
    @classmethod
    def _modality_required(cls, block: MatchBlock) -> MatchBlock:
        # Free-text descriptions are typed at the scanner; a modality keeps a rule honest.
        if block.modality is None:
            raise invalid("modality is required (a series description alone is not trusted)")
        return block
