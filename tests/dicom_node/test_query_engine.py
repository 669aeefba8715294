"""The query engine (index/query.py) over SQLite and PostgreSQL: PS3.4 C.2.2.2 matching in SQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dicom_node.errors import QueryError
from dicom_node.index.database import Database
from dicom_node.index.models import Instance, Series, Study
from dicom_node.index.query import (
    InformationModel,
    Query,
    QueryLevel,
    find,
    instances_to_retrieve,
)

STUDY_ROOT, PATIENT_ROOT = InformationModel.STUDY_ROOT, InformationModel.PATIENT_ROOT


@pytest.fixture
def index(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    database.upgrade()
    rows = [
        # patient id, name, date, time, accession, modality of each series
        ("P1", "DOE^JOHN", "20200115", "083000", "ACC_1", ["CT", "SR"]),
        ("P1", "DOE^JOHN", "20201231", "235959.5", "ACC%2", ["CT"]),
        ("P2", "Doe^Jane", "20210101", "1200", "acc3", ["MR"]),
        ("P3", "SMITH^ANNA", "19991231", None, None, ["CR"]),
    ]
    with database.session() as session:
        for number, (pid, name, date, time, accession, modalities) in enumerate(rows, start=1):
            study = Study(
                study_instance_uid=f"1.2.{number}",
                patient_id=pid,
                patient_name=name,
                patient_sex="M" if pid == "P1" else "F",
                study_date=date,
                study_time=time,
                accession_number=accession,
                modalities="",
                num_series=len(modalities),
            )
            session.add(study)
            for index_, modality in enumerate(modalities, start=1):
                series = Series(
                    study=study,
                    series_instance_uid=f"1.2.{number}.{index_}",
                    modality=modality,
                    series_number=index_,
                    num_instances=2,
                )
                session.add(series)
                for image in (1, 2):
                    uid = f"1.2.{number}.{index_}.{image}"
                    session.add(
                        Instance(
                            series=series,
                            sop_instance_uid=uid,
                            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                            transfer_syntax_uid="1.2.840.10008.1.2.1",
                            instance_number=image,
                            path=f"x/{uid}.dcm",
                            size=1,
                            sha256="0" * 64,
                        )
                    )
    try:
        yield database
    finally:
        database.dispose()


def _studies(database: Database, model=STUDY_ROOT, **keys: str) -> list[str]:
    query = Query(model, QueryLevel.STUDY, {"StudyInstanceUID": "", **keys})
    return [str(m["StudyInstanceUID"]) for m in find(database, query)]


def test_single_value_wildcard_and_case(index: Database) -> None:
    assert _studies(index, PatientID="P1") == ["1.2.1", "1.2.2"]
    # PN: case-insensitive, single value and wildcard alike.
    assert _studies(index, PatientName="doe^john") == ["1.2.1", "1.2.2"]
    assert _studies(index, PatientName="DOE^J*") == ["1.2.1", "1.2.2", "1.2.3"]
    assert _studies(index, PatientName="?OE^JAN?") == ["1.2.3"]
    # Other VRs: case-sensitive; SQL's own wildcards are plain characters.
    assert _studies(index, AccessionNumber="ACC*") == ["1.2.1", "1.2.2"]
    assert _studies(index, AccessionNumber="acc*") == ["1.2.3"]
    assert _studies(index, AccessionNumber="ACC%2") == ["1.2.2"]
    assert _studies(index, AccessionNumber="ACC_?") == ["1.2.1"]
    assert _studies(index, AccessionNumber="ACC?1") == ["1.2.1"]
    # Universal: "" and "*" match everything, a missing value too.
    assert len(_studies(index, AccessionNumber="*")) == 4


def test_ranges_lists_and_modalities(index: Database) -> None:
    assert _studies(index, StudyDate="20200101-20201231") == ["1.2.1", "1.2.2"]
    assert _studies(index, StudyDate="20210101-") == ["1.2.3"]
    assert _studies(index, StudyDate="-19991231") == ["1.2.4"]
    assert _studies(index, StudyDate="19991231\\20210101") == ["1.2.4", "1.2.3"]
    # A time bound matches at its own precision; a study without a time never matches a range.
    assert _studies(index, StudyTime="-1200") == ["1.2.1", "1.2.3"]
    assert _studies(index, StudyTime="2359-") == ["1.2.2"]
    assert _studies(index, StudyInstanceUID="1.2.4\\1.2.2") == ["1.2.4", "1.2.2"]
    assert _studies(index, ModalitiesInStudy="SR") == ["1.2.1"]
    assert _studies(index, ModalitiesInStudy="MR\\CR") == ["1.2.4", "1.2.3"]
    query = Query(STUDY_ROOT, QueryLevel.STUDY, {"PatientID": "P1", "ModalitiesInStudy": ""})
    assert [m["ModalitiesInStudy"] for m in find(index, query)] == ["CT\\SR", "CT"]


def test_levels_counts_and_only_the_keys_asked(index: Database) -> None:
    patients = list(
        find(
            index,
            Query(
                PATIENT_ROOT,
                QueryLevel.PATIENT,
                {
                    "PatientName": "DOE*",
                    "NumberOfPatientRelatedStudies": "",
                    "NumberOfPatientRelatedInstances": "",
                },
            ),
        )
    )
    assert patients == [
        {
            "PatientName": "DOE^JOHN",
            "NumberOfPatientRelatedStudies": 2,
            "NumberOfPatientRelatedInstances": 6,
            "PatientID": "P1",
        },
        {
            "PatientName": "Doe^Jane",
            "NumberOfPatientRelatedStudies": 1,
            "NumberOfPatientRelatedInstances": 2,
            "PatientID": "P2",
        },
    ]
    study = Query(
        STUDY_ROOT, QueryLevel.STUDY, {"PatientID": "P1", "NumberOfStudyRelatedInstances": "", "X": ""}
    )
    assert [m["NumberOfStudyRelatedInstances"] for m in find(index, study)] == [4, 2]
    series = Query(STUDY_ROOT, QueryLevel.SERIES, {"StudyInstanceUID": "1.2.1", "Modality": "SR"})
    assert list(find(index, series)) == [
        {"StudyInstanceUID": "1.2.1", "Modality": "SR", "SeriesInstanceUID": "1.2.1.2"}
    ]
    images = Query(STUDY_ROOT, QueryLevel.IMAGE, {"SeriesInstanceUID": "1.2.1.1", "InstanceNumber": "2"})
    assert [m["SOPInstanceUID"] for m in find(index, images)] == ["1.2.1.1.2"]
    # Keys below the level are returned empty and match nothing.
    below = Query(STUDY_ROOT, QueryLevel.STUDY, {"PatientID": "P3", "Modality": "CT"})
    assert [m["Modality"] for m in find(index, below)] == [None]
    # limit/offset (for QIDO-RS paging)
    assert [
        m["StudyInstanceUID"] for m in find(index, Query(STUDY_ROOT, QueryLevel.STUDY), limit=2, offset=1)
    ] == [
        "1.2.1",
        "1.2.2",
    ]


def test_retrieve_selection_and_refusals(index: Database) -> None:
    items = instances_to_retrieve(index, Query(STUDY_ROOT, QueryLevel.STUDY, {"StudyInstanceUID": "1.2.1"}))
    assert [i.sop_instance_uid for i in items] == ["1.2.1.1.1", "1.2.1.1.2", "1.2.1.2.1", "1.2.1.2.2"]
    series = Query(PATIENT_ROOT, QueryLevel.SERIES, {"PatientID": "P1", "SeriesInstanceUID": "1.2.2.1"})
    assert len(instances_to_retrieve(index, series)) == 2
    with pytest.raises(QueryError, match="needs StudyInstanceUID"):
        instances_to_retrieve(index, Query(STUDY_ROOT, QueryLevel.STUDY, {"PatientID": "P1"}))
    with pytest.raises(QueryError, match="wildcards"):
        instances_to_retrieve(index, Query(STUDY_ROOT, QueryLevel.STUDY, {"StudyInstanceUID": "1.2.*"}))
    for keys, message in (
        ({"StudyDate": "2020-01-01"}, "StudyDate"),
        ({"StudyDate": "20200101-20200201-"}, "StudyDate"),
        ({"StudyTime": "25h"}, "StudyTime"),
    ):
        with pytest.raises(QueryError, match=message):
            Query(STUDY_ROOT, QueryLevel.STUDY, keys)
    with pytest.raises(QueryError, match="Study Root"):
        Query(STUDY_ROOT, QueryLevel.PATIENT)
    with pytest.raises(QueryError, match="not an integer"):
        Query(STUDY_ROOT, QueryLevel.IMAGE, {"InstanceNumber": "1?"})
