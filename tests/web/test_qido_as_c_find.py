"""QIDO-RS and C-FIND are one matching: the same query finds the same entities over HTTP and DIMSE.

A real ``dicom-node serve`` holds the shared CT (20 slices) and the chest radiograph (tests/data); each
query goes to QIDO-RS (``requests``) and to the C-FIND SCP (a pynetdicom SCU, Study Root), and both
answers must name the same UIDs. ``expected`` says whether the CT is among them, so a query that finds
nothing (or everything) over both protocols still fails when it should not.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from tests.web.conftest import CT_DIR, WebNode, make_web_node

CXR = Path(__file__).resolve().parents[1] / "data" / "cxr" / "txrv_siim_cxr_sc_jpeg.dcm"
CT = dcmread(sorted(CT_DIR.iterdir())[0], stop_before_pixels=True)
CT_STUDY = str(CT.StudyInstanceUID)
CXR_STUDY = str(dcmread(CXR, stop_before_pixels=True).StudyInstanceUID)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebNode]:
    web = make_web_node(tmp_path_factory.mktemp("qido-cfind"))
    web.start()
    try:
        web.send(CT_DIR)
        sent = subprocess.run(  # the radiograph as stored: JPEG Baseline (storescu -xy)
            ["storescu", "-aec", "DICOMNODE", "-xy", "127.0.0.1", str(web.dicom_port), str(CXR)],
            env={**os.environ, "TCP_NODELAY": "1"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        yield web
    finally:
        web.stop()


def _qido(node: WebNode, path: str, params: dict[str, str], uid: str) -> list[str]:
    response = requests.get(node.url + path, params=params, headers=node.headers(), timeout=30)
    assert response.status_code == 200, response.text
    return sorted(item[uid]["Value"][0] for item in response.json())


def _c_find(node: WebNode, level: str, keys: dict[str, str], uid: str) -> list[str]:
    ae = AE(ae_title="QIDOSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="DICOMNODE")
    assert assoc.is_established
    try:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = level
        setattr(identifier, uid, "")
        for keyword, value in keys.items():
            setattr(identifier, keyword, value)
        found = []
        for status, answer in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
            assert status is not None and status.Status in (0x0000, 0xFF00, 0xFF01), status
            if status.Status in (0xFF00, 0xFF01):
                assert answer is not None
                found.append(str(answer.get(uid)))
        return sorted(found)
    finally:
        assoc.release()


STUDY_CASES = [
    ("PatientName", "PatientName", "example^totalsegmentator", True),  # PN: case-insensitive
    ("PatientName", "PatientName", "Example*", True),
    ("PatientName", "PatientName", "E?ample^TotalSegmentator", True),
    ("PatientName", "PatientName", "Smith*", False),
    ("PatientName", "PatientName", "Smith*\\example^*", True),  # a list of values
    ("PatientID", "PatientID", "tsexample01", False),  # LO: case-sensitive
    ("PatientID", "PatientID", "", True),  # universal
    ("00100020", "PatientID", "TSEXAMPLE01", True),  # a QIDO key by tag
    ("StudyInstanceUID", "StudyInstanceUID", f"9.9,{CT_STUDY}", True),  # UID list (QIDO commas)
    ("StudyInstanceUID", "StudyInstanceUID", "9.9\\8.8", False),
    ("StudyDate", "StudyDate", "20220101-20221231", True),
    ("StudyDate", "StudyDate", "20221209-", False),
    ("StudyDate", "StudyDate", "-20221208", True),
    ("StudyTime", "StudyTime", "0000-0000", True),  # a bound matches at its own precision
    ("StudyTime", "StudyTime", "0001-", False),
    ("ModalitiesInStudy", "ModalitiesInStudy", "CT", True),
    ("ModalitiesInStudy", "ModalitiesInStudy", "MR\\CT", True),
    ("ModalitiesInStudy", "ModalitiesInStudy", "CR", False),  # finds the radiograph only
    ("StudyDescription", "StudyDescription", "x*", False),  # empty matches only universally
    ("AccessionNumber", "AccessionNumber", "A1", False),
    ("AccessionNumber", "AccessionNumber", "TSEX*", True),
]


@pytest.mark.parametrize(("qido_key", "keyword", "value", "expected"), STUDY_CASES)
def test_studies_match_as_over_c_find(
    node: WebNode, qido_key: str, keyword: str, value: str, expected: bool
) -> None:
    over_http = _qido(node, "/studies", {qido_key: value}, "0020000D")
    over_dimse = _c_find(node, "STUDY", {keyword: value.replace(",", "\\")}, "StudyInstanceUID")
    assert over_http == over_dimse
    assert (CT_STUDY in over_http) is expected
    assert set(over_http) <= {CT_STUDY, CXR_STUDY}


def test_everything_is_found_by_both(node: WebNode) -> None:
    assert _qido(node, "/studies", {}, "0020000D") == sorted([CT_STUDY, CXR_STUDY])
    assert _c_find(node, "STUDY", {}, "StudyInstanceUID") == sorted([CT_STUDY, CXR_STUDY])


@pytest.mark.parametrize(
    ("study", "keys", "count"),
    [
        (CT_STUDY, {"Modality": "CT"}, 1),
        (CT_STUDY, {"Modality": "CR"}, 0),
        (CXR_STUDY, {"Modality": "CR\\DX"}, 1),
        (CT_STUDY, {"SeriesNumber": str(CT.SeriesNumber)}, 1),
    ],
)
def test_series_match_as_over_c_find(node: WebNode, study: str, keys: dict[str, str], count: int) -> None:
    over_http = _qido(node, f"/studies/{study}/series", keys, "0020000E")
    over_dimse = _c_find(node, "SERIES", {"StudyInstanceUID": study, **keys}, "SeriesInstanceUID")
    assert over_http == over_dimse
    assert len(over_http) == count


@pytest.mark.parametrize(
    ("keys", "count"),
    [
        ({}, 20),
        ({"InstanceNumber": str(CT.InstanceNumber)}, 1),
        ({"SOPClassUID": str(CT.SOPClassUID)}, 20),
        ({"InstanceNumber": "99"}, 0),
    ],
)
def test_instances_match_as_over_c_find(node: WebNode, keys: dict[str, str], count: int) -> None:
    path = f"/studies/{CT_STUDY}/series/{CT.SeriesInstanceUID}/instances"
    over_http = _qido(node, path, keys, "00080018")
    over_dimse = _c_find(
        node,
        "IMAGE",
        {"StudyInstanceUID": CT_STUDY, "SeriesInstanceUID": str(CT.SeriesInstanceUID), **keys},
        "SOPInstanceUID",
    )
    assert over_http == over_dimse
    assert len(over_http) == count


def test_keys_the_index_does_not_hold_are_named_in_a_warning(node: WebNode) -> None:
    response = requests.get(
        node.url + "/studies",
        params={"Rows": "512", "includefield": "Rows"},
        headers=node.headers(),
        timeout=30,
    )
    assert response.status_code == 200
    assert "Rows" in response.headers["Warning"]
    # Not matched, as over C-FIND: both studies come back, Rows read from a stored header.
    studies = {s["0020000D"]["Value"][0]: s for s in response.json()}
    assert set(studies) == {CT_STUDY, CXR_STUDY}
    assert studies[CT_STUDY]["00280010"]["Value"] == [int(CT.Rows)]


def test_bad_values_and_keys_are_refused_with_a_body(node: WebNode) -> None:
    for params, named in (
        ({"StudyDate": "yesterday"}, "StudyDate"),
        ({"NoSuchKeyword": "1"}, "NoSuchKeyword"),
        ({"ReferencedStudySequence": "1"}, "sequence"),
        ({"limit": "-1"}, "limit"),
    ):
        response = requests.get(node.url + "/studies", params=params, headers=node.headers(), timeout=30)
        assert response.status_code == 400, params
        assert named in response.json()["error"]


def test_paging_is_the_engines(node: WebNode) -> None:
    everything = _qido(node, "/studies", {}, "0020000D")
    first = _qido(node, "/studies", {"limit": "1"}, "0020000D")
    second = _qido(node, "/studies", {"limit": "1", "offset": "1"}, "0020000D")
    assert sorted(first + second) == everything and first != second
    assert _qido(node, "/studies", {"offset": "2"}, "0020000D") == []
