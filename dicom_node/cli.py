"""``dicom-node``: the administrator's command line (typer + rich).

Exit codes: 0 ok, 1 operational failure (peer unreachable, refused, database down), 2 usage error.
``--json`` output is stable: documented in docs/cli.md.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from sqlalchemy import func, select

from dicom_node.cli_support import console, errors, iso, open_database
from dicom_node.config import Destination, Settings, load_settings, parse_address
from dicom_node.errors import ConfigError, DicomNodeError
from dicom_node.index.database import Database
from dicom_node.index.models import AssociationRecord, Instance, Series, Study

app = typer.Typer(help="A DICOM node that receives, analyses and returns studies.", no_args_is_help=True)
db_app = typer.Typer(help="Index database maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")

ConfigOption = Annotated[Path | None, typer.Option("--config", help="TOML settings file.", exists=False)]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _settings(config: Path | None, **overrides: Any) -> Settings:
    try:
        return load_settings(config, **overrides)
    except ConfigError as error:
        errors.print(f"[red]configuration error:[/red] {error}")
        raise typer.Exit(2) from None


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # pynetdicom logs every PDU at INFO; keep its own chatter at WARNING unless debugging.
    if level.upper() != "DEBUG":
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)


@app.command()
def serve(
    config: ConfigOption = None,
    ae_title: Annotated[str | None, typer.Option("--ae-title", help="This node's AE title.")] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="DICOM port.")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Store, index and queue.")] = None,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="Do not start the embedded worker.")] = False,
    metrics_port: Annotated[int | None, typer.Option("--metrics-port", help="Prometheus port.")] = None,
) -> None:
    """Receive studies over DICOM and run the node."""
    from dicom_node.node import Node

    settings = _settings(config, ae_title=ae_title, host=host, port=port, data_dir=data_dir)
    _configure_logging(settings.log_level)
    try:
        node = Node(
            settings,
            run_jobs=True,
            embedded_worker=not no_worker,
            config_file=config,
            metrics_port=metrics_port,
        )
        report = node.start()
    except (DicomNodeError, OSError) as error:
        errors.print(f"[red]cannot start:[/red] {error}")
        raise typer.Exit(1) from None
    assert node.address is not None
    host_bound, port_bound = node.address
    errors.print(
        f"dicom-node {settings.ae_title} listening on {host_bound}:{port_bound}, "
        f"data in {settings.data_dir.resolve()}"
        + (f" (recovered: {report})" if any(vars(report).values()) else "")
    )
    node.run_until_signalled(settings.shutdown_grace)


def _study_row(study: Study) -> dict[str, Any]:
    return {
        "study_instance_uid": study.study_instance_uid,
        "patient_id": study.patient_id,
        "accession_number": study.accession_number,
        "study_date": study.study_date,
        "study_description": study.study_description,
        "modalities": [m for m in study.modalities.split("\\") if m],
        "calling_ae_title": study.calling_ae_title,
        "state": study.state,
        "revision": study.revision,
        "num_series": study.num_series,
        "num_instances": study.num_instances,
        "total_bytes": study.total_bytes,
        "first_received_at": iso(study.first_received_at),
        "last_received_at": iso(study.last_received_at),
        "completed_at": iso(study.completed_at),
        "series": [
            {
                "series_instance_uid": s.series_instance_uid,
                "series_number": s.series_number,
                "modality": s.modality,
                "body_part_examined": s.body_part_examined,
                "series_description": s.series_description,
                "orientation": s.orientation,
                "state": s.state,
                "num_instances": s.num_instances,
                "total_bytes": s.total_bytes,
            }
            for s in study.series
        ],
    }


@app.command()
def studies(
    config: ConfigOption = None,
    state: Annotated[str | None, typer.Option(help="Only studies in this state.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List received studies."""
    settings = _settings(config)
    database = open_database(settings)
    with database.sessions() as session:
        query = select(Study).order_by(Study.last_received_at.desc())
        if state:
            query = query.where(Study.state == state)
        rows = [_study_row(s) for s in session.scalars(query).all()]
    if as_json:
        console.print_json(json.dumps({"studies": rows}))
        return
    table = Table(
        "Study Instance UID",
        "Patient ID",
        "Modalities",
        "Series",
        "Instances",
        "MB",
        "State",
        "Last received",
        title=f"{len(rows)} studies",
    )
    for row in rows:
        table.add_row(
            row["study_instance_uid"],
            row["patient_id"] or "",
            "/".join(row["modalities"]),
            str(row["num_series"]),
            str(row["num_instances"]),
            f"{row['total_bytes'] / 1e6:.1f}",
            row["state"],
            row["last_received_at"] or "",
        )
    console.print(table)


def status_document(database: Database) -> dict[str, Any]:
    """What ``status --json`` prints: counts straight from the index."""
    with database.sessions() as session:
        by_state = dict(session.execute(select(Study.state, func.count()).group_by(Study.state)).all())
        totals = session.execute(
            select(func.count(Instance.id), func.coalesce(func.sum(Instance.size), 0))
        ).one()
        series_count = session.scalar(select(func.count(Series.id))) or 0
        last = session.scalar(select(func.max(Instance.received_at)))
    return {
        "studies": {"total": sum(by_state.values()), "by_state": by_state},
        "series": series_count,
        "instances": int(totals[0]),
        "bytes": int(totals[1]),
        "last_received_at": iso(last),
        "database": database.engine.url.render_as_string(hide_password=True),
        "schema_revision": database.current_revision(),
    }


@app.command()
def status(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Show what the node holds and what it is doing."""
    settings = _settings(config)
    database = open_database(settings)
    document = status_document(database)
    document.update(status_extras(settings, database))
    document["destinations"] = [
        {"name": d.name, "ae_title": d.ae_title, "host": d.host, "port": d.port}
        for d in settings.destinations
    ]
    if as_json:
        console.print_json(json.dumps(document))
        return
    table = Table("", "", title=f"dicom-node {settings.ae_title}", show_header=False)
    table.add_row(
        "studies", ", ".join(f"{k}: {v}" for k, v in document["studies"]["by_state"].items()) or "none"
    )
    table.add_row("series / instances", f"{document['series']} / {document['instances']}")
    table.add_row("stored", f"{document['bytes'] / 1e6:.1f} MB")
    table.add_row("last received", document["last_received_at"] or "never")
    table.add_row("index", f"{document['database']} (schema {document['schema_revision']})")
    for d in document["destinations"]:
        table.add_row(f"destination {d['name']}", f"{d['ae_title']}@{d['host']}:{d['port']}")
    console.print(table)


@app.command()
def audit(
    config: ConfigOption = None,
    limit: Annotated[int, typer.Option(help="How many of the newest associations.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """Show the association audit trail (newest first)."""
    settings = _settings(config)
    database = open_database(settings)
    with database.sessions() as session:
        records = session.scalars(
            select(AssociationRecord).order_by(AssociationRecord.id.desc()).limit(limit)
        ).all()
        rows = [
            {
                "id": r.id,
                "calling_ae_title": r.calling_ae_title,
                "called_ae_title": r.called_ae_title,
                "peer_address": r.peer_address,
                "peer_port": r.peer_port,
                "tls": r.tls,
                "started_at": iso(r.started_at),
                "ended_at": iso(r.ended_at),
                "outcome": r.outcome,
                "reason": r.reason,
                "instances_accepted": r.instances_accepted,
                "instances_refused": r.instances_refused,
                "bytes_accepted": r.bytes_accepted,
            }
            for r in records
        ]
    if as_json:
        console.print_json(json.dumps({"associations": rows}))
        return
    table = Table("#", "Calling AE", "Peer", "Started", "Outcome", "Accepted", "Refused", "Reason")
    for r in rows:
        table.add_row(
            str(r["id"]),
            str(r["calling_ae_title"]),
            f"{r['peer_address']}:{r['peer_port']}",
            str(r["started_at"] or ""),
            str(r["outcome"]),
            str(r["instances_accepted"]),
            str(r["instances_refused"]),
            str(r["reason"] or ""),
        )
    console.print(table)


def _destination(settings: Settings, target: str) -> Destination:
    try:
        return parse_address(target) if "@" in target else settings.destination(target)
    except ConfigError as error:
        errors.print(f"[red]{error}[/red] (give a configured destination name or AE@HOST:PORT)")
        raise typer.Exit(2) from None


@app.command()
def echo(
    target: Annotated[str, typer.Argument(help="A configured destination name or AE@HOST:PORT.")],
    config: ConfigOption = None,
) -> None:
    """C-ECHO a destination."""
    from dicom_node.scu import echo as send_echo

    settings = _settings(config)
    destination = _destination(settings, target)
    try:
        result = send_echo(destination, settings.ae_title, settings.timeouts)
    except (ConnectionError, OSError) as error:
        errors.print(f"[red]C-ECHO failed:[/red] {error}")
        raise typer.Exit(1) from None
    if result != 0:
        errors.print(f"[red]C-ECHO to {destination.address} answered status 0x{result:04X}[/red]")
        raise typer.Exit(1)
    console.print(f"C-ECHO to {destination.address}: success")


@app.command()
def send(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (recursive).", exists=True)],
    to: Annotated[str, typer.Option("--to", help="A configured destination name or AE@HOST:PORT.")],
    config: ConfigOption = None,
) -> None:
    """C-STORE DICOM files to a peer, as they are on disk."""
    from dicom_node.scu import FileToSend, iter_dicom_files, read_header, send_files

    settings = _settings(config)
    destination = _destination(settings, to)
    files: list[FileToSend] = []
    skipped: list[str] = []
    for path in iter_dicom_files(paths):
        try:
            files.append(read_header(path))
        except Exception as error:
            skipped.append(f"{path}: {error}")
    for line in skipped:
        errors.print(f"[yellow]skipped (not DICOM):[/yellow] {line}")
    if not files:
        errors.print("[red]no DICOM files to send[/red]")
        raise typer.Exit(1)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=errors,
        transient=not sys.stderr.isatty(),
    ) as progress:
        task = progress.add_task(f"C-STORE to {destination.address}", total=len(files))
        try:
            report = send_files(
                destination,
                files,
                settings.ae_title,
                timeouts=settings.timeouts,
                on_sent=lambda _f, _s: progress.advance(task),
            )
        except (ConnectionError, OSError) as error:
            errors.print(f"[red]send failed:[/red] {error}")
            raise typer.Exit(1) from None
    for uid, status in report.statuses.items():
        if status != 0:
            comment = report.comments.get(uid, "")
            errors.print(f"[yellow]{uid}: status 0x{status & 0xFFFF:04X} {comment}[/yellow]")
    console.print(f"sent {report.sent} of {len(files)} instances to {destination.address}")
    if report.failed or skipped:
        raise typer.Exit(1)


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Create or migrate the index schema to the newest revision."""
    settings = _settings(config)
    database = open_database(settings)
    console.print(f"index at schema revision {database.current_revision()}")


from dicom_node.job_commands import register, status_extras  # noqa: E402

register(app)

from dicom_node.retention_commands import register as register_retention  # noqa: E402

register_retention(app)


def _mount_models(argv: list[str]) -> None:
    # The models sub-app imports torch; mount it only when it can be used, so that ``serve`` and the
    # rest of the CLI (the DICOM edge above all) never load torch.
    if not argv or argv[0] in {"models", "--help", "-h"}:
        from dicom_node.model_commands import app as models_app

        app.add_typer(models_app, name="models")


def main() -> None:
    """Console-script entry point."""
    _mount_models(sys.argv[1:])
    app()
