"""The job commands of ``dicom-node``: ``worker``, ``jobs``, ``retry``, ``reprocess`` (the work is in
``jobs.reprocess``), and what ``status`` adds about jobs, deliveries, queues, workers and pipelines
(``status_extras``).

Mounted on the main typer app by ``register(app)``. Commands that put work back only change rows and
ring the broker once; if the broker is unreachable the reconciler rings it later, so they never fail
for that reason.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy import func, select, update

from dicom_node.cli.support import (
    ConfigOption,
    JsonOption,
    LogFormatOption,
    console,
    errors,
    iso,
    open_database,
    settings_or_exit,
)
from dicom_node.config import Settings
from dicom_node.index.database import Database
from dicom_node.index.models import (
    Delivery,
    DeliveryState,
    Job,
    JobState,
    Series,
    Study,
    WorkerRecord,
    utcnow,
)
from dicom_node.jobs.content import required_checks, stored_report, summary

PIPELINES = ("cxr-classification", "ct-lung-nodules", "ct-vertebrae")


def _ring(settings: Settings, job_ids: Sequence[int], delivery_ids: Sequence[int]) -> None:
    """Enqueue now; on a broker error the reconciler re-sends once the rows' leases lapse."""
    from dicom_node.jobs.celery_app import TaskQueue, create_app

    try:
        queue = TaskQueue(create_app(settings))
        for job_id in job_ids:
            queue.enqueue_job(job_id)
        for delivery_id in delivery_ids:
            queue.enqueue_delivery(delivery_id)
    except Exception as error:
        errors.print(f"[yellow]broker not reachable ({error}); the reconciler will enqueue[/yellow]")


def job_row(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "study_instance_uid": job.study.study_instance_uid,
        "series_instance_uid": job.series.series_instance_uid if job.series else None,
        "study_revision": job.study_revision,
        "pipeline": job.pipeline,
        "model_version": job.model_version,
        "state": job.state,
        "attempts": job.attempts,
        "error": job.error,
        "worker_host": job.worker_host,
        "created_at": iso(job.created_at),
        "queued_at": iso(job.queued_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "lease_expires_at": iso(job.lease_expires_at),
        "requires": required_checks(job),
        "content_checks": stored_report(job),
        "results": [r.sop_instance_uid for r in job.results],
        "deliveries": [
            {
                "id": d.id,
                "destination": d.destination,
                "state": d.state,
                "attempts": d.attempts,
                "failures": d.failures,
                "error": d.error,
                "next_attempt_at": iso(d.next_attempt_at),
                "delivered_at": iso(d.delivered_at),
            }
            for d in job.deliveries
        ],
    }


def _requeue_values() -> dict[str, Any]:
    return {
        "state": JobState.QUEUED,
        "attempts": 0,
        "error": None,
        "claim_token": None,
        "finished_at": None,
        "queued_at": utcnow(),
        "lease_expires_at": utcnow() + timedelta(seconds=5),
    }


def retry_rows(database: Database, job_ids: Sequence[int], all_failed: bool) -> tuple[list[int], list[int]]:
    """Put failed/skipped jobs back to ``queued`` and failed deliveries back to ``pending``."""
    with database.session() as session:
        jobs_query = select(Job.id).where(Job.state.in_([JobState.FAILED, JobState.SKIPPED]))
        if not all_failed:
            jobs_query = jobs_query.where(Job.id.in_(job_ids))
        jobs = list(session.scalars(jobs_query).all())
        if jobs:
            session.execute(
                update(Job).where(Job.id.in_(jobs)).values(**_requeue_values()),
                execution_options={"synchronize_session": False},
            )
        deliveries_query = select(Delivery.id).where(Delivery.state == DeliveryState.FAILED)
        if not all_failed:
            deliveries_query = deliveries_query.where(Delivery.job_id.in_(job_ids))
        deliveries = list(session.scalars(deliveries_query).all())
        if deliveries:
            session.execute(
                update(Delivery)
                .where(Delivery.id.in_(deliveries))
                .values(
                    state=DeliveryState.PENDING,
                    failures=0,
                    first_attempt_at=None,
                    next_attempt_at=None,
                    claim_token=None,
                    lease_expires_at=utcnow() + timedelta(seconds=5),
                ),
                execution_options={"synchronize_session": False},
            )
    return jobs, deliveries


def _count_by(database: Database, column: Any) -> dict[str, int]:
    with database.sessions() as session:
        return {
            str(k): int(v) for k, v in session.execute(select(column, func.count()).group_by(column)).all()
        }


UNTRAINED_SKIPPED = (
    "UNTRAINED scaffold weights: its jobs are skipped (set [analysis] allow_untrained = true to run "
    "them for tests)"
)
UNTRAINED_RUNS = (
    "UNTRAINED scaffold weights: its jobs run because [analysis] allow_untrained = true, and every "
    "result says NOT FOR CLINICAL USE"
)


def pipeline_statuses(models_dir: Path, allow_untrained: bool = False) -> list[dict[str, Any]]:
    """The pipelines, whether their models are installed, and whether the weights are untrained."""
    rows: dict[str, dict[str, Any]] = {name: {"name": name, "installed": None} for name in PIPELINES}
    try:
        from models.registry import model_statuses
    except ImportError:
        for row in rows.values():
            row["detail"] = "model registry not available in this installation"
        return list(rows.values())
    try:
        statuses = model_statuses(models_dir)
    except Exception as error:
        for row in rows.values():
            row["detail"] = f"model registry failed: {error}"
        return list(rows.values())
    models: list[dict[str, Any]] = []
    for status in statuses:
        if dataclasses.is_dataclass(status) and not isinstance(status, type):
            item = dataclasses.asdict(status)
        elif isinstance(status, dict):
            item = dict(status)
        else:
            item = {k: v for k, v in vars(status).items() if not k.startswith("_")}
        models.append(
            {k: v if isinstance(v, str | int | float | bool | None) else str(v) for k, v in item.items()}
        )
    for model in models:
        pipeline = model.get("pipeline")
        if isinstance(pipeline, str) and pipeline in rows:
            untrained = model.get("provenance") == "scaffold"
            model["untrained"] = untrained
            rows[pipeline].update(
                {"installed": model.get("installed"), "model": model, "untrained": untrained}
            )
            if untrained and model.get("installed"):
                rows[pipeline]["detail"] = UNTRAINED_RUNS if allow_untrained else UNTRAINED_SKIPPED
    return list(rows.values())


def pipeline_line(row: dict[str, Any]) -> str:
    """One pipeline of ``status`` in words: its model's version, UNTRAINED first where it is."""
    model = row.get("model") or {}
    if not row.get("installed"):
        return f"not installed: {model.get('reason') or row.get('detail') or 'no model registry'}"
    text = f"{model.get('name')} {model.get('version')}"
    if row.get("untrained"):
        return f"UNTRAINED {text} — {row.get('detail')}"
    return text


def status_extras(settings: Settings, database: Database) -> dict[str, Any]:
    """What ``status --json`` adds: jobs, deliveries, queue depths, live workers and pipelines."""
    from dicom_node.jobs.celery_app import create_app, is_embedded, queue_depths

    jobs = settings.jobs
    job_states = _count_by(database, Job.state)
    delivery_states = _count_by(database, Delivery.state)
    seen_since = utcnow() - timedelta(seconds=jobs.worker_seen_within)
    with database.sessions() as session:
        workers = [
            {
                "name": w.name,
                "queues": w.queues.split(","),
                "concurrency": w.concurrency,
                "started_at": iso(w.started_at),
                "last_seen_at": iso(w.last_seen_at),
            }
            for w in session.scalars(select(WorkerRecord).order_by(WorkerRecord.name)).all()
            if (w.last_seen_at or seen_since) >= seen_since
        ]
        not_routed = (
            session.scalar(select(func.count(Study.id)).where(Study.routing_reason.is_not(None))) or 0
        )
        series = session.scalar(select(func.count(Series.id))) or 0
    from kombu.utils.url import maybe_sanitize_url

    return {
        "jobs": {
            "total": sum(job_states.values()),
            "by_state": {state.value: job_states.get(state.value, 0) for state in JobState},
        },
        "deliveries": {
            "total": sum(delivery_states.values()),
            "by_state": {state.value: delivery_states.get(state.value, 0) for state in DeliveryState},
            "pending": delivery_states.get(DeliveryState.PENDING, 0)
            + delivery_states.get(DeliveryState.SENDING, 0),
            "failed": delivery_states.get(DeliveryState.FAILED, 0),
        },
        "studies_not_routed": int(not_routed),
        "series_indexed": int(series),
        "broker": {
            "url": str(maybe_sanitize_url(settings.effective_broker_url)),
            "embedded": is_embedded(settings),
        },
        "queues": queue_depths(create_app(settings)),
        "workers": workers,
        "analysis": {"allow_untrained": settings.allow_untrained},
        "pipelines": pipeline_statuses(settings.models_dir, settings.allow_untrained),
    }


def register(app: typer.Typer) -> None:
    """Add ``worker``, ``jobs``, ``retry`` and ``reprocess`` to ``app``."""

    @app.command()
    def worker(
        config: ConfigOption = None,
        queues: Annotated[str, typer.Option(help="Queues to consume, comma-separated.")] = "gpu,io",
        concurrency: Annotated[int, typer.Option(help="Tasks run at once (pool processes).", min=1)] = 1,
        metrics_port: Annotated[
            int | None, typer.Option("--metrics-port", help="Serve this worker's Prometheus metrics.")
        ] = None,
        log_format: LogFormatOption = None,
    ) -> None:
        """Run a worker on the node's queues (DICOM_NODE_BROKER_URL=redis://… to scale out)."""
        import shutil

        from dicom_node.ops.multiprocess import metrics_folder, use_metrics_folder

        settings = settings_or_exit(config, log_format=log_format)
        # Before prometheus_client is imported (with the worker): the pool processes write their
        # metrics to this host-local folder and /metrics sums them.
        temporary = metrics_port is not None and metrics_folder() is None
        folder = use_metrics_folder() if metrics_port is not None else None
        try:
            from dicom_node.jobs.worker import parse_queues, run_worker

            try:
                queues = parse_queues(queues)
            except ValueError as error:
                errors.print(f"[red]{error}[/red]")
                raise typer.Exit(2) from None
            run_worker(settings, queues, concurrency, metrics_port)
        finally:
            if temporary and folder is not None:
                shutil.rmtree(folder, ignore_errors=True)

    @app.command()
    def jobs(
        config: ConfigOption = None,
        state: Annotated[str | None, typer.Option(help="Only jobs in this state.")] = None,
        study: Annotated[str | None, typer.Option(help="Only jobs of this Study Instance UID.")] = None,
        as_json: JsonOption = False,
    ) -> None:
        """List analysis jobs and their deliveries (newest first)."""
        settings = settings_or_exit(config)
        database = open_database(settings)
        with database.sessions() as session:
            query = select(Job).order_by(Job.id.desc())
            if state:
                query = query.where(Job.state == state)
            if study:
                query = query.join(Study).where(Study.study_instance_uid == study)
            rows = [job_row(j) for j in session.scalars(query).all()]
        if as_json:
            console.print_json(json.dumps({"jobs": rows}))
            return
        table = Table("#", "Pipeline", "Study", "State", "Tries", "Worker", "Checks", "Deliveries", "Error")
        for r in rows:
            table.add_row(
                str(r["id"]),
                r["pipeline"],
                r["study_instance_uid"],
                r["state"],
                str(r["attempts"]),
                r["worker_host"] or "",
                summary(r["content_checks"]) or ", ".join(r["requires"]),
                ", ".join(f"{d['destination']}: {d['state']}" for d in r["deliveries"]),
                (r["error"] or "")[:100],
            )
        console.print(table)

    @app.command()
    def retry(
        job_ids: Annotated[list[int] | None, typer.Argument(help="Job ids.")] = None,
        failed: Annotated[
            bool, typer.Option("--failed", help="Every failed or skipped job and delivery.")
        ] = False,
        config: ConfigOption = None,
    ) -> None:
        """Run failed/skipped jobs again and resend their failed deliveries."""
        if not job_ids and not failed:
            errors.print("[red]give job ids or --failed[/red]")
            raise typer.Exit(2)
        settings = settings_or_exit(config)
        database = open_database(settings)
        jobs_again, deliveries_again = retry_rows(database, job_ids or [], failed)
        _ring(settings, jobs_again, deliveries_again)
        console.print(f"queued {len(jobs_again)} jobs and {len(deliveries_again)} deliveries again")

    @app.command()
    def reprocess(
        study_uid: Annotated[str, typer.Argument(help="Study Instance UID.")],
        pipeline: Annotated[
            str | None, typer.Option(help="Only this pipeline (also one no route chose).")
        ] = None,
        config: ConfigOption = None,
    ) -> None:
        """Analyse a study again (new jobs on its received series) and send the results again.

        Never touches a queued or running job: it refuses, saying which, until that job has ended.
        """
        from dicom_node.jobs.reprocess import ReprocessRefusedError, reprocess_study

        settings = settings_or_exit(config)
        database = open_database(settings)
        try:
            ids = reprocess_study(database, settings, study_uid, pipeline, PIPELINES)
        except (LookupError, ReprocessRefusedError) as error:
            errors.print(f"[red]{escape(str(error))}[/red]")
            raise typer.Exit(1) from None
        _ring(settings, ids, [])
        with database.sessions() as session:
            created = session.scalars(select(Job).where(Job.id.in_(ids)).order_by(Job.id)).all()
            for job in created:
                series = job.series.series_instance_uid if job.series else "?"
                console.print(
                    f"queued job {job.id}: {job.pipeline} on series {series} "
                    f"(study revision {job.study_revision})",
                    soft_wrap=True,
                )
