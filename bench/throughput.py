"""Studies per hour against the number of workers, and where the time goes, with a fixed-cost pipeline.

For each worker count it starts a real setup — ``dicom-node serve --no-worker``, N ``dicom-node worker``
processes on Redis (db 8, flushed), DCMTK ``storescp`` as the PACS — queues ``--studies`` small CT studies
(sent with ``storescu``) before the workers start, and waits until every result is delivered. The
pipeline (``tests/jobs/fixed_pipeline``) sleeps ``--cost`` seconds, so the figures measure the job
machinery, not a model.

    .venv/bin/python bench/throughput.py [--workers 1,2,4] [--studies 16] [--cost 1.0]

Stages (medians over the studies): stable → queued (routing and enqueue), queued → started (waiting for a
worker), started → written (pipeline + writing, storing and indexing the SR), written → delivered
(C-STORE to the PACS). Throughput = studies / (last delivery − first job start); queued → started
includes the wait behind the rest of the batch and the workers' start-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import redis
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicom_node.index.models import Delivery, DeliveryState, Job
from dicom_node.jobs.reconciler import as_aware
from tests.jobs.conftest import NodeUnderTest, Pacs, free_port, make_ct_study, wait_for

REDIS_URL = "redis://127.0.0.1:6379/8"


def _span(a: datetime | None, b: datetime | None) -> float:
    start, end = as_aware(a), as_aware(b)
    assert start is not None and end is not None
    return (end - start).total_seconds()


def run(workers: int, studies: int, cost: float, root: Path) -> dict[str, float]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    pacs = Pacs(root / "pacs", free_port())
    node = NodeUnderTest(root / "node", pacs, REDIS_URL)
    node.root.mkdir(parents=True)
    node.write_config(reconcile_interval=1.0, running_lease=30)
    try:
        pacs.start()
        node.serve()
        database = node.database()
        # Queue the whole batch first, so the figures measure the workers rather than the arrival rate.
        for index in range(studies):
            node.send(make_ct_study(root / f"study{index}")[1])
        wait_for(lambda: _queued(node) == studies, 60, "every study routed and queued")
        for _ in range(workers):
            node.worker(pipeline_seconds=cost)

        def delivered() -> list[tuple[Job, Delivery]] | None:
            with database.sessions() as session:
                query = select(Job, Delivery).join(Delivery, Delivery.job_id == Job.id)
                rows = [(j, d) for j, d in session.execute(query).all()]
            done = [(j, d) for j, d in rows if d.state == DeliveryState.DELIVERED]
            return done if len(done) == studies else None

        rows = wait_for(delivered, 60 + studies * cost * 2, "every delivery", interval=0.5)
        database.dispose()
    finally:
        node.stop()
        pacs.stop()
        client.flushdb()
    first_start = min(as_aware(j.started_at) for j, _ in rows)  # type: ignore[type-var]
    last_delivery = max(as_aware(d.delivered_at) for _, d in rows)  # type: ignore[type-var]
    elapsed = (last_delivery - first_start).total_seconds()  # type: ignore[operator]
    return {
        "studies_per_hour": studies / elapsed * 3600,
        "elapsed": elapsed,
        "stable_to_queued": statistics.median(_span(j.stable_at, j.queued_at) for j, _ in rows),
        "queued_to_started": statistics.median(_span(j.queued_at, j.started_at) for j, _ in rows),
        "started_to_written": statistics.median(_span(j.started_at, j.finished_at) for j, _ in rows),
        "written_to_delivered": statistics.median(_span(j.finished_at, d.delivered_at) for j, d in rows),
    }


def _queued(node: NodeUnderTest) -> int:
    database = node.database()
    try:
        with database.sessions() as session:
            return len(session.scalars(select(Job).where(Job.queued_at.is_not(None))).all())
    except Exception:  # the node has not created its schema yet
        return 0
    finally:
        database.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--studies", type=int, default=16)
    parser.add_argument("--cost", type=float, default=1.0, help="seconds the fixed-cost pipeline takes")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    print(f"fixed-cost pipeline {args.cost:.2f} s, {args.studies} studies of 3 CT slices, Redis broker")
    header = (
        f"{'workers':>7} {'studies/h':>10} {'elapsed s':>9} | median s: {'stable→queued':>13} "
        f"{'queued→started':>14} {'started→written':>15} {'written→delivered':>17}"
    )
    print(header)
    print("-" * len(header))
    for count in counts:
        with tempfile.TemporaryDirectory(prefix="dicom-node-bench-") as folder:
            figures = run(count, args.studies, args.cost, Path(folder))
        print(
            f"{count:>7} {figures['studies_per_hour']:>10.0f} {figures['elapsed']:>9.1f} | {'':>9} "
            f"{figures['stable_to_queued']:>13.2f} {figures['queued_to_started']:>14.2f} "
            f"{figures['started_to_written']:>15.2f} {figures['written_to_delivered']:>17.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
