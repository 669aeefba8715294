"""Routing criteria compiled into conditions on index rows: each one passes or refuses, and says what it saw.

What each criterion of ``config.routes.MatchBlock`` reads (a series row, or the row of its study):

* ``modality``, ``body_part`` (Body Part Examined), ``view_position``, ``orientation`` (axial, coronal,
  sagittal, oblique; derived at ingest): the series' value is one of those listed. Any case; for
  ``body_part`` spaces, ``_`` and ``-`` do not count either (``CHEST_ABDOMEN`` is ``CHEST ABDOMEN``).
  ``""`` in the list admits a series without the attribute. ``body_part_not``: none of those listed.
* ``anatomic_region``: a code value or code meaning of the series' Anatomic Region Sequence is listed
  (``"51185008"``, ``"T-D3000"``, ``"CHEST"``); ``procedure_code``: one of the study's procedure codes
  (Procedure Code Sequence, Requested Procedure Code Sequence) is, by value or meaning.
* ``series_description``, ``protocol_name`` (series), ``study_description``,
  ``requested_procedure_description`` (study): a regular expression found in the text.
  ``description``: found in any of those four or in a procedure code's meaning; ``description_not``:
  found in none of them.
* ``slice_thickness``, ``num_instances``, ``kvp``: the series' numbers. ``num_instances`` counts images
  (planes): a multi-frame image (Enhanced or Legacy Converted Enhanced CT) counts its frames, so one
  object of 300 frames passes ``>= 40`` as its 300 source slices would, and what it saw reads
  "300 (multi-frame: 300 frames in 1 instance)" (``series_images``). ``extent_mm``: how far the series
  reaches along its slice normal, from the slice positions received (highest − lowest position, plus one
  slice thickness): a series whose instances share a few positions has a small extent however many
  instances it holds; a series without Image Position (Patient) has none.
* ``image_type`` (holds all listed), ``image_type_not`` (holds none); ``calling_ae`` (the study's calling
  AE title).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dicom_node.config.routes import IMAGE_TYPE_CRITERIA, NUMBER_CRITERIA, NumberTest
from dicom_node.index.models import Series, Study, coded_entries

__all__ = [
    "DESCRIPTION_FIELDS",
    "IMAGE_TYPE_ATTRIBUTES",
    "NUMBER_ATTRIBUTES",
    "PATTERN_ATTRIBUTES",
    "STUDY_ATTRIBUTES",
    "TEXT_ATTRIBUTES",
    "Condition",
    "Verdict",
    "compile_criterion",
    "multiframe_note",
    "series_extent",
    "series_images",
]

TEXT_ATTRIBUTES = {
    "modality": "modality",
    "body_part": "body_part_examined",
    "body_part_not": "body_part_examined",
    "view_position": "view_position",
    "orientation": "orientation",
    "anatomic_region": "anatomic_region",
}
PATTERN_ATTRIBUTES = {
    "series_description": "series_description",
    "protocol_name": "protocol_name",
    "study_description": "study_description",
    "requested_procedure_description": "requested_procedure_description",
    "description": "*",
    "description_not": "*",
}
NUMBER_ATTRIBUTES = NUMBER_CRITERIA
IMAGE_TYPE_ATTRIBUTES = IMAGE_TYPE_CRITERIA
STUDY_ATTRIBUTES = {"calling_ae": "calling_ae_title", "procedure_code": "procedure_codes"}
_STUDY_PATTERNS = {"study_description", "requested_procedure_description"}
_NORMALISED = {"body_part", "body_part_not", "anatomic_region"}
_CODED = {"anatomic_region", "procedure_code"}
_NOT_ALNUM = re.compile(r"[^A-Z0-9]")


def _procedure_meanings(study: Study, _series: Series) -> str | None:
    meanings = dict.fromkeys(meaning for _, _, meaning in coded_entries(study.procedure_codes) if meaning)
    return "; ".join(meanings) or None


DESCRIPTION_FIELDS: tuple[tuple[str, Callable[[Study, Series], str | None]], ...] = (
    ("study_description", lambda study, _series: study.study_description),
    ("requested_procedure_description", lambda study, _series: study.requested_procedure_description),
    ("procedure_code", _procedure_meanings),
    ("series_description", lambda _study, series: series.series_description),
    ("protocol_name", lambda _study, series: series.protocol_name),
)
"""The free texts ``description`` searches, in this order."""


@dataclass(frozen=True)
class Verdict:
    """One condition applied to one series: what it wanted, what it saw, why it refused (``None``: passed)."""

    criterion: str
    wanted: str
    seen: str
    reason: str | None

    @property
    def passed(self) -> bool:
        return self.reason is None


Check = Callable[[Study, Series], tuple[str, str | None]]
"""(what was seen, the refusal or ``None``)."""


@dataclass(frozen=True)
class Condition:
    """One compiled criterion; calling it gives the refusal (``None`` when the series passes)."""

    criterion: str
    wanted: str
    check: Check

    def verdict(self, study: Study, series: Series) -> Verdict:
        seen, reason = self.check(study, series)
        return Verdict(self.criterion, self.wanted, seen, reason)

    def __call__(self, study: Study, series: Series) -> str | None:
        return self.check(study, series)[1]


def series_extent(series: Series) -> float | None:
    """How far the series reaches along its slice normal (mm), from its slice positions; ``None`` without."""
    low, high = series.slice_position_min, series.slice_position_max
    if low is None or high is None:
        return None
    return round(high - low + (series.slice_thickness or 0.0), 2)


def multiframe_note(series: Series) -> str | None:
    """ "multi-frame: 20 frames in 1 instance" for a series of multi-frame images, else ``None``."""
    frames = series.num_frames or 0
    if frames <= series.num_instances:
        return None
    return f"multi-frame: {frames} frames in {series.num_instances} instance" + (
        "" if series.num_instances == 1 else "s"
    )


def series_images(series: Series) -> tuple[int, str]:
    """The images (planes) of a series and how reasons show them: frames for a multi-frame series."""
    images = max(series.num_frames or 0, series.num_instances)
    note = multiframe_note(series)
    return images, f"{images} ({note})" if note else str(images)


def _key(text: str, normalised: bool) -> str:
    text = text.strip().upper()
    return _NOT_ALNUM.sub("", text) if normalised else text


def _listed(key: str, allowed: Sequence[str]) -> tuple[set[str], bool, list[str]]:
    normalised = key in _NORMALISED
    keys = {_key(a, normalised) for a in allowed if a}
    return keys, "" in allowed, [a for a in allowed if a]


def _brief_list(values: Sequence[str], limit: int = 4) -> str:
    """A list as reasons show it: whole up to ``limit`` values (``route --explain`` shows all of it)."""
    if len(values) <= limit:
        return str(list(values))
    return str(list(values[:limit]))[:-1] + f", … {len(values) - limit} more]"


def _brief_pattern(pattern: re.Pattern[str], limit: int = 48) -> str:
    text = pattern.pattern
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "…"


def _not_listed(key: str, seen: str, shown: list[str], admits_empty: bool) -> str:
    if not shown:
        return f"{key} {seen} is set (only an empty value is admitted)"
    return f"{key} {seen} not in {_brief_list(shown)}" + (" nor empty" if admits_empty else "")


def _text_condition(key: str, allowed: Sequence[str]) -> Check:
    keys, admits_empty, shown = _listed(key, allowed)
    exclude = key.endswith("_not")
    base = key.removesuffix("_not")
    attribute = TEXT_ATTRIBUTES[key]
    normalised = key in _NORMALISED

    def check(_study: Study, series: Series) -> tuple[str, str | None]:
        actual = (getattr(series, attribute) or "").strip().upper()
        seen = actual or "(none)"
        if exclude:
            hit = (not actual and admits_empty) or (bool(actual) and _key(actual, normalised) in keys)
            return seen, f"{base} {seen} is excluded by {key}" if hit else None
        if (not actual and admits_empty) or (actual and _key(actual, normalised) in keys):
            return seen, None
        return seen, _not_listed(key, seen, shown, admits_empty)

    return check


def _coded_condition(key: str, allowed: Sequence[str]) -> Check:
    keys, admits_empty, shown = _listed(key, allowed)
    attribute = TEXT_ATTRIBUTES.get(key) or STUDY_ATTRIBUTES[key]
    on_study = key in STUDY_ATTRIBUTES

    def check(study: Study, series: Series) -> tuple[str, str | None]:
        entries = coded_entries(getattr(study if on_study else series, attribute))
        seen = "; ".join(f"{v} ({m})" if v and m else v or m for v, _, m in entries) or "(none)"
        tokens = {_key(t, True) for v, _, m in entries for t in (v, m) if t}
        if tokens & keys or (not entries and admits_empty):
            return seen, None
        return seen, _not_listed(key, seen, shown, admits_empty)

    return check


def _quoted(text: str | None) -> str:
    return repr(text) if text else "(none)"


def _pattern_condition(key: str, pattern: re.Pattern[str]) -> Check:
    if key in ("description", "description_not"):
        exclude = key == "description_not"

        def check_any(study: Study, series: Series) -> tuple[str, str | None]:
            texts = [(name, text) for name, read in DESCRIPTION_FIELDS if (text := read(study, series))]
            found = next(((name, text) for name, text in texts if pattern.search(text)), None)
            if found is not None:
                seen = f"{found[0]} {found[1]!r}"
                return seen, f"{seen} matches {key}" if exclude else None
            seen = "; ".join(f"{name} {text!r}" for name, text in texts) or "(none)"
            return seen, None if exclude else f"no description matches {_brief_pattern(pattern)}"

        return check_any
    attribute = PATTERN_ATTRIBUTES[key]
    on_study = key in _STUDY_PATTERNS

    def check(study: Study, series: Series) -> tuple[str, str | None]:
        actual = getattr(study if on_study else series, attribute) or ""
        found = pattern.search(actual) is not None
        return _quoted(actual), None if found else f"{key} does not match {_brief_pattern(pattern)}"

    return check


def _number_condition(key: str, number: NumberTest) -> Check:
    def check(_study: Study, series: Series) -> tuple[str, str | None]:
        if key == "extent_mm":
            actual: Any = series_extent(series)
            seen = "(none: no slice positions)" if actual is None else str(actual)
            if actual is not None:
                low, high = series.slice_position_min, series.slice_position_max
                seen += f" (slice positions {low} to {high}, thickness {series.slice_thickness})"
        elif key == "num_instances":
            actual, seen = series_images(series)
        else:
            actual = getattr(series, key)
            seen = "(none)" if actual is None else str(actual)
        shown = seen if key == "num_instances" else "(none)" if actual is None else str(actual)
        return seen, None if number(actual) else f"{key} {shown} is not {number.text}"

    return check


def _image_type_condition(key: str, listed: Sequence[str]) -> Check:
    wanted = set(listed)
    must_hold = key == "image_type"

    def check(_study: Study, series: Series) -> tuple[str, str | None]:
        values = {v.strip().upper() for v in (series.image_type or "").split("\\") if v.strip()}
        seen = "\\".join(v for v in (series.image_type or "").upper().split("\\") if v.strip()) or "(none)"
        if must_hold and not wanted <= values:
            return seen, f"image type {sorted(values)} lacks {sorted(wanted - values)}"
        if not must_hold and wanted & values:
            return seen, f"image type holds {sorted(wanted & values)}"
        return seen, None

    return check


def _calling_condition(titles: Sequence[str]) -> Check:
    def check(study: Study, _series: Series) -> tuple[str, str | None]:
        actual = (study.calling_ae_title or "").strip().upper()
        seen = actual or "(none)"
        return seen, None if actual in titles else f"calling AE {seen} not in {list(titles)}"

    return check


def compile_criterion(key: str, value: Any) -> Condition:
    """One checked criterion (see ``config.routes.MatchBlock``) as a condition on a series of a study."""
    if key in _CODED:
        return Condition(key, str(list(value)), _coded_condition(key, value))
    if key in TEXT_ATTRIBUTES:
        return Condition(key, str(list(value)), _text_condition(key, value))
    if key in PATTERN_ATTRIBUTES:
        return Condition(key, repr(value.pattern), _pattern_condition(key, value))
    if key in NUMBER_ATTRIBUTES:
        return Condition(key, value.text, _number_condition(key, value))
    if key in IMAGE_TYPE_ATTRIBUTES:
        return Condition(key, str(list(value)), _image_type_condition(key, value))
    if key == "calling_ae":
        return Condition(key, str(list(value)), _calling_condition(value))
    raise ValueError(f'Argument "key" must be a routing criterion, got {key!r}.')
