"""Index commits of received instances are ``synchronous=NORMAL``: a power failure may take the last
ones, never an acknowledged instance (its file was durable first; start-up recovery indexes it)."""

from __future__ import annotations

import os
import signal
import sqlite3

from sqlalchemy import select

from dicom_node.index.database import Database
from dicom_node.index.models import Series, Study
from tests.factories import write_ct_series
from tests.serving import assert_consistent, free_port, index_rows, send_all, start_serve, stop_serve


def _synchronous(database: Database, ingest: bool) -> int:
    engine = database.ingest_engine if ingest else database.engine
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("PRAGMA synchronous").scalar_one())


def test_only_the_ingest_engine_skips_the_fsync_of_each_commit(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    try:
        assert _synchronous(database, ingest=True) == 1  # NORMAL: the WAL is fsynced at checkpoints
        assert _synchronous(database, ingest=False) == 2  # FULL: jobs, leases, the audit trail
    finally:
        database.dispose()


def test_commits_lost_to_a_power_failure_are_indexed_again_from_the_files(tmp_path):
    paths = write_ct_series(tmp_path / "ct", 40, rows=64, columns=64)
    data_dir, port, log = tmp_path / "var", free_port(), tmp_path / "serve.log"
    index = data_dir / "index.sqlite3"
    proc = start_serve(data_dir, port, log)
    try:
        # What came before the send (schema, settings) goes into the main file: all that is in the WAL
        # from here on is what the send committed.
        conn = sqlite3.connect(index)
        try:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.close()
        assert busy == 0
        sent = send_all(port, paths)
        assert len(sent.acknowledged) == 40, sent.failed
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    # The power failure: every commit that was not checkpointed into the main file is gone (more than
    # synchronous=NORMAL can lose, which is only what the WAL held unsynced).
    for suffix in ("-wal", "-shm"):
        index.with_name(index.name + suffix).unlink(missing_ok=True)
    assert index_rows(data_dir) == {}, "the emulated power failure took no index row"

    proc = start_serve(data_dir, port, log)  # start-up recovery indexes the files
    try:
        assert_consistent(data_dir, sent.acknowledged, hashes=True)
        database = Database(f"sqlite:///{index}")
        try:
            with database.sessions() as session:
                study = session.scalars(select(Study)).one()
                series = session.scalars(select(Series)).one()
        finally:
            database.dispose()
        assert (study.num_instances, series.num_instances, series.num_frames) == (40, 40, 40)
        assert "recovery" in log.read_text()
    finally:
        stop_serve(proc)
