"""C-FIND, C-MOVE and C-GET against a real ``dicom-node serve``: DCMTK findscu/movescu/getscu, a
pynetdicom SCU for C-CANCEL and the refusals, DCMTK storescp as the move destination."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, JPEG2000Lossless
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from dicom_node.index.models import Instance
from tests.factories import nodelay
from tests.jobs.conftest import NodeUnderTest, Pacs, free_port, make_ct_study, wait_for
from tests.jobs.fixed_pipeline import result_uids
from tests.serving import dataset_sha256

REPO = Path(__file__).resolve().parents[2]
CT = sorted((REPO / "tests/data/ct/totalseg_dicom").glob("*.dcm"))
CXR = REPO / "tests/data/cxr/txrv_siim_cxr_sc_jpeg.dcm"
CT_STUDY = "1.2.826.0.1.3680043.8.498.42940388944045652466516844964331909490"
CXR_STUDY = "1.2.276.0.7230010.3.1.2.8323329.6904.1517875201.850818"
TOOLS_ENV = {**os.environ, "TCP_NODELAY": "1"}


def _qr_config(node: NodeUnderTest, pacs: Pacs, plain: Pacs | None = None) -> None:
    """QRSCU and NODE may move to the PACS (storescp, a configured destination) and to ``plain`` (a
    move-only peer that accepts only uncompressed syntaxes); others only to themselves."""
    targets = [pacs.ae_title] + ([plain.ae_title] if plain else [])
    lines = ["[query_retrieve.moves]", f"QRSCU = {json.dumps(targets)}", f"NODE = {json.dumps(targets)}"]
    if plain is not None:
        lines += [
            "[[query_retrieve.peers]]",
            'name = "plain"',
            f'ae_title = "{plain.ae_title}"',
            'host = "127.0.0.1"',
            f"port = {plain.port}",
        ]
    with node.config.open("a", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


@pytest.fixture
def plain(tmp_path: Path) -> Iterator[Pacs]:
    server = Pacs(tmp_path / "plain", free_port(), ae_title="PLAIN")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def loaded(tmp_path, redis_db, pacs, plain, node_factory) -> NodeUnderTest:
    """A node holding the shared CT (20 slices) and the radiograph, with the PACS as move target."""
    pacs.start("+xa", "+B")  # accepts the stored JPEG 2000 and JPEG; writes data sets bit for bit
    plain.start()  # uncompressed transfer syntaxes only
    node = node_factory()
    _qr_config(node, pacs, plain)
    node.serve()
    node.send(CT, options=("-xv",))
    node.send([CXR], options=("-xy",))
    return node


def _findscu(node: NodeUnderTest, out: Path, model: str, *keys: str) -> list[Dataset]:
    out.mkdir(parents=True, exist_ok=True)
    args = ["findscu", model, "-aet", "QRSCU", "-aec", "NODE", "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    result = subprocess.run(
        [*args, "127.0.0.1", str(node.port)], env=TOOLS_ENV, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return [dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]


def test_findscu_each_level_wildcards_and_ranges(loaded: NodeUnderTest, tmp_path: Path) -> None:
    node = loaded
    # Patient root, PATIENT level: the name wildcard matches in any case (PN is case-insensitive here).
    patients = _findscu(
        node,
        tmp_path / "p",
        "-P",
        "QueryRetrieveLevel=PATIENT",
        "PatientName=EXAMPLE^total*",
        "PatientID",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedInstances",
    )
    assert [(p.PatientID, str(p.PatientName)) for p in patients] == [
        ("TSEXAMPLE01", "Example^TotalSegmentator")
    ]
    assert patients[0].NumberOfPatientRelatedStudies == 1
    assert patients[0].NumberOfPatientRelatedInstances == 20
    assert patients[0].RetrieveAETitle == "NODE" and patients[0].SpecificCharacterSet == "ISO_IR 192"
    # Only the keys asked for (plus level, character set, retrieve AE title) come back.
    assert "StudyInstanceUID" not in patients[0]

    # Patient root, STUDY level under the patient.
    studies = _findscu(
        node,
        tmp_path / "ps",
        "-P",
        "QueryRetrieveLevel=STUDY",
        "PatientID=TSEXAMPLE01",
        "StudyInstanceUID",
        "RetrieveAETitle",
        "InstanceAvailability",
        "PatientAge",
    )
    assert [s.StudyInstanceUID for s in studies] == [CT_STUDY]
    assert studies[0].RetrieveAETitle == "NODE" and studies[0].InstanceAvailability == "ONLINE"
    assert "PatientAge" in studies[0] and studies[0].PatientAge in (None, "")  # not indexed: empty

    # Study root: a date range finds the CT only, an open range both; ModalitiesInStudy matches a list.
    in_2022 = _findscu(
        node,
        tmp_path / "s1",
        "-S",
        "QueryRetrieveLevel=STUDY",
        "StudyDate=20220101-20221231",
        "StudyInstanceUID",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "AccessionNumber",
    )
    assert [s.StudyInstanceUID for s in in_2022] == [CT_STUDY]
    assert in_2022[0].ModalitiesInStudy == "CT" and in_2022[0].NumberOfStudyRelatedInstances == 20
    assert in_2022[0].NumberOfStudyRelatedSeries == 1 and in_2022[0].AccessionNumber == "TSEX0001"
    since_1900 = _findscu(node, tmp_path / "s2", "-S", "QueryRetrieveLevel=STUDY", "StudyDate=19000101-")
    assert sorted(s.StudyInstanceUID for s in since_1900) == sorted([CT_STUDY, CXR_STUDY])
    before_2000 = _findscu(node, tmp_path / "s3", "-S", "QueryRetrieveLevel=STUDY", "StudyDate=-19991231")
    assert [s.StudyInstanceUID for s in before_2000] == [CXR_STUDY]
    by_modality = _findscu(
        node, tmp_path / "s4", "-S", "QueryRetrieveLevel=STUDY", "ModalitiesInStudy=MR\\CR"
    )
    assert [s.StudyInstanceUID for s in by_modality] == [CXR_STUDY]
    # Case-sensitive for other VRs: an accession number in the wrong case matches nothing.
    assert _findscu(node, tmp_path / "s5", "-S", "QueryRetrieveLevel=STUDY", "AccessionNumber=tsex*") == []
    assert (
        len(_findscu(node, tmp_path / "s6", "-S", "QueryRetrieveLevel=STUDY", "AccessionNumber=TSEX*")) == 1
    )

    # SERIES and IMAGE levels of the CT.
    series = _findscu(
        node,
        tmp_path / "se",
        "-S",
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={CT_STUDY}",
        "Modality",
        "SeriesInstanceUID",
        "NumberOfSeriesRelatedInstances",
    )
    assert [(s.Modality, s.NumberOfSeriesRelatedInstances) for s in series] == [("CT", 20)]
    images = _findscu(
        node,
        tmp_path / "im",
        "-S",
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={CT_STUDY}",
        f"SeriesInstanceUID={series[0].SeriesInstanceUID}",
        "SOPInstanceUID",
        "InstanceNumber",
        "SOPClassUID",
    )
    expected = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in CT}
    assert {i.SOPInstanceUID for i in images} == expected
    one = _findscu(
        node,
        tmp_path / "im1",
        "-S",
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={CT_STUDY}",
        f"SeriesInstanceUID={series[0].SeriesInstanceUID}",
        "InstanceNumber=270",
        "SOPInstanceUID",
    )
    assert len(one) == 1 and one[0].InstanceNumber == 270


def _assoc(node: NodeUnderTest, calling: str, *contexts: str):
    ae = AE(ae_title=calling)
    for context in contexts:
        ae.add_requested_context(context)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="NODE")
    assert assoc.is_established
    nodelay(assoc)
    return assoc


def test_movescu_to_storescp_and_getscu(loaded: NodeUnderTest, pacs: Pacs, tmp_path: Path) -> None:
    node = loaded
    result = subprocess.run(
        [
            "movescu",
            "-v",
            "-S",
            "-aet",
            "QRSCU",
            "-aec",
            "NODE",
            "-aem",
            pacs.ae_title,
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={CT_STUDY}",
            "127.0.0.1",
            str(node.port),
        ],
        env=TOOLS_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    expected = sorted(str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in CT)
    wait_for(lambda: len(pacs.received()) >= 20, 30, "the moved study at storescp")
    assert sorted(pacs.received()) == expected
    # Byte for byte the data sets the node stored.
    rows = {r.sop_instance_uid: r for r in node.rows(Instance)}
    arrived = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in pacs.folder.iterdir()}
    for uid, path in arrived.items():
        assert dataset_sha256(path) == rows[uid].sha256

    # The final response counts, seen by a pynetdicom SCU moving the radiograph.
    assoc = _assoc(node, "QRSCU", StudyRootQueryRetrieveInformationModelMove)
    try:
        identifier = Dataset()
        identifier.QueryRetrieveLevel, identifier.StudyInstanceUID = "STUDY", CXR_STUDY
        responses = list(
            assoc.send_c_move(identifier, pacs.ae_title, StudyRootQueryRetrieveInformationModelMove)
        )
    finally:
        assoc.release()
    final = responses[-1][0]
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 1
    assert final.NumberOfFailedSuboperations == 0 and final.NumberOfWarningSuboperations == 0

    # C-GET: the same study over the requestor's own association.
    out = tmp_path / "got"
    out.mkdir()
    result = subprocess.run(
        [
            "getscu",
            "-S",
            "+xv",
            "-aet",
            "GETSCU",
            "-aec",
            "NODE",
            "-od",
            str(out),
            "-k",
            "QueryRetrieveLevel=SERIES",
            "-k",
            f"StudyInstanceUID={CT_STUDY}",
            "-k",
            f"SeriesInstanceUID={dcmread(CT[0], stop_before_pixels=True).SeriesInstanceUID}",
            "127.0.0.1",
            str(node.port),
        ],
        env=TOOLS_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    got = sorted(str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in out.iterdir())
    assert got == expected
    # getscu writes sequences with undefined lengths: compare element by element, pixel data included.
    originals = {str(dcmread(p).SOPInstanceUID): dcmread(p) for p in CT}
    for path in out.iterdir():
        ds = dcmread(path)
        assert ds == originals[str(ds.SOPInstanceUID)]

    # A pynetdicom C-GET SCU sees the data set bytes as they arrive: the stored ones, bit for bit.
    received: dict[str, str] = {}

    def keep(event) -> int:
        received[str(event.request.AffectedSOPInstanceUID)] = hashlib.sha256(
            event.request.DataSet.getvalue()
        ).hexdigest()
        return 0x0000

    ae = AE(ae_title="GETSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, JPEG2000Lossless)
    role = build_role(CTImageStorage, scp_role=True)
    assoc = ae.associate(
        "127.0.0.1", node.port, ae_title="NODE", ext_neg=[role], evt_handlers=[(evt.EVT_C_STORE, keep)]
    )
    assert assoc.is_established
    try:
        identifier = Dataset()
        identifier.QueryRetrieveLevel, identifier.StudyInstanceUID = "STUDY", CT_STUDY
        final = list(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet))[-1][0]
    finally:
        assoc.release()
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 20
    assert received == {uid: rows[uid].sha256 for uid in expected}


def test_cancel_stops_a_query_early(tmp_path, redis_db, pacs, node_factory) -> None:
    node = node_factory()
    node.serve()
    # 1200 matches: with 400, under CI's load, the node had once sent them all before the C-CANCEL (sent
    # after the first response) arrived. The node now also lets its network thread read the socket
    # every few responses (edge/wakeup.py, let_the_peer_speak); here it stops after 6 to 90.
    _, files = make_ct_study(tmp_path / "many", slices=1200)
    node.send(files)
    assoc = _assoc(node, "QRSCU", StudyRootQueryRetrieveInformationModelFind)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.StudyInstanceUID = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    identifier.SOPInstanceUID = ""
    statuses = []
    try:
        responses = assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind, msg_id=7)
        for status, _ in responses:
            statuses.append(int(status.Status))
            if len(statuses) == 1:
                context = assoc._get_valid_context(StudyRootQueryRetrieveInformationModelFind, "", "scu")
                assoc.send_c_cancel(7, context.context_id)
    finally:
        assoc.release()
    assert statuses[-1] == 0xFE00, f"last status 0x{statuses[-1]:04X}"
    pending = statuses.count(0xFF00)
    assert 1 <= pending < 1200, f"{pending} pending responses: the node did not stop early"
    print(f"{pending} pending responses before the cancel took effect")


def test_refusals_then_the_cli(loaded: NodeUnderTest, pacs: Pacs) -> None:
    node = loaded
    identifier = Dataset()
    identifier.QueryRetrieveLevel, identifier.StudyInstanceUID = "STUDY", CT_STUDY

    def move(calling: str, destination: str, ds: Dataset) -> Dataset:
        assoc = _assoc(node, calling, StudyRootQueryRetrieveInformationModelMove)
        try:
            return list(assoc.send_c_move(ds, destination, StudyRootQueryRetrieveInformationModelMove))[-1][0]
        finally:
            assoc.release()

    assert move("QRSCU", "NOSUCHAE", identifier).Status == 0xA801  # unknown destination
    assert move("OTHERSCU", pacs.ae_title, identifier).Status == 0xA801  # not allowed to move there
    assert pacs.received() == []
    # A retrieve without its level's unique key: 0xA900 with the reason.
    no_uid = Dataset()
    no_uid.QueryRetrieveLevel = "SERIES"
    refused = move("QRSCU", pacs.ae_title, no_uid)
    assert refused.Status == 0xA900 and "SeriesInstanceUID" in refused.ErrorComment

    def find(model, ds: Dataset) -> Dataset:
        assoc = _assoc(node, "QRSCU", model)
        try:
            return list(assoc.send_c_find(ds, model))[-1][0]
        finally:
            assoc.release()

    no_level = Dataset()
    no_level.PatientID = "TSEXAMPLE01"
    answer = find(StudyRootQueryRetrieveInformationModelFind, no_level)
    assert answer.Status == 0xA900 and "Query/Retrieve Level" in answer.ErrorComment
    patient_in_study_root = Dataset()
    patient_in_study_root.QueryRetrieveLevel, patient_in_study_root.PatientID = "PATIENT", ""
    answer = find(StudyRootQueryRetrieveInformationModelFind, patient_in_study_root)
    assert answer.Status == 0xA900 and "Study Root" in answer.ErrorComment
    bad_date = Dataset()
    with warnings.catch_warnings():  # pydicom warns about the malformed value this test sends on purpose
        warnings.simplefilter("ignore")
        bad_date.QueryRetrieveLevel, bad_date.StudyDate = "STUDY", "2020-01-01-2021"
        answer = find(PatientRootQueryRetrieveInformationModelFind, bad_date)
    assert answer.Status == 0xA900 and "StudyDate" in answer.ErrorComment
    # The node keeps answering.
    ok = Dataset()
    ok.QueryRetrieveLevel, ok.StudyInstanceUID = "STUDY", ""
    assert find(StudyRootQueryRetrieveInformationModelFind, ok).Status == 0x0000
    assert "QRSCU" in node.log("serve.log") and "TSEXAMPLE01" not in node.log("serve.log")

    # dicom-node find / move / status against the same node.
    here = f"NODE@127.0.0.1:{node.port}"
    found = node.cli("find", "STUDY", "--to", here, "-k", "PatientName=example*", "--json")
    assert found.returncode == 0, found.stderr
    rows = json.loads(found.stdout)
    assert [(r["StudyInstanceUID"], r["ModalitiesInStudy"]) for r in rows] == [(CT_STUDY, "CT")]
    bad = node.cli("find", "STUDY", "--to", here, "-k", "StudyDate=yesterday")
    assert bad.returncode == 1 and "0xA900" in bad.stderr and "StudyDate" in bad.stderr
    moved = node.cli("move", CXR_STUDY, "--to", pacs.ae_title, "--from", here, "--json")
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert json.loads(moved.stdout)["completed"] == 1
    wait_for(lambda: len(pacs.received()) == 1, 10, "the radiograph at the PACS")
    refused = node.cli("move", CXR_STUDY, "--to", "NOSUCHAE", "--from", here)
    assert refused.returncode == 1 and "0xA801" in refused.stdout
    status = node.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    today = json.loads(status.stdout)["query_retrieve_today"]
    assert today["find"] >= 6 and today["move"] >= 4 and today["instances_sent"] >= 1


def test_the_nodes_own_results_are_found_and_retrieved(tmp_path, redis_db, pacs, node_factory) -> None:
    """An SR the node wrote (fixed test pipeline, stored through ingest) is found like a received one."""
    pacs.start()
    node = node_factory()
    node.serve()
    node.worker()
    study_uid, files = make_ct_study(tmp_path / "study")
    node.send(files)
    series_uid, sop_uid = result_uids(study_uid)
    wait_for(lambda: sop_uid in pacs.received(), 60, f"the SR at the PACS\n{node.log('worker.log')}")

    study = _findscu(
        node,
        tmp_path / "st",
        "-S",
        "QueryRetrieveLevel=STUDY",
        f"StudyInstanceUID={study_uid}",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    )
    assert [s.ModalitiesInStudy for s in study] == [["CT", "SR"]]
    assert study[0].NumberOfStudyRelatedSeries == 2 and study[0].NumberOfStudyRelatedInstances == 4
    by_modality = _findscu(node, tmp_path / "sm", "-S", "QueryRetrieveLevel=STUDY", "ModalitiesInStudy=SR")
    assert [s.StudyInstanceUID for s in by_modality] == [study_uid]
    series = _findscu(
        node,
        tmp_path / "se",
        "-S",
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={study_uid}",
        "Modality=SR",
        "SeriesInstanceUID",
    )
    assert [s.SeriesInstanceUID for s in series] == [series_uid]
    images = _findscu(
        node,
        tmp_path / "im",
        "-P",
        "QueryRetrieveLevel=IMAGE",
        "PatientID=JOBS-TEST",
        f"StudyInstanceUID={study_uid}",
        f"SeriesInstanceUID={series_uid}",
        "SOPInstanceUID",
        "SOPClassUID",
    )
    assert [i.SOPInstanceUID for i in images] == [sop_uid]


def test_partial_failure_warns_with_the_failed_instances(
    loaded: NodeUnderTest, plain: Pacs, tmp_path
) -> None:
    """A destination that takes only uncompressed syntaxes gets the uncompressed study of a two-study
    move; the JPEG 2000 CT fails: 0xB000 with the CT's 20 instances in Failed SOP Instance UID List."""
    node = loaded
    study_uid, files = make_ct_study(tmp_path / "plain-study", slices=3)
    node.send(files)
    assoc = _assoc(node, "QRSCU", StudyRootQueryRetrieveInformationModelMove)
    try:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = [study_uid, CT_STUDY]
        responses = list(
            assoc.send_c_move(identifier, plain.ae_title, StudyRootQueryRetrieveInformationModelMove)
        )
    finally:
        assoc.release()
    pending = [status for status, _ in responses[:-1]]
    assert pending and all(s.Status == 0xFF00 for s in pending)
    assert [s.NumberOfRemainingSuboperations for s in pending] == list(range(22, -1, -1))[: len(pending)]
    final, failed = responses[-1]
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (3, 20)
    expected = sorted(str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in CT)
    assert sorted(failed.FailedSOPInstanceUIDList) == expected
    wait_for(lambda: len(plain.received()) == 3, 10, "the uncompressed study at the plain peer")


def test_cancel_stops_a_retrieve_early(tmp_path, redis_db, pacs, node_factory) -> None:
    """A C-CANCEL during a C-GET: the node stops between sub-operations and answers 0xFE00 with the
    counts so far (remaining > 0), having sent only part of the study."""
    node = node_factory()
    node.serve()
    _, files = make_ct_study(tmp_path / "many", slices=150)
    node.send(files)
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    received: list[str] = []

    def keep(event: evt.Event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="GETSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    transfer_syntax = str(dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID)
    ae.add_requested_context(CTImageStorage, transfer_syntax)
    role = build_role(CTImageStorage, scp_role=True)
    assoc = ae.associate(
        "127.0.0.1", node.port, ae_title="NODE", ext_neg=[role], evt_handlers=[(evt.EVT_C_STORE, keep)]
    )
    assert assoc.is_established
    statuses: list[Dataset] = []
    try:
        identifier = Dataset()
        identifier.QueryRetrieveLevel, identifier.StudyInstanceUID = "STUDY", study_uid
        for status, _ in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet, msg_id=9):
            statuses.append(status)
            if len(statuses) == 1:
                context = assoc._get_valid_context(StudyRootQueryRetrieveInformationModelGet, "", "scu")
                assoc.send_c_cancel(9, context.context_id)
    finally:
        assoc.release()
    final = statuses[-1]
    assert final.Status == 0xFE00, f"final status 0x{final.Status:04X}"
    assert 1 <= len(received) < 150, f"{len(received)} of 150 sent: the node did not stop early"
    assert final.NumberOfRemainingSuboperations == 150 - len(received)
    assert final.NumberOfCompletedSuboperations == len(received)
