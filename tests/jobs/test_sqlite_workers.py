"""Several ``dicom-node worker`` processes on one SQLite index: every job and delivery done once, and no
"database is locked" in any process's log.

Real processes: ``dicom-node serve --no-worker`` (edge, assembler, reconciler), three workers on Redis
(each its own reconciler loop and heartbeat, all writing the one SQLite file) and DCMTK ``storescp`` as
the PACS. The studies arrive together so that claims, heartbeats, results and deliveries of different
processes overlap. Writers wait for each other through SQLite's busy timeout (``PRAGMA busy_timeout``,
dicom_node/index/database.py): with it set to 0 this test fails with "database is locked" in serve.log.
"""

from __future__ import annotations

from collections import Counter

from dicom_node.index.models import Delivery, DeliveryState, Job, JobState
from tests.jobs.conftest import make_ct_study, wait_for
from tests.jobs.fixed_pipeline import result_uids

WORKERS = 3
STUDIES = 8
LOCKED = "database is locked"


def test_three_workers_on_one_sqlite_index_never_see_it_locked(tmp_path, redis_db, pacs, node_factory):
    pacs.start()
    node = node_factory(reconcile_interval=0.2, running_lease=5)
    node.serve()
    for _ in range(WORKERS):
        node.worker(pipeline_seconds=0.05)
    studies = [make_ct_study(tmp_path / f"study{i}") for i in range(STUDIES)]
    for _uid, files in studies:
        node.send(files)

    def delivered() -> bool:
        rows = node.rows(Delivery)
        return len(rows) == STUDIES and all(d.state == DeliveryState.DELIVERED for d in rows)

    wait_for(delivered, 120, f"every delivery\n{node.log('worker.log')}")
    jobs = node.rows(Job)
    assert [j.state for j in jobs] == [JobState.SUCCEEDED] * STUDIES, [(j.state, j.error) for j in jobs]
    assert all(j.attempts == 1 for j in jobs), [j.attempts for j in jobs]  # no claim lost to a lock
    assert [d.attempts for d in node.rows(Delivery)] == [1] * STUDIES
    # More than one worker took jobs (otherwise nothing here was concurrent).
    assert len({j.worker_host for j in jobs}) > 1, {j.worker_host for j in jobs}
    assert Counter(pacs.received()) == Counter(result_uids(uid)[1] for uid, _ in studies)
    # Neither a lock error nor the Celery retry it would cause (tasks autoretry on OperationalError).
    for log in ("serve.log", "worker.log"):
        text = (node.root / log).read_text(errors="replace")
        for sign in (LOCKED, "OperationalError"):
            assert sign not in text, text[max(0, text.find(sign) - 2000) : text.find(sign) + 500]
