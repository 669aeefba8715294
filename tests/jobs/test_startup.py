"""Processes that start together on a new index: the schema is created once, under a lock.

``serve --no-worker`` and two ``dicom-node worker`` processes started at the same instant (as a script or
three unit files do) on an index that does not exist yet, on SQLite and on PostgreSQL: all come up and
the first study's job runs. Read-only commands never write the schema: on an index without one they
say so and leave it as it was.
"""

from __future__ import annotations

import subprocess
import time

import pytest
from sqlalchemy import inspect, select

from dicom_node.index.database import Database
from dicom_node.index.models import Delivery, DeliveryState, Job, JobState
from tests.jobs.conftest import make_ct_study, port_open, wait_for
from tests.jobs.fixed_pipeline import result_uids


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def index_url(request: pytest.FixtureRequest) -> str:
    """``""`` (SQLite in the data dir) or a new, empty PostgreSQL database."""
    if request.param == "sqlite":
        return ""
    url: str = request.getfixturevalue("postgres_url")
    return url


def test_serve_and_two_workers_started_at_once_on_a_new_index(
    tmp_path, redis_db, pacs, node_factory, index_url
):
    pacs.start()
    node = node_factory()
    node.database_url = index_url
    # The three processes are started back to back, before any of them has imported its code.
    serve = node._start(["serve", "--no-worker"], "serve.log")
    workers = [
        node._start(["worker"], f"worker{i}.log", DICOM_NODE_TEST_PIPELINE_SECONDS="0.1") for i in range(2)
    ]
    logs = lambda: "\n".join(  # noqa: E731
        f"--- {name}\n{node.log(name)}" for name in ("serve.log", "worker0.log", "worker1.log")
    )
    wait_for(lambda: port_open(node.port) or serve.poll() is not None, 60, f"the node to listen\n{logs()}")
    database = node.database()
    try:
        wait_for(lambda: _live_workers(database) == 2 or _any_exited(serve, *workers), 60, "both workers")
        assert serve.poll() is None and all(w.poll() is None for w in workers), logs()
        assert "already exists" not in logs()

        study_uid, files = make_ct_study(tmp_path / "study")
        node.send(files)
        expected = result_uids(study_uid)[1]
        wait_for(lambda: expected in pacs.received(), 60, f"the SR at the PACS\n{logs()}")
        with database.sessions() as session:
            job = session.scalar(select(Job))
            assert job is not None and job.state == JobState.SUCCEEDED and job.attempts == 1
            wait_for(
                lambda: (
                    session.scalar(select(Delivery.state)) == DeliveryState.DELIVERED or session.expire_all()
                ),
                10,
                "the delivery row",
            )
        assert pacs.received() == [expected]
    finally:
        database.dispose()


def _live_workers(database: Database) -> int:
    from dicom_node.index.models import WorkerRecord

    try:
        with database.sessions() as session:
            return len(session.scalars(select(WorkerRecord)).all())
    except Exception:  # the schema is not there yet
        return 0


def _any_exited(*processes: subprocess.Popen[bytes]) -> bool:
    return any(p.poll() is not None for p in processes)


@pytest.mark.parametrize("command", [["status"], ["studies"], ["jobs"], ["audit"]])
def test_read_only_commands_never_create_the_schema(tmp_path, pacs, node_factory, command):
    node = node_factory(broker_url="")
    result = node.cli(*command)
    assert result.returncode == 1, result.stdout + result.stderr
    said = " ".join(result.stderr.split())
    assert "has no schema" in said and "dicom-node db upgrade" in said, said
    index = node.data_dir / "index.sqlite3"
    if index.exists():
        database = Database(f"sqlite:///{index}")
        try:
            assert inspect(database.engine).get_table_names() == []
        finally:
            database.dispose()


def test_read_only_command_on_an_older_schema_says_so_and_leaves_it(tmp_path, pacs, node_factory):
    node = node_factory(broker_url="")
    node.data_dir.mkdir(parents=True)
    database = node.database()
    try:
        database.upgrade("0001")
        started = time.monotonic()
        result = node.cli("status")
        assert result.returncode == 1, result.stdout + result.stderr
        said = " ".join(result.stderr.split())
        assert "older than this version of dicom-node" in said, said
        assert "0001" in said and "dicom-node db upgrade" in said
        assert time.monotonic() - started < 30
        assert database.current_revision() == "0001"
        upgraded = node.cli("db", "upgrade")
        assert upgraded.returncode == 0, upgraded.stderr
        assert node.cli("status").returncode == 0
    finally:
        database.dispose()
