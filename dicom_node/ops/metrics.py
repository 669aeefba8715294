"""Prometheus metrics, computed at scrape time from the index and the broker.

Workers, the edge and the embedded worker are separate processes; the index is what they share, so the
collector reads it rather than keeping per-process counters that would need prometheus' multiprocess
mode. Exposed:

* ``dicom_node_received_instances_total`` — instances stored (received or written as results);
* ``dicom_node_jobs{state, pipeline}`` and ``dicom_node_deliveries{state}`` — rows by state;
* ``dicom_node_delivery_failures_total`` — failed delivery attempts, summed over deliveries;
* ``dicom_node_queue_depth{queue}`` — messages waiting in the broker;
* ``dicom_node_stage_seconds{stage}`` — a summary (sum, count) of the per-stage latencies of finished
  work: ``queued`` (study stable → job enqueued), ``waiting`` (enqueued → started), ``analysis``
  (started → results written), ``delivery`` (written → delivered).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from dicom_node.index.database import Database
from dicom_node.index.models import Delivery, DeliveryState, Instance, Job, JobState

STAGES = ("queued", "waiting", "analysis", "delivery")
QueueDepths = Callable[[], dict[str, int | None]]
"""Messages waiting per broker queue (``jobs.celery_app.queue_depths``), given by the composition root."""


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max((end - start).total_seconds(), 0.0)


def stage_durations(database: Database) -> dict[str, list[float]]:
    """Per-stage latencies (seconds) of every finished job and its delivered deliveries."""
    stages: dict[str, list[float]] = {stage: [] for stage in STAGES}
    with database.sessions() as session:
        rows = session.execute(
            select(Job.stable_at, Job.queued_at, Job.started_at, Job.finished_at, Job.id).where(
                Job.state == JobState.SUCCEEDED
            )
        ).all()
        delivered = session.execute(
            select(Delivery.job_id, Delivery.delivered_at).where(Delivery.state == DeliveryState.DELIVERED)
        ).all()
    finished = {}
    for stable, queued, started, done, job_id in rows:
        finished[job_id] = done
        for stage, value in zip(
            STAGES[:3],
            (_seconds(stable, queued), _seconds(queued, started), _seconds(started, done)),
            strict=True,
        ):
            if value is not None:
                stages[stage].append(value)
    for job_id, delivered_at in delivered:
        value = _seconds(finished.get(job_id), delivered_at)
        if value is not None:
            stages["delivery"].append(value)
    return stages


class IndexCollector(Collector):
    """Reads the index (and the broker's queue depths) on every scrape."""

    def __init__(self, database: Database, queue_depths: QueueDepths | None = None) -> None:
        self.database = database
        self.queue_depths = queue_depths

    def collect(self) -> Iterator[Metric]:
        with self.database.sessions() as session:
            instances = session.scalar(select(func.count(Instance.id))) or 0
            jobs = session.execute(
                select(Job.state, Job.pipeline, func.count()).group_by(Job.state, Job.pipeline)
            )
            job_rows = list(jobs.all())
            deliveries = list(
                session.execute(select(Delivery.state, func.count()).group_by(Delivery.state)).all()
            )
            failures = session.scalar(select(func.coalesce(func.sum(Delivery.failures), 0))) or 0
        yield CounterMetricFamily("dicom_node_received_instances", "Instances stored.", value=instances)
        gauge = GaugeMetricFamily("dicom_node_jobs", "Analysis jobs by state.", labels=["state", "pipeline"])
        for state, pipeline, count in job_rows:
            gauge.add_metric([state, pipeline], count)
        yield gauge
        gauge = GaugeMetricFamily("dicom_node_deliveries", "Deliveries by state.", labels=["state"])
        for state, count in deliveries:
            gauge.add_metric([state], count)
        yield gauge
        yield CounterMetricFamily(
            "dicom_node_delivery_failures", "Failed delivery attempts.", value=int(failures)
        )
        gauge = GaugeMetricFamily(
            "dicom_node_queue_depth", "Messages waiting in the broker.", labels=["queue"]
        )
        depths = self.queue_depths() if self.queue_depths is not None else {}
        for queue, depth in depths.items():
            if depth is not None:
                gauge.add_metric([queue], depth)
        yield gauge
        summary = SummaryMetricFamily(
            "dicom_node_stage_seconds", "Latency of each stage of finished work.", labels=["stage"]
        )
        for stage, values in stage_durations(self.database).items():
            summary.add_metric([stage], count_value=len(values), sum_value=sum(values))
        yield summary


def metrics_registry(database: Database, queue_depths: QueueDepths | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(IndexCollector(database, queue_depths))
    return registry


def serve_metrics(
    database: Database, port: int, queue_depths: QueueDepths | None = None, host: str = "0.0.0.0"
) -> None:
    """Serve ``/metrics`` on ``port`` from a daemon thread."""
    start_http_server(port, addr=host, registry=metrics_registry(database, queue_depths))
