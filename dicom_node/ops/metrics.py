"""Prometheus metrics: counters and histograms observed where the work finishes, in one place.

The stages import the metric objects below and observe them when their work is done: the ingest step
after the index commit, the edge when it refuses, a job when it ends, a delivery when it is sent.
Counters never go down (retention deleting images leaves ``dicom_node_received_instances_total`` as it
was); a process restart starts them again from zero, which Prometheus' ``rate`` and ``increase`` expect.

The node runs in several processes, so with a metrics port they run in prometheus_client's
multiprocess mode (``ops.multiprocess``) and ``/metrics`` sums every process's files. A few current-state
gauges are read from the index at scrape time, as indexed COUNTs of non-terminal rows only.

Counters (``_total`` is added on exposition):

* ``dicom_node_received_instances{outcome=stored|duplicate|replaced, source=received|result}``;
* ``dicom_node_refused_instances{status, reason}`` — C-STORE requests answered with a failure status
  (and STOW-RS parts refused, ``reason="stow"``);
* ``dicom_node_refused_associations{reason=address|calling_ae_title|called_ae_title}``;
* ``dicom_node_dicomweb_requests{service=qido|wado|stow|other, status}`` — HTTP requests answered;
* ``dicom_node_query_requests{service=find|move|get, status}`` — Q/R requests by final status;
* ``dicom_node_query_matches{service}`` — C-FIND matches sent, instances C-MOVE/C-GET sent;
* ``dicom_node_jobs_finished{pipeline, outcome=succeeded|failed|skipped|retried}``;
* ``dicom_node_delivery_attempts{destination}``, ``dicom_node_delivery_failures{destination}`` (failed
  attempts) and ``dicom_node_deliveries_finished{destination, outcome=delivered|failed}``.

Histograms (seconds):

* ``dicom_node_stage_seconds{stage}`` — per stage of work that succeeded: ``queued`` (study stable →
  job enqueued), ``waiting`` (enqueued → started), ``analysis`` (started → results stored), observed
  when the job succeeds; ``delivery`` (job finished → delivered), observed when a delivery succeeds;
* ``dicom_node_analysis_stage_seconds{pipeline, stage=load|preprocess|inference|postprocess}`` — what
  the pipeline's ``run_timed`` reports.

Gauges read at scrape time (``serve`` only): ``dicom_node_jobs{state=queued|running, pipeline}``,
``dicom_node_deliveries{state=pending|sending}``, ``dicom_node_queue_depth{queue}``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, multiprocess, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from dicom_node.index.database import Database
from dicom_node.index.models import Delivery, DeliveryState, Job, JobState
from dicom_node.ops.multiprocess import metrics_folder

STAGES = ("queued", "waiting", "analysis", "delivery")
LATENCY_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
PIPELINE_STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
ACTIVE_JOB_STATES = (JobState.QUEUED, JobState.RUNNING)
ACTIVE_DELIVERY_STATES = (DeliveryState.PENDING, DeliveryState.SENDING)
QueueDepths = Callable[[], dict[str, int | None]]
"""Messages waiting per broker queue (``jobs.celery_app.queue_depths``), given by the composition root."""

RECEIVED_INSTANCES = Counter(
    "dicom_node_received_instances",
    "Instances kept by the ingest step (counted once the index commit returned).",
    ["outcome", "source"],
)
REFUSED_INSTANCES = Counter(
    "dicom_node_refused_instances", "C-STORE requests answered with a failure status.", ["status", "reason"]
)
REFUSED_ASSOCIATIONS = Counter(
    "dicom_node_refused_associations", "Associations rejected by the access checks.", ["reason"]
)
DICOMWEB_REQUESTS = Counter(
    "dicom_node_dicomweb_requests", "DICOMweb HTTP requests answered.", ["service", "status"]
)
JOBS_FINISHED = Counter(
    "dicom_node_jobs_finished",
    "Analysis jobs that ended, or went back to the queue.",
    ["pipeline", "outcome"],
)
QUERY_REQUESTS = Counter(
    "dicom_node_query_requests",
    "C-FIND, C-MOVE and C-GET requests answered, by final status.",
    ["service", "status"],
)
QUERY_MATCHES = Counter(
    "dicom_node_query_matches",
    "Pending C-FIND responses sent, and instances C-MOVE/C-GET sub-operations sent successfully.",
    ["service"],
)
DELIVERY_ATTEMPTS = Counter("dicom_node_delivery_attempts", "Delivery attempts started.", ["destination"])
DELIVERY_FAILURES = Counter("dicom_node_delivery_failures", "Failed delivery attempts.", ["destination"])
DELIVERIES_FINISHED = Counter(
    "dicom_node_deliveries_finished",
    "Deliveries that ended: delivered, or failed for good (the dead letter).",
    ["destination", "outcome"],
)
STAGE_SECONDS = Histogram(
    "dicom_node_stage_seconds",
    "Latency of each stage of work that succeeded.",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
ANALYSIS_STAGE_SECONDS = Histogram(
    "dicom_node_analysis_stage_seconds",
    "Seconds per pipeline stage, as the pipeline reports them.",
    ["pipeline", "stage"],
    buckets=PIPELINE_STAGE_BUCKETS,
)


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max((end - start).total_seconds(), 0.0)


def observe_stage(stage: str, start: datetime | None, end: datetime | None) -> None:
    """Observe ``end - start`` for ``stage`` (one of ``STAGES``) when both times are known."""
    value = _seconds(start, end)
    if value is not None:
        STAGE_SECONDS.labels(stage=stage).observe(value)


def observe_job_stages(
    stable_at: datetime | None, queued_at: datetime | None, started_at: datetime | None, finished_at: datetime
) -> None:
    """The ``queued``, ``waiting`` and ``analysis`` latencies of a job that succeeded."""
    observe_stage("queued", stable_at, queued_at)
    observe_stage("waiting", queued_at, started_at)
    observe_stage("analysis", started_at, finished_at)


def process_exited(pid: int) -> None:
    """Multiprocess bookkeeping for a child process that ended (drops its live-gauge files)."""
    if metrics_folder() is not None:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


class StateCollector(Collector):
    """Current-state gauges, read on every scrape: indexed COUNTs of non-terminal rows, queue depths."""

    def __init__(self, database: Database, queue_depths: QueueDepths | None = None) -> None:
        self.database = database
        self.queue_depths = queue_depths

    def collect(self) -> Iterator[Metric]:
        with self.database.sessions() as session:
            jobs = session.execute(
                select(Job.state, Job.pipeline, func.count())
                .where(Job.state.in_(ACTIVE_JOB_STATES))
                .group_by(Job.state, Job.pipeline)
            ).all()
            deliveries = dict(
                session.execute(
                    select(Delivery.state, func.count())
                    .where(Delivery.state.in_(ACTIVE_DELIVERY_STATES))
                    .group_by(Delivery.state)
                ).all()
            )
        gauge = GaugeMetricFamily(
            "dicom_node_jobs", "Analysis jobs queued or running.", labels=["state", "pipeline"]
        )
        for state, pipeline, count in jobs:
            gauge.add_metric([state, pipeline], count)
        yield gauge
        gauge = GaugeMetricFamily("dicom_node_deliveries", "Deliveries pending or sending.", labels=["state"])
        for delivery_state in ACTIVE_DELIVERY_STATES:
            gauge.add_metric([delivery_state.value], deliveries.get(delivery_state, 0))
        yield gauge
        gauge = GaugeMetricFamily(
            "dicom_node_queue_depth", "Messages waiting in the broker.", labels=["queue"]
        )
        depths = self.queue_depths() if self.queue_depths is not None else {}
        for queue, depth in depths.items():
            if depth is not None:
                gauge.add_metric([queue], depth)
        yield gauge


class _ThisProcess(Collector):
    """This process's metrics (and prometheus_client's process and platform ones) when not multiprocess."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def scrape_registry(
    database: Database | None = None, queue_depths: QueueDepths | None = None
) -> CollectorRegistry:
    """What ``/metrics`` shows: every process's counters and histograms, plus the state gauges if
    ``database`` is given (``serve``; a worker on another host shows only its own work)."""
    registry = CollectorRegistry(auto_describe=False)
    if metrics_folder() is not None:
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(_ThisProcess())
    if database is not None:
        registry.register(StateCollector(database, queue_depths))
    return registry


def dicomweb_requests(folder: Path) -> dict[str, dict[str, int]]:
    """DICOMweb requests answered since ``serve`` started, by service and by status, from the metric
    files of its folder (``<data_dir>/metrics``: ``serve`` keeps them there while DICOMweb is on)."""
    counts: dict[str, dict[str, int]] = {"by_service": {}, "by_status": {}}
    if not folder.is_dir():
        return counts
    registry = CollectorRegistry(auto_describe=False)
    multiprocess.MultiProcessCollector(registry, path=str(folder))  # type: ignore[no-untyped-call]
    for metric in registry.collect():
        if metric.name != "dicom_node_dicomweb_requests":
            continue
        for sample in metric.samples:
            if not sample.name.endswith("_total"):
                continue
            for label, table in (("service", "by_service"), ("status", "by_status")):
                key = sample.labels[label]
                counts[table][key] = counts[table].get(key, 0) + int(sample.value)
    return counts


class MetricsServer:
    """``/metrics`` on ``port``, served from a daemon thread until ``stop``."""

    def __init__(
        self,
        port: int,
        database: Database | None = None,
        queue_depths: QueueDepths | None = None,
        host: str = "0.0.0.0",
    ) -> None:
        self.server: WSGIServer
        self.thread: threading.Thread
        self.server, self.thread = start_http_server(
            port, addr=host, registry=scrape_registry(database, queue_depths)
        )

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
