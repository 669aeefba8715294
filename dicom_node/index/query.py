"""The query engine: C-FIND (and QIDO-RS) matching over the index, in SQL, streamed.

A ``Query`` names an information model (Patient Root or Study Root), a level (PATIENT, STUDY, SERIES,
IMAGE) and keys: DICOM keywords with their values as DICOM strings (``""`` asks for the value, anything
else also matches on it). ``find`` yields one ``Match`` (keyword → value) per matching entity, read from
the database in batches; nothing here knows of pynetdicom or HTTP, so the DIMSE edge and DICOMweb share
it. ``instances_to_retrieve`` is the same matching at the IMAGE level, for C-MOVE and C-GET.

Matching follows PS3.4 C.2.2.2:

* universal: an empty value, or ``*`` alone, matches everything (a missing value too);
* single value: equality; PN is matched case-insensitively (PS3.4 allows it, and what a radiologist
  types is rarely the case a modality wrote), every other VR case-sensitively, CS included;
* wildcard: ``*`` any run of characters, ``?`` one character (SQL ``LIKE``, or ``GLOB`` on SQLite whose
  ``LIKE`` ignores case), same case rules;
* list: values separated by backslashes match if any one does (UIDs, and also CS/SH/LO keys such as
  ``ModalitiesInStudy=CT\\MR``);
* range: DA ``a-b``, ``a-``, ``-b`` (bounds included) on Study Date and Series Date; TM likewise on
  Study Time and Series Time, a bound matching at its own precision (``-1200`` includes 12:00:59).
  Date and time ranges are matched each on its own (not combined as one date-time).

Keys the index does not hold are returned empty and not matched (PS3.4 lets an SCP ignore an optional key
it does not support); keys below the query level likewise. Counts (``NumberOf…``) and
``ModalitiesInStudy`` are computed from the series rows, so the node's own results (SR, SEG …) count and
are found like received instances.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydicom import Dataset
from sqlalchemy import ColumnElement, Select, and_, exists, false, func, literal_column, or_, select
from sqlalchemy.orm import Session, aliased

from dicom_node.errors import QueryError
from dicom_node.index.database import Database
from dicom_node.index.models import Instance, Series, Study

BATCH = 500
"""Rows fetched (and post-processed for counts) at a time."""


class QueryLevel(StrEnum):
    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


class InformationModel(StrEnum):
    PATIENT_ROOT = "PATIENT"
    STUDY_ROOT = "STUDY"


_DEPTH = {QueryLevel.PATIENT: 0, QueryLevel.STUDY: 1, QueryLevel.SERIES: 2, QueryLevel.IMAGE: 3}
UNIQUE_KEYS = {
    QueryLevel.PATIENT: "PatientID",
    QueryLevel.STUDY: "StudyInstanceUID",
    QueryLevel.SERIES: "SeriesInstanceUID",
    QueryLevel.IMAGE: "SOPInstanceUID",
}


class Kind(StrEnum):
    """How a key's value is matched."""

    UID = "UI"
    DATE = "DA"
    TIME = "TM"
    NAME = "PN"
    TEXT = "text"  # SH, LO, CS, AE: case-sensitive strings
    INTEGER = "IS"
    COUNT = "count"  # computed, return only
    MODALITIES = "modalities"  # computed from the series, matched on them


@dataclass(frozen=True)
class Attribute:
    level: QueryLevel
    kind: Kind
    column: Any = None
    """The mapped column (``None`` for computed attributes)."""


ATTRIBUTES: dict[str, Attribute] = {
    # Patient level: kept on each study of the patient.
    "PatientID": Attribute(QueryLevel.PATIENT, Kind.TEXT, Study.patient_id),
    "PatientName": Attribute(QueryLevel.PATIENT, Kind.NAME, Study.patient_name),
    "PatientBirthDate": Attribute(QueryLevel.PATIENT, Kind.DATE, Study.patient_birth_date),
    "PatientSex": Attribute(QueryLevel.PATIENT, Kind.TEXT, Study.patient_sex),
    "NumberOfPatientRelatedStudies": Attribute(QueryLevel.PATIENT, Kind.COUNT),
    "NumberOfPatientRelatedSeries": Attribute(QueryLevel.PATIENT, Kind.COUNT),
    "NumberOfPatientRelatedInstances": Attribute(QueryLevel.PATIENT, Kind.COUNT),
    # Study level
    "StudyInstanceUID": Attribute(QueryLevel.STUDY, Kind.UID, Study.study_instance_uid),
    "StudyDate": Attribute(QueryLevel.STUDY, Kind.DATE, Study.study_date),
    "StudyTime": Attribute(QueryLevel.STUDY, Kind.TIME, Study.study_time),
    "AccessionNumber": Attribute(QueryLevel.STUDY, Kind.TEXT, Study.accession_number),
    "StudyID": Attribute(QueryLevel.STUDY, Kind.TEXT, Study.study_id),
    "StudyDescription": Attribute(QueryLevel.STUDY, Kind.TEXT, Study.study_description),
    "ReferringPhysicianName": Attribute(QueryLevel.STUDY, Kind.NAME, Study.referring_physician_name),
    "ModalitiesInStudy": Attribute(QueryLevel.STUDY, Kind.MODALITIES),
    "NumberOfStudyRelatedSeries": Attribute(QueryLevel.STUDY, Kind.COUNT),
    "NumberOfStudyRelatedInstances": Attribute(QueryLevel.STUDY, Kind.COUNT),
    # Series level
    "SeriesInstanceUID": Attribute(QueryLevel.SERIES, Kind.UID, Series.series_instance_uid),
    "Modality": Attribute(QueryLevel.SERIES, Kind.TEXT, Series.modality),
    "SeriesNumber": Attribute(QueryLevel.SERIES, Kind.INTEGER, Series.series_number),
    "SeriesDescription": Attribute(QueryLevel.SERIES, Kind.TEXT, Series.series_description),
    "SeriesDate": Attribute(QueryLevel.SERIES, Kind.DATE, Series.series_date),
    "SeriesTime": Attribute(QueryLevel.SERIES, Kind.TIME, Series.series_time),
    "BodyPartExamined": Attribute(QueryLevel.SERIES, Kind.TEXT, Series.body_part_examined),
    "ProtocolName": Attribute(QueryLevel.SERIES, Kind.TEXT, Series.protocol_name),
    "Manufacturer": Attribute(QueryLevel.SERIES, Kind.TEXT, Series.manufacturer),
    "FrameOfReferenceUID": Attribute(QueryLevel.SERIES, Kind.UID, Series.frame_of_reference_uid),
    "NumberOfSeriesRelatedInstances": Attribute(QueryLevel.SERIES, Kind.INTEGER, Series.num_instances),
    # Image (instance) level
    "SOPInstanceUID": Attribute(QueryLevel.IMAGE, Kind.UID, Instance.sop_instance_uid),
    "SOPClassUID": Attribute(QueryLevel.IMAGE, Kind.UID, Instance.sop_class_uid),
    "InstanceNumber": Attribute(QueryLevel.IMAGE, Kind.INTEGER, Instance.instance_number),
    "NumberOfFrames": Attribute(QueryLevel.IMAGE, Kind.INTEGER, Instance.number_of_frames),
    "AvailableTransferSyntaxUID": Attribute(QueryLevel.IMAGE, Kind.UID, Instance.transfer_syntax_uid),
}
"""What the index can match on and return, per keyword."""

Match = dict[str, str | int | None]
"""One matching entity: every requested keyword → its value (``None``: the index holds none)."""

_SIBLING = aliased(Series, name="sibling")
STUDY_COUNTS = {"ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"}
PATIENT_COUNTS = {
    "NumberOfPatientRelatedStudies",
    "NumberOfPatientRelatedSeries",
    "NumberOfPatientRelatedInstances",
}
_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_INTEGER = re.compile(r"^[+-]?\d+$")


@dataclass(frozen=True)
class Query:
    """A C-FIND identifier in the engine's terms; checked when built (``QueryError`` 0xA900)."""

    model: InformationModel
    level: QueryLevel
    keys: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.model is InformationModel.STUDY_ROOT and self.level is QueryLevel.PATIENT:
            raise QueryError("Query/Retrieve Level PATIENT is not in the Study Root information model")
        for keyword, value in self.keys.items():
            attribute = ATTRIBUTES.get(keyword)
            if attribute is not None and _DEPTH[attribute.level] <= _DEPTH[self.level]:
                _check_value(keyword, attribute.kind, value)

    def matched(self) -> dict[str, tuple[Attribute, str]]:
        """The keys that constrain the result: known, at or above the level, not universal."""
        return {
            keyword: (attribute, value)
            for keyword, value in self.keys.items()
            if (attribute := ATTRIBUTES.get(keyword)) is not None
            and _DEPTH[attribute.level] <= _DEPTH[self.level]
            and attribute.kind is not Kind.COUNT
            and not _universal(value)
        }

    def returned(self) -> list[str]:
        """The keywords every match carries: those asked for, and the unique keys down to the level."""
        keywords = list(self.keys)
        for level, unique in UNIQUE_KEYS.items():
            if _DEPTH[level] <= _DEPTH[self.level] and unique not in keywords:
                if level is QueryLevel.PATIENT and self.model is InformationModel.STUDY_ROOT:
                    continue
                keywords.append(unique)
        return keywords


def parse_level(text: str | None) -> QueryLevel:
    """The Query/Retrieve Level (0008,0052) of an identifier; ``QueryError`` if missing or unknown."""
    value = (text or "").strip().upper()
    if not value:
        raise QueryError("Query/Retrieve Level (0008,0052) is missing")
    try:
        return QueryLevel(value)
    except ValueError:
        raise QueryError(f"unknown Query/Retrieve Level {value!r}") from None


def _universal(value: str) -> bool:
    return value.strip() in ("", "*")


def _parts(value: str) -> list[str]:
    return [part.strip() for part in value.split("\\")]


def _check_value(keyword: str, kind: Kind, value: str) -> None:
    if _universal(value) or kind is Kind.COUNT:
        return
    for part in _parts(value):
        if kind in (Kind.DATE, Kind.TIME):
            bounds = part.split("-") if "-" in part else [part]
            if len(bounds) > 2 or not any(bounds):
                raise QueryError(f"{keyword}: {part!r} is not a {kind.value} value or range")
            check = _DATE if kind is Kind.DATE else _TIME
            for bound in bounds:
                if bound and not check.match(bound.replace(":", "")):
                    raise QueryError(f"{keyword}: {bound!r} is not a valid {kind.value} value")
        elif kind is Kind.INTEGER and not _INTEGER.match(part):
            raise QueryError(f"{keyword}: {part!r} is not an integer")


def _wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def _like(column: Any, pattern: str, *, glob: bool) -> ColumnElement[bool]:
    """``*``/``?`` wildcard matching, case-sensitive (SQLite: GLOB; elsewhere: LIKE)."""
    if glob:
        escaped = pattern.replace("[", "\x00").replace("]", "[]]").replace("\x00", "[[]")
        result: ColumnElement[bool] = column.op("GLOB")(escaped)
        return result
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    like: ColumnElement[bool] = column.like(escaped.replace("*", "%").replace("?", "_"), escape="\\")
    return like


def _ilike(column: Any, pattern: str) -> ColumnElement[bool]:
    """Case-insensitive wildcard matching, portable: ``lower(column) LIKE lower(pattern)``."""
    escaped = pattern.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return func.lower(column).like(escaped.replace("*", "%").replace("?", "_"), escape="\\")


def _range(column: Any, part: str, kind: Kind) -> ColumnElement[bool]:
    low, _, high = part.partition("-")
    low, high = low.replace(":", ""), high.replace(":", "")
    conditions: list[ColumnElement[bool]] = []
    if low:
        conditions.append(column >= low)
    if high:
        # A bound matches at its own precision: "-1200" takes 12:00:59.9, "-20201231" the whole day.
        conditions.append(column <= (high + "~" if kind is Kind.TIME else high))
    return and_(*conditions)


def condition(column: Any, kind: Kind, value: str, *, glob: bool) -> ColumnElement[bool]:
    """The SQL condition of one matching key on ``column`` (OR over a backslash list)."""
    alternatives: list[ColumnElement[bool]] = []
    for part in _parts(value):
        if _universal(part):
            everything: ColumnElement[bool] = column.is_not(None) | column.is_(None)
            return everything
        if kind in (Kind.DATE, Kind.TIME) and "-" in part:
            alternatives.append(_range(column, part, kind))
        elif kind is Kind.INTEGER:
            alternatives.append(column == int(part))
        elif kind is Kind.UID:
            alternatives.append(column == part)
        elif kind is Kind.NAME:
            alternatives.append(
                _ilike(column, part) if _wildcard(part) else func.lower(column) == part.lower()
            )
        elif _wildcard(part):
            alternatives.append(_like(column, part, glob=glob))
        else:
            alternatives.append(column == part.replace(":", "") if kind is Kind.TIME else column == part)
    return or_(*alternatives) if alternatives else false()


def _patient_key() -> Any:
    # A literal, not a bound parameter: PostgreSQL must see the GROUP BY and SELECT expressions as equal.
    return func.coalesce(Study.patient_id, literal_column("''"))


def _statement(query: Query, glob: bool, returned: Sequence[str]) -> tuple[Select[Any], list[str]]:
    """The SELECT of a query; also the keywords its columns hold, in order (after the entity id)."""
    level = query.level
    depth = _DEPTH[level]
    columns: list[Any] = []
    names: list[str] = []
    for keyword in returned:
        attribute = ATTRIBUTES.get(keyword)
        if attribute is None or attribute.column is None or _DEPTH[attribute.level] > depth:
            continue
        column = attribute.column
        if level is QueryLevel.PATIENT:
            # One row per Patient ID: the id itself, and the largest value of its studies for the rest.
            column = _patient_key() if keyword == "PatientID" else func.max(column)
        columns.append(column)
        names.append(keyword)
    if level is QueryLevel.PATIENT:
        statement = select(_patient_key(), *columns).select_from(Study)
    elif level is QueryLevel.STUDY:
        statement = select(Study.id, *columns).select_from(Study)
    elif level is QueryLevel.SERIES:
        statement = select(Series.id, *columns).select_from(Series).join(Study, Series.study_id == Study.id)
    else:
        statement = (
            select(Instance.id, *columns)
            .select_from(Instance)
            .join(Series, Instance.series_id == Series.id)
            .join(Study, Series.study_id == Study.id)
        )
    for attribute, value in query.matched().values():
        if attribute.kind is Kind.MODALITIES:
            # Any series of the study (an alias: at SERIES/IMAGE level ``series`` is already the row's own).
            statement = statement.where(
                exists()
                .where(
                    _SIBLING.study_id == Study.id, condition(_SIBLING.modality, Kind.TEXT, value, glob=glob)
                )
                .correlate(Study)
            )
        else:
            statement = statement.where(condition(attribute.column, attribute.kind, value, glob=glob))
    if level is QueryLevel.PATIENT:
        statement = statement.group_by(_patient_key()).order_by(_patient_key())
    elif level is QueryLevel.STUDY:
        statement = statement.order_by(Study.study_date, Study.study_time, Study.id)
    elif level is QueryLevel.SERIES:
        statement = statement.order_by(Series.series_number, Series.id)
    else:
        statement = statement.order_by(Instance.instance_number, Instance.id)
    return statement, names


def _study_counts(session: Session, study_ids: list[int]) -> dict[int, tuple[int, int, str]]:
    """Per study id: its series, its instances and its modalities (every series, results included)."""
    rows = session.execute(
        select(Series.study_id, Series.modality, func.count(Series.id), func.sum(Series.num_instances))
        .where(Series.study_id.in_(study_ids))
        .group_by(Series.study_id, Series.modality)
    ).all()
    counts: dict[int, tuple[int, int, set[str]]] = {}
    for study_id, modality, series, instances in rows:
        total_series, total_instances, modalities = counts.get(study_id, (0, 0, set()))
        counts[study_id] = (
            total_series + int(series),
            total_instances + int(instances or 0),
            modalities | ({modality} if modality else set()),
        )
    return {k: (s, i, "\\".join(sorted(m))) for k, (s, i, m) in counts.items()}


def _patient_counts(session: Session, patient_ids: list[str]) -> dict[str, tuple[int, int, int]]:
    """Per patient id: its studies, series and instances."""
    key = _patient_key()
    studies: dict[str, int] = dict(
        session.execute(select(key, func.count(Study.id)).where(key.in_(patient_ids)).group_by(key)).all()
    )
    series = {
        pid: (int(n), int(i or 0))
        for pid, n, i in session.execute(
            select(key, func.count(Series.id), func.sum(Series.num_instances))
            .select_from(Series)
            .join(Study, Series.study_id == Study.id)
            .where(key.in_(patient_ids))
            .group_by(key)
        ).all()
    }
    return {pid: (int(studies.get(pid, 0)), *series.get(pid, (0, 0))) for pid in patient_ids}


def _study_ids(session: Session, level: QueryLevel, ids: list[int]) -> dict[int, int]:
    """Entity id → its study's id, for the SERIES and IMAGE levels (counts of the study above)."""
    if level is QueryLevel.STUDY:
        return {i: i for i in ids}
    if level is QueryLevel.SERIES:
        return dict(session.execute(select(Series.id, Series.study_id).where(Series.id.in_(ids))).all())
    return dict(
        session.execute(
            select(Instance.id, Series.study_id)
            .join(Series, Instance.series_id == Series.id)
            .where(Instance.id.in_(ids))
        ).all()
    )


def find(database: Database, query: Query, *, limit: int | None = None, offset: int = 0) -> Iterator[Match]:
    """Every entity matching ``query``, as ``Match`` dicts holding ``query.returned()`` keywords.

    Rows are read ``BATCH`` at a time (``yield_per``); a caller that stops iterating (a C-CANCEL)
    closes the generator and with it the database cursor.
    """
    returned = query.returned()
    wanted = set(returned)
    needs_study_counts = bool(wanted & STUDY_COUNTS) and query.level is not QueryLevel.PATIENT
    needs_patient_counts = bool(wanted & PATIENT_COUNTS)
    # Patient counts below the PATIENT level are looked up by the row's Patient ID, asked for or not.
    selected = [*returned, "PatientID"] if needs_patient_counts and "PatientID" not in wanted else returned
    statement, names = _statement(query, database.is_sqlite, selected)
    if offset:
        statement = statement.offset(offset)
    if limit is not None:
        statement = statement.limit(limit)
    with database.sessions() as session:
        result = session.execute(statement.execution_options(yield_per=BATCH))
        for rows in result.partitions():
            ids = [row[0] for row in rows]
            study_of: dict[Any, int] = {}
            study_counts: dict[int, tuple[int, int, str]] = {}
            patient_counts: dict[str, tuple[int, int, int]] = {}
            if needs_study_counts:
                study_of = _study_ids(session, query.level, ids)
                study_counts = _study_counts(session, sorted(set(study_of.values())))
            if needs_patient_counts:
                if query.level is QueryLevel.PATIENT:
                    patient_ids = [str(i) for i in ids]
                else:
                    patient_ids = (
                        sorted({str(row[1 + names.index("PatientID")] or "") for row in rows})
                        if ("PatientID" in names)
                        else []
                    )
                patient_counts = _patient_counts(session, patient_ids) if patient_ids else {}
            for row in rows:
                values = dict(zip(names, row[1:], strict=True))
                match: Match = {}
                for keyword in returned:
                    if keyword in values:
                        match[keyword] = values[keyword]
                    elif keyword == "PatientID" and query.level is QueryLevel.PATIENT:
                        match[keyword] = row[0] or None
                    else:
                        match[keyword] = None
                if needs_study_counts:
                    series, instances, modalities = study_counts.get(study_of.get(row[0], -1), (0, 0, ""))
                    _set(match, "NumberOfStudyRelatedSeries", series)
                    _set(match, "NumberOfStudyRelatedInstances", instances)
                    _set(match, "ModalitiesInStudy", modalities or None)
                if needs_patient_counts:
                    pid = str(row[0] if query.level is QueryLevel.PATIENT else values.get("PatientID") or "")
                    studies, series, instances = patient_counts.get(pid, (0, 0, 0))
                    _set(match, "NumberOfPatientRelatedStudies", studies)
                    _set(match, "NumberOfPatientRelatedSeries", series)
                    _set(match, "NumberOfPatientRelatedInstances", instances)
                yield match


def _set(match: Match, keyword: str, value: str | int | None) -> None:
    if keyword in match:
        match[keyword] = value


@dataclass(frozen=True)
class StoredInstance:
    """One instance a C-MOVE or C-GET sends: where it is in the store and how it was stored."""

    path: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


def instances_to_retrieve(database: Database, query: Query) -> list[StoredInstance]:
    """The instances a C-MOVE/C-GET identifier names, in study, series, instance order.

    The unique key of the level must be given (a list of UIDs at most): ``QueryError`` 0xA900 if not.
    Other keys at or above the level narrow the selection as in ``find``.
    """
    unique = UNIQUE_KEYS[query.level]
    if _universal(query.keys.get(unique, "")):
        raise QueryError(f"a retrieve at level {query.level} needs {unique}")
    if any(_wildcard(part) for part in _parts(query.keys[unique])):
        raise QueryError(f"{unique} of a retrieve cannot hold wildcards")
    image = (
        Query(query.model, QueryLevel.IMAGE, dict(query.keys))
        if query.level is not QueryLevel.IMAGE
        else query
    )
    matching, _ = _statement(image, database.is_sqlite, [])
    statement = (
        matching.with_only_columns(
            Instance.path, Instance.sop_class_uid, Instance.sop_instance_uid, Instance.transfer_syntax_uid
        )
        .order_by(None)
        .order_by(Study.id, Series.series_number, Series.id, Instance.instance_number, Instance.id)
    )
    with database.sessions() as session:
        return [StoredInstance(*row) for row in session.execute(statement).all()]


def supported_keywords(level: QueryLevel) -> list[str]:
    """The keywords the index can match on at ``level`` (at or above it)."""
    return [k for k, a in ATTRIBUTES.items() if _DEPTH[a.level] <= _DEPTH[level]]


__all__ = [
    "ATTRIBUTES",
    "UNIQUE_KEYS",
    "Attribute",
    "InformationModel",
    "Kind",
    "Match",
    "Query",
    "QueryLevel",
    "StoredInstance",
    "condition",
    "find",
    "instances_to_retrieve",
    "parse_level",
    "supported_keywords",
]


def put_value(ds: Dataset, tag: int, vr: str, value: str | int | None) -> None:
    """Put one matched value into a response identifier (C-FIND) or a QIDO-RS result: empty as an
    element without a value, a backslash-separated string as a multi-valued element."""
    if value is None or value == "":
        ds.add_new(tag, vr, None)
    elif isinstance(value, str) and "\\" in value:
        ds.add_new(tag, vr, value.split("\\"))
    else:
        ds.add_new(tag, vr, value)
