"""Access fails closed: with the audit/index database unwritable, nobody unknown gets in and nothing is
acknowledged.

Real faults on a real ``dicom-node serve``: on SQLite every ``pwrite64`` of the process (SQLite's only
way to write its database and WAL; the store writes with ``write``) fails with EIO through strace; on
PostgreSQL the node's database stops accepting connections and its sessions are terminated.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.conftest import POSTGRES_ADMIN_URL, require_tool
from tests.factories import write_ct_series
from tests.serving import assert_consistent, free_port, index_rows, send_all, start_serve, stop_serve, strace

CONFIG = '[access]\nallowed_ae_titles = ["MODALITY1"]\n'


def storescu(port: int, calling: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("storescu"), "-aet", calling, "-aec", "DICOMNODE", "127.0.0.1", str(port), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@contextmanager
def postgres_refusing(url: str) -> Iterator[None]:
    """The node's PostgreSQL database takes no connections, and its open sessions are cut."""
    name = make_url(url).database
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false'))
            connection.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"),
                {"name": name},
            )
        yield
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true'))
        admin.dispose()


Fault = Callable[[int], AbstractContextManager[object]]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_fault(request: pytest.FixtureRequest) -> tuple[dict[str, str], Fault]:
    """(environment for serve, a context that makes its index unwritable given serve's pid)."""
    if request.param == "sqlite":
        return {}, lambda pid: strace(pid, "trace=pwrite64", "inject=pwrite64:error=EIO")
    url = request.getfixturevalue("postgres_url")
    return {"DICOM_NODE_DATABASE_URL": url}, lambda pid: postgres_refusing(url)


def test_unwritable_audit_database_refuses_unknown_and_acknowledges_nothing(tmp_path, database_fault):
    env, fault = database_fault
    config = tmp_path / "node.toml"
    config.write_text(CONFIG)
    first, second = write_ct_series(tmp_path / "ct", 2, rows=32, columns=32)
    data_dir, port, log = tmp_path / "var", free_port(), tmp_path / "serve.log"
    proc = start_serve(data_dir, port, log, {**env, "DICOM_NODE_CONFIG": str(config)})
    try:
        with fault(proc.pid):
            intruder = storescu(port, "INTRUDER", first)
            known = send_all(port, [first], calling="MODALITY1")
        assert intruder.returncode != 0
        assert "Calling AE Title Not Recognized" in intruder.stderr, intruder.stderr
        ((uid, status),) = known.statuses.items()
        assert status is not None and status != 0x0000, "acknowledged without an index"
        assert status == 0xA700 and "unavailable" in known.comments[uid], (hex(status), known.comments)
        # The database is back: the node serves on, and refuses the intruder as before.
        assert storescu(port, "INTRUDER", second).returncode != 0
        after = send_all(port, [first, second], calling="MODALITY1")
        assert len(after.acknowledged) == 2
    finally:
        stop_serve(proc)
    assert "refused association from INTRUDER" in log.read_text()
    if not env:
        assert_consistent(data_dir, after.acknowledged, hashes=True)
        assert set(index_rows(data_dir)) == set(after.acknowledged)
