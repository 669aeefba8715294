"""QIDO-RS: studies, series and instances that match a query (PS3.18 §10.6).

``search(level, keys, ...)`` is the interface the HTTP layer uses: a level, matching keys and the
attributes to return → data sets. The index narrows by the keys it holds as columns (UIDs, Patient ID,
Accession Number, Study Date, Modality); every key is then matched by ``matching.Key`` on the data set
that is returned, which is built from the index (counts, modalities in study) and the header of one
stored instance (the attributes the index does not keep, such as Patient's Name). Headers are read
without pixel data and cached by file and content hash.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import Select, select
from sqlalchemy.orm import Session, selectinload

from dicom_node.index.database import Database
from dicom_node.index.models import Instance, Series, Study
from dicom_node.storage.store import InstanceStore
from dicom_node.web.matching import Key, attribute

LOG = logging.getLogger(__name__)
HEADER_CACHE = 4096


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
    extra: dict[str, str] = field(default_factory=dict)


@functools.lru_cache(maxsize=HEADER_CACHE)
def _header(path: Path, sha256: str) -> Dataset:
    return dcmread(path, stop_before_pixels=True, defer_size=1024)


def header(store: InstanceStore, instance: Instance) -> Dataset:
    """The instance's data set without pixel data (cached; the same content reads once)."""
    return _header(store.path(instance.path), instance.sha256)


def _copy(source: Dataset, target: Dataset, keywords: Iterable[str]) -> None:
    for name in keywords:
        tag = attribute(name)[0]
        if tag in source and tag not in target:
            target[tag] = source[tag]


class Search:
    """QIDO-RS over one index and store."""

    def __init__(self, database: Database, store: InstanceStore) -> None:
        self.database = database
        self.store = store

    def run(self, query: Query) -> list[Dataset]:
        with self.database.session() as session:
            if query.level is Level.STUDY:
                found = self._studies(session, query)
            elif query.level is Level.SERIES:
                found = self._series(session, query)
            else:
                found = self._instances(session, query)
        end = None if query.limit is None else query.offset + query.limit
        return found[query.offset : end]

    # --- the three levels ------------------------------------------------------------------------
    def _study_filter(self, statement: Select[Study], query: Query) -> Select[Study]:
        for key in query.keys:
            if key.keyword == "StudyInstanceUID" and key.value:
                statement = statement.where(Study.study_instance_uid.in_(_uids(key.value)))
            elif key.keyword == "PatientID" and key.value and not _wild(key.value):
                statement = statement.where(Study.patient_id == key.value)
            elif key.keyword == "AccessionNumber" and key.value and not _wild(key.value):
                statement = statement.where(Study.accession_number == key.value)
        if query.study_instance_uid is not None:
            statement = statement.where(Study.study_instance_uid == query.study_instance_uid)
        return statement

    def _studies(self, session: Session, query: Query) -> list[Dataset]:
        statement = self._study_filter(
            select(Study).options(selectinload(Study.series).selectinload(Series.instances)), query
        )
        results = []
        for study in session.scalars(statement.order_by(Study.id)):
            ds = self._study_dataset(study, query)
            if ds is not None and all(k.matches(ds) for k in query.keys):
                results.append(ds)
        return results

    def _series(self, session: Session, query: Query) -> list[Dataset]:
        statement = self._study_filter(
            select(Study).options(selectinload(Study.series).selectinload(Series.instances)), query
        )
        results = []
        for study in session.scalars(statement.order_by(Study.id)):
            study_ds = self._study_dataset(study, query) if query.study_instance_uid is None else None
            for series in study.series:
                if query.series_instance_uid and series.series_instance_uid != query.series_instance_uid:
                    continue
                ds = self._series_dataset(series, query)
                if ds is None:
                    continue
                if study_ds is not None:
                    _copy(study_ds, ds, STUDY_ATTRIBUTES)
                if all(k.matches(ds) for k in query.keys):
                    results.append(ds)
        return results

    def _instances(self, session: Session, query: Query) -> list[Dataset]:
        statement = self._study_filter(
            select(Study).options(selectinload(Study.series).selectinload(Series.instances)), query
        )
        results = []
        for study in session.scalars(statement.order_by(Study.id)):
            for series in study.series:
                if query.series_instance_uid and series.series_instance_uid != query.series_instance_uid:
                    continue
                for instance in series.instances:
                    ds = self._instance_dataset(instance, query)
                    if ds is not None and all(k.matches(ds) for k in query.keys):
                        results.append(ds)
        return results

    # --- the data sets returned ---------------------------------------------------------------------
    def _first_header(self, instances: Iterable[Instance]) -> Dataset | None:
        for instance in instances:
            try:
                return header(self.store, instance)
            except (OSError, ValueError) as error:  # a file retention removed, or unreadable
                LOG.warning("cannot read instance %s: %s", instance.sop_instance_uid, error)
        return None

    def _wanted(self, query: Query, level: Level) -> list[str]:
        keys = [k.keyword for k in query.keys]
        return [*DEFAULT_ATTRIBUTES[level], *query.include, *keys]

    def _study_dataset(self, study: Study, query: Query) -> Dataset | None:
        source = self._first_header(i for s in study.series for i in s.instances)
        if source is None:
            return None
        ds = Dataset()
        _copy(source, ds, self._wanted(query, Level.STUDY))
        ds.StudyInstanceUID = study.study_instance_uid
        modalities = sorted({s.modality for s in study.series if s.modality})
        ds.ModalitiesInStudy = modalities
        ds.NumberOfStudyRelatedSeries = len(study.series)
        ds.NumberOfStudyRelatedInstances = sum(len(s.instances) for s in study.series)
        return ds

    def _series_dataset(self, series: Series, query: Query) -> Dataset | None:
        source = self._first_header(series.instances)
        if source is None:
            return None
        ds = Dataset()
        _copy(source, ds, self._wanted(query, Level.SERIES))
        ds.StudyInstanceUID = series.study.study_instance_uid
        ds.SeriesInstanceUID = series.series_instance_uid
        ds.NumberOfSeriesRelatedInstances = len(series.instances)
        return ds

    def _instance_dataset(self, instance: Instance, query: Query) -> Dataset | None:
        try:
            source = header(self.store, instance)
        except (OSError, ValueError) as error:
            LOG.warning("cannot read instance %s: %s", instance.sop_instance_uid, error)
            return None
        ds = Dataset()
        wanted = self._wanted(query, Level.IMAGE)
        if query.include_all:
            wanted += [*SERIES_ATTRIBUTES, *STUDY_ATTRIBUTES]
        _copy(source, ds, wanted)
        ds.StudyInstanceUID = instance.series.study.study_instance_uid
        ds.SeriesInstanceUID = instance.series.series_instance_uid
        ds.SOPInstanceUID = instance.sop_instance_uid
        ds.SOPClassUID = instance.sop_class_uid
        return ds


def _uids(value: str) -> list[str]:
    return [v.strip() for v in value.replace("\\", ",").split(",") if v.strip()]


def _wild(value: str) -> bool:
    return "*" in value or "?" in value
