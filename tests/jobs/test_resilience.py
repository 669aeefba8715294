"""Nothing is lost or duplicated: embedded broker, a killed worker, a destination down, a flushed Redis."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter

from dicom_node.index.models import Delivery, DeliveryState, Job, JobState
from tests.jobs.conftest import make_ct_study, wait_for
from tests.jobs.fixed_pipeline import result_uids


def _all_delivered(node, count: int) -> bool:
    deliveries = node.rows(Delivery)
    return len(deliveries) == count and all(d.state == DeliveryState.DELIVERED for d in deliveries)


def test_embedded_broker_and_worker_without_redis(tmp_path, pacs, node_factory):
    pacs.start()
    node = node_factory(broker_url="")  # no broker URL: filesystem:// under the data dir
    node.serve(worker=True)
    study_uid, files = make_ct_study(tmp_path / "study")
    node.send(files)
    expected = result_uids(study_uid)[1]
    wait_for(lambda: expected in pacs.received(), 90, "the SR at the PACS via the embedded worker")
    wait_for(lambda: _all_delivered(node, 1), 10, "the delivery row")
    assert (node.data_dir / "queue" / "messages").is_dir()
    job = node.rows(Job)[0]
    assert job.state == JobState.SUCCEEDED and job.attempts == 1
    status = json.loads(node.cli("status", "--json").stdout)
    assert status["broker"]["embedded"] and status["queues"] == {"gpu": 0, "io": 0}
    assert pacs.received() == [expected]


def test_kill_9_of_a_worker_mid_job_runs_it_again_with_the_same_results(
    tmp_path, redis_db, pacs, node_factory
):
    pacs.start()
    node = node_factory(running_lease=2)
    node.serve()
    slow = node.worker(pipeline_seconds=60)
    study_uid, files = make_ct_study(tmp_path / "study")
    node.send(files)
    wait_for(lambda: any(j.state == JobState.RUNNING for j in node.rows(Job)), 60, "the job to start")
    os.killpg(slow.pid, signal.SIGKILL)  # the worker and its pool child, mid-pipeline
    slow.wait()
    node.worker(pipeline_seconds=0.1)
    wait_for(lambda: _all_delivered(node, 1), 60, "the job to run again and deliver")
    job = node.rows(Job)[0]
    assert job.state == JobState.SUCCEEDED and job.attempts == 2
    assert pacs.received() == [result_uids(study_uid)[1]]  # exactly one set, the deterministic UIDs


def test_destination_down_for_a_while_gets_everything_once(tmp_path, redis_db, pacs, node_factory):
    node = node_factory(delivery_backoff=0.3, delivery_backoff_max=1)
    node.serve()
    node.worker(pipeline_seconds=0.05)
    studies = [make_ct_study(tmp_path / f"study{i}") for i in range(3)]
    for _uid, files in studies:
        node.send(files)
    wait_for(
        lambda: len(d := node.rows(Delivery)) == 3 and all(x.failures >= 2 for x in d),
        60,
        "three deliveries failing against the stopped PACS",
    )
    assert all(d.state in (DeliveryState.PENDING, DeliveryState.SENDING) for d in node.rows(Delivery))
    pacs.start()
    wait_for(lambda: _all_delivered(node, 3), 60, "every delivery once the PACS is back")
    received = Counter(pacs.received())
    assert received == Counter(result_uids(uid)[1] for uid, _ in studies)  # each once


def test_dead_letter_then_retry(tmp_path, redis_db, pacs, node_factory):
    node = node_factory(delivery_backoff=0.2, delivery_backoff_max=0.4, delivery_horizon=1.5)
    node.serve()
    node.worker(pipeline_seconds=0.05)
    study_uid, files = make_ct_study(tmp_path / "study")
    node.send(files)
    wait_for(lambda: [d.state for d in node.rows(Delivery)] == [DeliveryState.FAILED], 60, "the dead letter")
    status = json.loads(node.cli("status", "--json").stdout)
    assert status["deliveries"]["failed"] == 1
    pacs.start()
    result = node.cli("retry", "--failed")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: _all_delivered(node, 1), 60, "the retried delivery")
    assert pacs.received() == [result_uids(study_uid)[1]]


def test_flushdb_while_jobs_are_queued_loses_nothing(tmp_path, redis_db, pacs, node_factory):
    pacs.start()
    node = node_factory(queued_lease=2)
    node.serve()
    studies = [make_ct_study(tmp_path / f"study{i}") for i in range(3)]
    for _uid, files in studies:
        node.send(files)
    wait_for(lambda: len(j := node.rows(Job)) == 3 and all(x.queued_at for x in j), 60, "three queued jobs")
    # The rows commit before the messages are published (the database is the truth), so poll.
    wait_for(lambda: redis_db.llen("gpu") >= 3, 30, "three messages on the gpu queue")
    redis_db.flushdb()
    node.worker(pipeline_seconds=0.05)
    wait_for(lambda: _all_delivered(node, 3), 60, "all jobs after FLUSHDB")
    assert all(j.state == JobState.SUCCEEDED for j in node.rows(Job))
    assert Counter(pacs.received()) == Counter(result_uids(uid)[1] for uid, _ in studies)
