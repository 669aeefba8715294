"""Every refusal gets its DICOM answer with a reason, leaves nothing behind, and the node serves on."""

from __future__ import annotations

import ipaddress
import subprocess
import time
import warnings
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, _config
from pynetdicom.sop_class import (  # the retired Patient/Study Only model: a service the node lacks
    PatientStudyOnlyQueryRetrieveInformationModelFind,
    Verification,
)
from sqlalchemy import func, select

from dicom_node.config import AccessPolicy
from dicom_node.index.models import AssociationOutcome, AssociationRecord, Instance
from tests.conftest import require_tool
from tests.factories import write_ct_series

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


def associate(port: int, calling: str = "PYSCU", called: str = "DICOMNODE"):
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CT, EXPLICIT)
    return ae.associate("127.0.0.1", port, ae_title=called)


def assert_serves_next(node) -> None:
    assoc = associate(node.address[1])
    assert assoc.is_established, "the node did not accept the next association"
    assert assoc.send_c_echo().Status == 0
    assoc.release()


def assert_nothing_partial(node) -> None:
    assert list(node.store.tmp.iterdir()) == []
    with node.database.sessions() as session:
        for instance in session.scalars(select(Instance)):
            assert node.store.path(instance.path).is_file()


def last_audit(node, timeout: float = 5.0) -> AssociationRecord:
    """The newest audit row, once its association has ended (the acceptor closes it after the peer)."""
    deadline = time.monotonic() + timeout
    while True:
        with node.database.sessions() as session:
            record = session.scalars(select(AssociationRecord).order_by(AssociationRecord.id.desc())).first()
        if (record is not None and record.ended_at is not None) or time.monotonic() > deadline:
            return record
        time.sleep(0.05)


def test_unknown_calling_ae_is_rejected(make_settings, run_node):
    node = run_node(make_settings(access=AccessPolicy(allowed_ae_titles=("MODALITY1",))))
    assoc = associate(node.address[1], calling="INTRUDER")
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)
    record = last_audit(node)
    assert record.outcome == AssociationOutcome.REJECTED and "INTRUDER" in record.reason
    allowed = associate(node.address[1], calling="MODALITY1")
    assert allowed.is_established
    allowed.release()


def test_wrong_called_ae_is_rejected(make_settings, run_node):
    node = run_node(make_settings())
    assoc = associate(node.address[1], called="SOMEONEELSE")
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x07)
    assert_serves_next(node)


def test_source_network_not_allowed_is_rejected(make_settings, run_node):
    node = run_node(
        make_settings(access=AccessPolicy(allowed_networks=(ipaddress.ip_network("10.0.0.0/8"),)))
    )
    assoc = associate(node.address[1])
    assert assoc.is_rejected
    assert "127.0.0.1" in last_audit(node).reason


def test_dcmtk_echoscu_with_unknown_calling_ae_fails(make_settings, run_node):
    node = run_node(make_settings(access=AccessPolicy(allowed_ae_titles=("MODALITY1",))))
    result = subprocess.run(
        [require_tool("echoscu"), "-aet", "INTRUDER", "-aec", "DICOMNODE", "127.0.0.1", str(node.address[1])],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("keyword", "value", "named"),
    [
        ("StudyInstanceUID", "../../etc", "Study Instance UID"),
        ("SeriesInstanceUID", "", "Series Instance UID"),
        ("StudyInstanceUID", "1." + "2" * 70, "Study Instance UID"),
        ("SeriesInstanceUID", "1.2.03.4", "Series Instance UID"),
        ("SOPInstanceUID", None, "SOP Instance UID"),
    ],
)
def test_bad_identifiers_are_refused_naming_the_attribute(
    make_settings, run_node, tmp_path, keyword, value, named
):
    node = run_node(make_settings())
    (path,) = write_ct_series(tmp_path, 1, rows=16, columns=16)
    ds = dcmread(path)
    if value is None:
        del ds.SOPInstanceUID
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about the invalid value we set on purpose
            setattr(ds, keyword, value)
    assoc = associate(node.address[1])
    try:
        # Send raw so no client-side validation can stop the bad value on the way.
        status = _send_raw(
            assoc, ds, tmp_path / "bad.dcm", sop_instance_uid="1.2.3.4" if value is None else None
        )
    finally:
        assoc.release()
    assert status.Status == 0xA900
    assert named in str(status.ErrorComment)
    assert_nothing_partial(node)
    with node.database.sessions() as session:
        assert session.scalar(select(func.count(Instance.id))) == 0
    assert last_audit(node).instances_refused == 1
    assert_serves_next(node)


def _send_raw(assoc, ds: Dataset, path: Path, sop_instance_uid: str | None = None):
    """Write ``ds`` as it is and send the file's bytes without decoding them."""
    from pydicom.config import IGNORE, settings

    previous = settings.writing_validation_mode
    settings.writing_validation_mode = IGNORE
    try:
        ds.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid or ds.get("SOPInstanceUID") or "1.2.3"
        ds.save_as(path, enforce_file_format=True)
    finally:
        settings.writing_validation_mode = previous
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        return assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False


def test_truncated_dataset_is_refused(make_settings, run_node, tmp_path):
    node = run_node(make_settings())
    (path,) = write_ct_series(tmp_path, 1, rows=64, columns=64)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[: len(data) - 3000])
    assoc = associate(node.address[1])
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        status = assoc.send_c_store(truncated)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        assoc.release()
    assert 0xC000 <= status.Status <= 0xCFFF, hex(status.Status)
    assert "truncated" in str(status.ErrorComment)
    assert_nothing_partial(node)
    assert_serves_next(node)


def test_unsupported_service_is_refused_and_the_node_serves_on(make_settings, run_node):
    node = run_node(make_settings())
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(PatientStudyOnlyQueryRetrieveInformationModelFind)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.address[1], ae_title="DICOMNODE")
    assert assoc.is_established
    try:
        (rejected,) = assoc.rejected_contexts
        assert rejected.abstract_syntax == PatientStudyOnlyQueryRetrieveInformationModelFind
        assert rejected.result == 0x03  # abstract syntax not supported
        with pytest.raises(ValueError, match="No presentation context"):
            next(assoc.send_c_find(Dataset(), PatientStudyOnlyQueryRetrieveInformationModelFind))
    finally:
        assoc.release()
    assert_serves_next(node)


@pytest.fixture
def small_tmpfs(tmp_path):
    mountpoint = tmp_path / "tmpfs"
    mountpoint.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the full-disk test (needs root): {result.stderr}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_full_disk_answers_out_of_resources(make_settings, run_node, tmp_path, small_tmpfs):
    node = run_node(make_settings(data_dir=small_tmpfs))
    paths = write_ct_series(tmp_path / "ct", 20, rows=256, columns=256)  # 20 × 131 kB > 3 MB
    assoc = associate(node.address[1])
    statuses = []
    try:
        for path in paths:
            statuses.append(assoc.send_c_store(path))
    finally:
        assoc.release()
    codes = [s.Status for s in statuses]
    assert codes[0] == 0x0000
    assert 0xA700 in codes, [hex(c) for c in codes]
    full = next(s for s in statuses if s.Status == 0xA700)
    assert "full" in str(full.ErrorComment)
    assert_nothing_partial(node)
    with node.database.sessions() as session:
        assert session.scalar(select(func.count(Instance.id))) == codes.count(0)
    assert_serves_next(node)
