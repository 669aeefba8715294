"""``receivers = 2``: two real processes accept associations on one port (SO_REUSEPORT).

Which process owns each connection is read from the kernel (/proc/net/tcp and each process's open
sockets), not from the node's own account.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pynetdicom import AE, evt
from sqlalchemy import func, select

from dicom_node.edge.commitment import STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE
from dicom_node.index.database import Database
from dicom_node.index.models import AssociationRecord, CommitmentRequest, Instance, Study
from tests.dicom_node.test_commitment import _on_report, _request, _scu
from tests.factories import nodelay, write_ct_series
from tests.serving import CT, EXPLICIT, assert_consistent, free_port, start_serve, stop_serve

pytestmark = pytest.mark.timeout(240)

LISTEN, ESTABLISHED = "0A", "01"
ASSOCIATION_ROUTE = json.dumps(
    [{"pipeline": "ct-lung-nodules", "match": {"modality": "CT"}, "complete_on": "association"}]
)


def _socket_inodes(port: int, state: str) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
                inodes.add(fields[9])
    return inodes


def _held(pid: int, inodes: set[str]) -> set[str]:
    """Which of the socket ``inodes`` the process ``pid`` holds."""
    held: set[str] = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except FileNotFoundError:  # the process ended
        return held
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            held.add(target[8:-1])
    return held


def _owners(port: int, state: str, pids: list[int]) -> dict[int, int]:
    """How many sockets on the local ``port`` in ``state`` each of ``pids`` holds."""
    inodes = _socket_inodes(port, state)
    return {pid: len(_held(pid, inodes)) for pid in pids}


def _children(pid: int) -> list[int]:
    """Child processes of ``pid``, whichever of its threads started them."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children += [int(child) for child in (task / "children").read_text().split()]
        except FileNotFoundError:  # the thread ended meanwhile
            continue
    return children


def _receiver(parent: int, port: int, timeout: float = 30.0, not_pid: int | None = None) -> int:
    """The pid of the receiver process that listens on ``port`` beside ``parent``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        inodes = _socket_inodes(port, LISTEN)
        # A child between fork and exec still holds the parent's listening socket: only a socket of
        # its own makes it the receiver.
        parents = _held(parent, inodes)
        for pid in _children(parent):
            if pid != not_pid and _held(pid, inodes) - parents:
                return pid
        time.sleep(0.1)
    pytest.fail(f"no receiver process listens on {port} beside {parent}")


def _associate(port: int, calling: str = "RECVSCU") -> Any:
    ae = AE(ae_title=calling)
    ae.add_requested_context(CT, EXPLICIT)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    assert assoc.is_established
    nodelay(assoc)
    return assoc


def _on_receiver(port: int, receiver: int, associate: Callable[[], Any]) -> Any:
    """Open associations (``associate()``) until one belongs to ``receiver``; abort the others."""
    opened = []
    try:
        for _ in range(64):
            assoc = associate()
            assert assoc.is_established
            if _owners(port, ESTABLISHED, [receiver])[receiver]:
                return assoc
            opened.append(assoc)
        pytest.fail("no association reached the receiver process")
    finally:
        for assoc in opened:
            assoc.abort()


def _serve_two(tmp_path: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], int]:
    """``serve`` with ``receivers = 2`` on a free port, data in ``tmp_path/var``, log in ``serve.log``."""
    port = free_port()
    serve = start_serve(
        tmp_path / "var", port, tmp_path / "serve.log", {"DICOM_NODE_RECEIVERS": "2", **(env or {})}
    )
    return serve, port


def _storescu(port: int, folders: list[Path]) -> None:
    env = {**os.environ, "TCP_NODELAY": "1"}
    procs = [
        subprocess.Popen(
            ["storescu", "-aec", "DICOMNODE", "+sd", "127.0.0.1", str(port), str(folder)],
            env=env,
            stderr=subprocess.PIPE,
        )
        for folder in folders
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()


def _split(paths: list[Path], root: Path, parts: int) -> list[Path]:
    folders = [root / f"part{i}" for i in range(parts)]
    for index, path in enumerate(paths):
        folders[index % parts].mkdir(parents=True, exist_ok=True)
        os.link(path, folders[index % parts] / path.name)
    return folders


def test_two_receivers_share_the_port_and_keep_each_instance_once(tmp_path: Path) -> None:
    serve, port = _serve_two(tmp_path)
    data_dir, log = tmp_path / "var", tmp_path / "serve.log"
    try:
        receiver = _receiver(serve.pid, port)
        assert _owners(port, LISTEN, [serve.pid, receiver]) == {serve.pid: 1, receiver: 1}
        # 16 associations at once: the kernel gives each to one of the two (all to one: p = 2⁻¹⁵).
        held = [_associate(port) for _ in range(16)]
        owners = _owners(port, ESTABLISHED, [serve.pid, receiver])
        assert owners[serve.pid] > 0 and owners[receiver] > 0, owners
        assert sum(owners.values()) == 16
        for assoc in held:
            assoc.release()

        paths = write_ct_series(tmp_path / "ct", 64, rows=64, columns=64)
        _storescu(port, _split(paths, tmp_path / "send", 8))
        uids = [str(dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in paths]
        assert_consistent(data_dir, uids, hashes=True)
        database = Database(f"sqlite:///{data_dir / 'index.sqlite3'}")
        with database.session() as session:
            assert session.scalar(select(func.count(Instance.id))) == 64
        # Each process closes its associations' audit rows (just after the peer saw the release).
        deadline, records = time.monotonic() + 10, []
        while time.monotonic() < deadline:
            with database.session() as session:
                records = [(r.ended_at, r.outcome) for r in session.scalars(select(AssociationRecord))]
            if len(records) == 16 + 8 and all(ended is not None for ended, _ in records):
                break
            time.sleep(0.1)
        assert len(records) == 16 + 8 and all(ended is not None for ended, _ in records), records
        database.dispose()
    finally:
        stop_serve(serve)
    assert serve.returncode == 0, log.read_text()
    assert not _socket_inodes(port, LISTEN), "a receiver still listens after the node stopped"


def test_a_release_on_the_receiver_completes_the_study_without_waiting_for_quiet(tmp_path: Path) -> None:
    serve, port = _serve_two(tmp_path, {"DICOM_NODE_ROUTES": ASSOCIATION_ROUTE})  # quiet: an hour
    data_dir = tmp_path / "var"
    try:
        receiver = _receiver(serve.pid, port)
        # Store on one association that belongs to the receiver process, on that one only.
        chosen = _on_receiver(port, receiver, lambda: _associate(port))
        paths = write_ct_series(tmp_path / "ct", 3, rows=32, columns=32)
        for path in paths:
            status = chosen.send_c_store(dcmread(path))
            assert status.Status == 0x0000
        chosen.release()
        released = time.monotonic()
        database = Database(f"sqlite:///{data_dir / 'index.sqlite3'}")
        state = None
        while time.monotonic() - released < 10:
            with database.session() as session:
                state = session.scalar(select(Study.state))
            if state == "complete":
                break
            time.sleep(0.1)
        database.dispose()
        assert state == "complete", state
        # Settle 0.5 s, evidence through the pipe, the assembly pass: well under the hour's quiet.
        assert time.monotonic() - released < 5
    finally:
        stop_serve(serve)


def test_a_killed_receiver_is_started_again_and_an_orphan_stops(tmp_path: Path) -> None:
    serve, port = _serve_two(tmp_path)
    data_dir, log = tmp_path / "var", tmp_path / "serve.log"
    try:
        first = _receiver(serve.pid, port)
        os.kill(first, signal.SIGKILL)
        second = _receiver(serve.pid, port, not_pid=first)
        assert second != first
        assert f"receiver process {first} exited with status -9" in log.read_text()
        paths = write_ct_series(tmp_path / "ct", 16, rows=32, columns=32)
        _storescu(port, _split(paths, tmp_path / "send", 4))
        database = Database(f"sqlite:///{data_dir / 'index.sqlite3'}")
        with database.session() as session:
            assert session.scalar(select(func.count(Instance.id))) == 16
        database.dispose()
        # The node itself killed: its receiver notices it is orphaned and stops listening.
        serve.kill()
        serve.wait(10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and Path(f"/proc/{second}").exists():
            status = Path(f"/proc/{second}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if status == "Z":
                break
            time.sleep(0.1)
        assert not _socket_inodes(port, LISTEN), "the orphaned receiver still listens"
    finally:
        stop_serve(serve)


def test_a_commitment_request_to_the_receiver_is_reported_there_once(tmp_path: Path) -> None:
    serve, port = _serve_two(tmp_path)
    data_dir = tmp_path / "var"
    reports: queue.Queue[tuple[int, object]] = queue.Queue()
    try:
        receiver = _receiver(serve.pid, port)
        handlers = [(evt.EVT_N_EVENT_REPORT, _on_report(reports))]
        chosen = _on_receiver(
            port,
            receiver,
            lambda: _scu().associate("127.0.0.1", port, ae_title="DICOMNODE", evt_handlers=handlers),
        )
        paths = write_ct_series(tmp_path / "ct", 2, rows=32, columns=32)
        for path in paths:
            assert chosen.send_c_store(dcmread(path)).Status == 0x0000
        transaction, info = _request(paths)
        status, _ = chosen.send_n_action(info, 1, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE)
        assert status.Status == 0x0000
        event_type, _report = reports.get(timeout=10)  # on this association, from the receiver
        assert event_type == 1
        chosen.release()
        # No second report from the node's own process once the others' grace has passed.
        time.sleep(12)
        assert reports.empty()
        database = Database(f"sqlite:///{data_dir / 'index.sqlite3'}")
        with database.session() as session:
            request = session.scalars(
                select(CommitmentRequest).where(CommitmentRequest.transaction_uid == transaction)
            ).one()
            assert (request.state, request.attempts) == ("reported", 1)
        database.dispose()
    finally:
        stop_serve(serve)
