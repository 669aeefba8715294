"""Real ``dicom-node serve`` processes for tests: start, send to, trace with strace, check the store."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from sqlalchemy import select

from dicom_node.index.database import Database
from dicom_node.index.models import Instance
from dicom_node.storage.store import InstanceStore
from tests.factories import dataset_bytes, nodelay

DICOM_NODE = Path(sys.executable).with_name("dicom-node")
CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


def dataset_sha256(path: Path) -> str:
    """The sha256 of a file's data set (without preamble and file meta), computed here, not by the node."""
    return hashlib.sha256(dataset_bytes(path)).hexdigest()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_command(port: int) -> list[str]:
    return [str(DICOM_NODE), "serve", "--host", "127.0.0.1", "--port", str(port), "--no-worker"]


def serve_env(data_dir: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    return {
        **os.environ,
        "DICOM_NODE_DATA_DIR": str(data_dir),
        "DICOM_NODE_QUIET_PERIOD": "3600",
        "DICOM_NODE_SHUTDOWN_GRACE": "2",
        **(env or {}),
    }


def start_serve(
    data_dir: Path, port: int, log: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``dicom-node serve`` and wait until it listens."""
    proc = subprocess.Popen(
        serve_command(port), env=serve_env(data_dir, env), stdout=log.open("ab"), stderr=subprocess.STDOUT
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


def stop_serve(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def send_until(port: int, paths: list[Path], stop_after: int, action: Callable[[], object]) -> list[str]:
    """Send ``paths``; after ``stop_after`` acknowledgements call ``action``; return acknowledged UIDs."""
    ae = AE(ae_title="CRASHSCU")
    ae.add_requested_context(CT, EXPLICIT)
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
            try:
                status = assoc.send_c_store(ds)
            except RuntimeError:  # the association ended between the check above and this send
                break
            if "Status" in status and status.Status == 0x0000:
                acknowledged.append(str(ds.SOPInstanceUID))
    finally:
        if assoc.is_established:
            assoc.abort()
    return acknowledged


@dataclass
class SendLog:
    """What one association's sender saw: the status of each instance it sent (None: no answer)."""

    statuses: dict[str, int | None] = field(default_factory=dict)
    comments: dict[str, str] = field(default_factory=dict)

    @property
    def acknowledged(self) -> list[str]:
        return [uid for uid, status in self.statuses.items() if status == 0x0000]

    @property
    def failed(self) -> dict[str, int]:
        return {uid: s for uid, s in self.statuses.items() if s is not None and s != 0x0000}


def send_all(port: int, paths: list[Path], calling: str = "FAULTSCU") -> SendLog:
    """Send each file (as its encoded bytes, without decoding) on one association until it ends."""
    from pynetdicom import _config

    log = SendLog()
    ae = AE(ae_title=calling)
    ae.add_requested_context(CT, EXPLICIT)
    ae.dimse_timeout = 60
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    assert assoc.is_established
    nodelay(assoc)
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        for path in paths:
            if not assoc.is_established:
                break
            uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            try:
                status = assoc.send_c_store(path)
            except RuntimeError:  # the association ended between the check and the send
                log.statuses[uid] = None
                break
            if "Status" not in status:  # no answer: the association is gone
                log.statuses[uid] = None
                break
            log.statuses[uid] = int(status.Status)
            if "ErrorComment" in status:
                log.comments[uid] = str(status.ErrorComment)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        if assoc.is_established:
            if None in log.statuses.values():
                assoc.abort()
            else:
                assoc.release()
    return log


def index_rows(data_dir: Path) -> dict[str, Instance]:
    database = Database(f"sqlite:///{data_dir / 'index.sqlite3'}")
    try:
        with database.sessions() as session:
            return {i.sop_instance_uid: i for i in session.scalars(select(Instance))}
    finally:
        database.dispose()


def assert_consistent(data_dir: Path, acknowledged: list[str], *, hashes: bool = False) -> None:
    """Every acknowledged instance indexed and on disk; no row without file, file without row, or
    temporary file; with ``hashes``, each row's sha256 is its file's data set."""
    store = InstanceStore(data_dir / "store")
    rows = index_rows(data_dir)
    missing = [uid for uid in acknowledged if uid not in rows]
    assert not missing, f"{len(missing)} acknowledged instances are not indexed"
    for uid, row in rows.items():
        assert store.path(row.path).is_file(), f"row without file: {uid}"
        if hashes:
            assert dataset_sha256(store.path(row.path)) == row.sha256, f"row and file differ: {uid}"
    on_disk = set(store.iter_instance_files())
    assert on_disk == {row.path for row in rows.values()}, "files without rows remain"
    assert list(store.tmp.iterdir()) == [], "temporary files remain"


def _traced_threads(pid: int) -> tuple[int, int]:
    tasks = list(Path(f"/proc/{pid}/task").iterdir())
    traced = 0
    for task in tasks:
        try:
            status = (task / "status").read_text()
        except FileNotFoundError:
            continue
        tracer = next(line for line in status.splitlines() if line.startswith("TracerPid:"))
        traced += tracer.split()[1] != "0"
    return traced, len(tasks)


@contextmanager
def strace(pid: int, *expressions: str) -> Iterator[subprocess.Popen[bytes]]:
    """Attach ``strace -f`` with ``expressions`` (``-e inject=...``) to every thread of ``pid``.

    Injection counts each syscall per thread (strace(1): "per syscall and per tracee"), so ``when=N``
    is the Nth call in one association's thread, whatever the others do.
    """
    tool = shutil.which("strace")
    if tool is None:
        pytest.fail("strace is not installed: run scripts/setup --test")
    args = [tool, "-f", "-qq", "-o", "/dev/null", "-p", str(pid)]
    for expression in expressions:
        args += ["-e", expression]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            traced, total = _traced_threads(pid)
            if traced == total:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"strace did not attach: {proc.stderr.read().decode() if proc.stderr else ''}")
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(30)


def vm_hwm_kib(pid: int) -> int:
    """The peak resident set size of ``pid`` (VmHWM in /proc/PID/status), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM line")
