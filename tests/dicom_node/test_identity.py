"""An instance is its data set: the same bytes from another AE are the same instance, and two senders of
one SOP Instance UID at the same moment leave one instance whose file and row agree."""

from __future__ import annotations

import hashlib
import subprocess
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE, _config
from sqlalchemy import select, update

from dicom_node.index.models import AssociationRecord, Instance, Study, StudyState
from tests.conftest import require_tool
from tests.factories import dataset_bytes, write_ct_series, write_large_ct
from tests.serving import CT, EXPLICIT, dataset_sha256

MiB = 2**20


def storescu(port: int, calling: str, path: Path) -> None:
    result = subprocess.run(
        [require_tool("storescu"), "-aet", calling, "-aec", "DICOMNODE", "127.0.0.1", str(port), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def wait_complete(node, study_uid: str, timeout: float = 15.0) -> Study:
    deadline = time.monotonic() + timeout
    while True:
        with node.database.sessions() as session:
            study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
        if study is not None and study.state == StudyState.COMPLETE:
            return study
        assert time.monotonic() < deadline, f"study is {study.state if study else None}"
        time.sleep(0.1)


def only_instance(node) -> Instance:
    with node.database.sessions() as session:
        (instance,) = session.scalars(select(Instance)).all()
    return instance


def kept_copies(node) -> list[Path]:
    return sorted((node.store.root / ".superseded").rglob("*.dcm.*"))


def test_same_bytes_from_two_calling_aes_are_one_instance(make_settings, run_node, tmp_path):
    node = run_node(make_settings())
    (path,) = write_ct_series(tmp_path / "ct", 1, rows=64, columns=64)
    study_uid = str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)
    storescu(node.address[1], "MODALITY", path)
    before = wait_complete(node, study_uid)
    storescu(node.address[1], "PACS", path)
    time.sleep(node.settings.quiet_period + 1.5)  # long enough for a re-opened study to close again
    instance = only_instance(node)
    assert instance.version == 1
    assert instance.calling_ae_title == "MODALITY"  # the first receipt stands
    assert kept_copies(node) == []
    with node.database.sessions() as session:
        study = session.scalar(select(Study))
    assert (study.state, study.revision, study.num_instances) == (StudyState.COMPLETE, before.revision, 1)
    # The stored file still names its first sender in its meta, and the hash is its data set's.
    assert dcmread(node.store.path(instance.path)).file_meta.SourceApplicationEntityTitle == "MODALITY"
    assert instance.sha256 == dataset_sha256(node.store.path(instance.path))


def test_rows_hashed_with_their_file_meta_still_see_an_identical_resend(make_settings, run_node, tmp_path):
    node = run_node(make_settings())
    (path,) = write_ct_series(tmp_path / "ct", 1, rows=64, columns=64)
    storescu(node.address[1], "MODALITY", path)
    instance = only_instance(node)
    whole_file = hashlib.sha256(node.store.path(instance.path).read_bytes()).hexdigest()
    with node.database.session() as session:  # as the index of an earlier version holds it
        session.execute(update(Instance).where(Instance.id == instance.id).values(sha256=whole_file))
    storescu(node.address[1], "PACS", path)
    instance = only_instance(node)
    assert instance.version == 1 and kept_copies(node) == []
    assert instance.sha256 == dataset_sha256(node.store.path(instance.path))  # brought up to date


def _send_together(port: int, jobs: list[tuple[str, Path]]) -> list[int]:
    """Each (calling AE, file) on its own association, all released at one barrier."""
    barrier = threading.Barrier(len(jobs))
    statuses: list[int] = [-1] * len(jobs)

    def send(index: int, calling: str, path: Path) -> None:
        ae = AE(ae_title=calling)
        ae.add_requested_context(CT, EXPLICIT)
        ae.dimse_timeout = 120
        assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
        try:
            barrier.wait(30)
            statuses[index] = int(assoc.send_c_store(path).Status)
        finally:
            assoc.release()

    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        threads = [threading.Thread(target=send, args=(i, *job)) for i, job in enumerate(jobs)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(180)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    return statuses


def _overlapped(node, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while True:  # the acceptor closes each audit row just after its peer released
        with node.database.sessions() as session:
            a, b = session.scalars(select(AssociationRecord).order_by(AssociationRecord.id)).all()
        if (a.ended_at and b.ended_at) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return a.started_at < b.ended_at and b.started_at < a.ended_at


@pytest.mark.parametrize("content", ["identical", "different"])
def test_two_associations_send_one_instance_at_once(make_settings, run_node, tmp_path, content):
    node = run_node(make_settings())
    uids = {
        "study_uid": "1.2.826.0.1.3680043.8.498.1",
        "series_uid": "1.2.826.0.1.3680043.8.498.2",
        "frame_uid": "1.2.826.0.1.3680043.8.498.4",
    }
    uid = "1.2.826.0.1.3680043.8.498.3"
    sent = {
        "SENDERA": write_large_ct(tmp_path / "a.dcm", 24 * MiB, sop_instance_uid=uid, **uids),
        "SENDERB": write_large_ct(
            tmp_path / "b.dcm",
            24 * MiB,
            sop_instance_uid=uid,
            description="Generated large CT" if content == "identical" else "Corrected large CT",
            **uids,
        ),
    }
    assert (dataset_bytes(sent["SENDERA"]) == dataset_bytes(sent["SENDERB"])) == (content == "identical")
    statuses = _send_together(node.address[1], list(sent.items()))
    assert statuses == [0, 0], [hex(s) for s in statuses]
    assert _overlapped(node), "the two associations did not overlap"
    instance = only_instance(node)
    stored = node.store.path(instance.path)
    assert instance.sha256 == dataset_sha256(stored), "row and file disagree"
    assert list(node.store.tmp.iterdir()) == []
    if content == "identical":
        assert instance.version == 1 and kept_copies(node) == []
        return
    # The documented winner: the one committed second, i.e. the row's association and calling AE.
    winner = instance.calling_ae_title
    loser = ({"SENDERA", "SENDERB"} - {winner}).pop()
    assert instance.version == 2
    assert dataset_bytes(stored) == dataset_bytes(sent[winner])
    (kept,) = kept_copies(node)
    assert dataset_bytes(kept) == dataset_bytes(sent[loser])
    with node.database.sessions() as session:
        record = session.get(AssociationRecord, instance.association_id)
    assert record is not None and record.calling_ae_title == winner
