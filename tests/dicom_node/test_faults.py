"""Faults injected with strace into a running ``dicom-node serve``: nothing acknowledged is lost.

Each case attaches ``strace -f`` to a real ``serve`` (no hooks in the product) and sends a 300-instance
CT over one association. Injection counts per thread, so ``when=N`` is the Nth call of that syscall in
the association's thread (renames and fsyncs: its C-STORE handler) or in its network thread (writes:
the data set streaming to disk). Per instance the handler does one rename and two fsyncs (file, then
folder; the first instance also fsyncs the two new folders and the root), the network thread two
writes (file meta, then the data fragment). Afterwards ``serve`` is restarted (start-up recovery runs)
and the store and index must agree with what the sender saw.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.factories import dataset_bytes, write_ct_series
from tests.serving import (
    assert_consistent,
    dataset_sha256,
    free_port,
    index_rows,
    send_all,
    start_serve,
    stop_serve,
    strace,
)

SUPERSEDED_DIR = ".superseded"


@pytest.fixture(scope="module")
def ct300(tmp_path_factory) -> list[Path]:
    return write_ct_series(tmp_path_factory.mktemp("ct300"), 300, rows=128, columns=128)


@pytest.mark.parametrize(
    ("expression", "killed"),
    [
        ("inject=rename:signal=KILL:when=120", True),  # SIGKILL at instance 120's rename
        ("inject=fsync:error=EIO:when=101", False),  # instance 50's file fsync
        ("inject=fsync:error=EIO:when=150", False),  # instance 74's folder fsync, after its rename
        ("inject=write:error=ENOSPC:when=200", False),  # instance 100's data fragment
    ],
    ids=["rename-kill", "fsync-file-eio", "fsync-folder-eio", "write-enospc"],
)
def test_injected_fault_mid_send_loses_nothing_acknowledged(tmp_path, ct300, expression, killed):
    data_dir, port, log_file = tmp_path / "var", free_port(), tmp_path / "serve.log"
    syscall = expression.split("=")[1].split(":")[0]
    proc = start_serve(data_dir, port, log_file)
    try:
        with strace(proc.pid, f"trace={syscall}", expression):
            sent = send_all(port, ct300)
        if killed:
            assert proc.wait(30) == -signal.SIGKILL
            assert not sent.failed
            assert 100 <= len(sent.acknowledged) < 300
        else:
            # Exactly one call failed, and its instance got a failure status, never success.
            assert len(sent.failed) == 1, sent.failed
            ((uid, status),) = sent.failed.items()
            assert status == 0xA700, hex(status)
            assert "storage" in sent.comments[uid], sent.comments[uid]
            assert len(sent.acknowledged) == 299
    finally:
        stop_serve(proc)
    proc = start_serve(data_dir, port, log_file)  # start-up recovery
    try:
        assert_consistent(data_dir, sent.acknowledged, hashes=True)
        assert not set(sent.failed) & set(index_rows(data_dir)), "a refused instance was indexed"
        again = send_all(port, ct300)  # the sender retries; everything arrives once
        assert len(again.acknowledged) == 300
    finally:
        stop_serve(proc)
    assert_consistent(data_dir, again.acknowledged, hashes=True)
    assert len(index_rows(data_dir)) == 300


@pytest.mark.parametrize(
    "expression",
    [
        "inject=rename:signal=KILL:when=1",  # the first rename of the replacing association
        "inject=rename:signal=KILL:when=2",  # the second (an older order moved the old file first)
        "inject=fdatasync:signal=KILL:when=2",  # its index commit (the first is its audit row)
    ],
    ids=["rename-1", "rename-2", "commit"],
)
def test_kill_during_a_replacement_keeps_the_acknowledged_content(tmp_path, expression):
    first, *others = write_ct_series(tmp_path / "ct", 3, rows=32, columns=32)
    changed = tmp_path / "changed.dcm"
    ds = dcmread(first)
    ds.SeriesDescription = "Corrected description"
    ds.save_as(changed, enforce_file_format=True)
    uid = str(ds.SOPInstanceUID)
    data_dir, port, log_file = tmp_path / "var", free_port(), tmp_path / "serve.log"
    proc = start_serve(data_dir, port, log_file)
    try:
        assert len(send_all(port, [first, *others]).acknowledged) == 3
        with strace(proc.pid, f"trace={expression.split('=')[1].split(':')[0]}", expression):
            replacing = send_all(port, [changed])
    finally:
        stop_serve(proc)
    proc = start_serve(data_dir, port, log_file)  # start-up recovery
    stop_serve(proc)
    assert_consistent(data_dir, [uid], hashes=True)
    row = index_rows(data_dir)[uid]
    stored = dataset_bytes(data_dir / "store" / row.path)
    kept = list((data_dir / "store" / SUPERSEDED_DIR).rglob("*.dcm.*"))
    if replacing.acknowledged or stored == dataset_bytes(changed):
        # Acknowledged, or committed just before the kill (the answer was lost): the new content,
        # version 2, the first content kept.
        assert stored == dataset_bytes(changed) and row.version == 2
        assert [dataset_bytes(k) for k in kept] == [dataset_bytes(first)]
    else:  # rolled back: the first content, still version 1, and no stray kept copy
        assert stored == dataset_bytes(first) and row.version == 1
        assert kept == []
    # And the replacement goes through when sent again, keeping the first content.
    proc = start_serve(data_dir, port, log_file)
    try:
        assert send_all(port, [changed]).acknowledged == [uid]
    finally:
        stop_serve(proc)
    row = index_rows(data_dir)[uid]
    assert dataset_bytes(data_dir / "store" / row.path) == dataset_bytes(changed)
    (kept,) = (data_dir / "store" / SUPERSEDED_DIR).rglob("*.dcm.*")
    assert dataset_bytes(kept) == dataset_bytes(first)
    assert dataset_sha256(data_dir / "store" / row.path) == row.sha256
