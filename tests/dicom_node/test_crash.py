"""``kill -9`` and SIGTERM of ``dicom-node serve`` in the middle of a send lose nothing acknowledged."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from sqlalchemy import select

from dicom_node.index.database import Database
from dicom_node.index.models import Instance
from dicom_node.storage.store import InstanceStore
from tests.factories import nodelay, write_ct_series

DICOM_NODE = Path(sys.executable).with_name("dicom-node")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_serve(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DICOM_NODE_DATA_DIR": str(data_dir),
        "DICOM_NODE_QUIET_PERIOD": "3600",
        "DICOM_NODE_SHUTDOWN_GRACE": "2",
    }
    proc = subprocess.Popen(
        [str(DICOM_NODE), "serve", "--host", "127.0.0.1", "--port", str(port), "--no-worker"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        if proc.poll() is not None:
            pytest.fail(f"serve exited with {proc.returncode}: {log.read_text()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("serve did not start listening")


def send_until(port: int, paths: list[Path], stop_after: int, action) -> list[str]:
    """Send ``paths``; after ``stop_after`` acknowledgements call ``action``; return acknowledged UIDs."""
    ae = AE(ae_title="CRASHSCU")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    assert assoc.is_established
    nodelay(assoc)
    acknowledged: list[str] = []
    try:
        for index, path in enumerate(paths):
            if index == stop_after:
                action()
            if not assoc.is_established:
                break
            ds = dcmread(path)
            status = assoc.send_c_store(ds)
            if "Status" in status and status.Status == 0x0000:
                acknowledged.append(str(ds.SOPInstanceUID))
    finally:
        if assoc.is_established:
            assoc.abort()
    return acknowledged


def assert_consistent(data_dir: Path, acknowledged: list[str]) -> None:
    store = InstanceStore(data_dir / "store")
    database = Database(f"sqlite:///{data_dir / 'index.sqlite3'}")
    try:
        with database.sessions() as session:
            rows = {i.sop_instance_uid: i.path for i in session.scalars(select(Instance))}
    finally:
        database.dispose()
    missing = [uid for uid in acknowledged if uid not in rows]
    assert not missing, f"{len(missing)} acknowledged instances are not indexed"
    for uid, relative in rows.items():
        assert store.path(relative).is_file(), f"row without file: {uid}"
    on_disk = set(store.iter_instance_files())
    assert on_disk == set(rows.values()), "files without rows remain"
    assert list(store.tmp.iterdir()) == [], "temporary files remain"


def test_kill_9_mid_send_loses_nothing_acknowledged(tmp_path):
    paths = write_ct_series(tmp_path / "ct", 300, rows=128, columns=128)
    data_dir, port, log = tmp_path / "var", free_port(), tmp_path / "serve.log"
    proc = start_serve(data_dir, port, log)
    try:
        acknowledged = send_until(port, paths, 120, lambda: os.kill(proc.pid, signal.SIGKILL))
    finally:
        proc.kill()
        proc.wait(10)
    assert 100 <= len(acknowledged) < 300
    proc = start_serve(data_dir, port, log)  # start-up recovery runs here
    try:
        assert_consistent(data_dir, acknowledged)
        # And it serves again: the rest arrives.
        rest = send_until(port, paths, -1, lambda: None)
        assert len(rest) == 300
    finally:
        proc.terminate()
        proc.wait(30)
    assert_consistent(data_dir, rest)


def test_sigterm_finishes_in_flight_stores_then_exits(tmp_path):
    paths = write_ct_series(tmp_path / "ct", 200, rows=128, columns=128)
    data_dir, port, log = tmp_path / "var", free_port(), tmp_path / "serve.log"
    proc = start_serve(data_dir, port, log)
    try:
        acknowledged = send_until(port, paths, 80, lambda: os.kill(proc.pid, signal.SIGTERM))
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(acknowledged) >= 80
    assert "SIGTERM" in log.read_text()
    assert_consistent(data_dir, acknowledged)
