"""Storage Commitment Push Model SCP against real pynetdicom SCUs, on the request's association and on a
new one, with completion by commitment and a restart of ``serve`` with a report still pending."""

from __future__ import annotations

import queue
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from sqlalchemy import select

from dicom_node.config import Destination, RouteSpec
from dicom_node.edge.commitment import STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE
from dicom_node.index.database import Database
from dicom_node.index.models import CommitmentRequest, CommitmentState, Study
from tests.factories import nodelay, write_ct_series
from tests.serving import CT, EXPLICIT, free_port, start_serve, stop_serve

CALLING = "MODALITY"
UNKNOWN = "1.2.826.0.1.3680043.8.498.999999999"
CT_ROUTE = RouteSpec.model_validate(
    {"pipeline": "ct-lung-nodules", "match": {"modality": "CT"}, "complete_on": "commitment"}
)


def _request(paths: list[Path], extra: list[tuple[str, str]] = ()) -> tuple[str, Dataset]:
    transaction = generate_uid()
    ds = Dataset()
    ds.TransactionUID = transaction
    items = []
    for path in paths:
        source = dcmread(path, stop_before_pixels=True)
        item = Dataset()
        item.ReferencedSOPClassUID = source.SOPClassUID
        item.ReferencedSOPInstanceUID = source.SOPInstanceUID
        items.append(item)
    for sop_class, sop_instance in extra:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    ds.ReferencedSOPSequence = items
    return transaction, ds


def _scu() -> AE:
    ae = AE(ae_title=CALLING)
    ae.add_requested_context(CT, EXPLICIT)
    ae.add_requested_context(STORAGE_COMMITMENT)
    ae.dimse_timeout = 30
    return ae


def _on_report(reports: queue.Queue[tuple[int, Dataset]]):
    def handle(event: evt.Event) -> tuple[int, None]:
        reports.put((int(event.event_type), event.event_information))
        return 0x0000, None

    return handle


def _store_and_request(
    port: int, paths: list[Path], reports, *, keep_open: float, extra=(), database: Database | None = None
) -> str:
    """Store ``paths`` and request their commitment; with ``keep_open``, wait for the report on the same
    association (and, with ``database``, for the node to record it acknowledged) before releasing."""
    ae = _scu()
    handlers = [(evt.EVT_N_EVENT_REPORT, _on_report(reports))] if reports is not None else []
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE", evt_handlers=handlers)
    assert assoc.is_established
    nodelay(assoc)
    try:
        for path in paths:
            assert assoc.send_c_store(dcmread(path)).Status == 0x0000
        transaction, info = _request(paths, list(extra))
        status, _reply = assoc.send_n_action(info, 1, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE)
        assert status.Status == 0x0000
        if keep_open:
            deadline = time.monotonic() + keep_open
            while reports is not None and reports.empty() and time.monotonic() < deadline:
                time.sleep(0.02)
            if database is not None:
                _wait(lambda: _state(database, transaction) == CommitmentState.REPORTED, 5, "the report")
    finally:
        assoc.release()
    return transaction


def _lists(info: Dataset) -> tuple[set[str], dict[str, int]]:
    committed = {str(i.ReferencedSOPInstanceUID) for i in info.get("ReferencedSOPSequence", [])}
    failed = {
        str(i.ReferencedSOPInstanceUID): int(i.FailureReason) for i in info.get("FailedSOPSequence", [])
    }
    return committed, failed


def _state(database: Database, transaction: str) -> str | None:
    with database.sessions() as session:
        return session.scalar(
            select(CommitmentRequest.state).where(CommitmentRequest.transaction_uid == transaction)
        )


def _uids(paths: list[Path]) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


def _study_state(database: Database, study_uid: str) -> str | None:
    with database.sessions() as session:
        return session.scalar(select(Study.state).where(Study.study_instance_uid == study_uid))


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_report_on_the_same_association_lists_committed_and_unknown(
    make_settings, run_node, database_url, tmp_path
):
    node = run_node(make_settings(quiet_period=3600.0, routes=(CT_ROUTE,), database_url=database_url))
    paths = write_ct_series(tmp_path / "ct", 2, rows=32, columns=32)
    study_uid = str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    reports: queue.Queue[tuple[int, Dataset]] = queue.Queue()
    transaction = _store_and_request(
        node.address[1], paths, reports, keep_open=10, extra=[(CT, UNKNOWN)], database=node.database
    )
    event_type, info = reports.get(timeout=1)
    assert event_type == 2  # some failed
    assert str(info.TransactionUID) == transaction
    committed, failed = _lists(info)
    assert committed == _uids(paths)
    assert failed == {UNKNOWN: 0x0112}
    with node.database.sessions() as session:
        request = session.scalar(
            select(CommitmentRequest).where(CommitmentRequest.transaction_uid == transaction)
        )
        assert request is not None and request.state == CommitmentState.REPORTED
    # The study is complete by the commitment, long before its quiet period of an hour.
    _wait(lambda: _study_state(node.database, study_uid) == "complete", 5, "completion by commitment")


def test_class_mismatch_and_bad_requests(make_settings, run_node, tmp_path):
    node = run_node(make_settings(quiet_period=3600.0, routes=(CT_ROUTE,)))
    paths = write_ct_series(tmp_path / "ct", 1, rows=32, columns=32)
    uid = next(iter(_uids(paths)))
    reports: queue.Queue[tuple[int, Dataset]] = queue.Queue()
    ae = _scu()
    assoc = ae.associate(
        "127.0.0.1",
        node.address[1],
        ae_title="DICOMNODE",
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, _on_report(reports))],
    )
    assert assoc.is_established
    try:
        assert assoc.send_c_store(dcmread(paths[0])).Status == 0x0000
        # Another SOP class under a known instance UID: committed must not be claimed.
        transaction, info = _request([], [("1.2.840.10008.5.1.4.1.1.7", uid)])
        status, _ = assoc.send_n_action(info, 1, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE)
        assert status.Status == 0x0000
        _event, report = reports.get(timeout=10)
        assert _lists(report) == (set(), {uid: 0x0119})
        _wait(lambda: _state(node.database, transaction) == CommitmentState.REPORTED, 5, "the report")
        no_transaction = Dataset()
        no_transaction.ReferencedSOPSequence = info.ReferencedSOPSequence
        status, _ = assoc.send_n_action(no_transaction, 1, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE)
        assert status.Status == 0x0120 and "Transaction UID" in status.ErrorComment
        status, _ = assoc.send_n_action(info, 7, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE)
        assert status.Status == 0x0123
        empty = Dataset()
        empty.TransactionUID = generate_uid()
        status, _ = assoc.send_n_action(empty, 1, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE)
        assert status.Status == 0x0120
    finally:
        assoc.release()
    # Nothing was recorded of the refused requests; the study is not complete by a failed commitment.
    with node.database.sessions() as session:
        assert len(session.scalars(select(CommitmentRequest)).all()) == 1
    study_uid = str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    deadline = time.monotonic() + 1.5  # the assembler's pass runs every second
    while time.monotonic() < deadline:
        assert _study_state(node.database, study_uid) == "receiving"
        time.sleep(0.1)


class ReportReceiver:
    """The requester's own SCP, where the node reports on a new association."""

    def __init__(self, port: int) -> None:
        self.reports: queue.Queue[tuple[int, Dataset]] = queue.Queue()
        ae = AE(ae_title=CALLING)
        ae.add_supported_context(STORAGE_COMMITMENT, scu_role=False, scp_role=True)
        self.server = ae.start_server(
            ("127.0.0.1", port),
            block=False,
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, _on_report(self.reports))],
        )

    def close(self) -> None:
        self.server.shutdown()


def test_report_on_a_new_association_when_the_requester_released(make_settings, run_node, tmp_path):
    port = free_port()
    receiver = ReportReceiver(port)
    try:
        destination = Destination(name="modality", ae_title=CALLING, host="127.0.0.1", port=port)
        node = run_node(make_settings(quiet_period=3600.0, destinations=(destination,)))
        paths = write_ct_series(tmp_path / "ct", 2, rows=32, columns=32)
        transaction = _store_and_request(node.address[1], paths, None, keep_open=0, extra=[(CT, UNKNOWN)])
        event_type, info = receiver.reports.get(timeout=15)
    finally:
        receiver.close()
    assert event_type == 2 and str(info.TransactionUID) == transaction
    assert _lists(info) == (_uids(paths), {UNKNOWN: 0x0112})


def test_pending_report_survives_a_restart_of_serve(tmp_path):
    """The requester is away when the node reports; serve restarts; the report then arrives."""
    report_port, port = free_port(), free_port()
    config = tmp_path / "node.toml"
    config.write_text(
        f'[[destinations]]\nname = "modality"\nae_title = "{CALLING}"\n'
        f'host = "127.0.0.1"\nport = {report_port}\n'
    )
    # The serve processes run this checkout's code (the shared virtualenv may point elsewhere).
    env = {"DICOM_NODE_CONFIG": str(config), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    data_dir, log = tmp_path / "var", tmp_path / "serve.log"
    paths = write_ct_series(tmp_path / "ct", 1, rows=32, columns=32)
    proc = start_serve(data_dir, port, log, env)
    try:
        transaction = _store_and_request(port, paths, None, keep_open=0)
        database = Database(f"sqlite:///{data_dir / 'index.sqlite3'}")
        try:

            def attempted() -> bool:
                with database.sessions() as session:
                    request = session.scalar(select(CommitmentRequest))
                    return request is not None and request.attempts >= 1

            _wait(attempted, 10, "a first, failed report attempt")
        finally:
            database.dispose()
    finally:
        stop_serve(proc)
    receiver = ReportReceiver(report_port)
    proc = start_serve(data_dir, port, log, env)
    try:
        event_type, info = receiver.reports.get(timeout=20)
    finally:
        stop_serve(proc)
        receiver.close()
    assert event_type == 1 and str(info.TransactionUID) == transaction
    assert _lists(info) == (_uids(paths), {})
    assert "not reported (attempt 1)" in log.read_text()
