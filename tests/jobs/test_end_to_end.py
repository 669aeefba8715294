"""A study sent in is routed, analysed in a separate worker process and its results reach the PACS."""

from __future__ import annotations

import json

from sqlalchemy import func, select

from dicom_node.index.models import Delivery, DeliveryState, Job, JobState, Study
from tests.jobs.conftest import make_ct_study, wait_for
from tests.jobs.fixed_pipeline import result_uids


def _job_states(node) -> dict[str, int]:
    database = node.database()
    try:
        with database.sessions() as session:
            return dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
    finally:
        database.dispose()


def test_redis_worker_analyses_and_delivers_and_status_agrees(tmp_path, redis_db, pacs, node_factory):
    pacs.start()
    node = node_factory()
    serve = node.serve(worker=False)
    node.worker()
    study_uid, files = make_ct_study(tmp_path / "study")
    node.send(files)

    expected = result_uids(study_uid)[1]
    wait_for(lambda: expected in pacs.received(), 60, f"the SR at the PACS\n{node.log('worker.log')}")
    database = node.database()
    with database.sessions() as session:
        job = session.scalar(select(Job))
        assert job is not None and job.state == JobState.SUCCEEDED
        assert job.pipeline == "fixed-cost" and job.model_version == "test-1"
        # The job ran in the worker's process tree (a prefork child), not in the node that received it.
        assert not job.worker_host.endswith(f":{serve.pid}")
        wait_for(
            lambda: session.scalar(select(Delivery.state)) == DeliveryState.DELIVERED or session.expire_all(),
            10,
            "the delivery row",
        )
        study = session.scalar(select(Study))
        assert study.routed_revision == study.revision == 1 and study.routing_reason is None
    database.dispose()
    assert pacs.received() == [expected]

    result = node.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    in_database = _job_states(node)
    assert status["jobs"]["by_state"] == {s.value: in_database.get(s.value, 0) for s in JobState}
    assert status["jobs"]["total"] == 1
    assert status["deliveries"]["by_state"]["delivered"] == 1 and status["deliveries"]["failed"] == 0
    assert status["queues"] == {"gpu": 0, "io": 0}
    assert [w["queues"] for w in status["workers"]] == [["gpu", "io"]]
    assert status["instances"] == len(files) + 1  # the SR is stored and indexed too
    assert {p["name"] for p in status["pipelines"]} >= {"cxr-classification", "ct-lung-nodules"}

    listed = json.loads(node.cli("jobs", "--json").stdout)["jobs"]
    assert [(j["study_instance_uid"], j["state"]) for j in listed] == [(study_uid, "succeeded")]
    assert listed[0]["results"] == [expected]
