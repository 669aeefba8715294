"""QIDO-RS: studies, series and instances that match a query (PS3.18 §10.6), on the C-FIND engine.

``Search.run(query)`` is the interface the HTTP layer uses: a level, matching keys, the attributes to
return and paging → data sets. Matching is ``dicom_node.index.query``'s, the very engine of the C-FIND
SCP (issue 12: "the same matching as C-FIND"), so a query finds the same entities over DIMSE and HTTP.
The engine pages in SQL (``limit``/``offset``) and returns what the index holds; attributes it does not
keep (Rows, Columns, Performed Procedure Step Start Date …, anything ``includefield`` names) are read
from the header of one stored instance of the entity, without pixel data, cached by file and content
hash. Matching keys the index does not hold are not matched (as over C-FIND, PS3.4 C.2.2.1 lets an SCP
ignore an optional key it does not support); ``Search.run`` says which, and the HTTP layer puts them in a
``Warning`` header.

QIDO's own syntax is translated here: a UID list is comma-separated in QIDO (``1.2,1.3``) and
backslash-separated in C-FIND; a key may be a keyword or a tag (``00100020``).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag
from sqlalchemy import select

from dicom_node.errors import QueryError
from dicom_node.index import query as engine
from dicom_node.index.database import Database
from dicom_node.index.models import Instance, Series, Study
from dicom_node.storage.store import InstanceStore

LOG = logging.getLogger(__name__)
HEADER_CACHE = 4096
HEADER_TRIES = 8
"""Instances of an entity tried for its header before giving up (files retention removed, unreadable)."""
UTF8 = "ISO_IR 192"
"""Specific Character Set of what QIDO-RS returns: DICOM JSON is UTF-8 whatever the files hold."""


class QueryKeyError(ValueError):
    """A query parameter that names no DICOM attribute, or a value it cannot hold (HTTP 400)."""


class Level(StrEnum):
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


STUDY_ATTRIBUTES = (
    "SpecificCharacterSet",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "StudyDescription",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
SERIES_ATTRIBUTES = (
    "SpecificCharacterSet",
    "Modality",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "SeriesDate",
    "SeriesTime",
    "BodyPartExamined",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "NumberOfSeriesRelatedInstances",
)
INSTANCE_ATTRIBUTES = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "Rows",
    "Columns",
    "BitsAllocated",
    "NumberOfFrames",
)
DEFAULT_ATTRIBUTES = {
    Level.STUDY: STUDY_ATTRIBUTES,
    Level.SERIES: SERIES_ATTRIBUTES,
    Level.IMAGE: INSTANCE_ATTRIBUTES,
}
_LEVELS = {
    Level.STUDY: engine.QueryLevel.STUDY,
    Level.SERIES: engine.QueryLevel.SERIES,
    Level.IMAGE: engine.QueryLevel.IMAGE,
}
_DEPTH = {Level.STUDY: 1, Level.SERIES: 2, Level.IMAGE: 3}
_ENGINE_DEPTH = {
    engine.QueryLevel.PATIENT: 0,
    engine.QueryLevel.STUDY: 1,
    engine.QueryLevel.SERIES: 2,
    engine.QueryLevel.IMAGE: 3,
}


@dataclass(frozen=True)
class Key:
    """One matching key: the attribute and the value asked for."""

    tag: BaseTag
    keyword: str
    vr: str
    value: str


def attribute(name: str) -> tuple[BaseTag, str, str]:
    """A keyword (``PatientName``) or tag (``00100010``) → (tag, keyword, VR), else ``QueryKeyError``."""
    tag: BaseTag | None = None
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        tag = Tag(int(name, 16))
    else:
        number = tag_for_keyword(name)
        tag = Tag(number) if number is not None else None
    if tag is None:
        raise QueryKeyError(f"{name!r} is not a DICOM attribute keyword or tag")
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        raise QueryKeyError(f"{name!r} is not an attribute of the DICOM dictionary") from None
    return tag, keyword_for_tag(tag) or name, vr


def key(name: str, value: str) -> Key:
    """A QIDO matching key (``PatientName=Doe*``), else ``QueryKeyError``."""
    tag, keyword, vr = attribute(name)
    if vr == "SQ":
        raise QueryKeyError(f"{keyword}: sequence matching is not supported")
    return Key(tag, keyword, vr, value)


@dataclass(frozen=True)
class Query:
    """What a QIDO request asks: matching keys, extra attributes, paging, and the parents in its path."""

    level: Level
    keys: Sequence[Key] = ()
    include: Sequence[str] = ()
    include_all: bool = False
    limit: int | None = None
    offset: int = 0
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None


@dataclass
class Found:
    """The data sets a search returns, and the matching keys it could not match on (not supported)."""

    datasets: list[Dataset] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


@functools.lru_cache(maxsize=HEADER_CACHE)
def _header(path: Path, sha256: str) -> Dataset:
    return dcmread(path, stop_before_pixels=True, defer_size=1024)


def _matchable(keyword: str, level: Level) -> bool:
    """Whether the engine matches ``keyword`` at ``level`` (known, at or above it, not a count)."""
    known = engine.ATTRIBUTES.get(keyword)
    return (
        known is not None
        and _ENGINE_DEPTH[known.level] <= _DEPTH[level]
        and known.kind is not engine.Kind.COUNT
    )


def _returned_by_engine(keyword: str, level: Level) -> bool:
    known = engine.ATTRIBUTES.get(keyword)
    return known is not None and _ENGINE_DEPTH[known.level] <= _DEPTH[level]


def _engine_value(item: Key) -> str:
    if item.vr == "UI":  # QIDO lists UIDs with commas (PS3.18 §8.3.4.1), C-FIND with backslashes
        return "\\".join(part.strip() for part in re.split(r"[,\\]", item.value) if part.strip())
    return item.value


def _element(ds: Dataset, keyword: str, value: str | int | None) -> None:
    tag, _, vr = attribute(keyword)
    engine.put_value(ds, tag, vr, value)


class Search:
    """QIDO-RS over one index and store."""

    def __init__(self, database: Database, store: InstanceStore) -> None:
        self.database = database
        self.store = store

    def _wanted(self, query: Query) -> list[str]:
        """The keywords each result carries, in order, without repeats."""
        wanted = [*DEFAULT_ATTRIBUTES[query.level], *query.include, *(k.keyword for k in query.keys)]
        if query.level is Level.SERIES and query.study_instance_uid is None:
            wanted += STUDY_ATTRIBUTES  # /series across studies: say which study each belongs to
        if query.include_all:
            if query.level is Level.IMAGE:
                wanted += [*SERIES_ATTRIBUTES, *STUDY_ATTRIBUTES]
            elif query.level is Level.SERIES:
                wanted += STUDY_ATTRIBUTES
            wanted += engine.supported_keywords(_LEVELS[query.level])
        return list(dict.fromkeys(wanted))

    def _engine_query(self, query: Query, wanted: Iterable[str]) -> tuple[engine.Query, list[str]] | None:
        """The C-FIND query of a QIDO query (``None``: the path and a key contradict, nothing matches)."""
        keys: dict[str, str] = {w: "" for w in wanted if _returned_by_engine(w, query.level)}
        ignored: list[str] = []
        matched: dict[str, str] = {}
        for item in query.keys:
            if not item.value.strip() or item.value.strip() == "*":
                continue  # universal: matches everything
            if not _matchable(item.keyword, query.level):
                ignored.append(item.keyword)
                continue
            value = _engine_value(item)
            if matched.get(item.keyword, value) != value:
                raise QueryKeyError(f"{item.keyword} is given twice with different values")
            matched[item.keyword] = value
        for keyword, uid in (
            ("StudyInstanceUID", query.study_instance_uid),
            ("SeriesInstanceUID", query.series_instance_uid),
        ):
            if uid is None:
                continue
            if keyword in matched and uid not in matched[keyword].split("\\"):
                return None
            matched[keyword] = uid
        keys.update(matched)
        try:
            return engine.Query(engine.InformationModel.STUDY_ROOT, _LEVELS[query.level], keys), ignored
        except QueryError as error:
            raise QueryKeyError(str(error)) from None

    def run(self, query: Query) -> Found:
        wanted = self._wanted(query)
        built = self._engine_query(query, wanted)
        if built is None:
            return Found()
        engine_query, ignored = built
        from_header = [
            w for w in wanted if w != "SpecificCharacterSet" and not _returned_by_engine(w, query.level)
        ]
        found = Found(ignored=ignored)
        for match in engine.find(self.database, engine_query, limit=query.limit, offset=query.offset):
            ds = Dataset()
            if "SpecificCharacterSet" in wanted:
                ds.SpecificCharacterSet = UTF8
            for keyword, value in match.items():
                _element(ds, keyword, value)
            if from_header:
                source = self._first_header(query.level, match)
                for name in from_header:
                    tag = attribute(name)[0]
                    if source is not None and tag in source:
                        ds[tag] = source[tag]
            found.datasets.append(ds)
        return found

    def _first_header(self, level: Level, match: engine.Match) -> Dataset | None:
        """The header of one readable instance of the matched entity."""
        statement = (
            select(Instance.path, Instance.sha256, Instance.sop_instance_uid)
            .join(Series, Instance.series_id == Series.id)
            .join(Study, Series.study_id == Study.id)
        )
        if level is Level.STUDY:
            statement = statement.where(Study.study_instance_uid == match["StudyInstanceUID"])
        elif level is Level.SERIES:
            statement = statement.where(Series.series_instance_uid == match["SeriesInstanceUID"])
        else:
            statement = statement.where(Instance.sop_instance_uid == match["SOPInstanceUID"])
        with self.database.sessions() as session:
            rows = session.execute(statement.order_by(Instance.id).limit(HEADER_TRIES)).all()
        for path, sha256, uid in rows:
            try:
                return _header(self.store.path(path), sha256)
            except (OSError, ValueError) as error:  # a file retention removed, or unreadable
                LOG.warning("cannot read instance %s: %s", uid, error)
        return None
