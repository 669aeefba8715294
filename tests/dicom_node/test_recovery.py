"""Start-up recovery never drops data the store holds: a missing mount, shared stores, old crash states."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from pathlib import Path

from tests.factories import dataset_bytes, write_ct_series
from tests.serving import (
    assert_consistent,
    dataset_sha256,
    free_port,
    index_rows,
    send_all,
    serve_command,
    serve_env,
    start_serve,
    stop_serve,
)


def _stored(tmp_path: Path, count: int = 5) -> tuple[Path, list[str]]:
    """A data folder whose node received ``count`` instances and stopped."""
    paths = write_ct_series(tmp_path / "ct", count, rows=32, columns=32)
    data_dir, port, log = tmp_path / "var", free_port(), tmp_path / "serve.log"
    proc = start_serve(data_dir, port, log)
    try:
        acknowledged = send_all(port, paths).acknowledged
    finally:
        stop_serve(proc)
    assert len(acknowledged) == count
    return data_dir, acknowledged


def _serve_once(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        serve_command(free_port()), env=serve_env(data_dir), capture_output=True, text=True, timeout=60
    )


def test_serve_refuses_to_start_when_the_store_root_is_missing(tmp_path):
    data_dir, acknowledged = _stored(tmp_path)
    (data_dir / "store").rename(tmp_path / "store-elsewhere")  # the mount is missing
    result = _serve_once(data_dir)
    assert result.returncode == 1, result.stderr
    said = " ".join(result.stderr.split())  # the console wraps long lines
    assert "cannot start" in said and "store root" in said and "does not exist" in said, said
    assert "mounted?" in said and "no index row is removed" in said
    assert not (data_dir / "store").exists(), "serve created the missing store root"
    assert set(index_rows(data_dir)) == set(acknowledged), "index rows were removed"
    # An empty folder in its place (a mount point without its file system) is refused the same way.
    (data_dir / "store").mkdir()
    result = _serve_once(data_dir)
    assert result.returncode == 1 and "is empty" in " ".join(result.stderr.split()), result.stderr
    assert set(index_rows(data_dir)) == set(acknowledged)
    # Mounted again: it starts, and everything is still there.
    (data_dir / "store").rmdir()
    (tmp_path / "store-elsewhere").rename(data_dir / "store")
    proc = start_serve(data_dir, free_port(), tmp_path / "serve.log")
    stop_serve(proc)
    assert_consistent(data_dir, acknowledged, hashes=True)


def test_recovery_removes_only_this_hosts_dead_temporary_files(tmp_path):
    data_dir, acknowledged = _stored(tmp_path)
    tmp = data_dir / "store" / ".tmp"
    host = socket.gethostname()
    dead = subprocess.Popen(["true"])
    dead.wait()
    start = Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()[19]
    names = {
        # another host's write in flight (a shared store): never touched
        "other": f"other-host.example.org.4242-123456.{secrets.token_hex(8)}.part",
        # a live process of this host (this test) writing: never touched
        "alive": f"{host}.{os.getpid()}-{start}.{secrets.token_hex(8)}.part",
        # this host, a process that is gone: a leftover
        "dead": f"{host}.{dead.pid}-1.{secrets.token_hex(8)}.part",
        # this host, a live pid that started at another time (pid reused): a leftover
        "reused": f"{host}.{os.getpid()}-1.{secrets.token_hex(8)}.part",
        # an intent record cut short before its fsync (its replacement had not started): a leftover
        "intent": f"{host}.{dead.pid}-1.{secrets.token_hex(8)}.intent",
    }
    for name in names.values():
        (tmp / name).write_bytes(b'{"sop_instance_uid": "1.2' if name.endswith(".intent") else b"partial")
    proc = start_serve(data_dir, free_port(), tmp_path / "serve.log")
    stop_serve(proc)
    left = {p.name for p in tmp.iterdir()}
    assert left == {names["other"], names["alive"]}
    assert set(index_rows(data_dir)) == set(acknowledged)


def test_a_row_whose_file_was_moved_aside_is_restored_not_dropped(tmp_path):
    # What a crash between the earlier order's "move the old file to .superseded" and the commit left:
    # the row points at a path that is empty, its content sits under .superseded.
    data_dir, acknowledged = _stored(tmp_path, 3)
    uid = acknowledged[0]
    row = index_rows(data_dir)[uid]
    store = data_dir / "store"
    before = dataset_bytes(store / row.path)
    kept = store / ".superseded" / f"{row.path}.{row.sha256[:12]}"
    kept.parent.mkdir(parents=True)
    (store / row.path).rename(kept)
    proc = start_serve(data_dir, free_port(), tmp_path / "serve.log")
    stop_serve(proc)
    assert set(index_rows(data_dir)) == set(acknowledged), "the row was dropped"
    assert dataset_bytes(store / row.path) == before
    assert not kept.exists()
    assert_consistent(data_dir, acknowledged, hashes=True)
    assert dataset_sha256(store / row.path) == index_rows(data_dir)[uid].sha256
