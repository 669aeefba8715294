"""The compose topology as processes on loopback: ``serve --no-worker``, a ``gpu`` worker and an ``io``
worker, real Redis (db 9), a throwaway PostgreSQL database and Orthanc as the destination. A study sent to
the node comes back as a result object in Orthanc, found through Orthanc's REST API.

Reuses the job tests' node harness and their test-only ``fixed-cost`` pipeline (a ``[jobs]`` plugin), and
the reports tests' Orthanc fixture; nothing is mocked.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select

from dicom_node.index.database import Database
from dicom_node.index.models import Delivery, DeliveryState, Job, JobState
from tests.jobs.conftest import NodeUnderTest, flushed_redis, make_ct_study, redis_db_number, wait_for
from tests.jobs.fixed_pipeline import result_uids
from tests.reports.test_orthanc import Pacs as Orthanc
from tests.reports.test_orthanc import orthanc  # noqa: F401  (fixture)

REDIS_DB = redis_db_number(offset=1)  # the job tests' database + 2 (one per pytest-xdist worker)
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"


@dataclass
class OrthancDestination:
    """What the node harness needs of a PACS: its AE title and DICOM port."""

    ae_title: str
    port: int


class ScaledOutNode(NodeUnderTest):
    """The harness's node, with its index in PostgreSQL instead of SQLite."""

    database_url: str = ""

    def env(self, **extra: str) -> dict[str, str]:
        return super().env(DICOM_NODE_DATABASE_URL=self.database_url, **extra)

    def database(self) -> Database:
        return Database(self.database_url)


@pytest.fixture
def redis_db9() -> Iterator[redis.Redis]:
    yield from flushed_redis(REDIS_URL)


def _orthanc_find(pacs: Orthanc, level: str, query: dict[str, str]) -> list[Any]:
    request = urllib.request.Request(
        f"{pacs.http}/tools/find",
        data=json.dumps({"Level": level, "Query": query, "Expand": True}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        found: list[Any] = json.loads(response.read())
    return found


@pytest.mark.slow
def test_node_two_workers_redis_postgres_orthanc(
    tmp_path: Path,
    redis_db9: redis.Redis,
    postgres_url: str,
    orthanc: Orthanc,  # noqa: F811
) -> None:
    destination = OrthancDestination(orthanc.ae_title, orthanc.dicom_port)
    node = ScaledOutNode(tmp_path / "node", destination, REDIS_URL)  # type: ignore[arg-type]
    node.database_url = postgres_url
    node.root.mkdir()
    node.write_config()
    try:
        node.serve(worker=False)
        node._start(["worker", "--queues", "gpu"], "worker-gpu.log", DICOM_NODE_TEST_PIPELINE_SECONDS="0.2")
        node._start(["worker", "--queues", "io"], "worker-io.log")
        study_uid, files = make_ct_study(tmp_path / "study", slices=4)
        node.send(files)

        series_uid, sop_uid = result_uids(study_uid)
        logs = lambda: "\n".join(  # noqa: E731
            f"--- {name}\n{node.log(name)}" for name in ("serve.log", "worker-gpu.log", "worker-io.log")
        )
        found = wait_for(
            lambda: _orthanc_find(orthanc, "Instance", {"SOPInstanceUID": sop_uid}),
            90,
            f"the result SR in Orthanc\n{logs()}",
            interval=0.5,
        )
        (instance,) = found
        tags = orthanc.get(f"/instances/{instance['ID']}/simplified-tags")
        assert isinstance(tags, dict)
        assert tags["StudyInstanceUID"] == study_uid
        assert tags["SeriesInstanceUID"] == series_uid
        assert tags["Modality"] == "SR"

        database = node.database()
        try:
            with database.sessions() as session:
                job = session.scalar(select(Job))
                assert job is not None and job.state == JobState.SUCCEEDED
                delivery = wait_for(
                    lambda: (
                        session.scalar(select(Delivery).where(Delivery.state == DeliveryState.DELIVERED))
                        or session.expire_all()
                    ),
                    10,
                    "the delivery row",
                )
                # Analysis and sending ran in the two different workers.
                assert job.worker_host and delivery.worker_host
                assert job.worker_host != delivery.worker_host
        finally:
            database.dispose()
    finally:
        node.stop()
