"""A worker presumed dead never publishes or sends beside the one that took over (compare-and-set on the
claim token), and a slow PACS never looks like a dead worker (deliveries renew their lease while sending).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections import Counter

from pydicom import dcmread

from dicom_node.index.models import Delivery, DeliveryState, Instance, Job, JobState, Result
from tests.jobs.conftest import NodeUnderTest, make_ct_study, wait_for
from tests.jobs.fixed_pipeline import result_uids, stamp_of


def _delivered(node, count: int) -> bool:
    deliveries = node.rows(Delivery)
    return len(deliveries) == count and all(d.state == DeliveryState.DELIVERED for d in deliveries)


def _write_lock_free(node: NodeUnderTest) -> bool:
    """Whether a writer can take the SQLite index's write lock within half a second."""
    connection = sqlite3.connect(node.data_dir / "index.sqlite3", timeout=0.5, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        connection.close()


def _freeze_mid_pipeline(node: NodeUnderTest, pgid: int) -> None:
    """SIGSTOP the worker's process group at a moment it holds no write transaction.

    On SQLite a process stopped inside a write transaction (a lease renewal, say) keeps the index's one
    write lock, and every writer waits for it (docs/jobs.md): not the worker frozen in its pipeline that
    this test is about. A CI-style run on 2026-12-03 failed here once (the second worker had not finished
    after 60 s); in 1 of 8 runs beside a CPU load the first freeze landed inside a write transaction.
    """
    for _ in range(50):
        os.killpg(pgid, signal.SIGSTOP)
        if node.database_url or _write_lock_free(node):
            return
        os.killpg(pgid, signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError("the worker held the index's write lock at every one of 50 freezes")


def test_worker_frozen_past_its_lease_publishes_nothing_when_it_wakes(tmp_path, redis_db, pacs, node_factory):
    pacs.start()
    node = node_factory(running_lease=2)
    node.serve()
    frozen = node._start(
        ["worker"], "worker-a.log", DICOM_NODE_TEST_PIPELINE_SECONDS="8", DICOM_NODE_TEST_WRITER_STAMP="1"
    )
    study_uid, files = make_ct_study(tmp_path / "study")
    node.send(files)
    wait_for(lambda: any(j.state == JobState.RUNNING for j in node.rows(Job)), 60, "the job to start")
    _freeze_mid_pipeline(node, frozen.pid)  # the worker and its pool child, mid-pipeline: no heartbeat
    try:
        node._start(
            ["worker"],
            "worker-b.log",
            DICOM_NODE_TEST_PIPELINE_SECONDS="0.1",
            DICOM_NODE_TEST_WRITER_STAMP="1",
        )
        sop_uid = result_uids(study_uid)[1]
        try:
            wait_for(lambda: _delivered(node, 1), 60, "the second worker to finish")
        except AssertionError as error:  # the logs as they are now, not as they were when it began
            raise AssertionError(f"{error}\n{node.log('worker-b.log')}\n{node.log('serve.log')}") from None
        assert pacs.received() == [sop_uid]
    finally:
        os.killpg(frozen.pid, signal.SIGCONT)
    # The frozen worker wakes with its pipeline done and tries to store its own (different) SR.
    wait_for(
        lambda: (
            "results discarded" in node.log("worker-a.log") or "lost its claim" in node.log("worker-a.log")
        ),
        30,
        f"the woken worker to give up\n{node.log('worker-a.log')}",
    )
    time.sleep(2 * 0.3 + 1)  # reconciler passes: a delivery it created would be sent by now
    assert Counter(pacs.received()) == Counter({sop_uid: 1})  # exactly one result set at the PACS

    job = node.rows(Job)[0]
    assert job.state == JobState.SUCCEEDED and job.attempts == 2
    assert [r.sop_instance_uid for r in node.rows(Result)] == [sop_uid]
    assert len(node.rows(Delivery)) == 1
    # What the node keeps is what the PACS got: the second worker's object, never replaced by the first's.
    (stored,) = [i for i in node.rows(Instance) if i.sop_instance_uid == sop_uid]
    assert stored.version == 1
    assert not (node.data_dir / "store" / ".superseded").exists()
    at_pacs = [dcmread(p) for p in (pacs.folder).iterdir() if p.is_file()]
    kept = dcmread(node.data_dir / "store" / stored.path)
    assert stamp_of(kept) is not None and [stamp_of(d) for d in at_pacs] == [stamp_of(kept)]
    assert f"process {frozen.pid}" not in (stamp_of(kept) or "")


def test_a_pacs_slower_than_the_lease_receives_each_object_once(
    tmp_path, redis_db, recording_pacs, node_factory
):
    recording_pacs.delay = 5.0  # each C-STORE response takes 2.5 leases
    recording_pacs.start()
    node = node_factory(destination=recording_pacs, running_lease=2)
    node.serve()
    # Two pool processes: a delivery whose lease lapsed would be taken by the idle one and sent again.
    node.worker(pipeline_seconds=0.05, concurrency=2)
    studies = [make_ct_study(tmp_path / f"study{i}") for i in range(2)]
    for _uid, files in studies:
        node.send(files)
    wait_for(lambda: _delivered(node, 2), 90, f"both deliveries\n{node.log('worker.log')}")
    time.sleep(3)  # long enough for a duplicate send to have started
    expected = Counter(result_uids(uid)[1] for uid, _ in studies)
    assert Counter(recording_pacs.received()) == expected  # each object once
    assert [d.attempts for d in node.rows(Delivery)] == [1, 1]
    assert all(r.calling_ae_title == "NODE" for r in recording_pacs.receptions)
