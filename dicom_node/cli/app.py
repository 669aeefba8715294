"""``dicom-node``: the administrator's command line (typer + rich).

Exit codes: 0 ok, 1 operational failure (peer unreachable, refused, database down), 2 usage error.
``--json`` output is stable: documented in docs/cli.md.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from sqlalchemy import func, select

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
from dicom_node.errors import DicomNodeError
from dicom_node.index.database import Database
from dicom_node.index.models import AssociationRecord, Instance, Series, Study, utcnow

app = typer.Typer(help="A DICOM node that receives, analyses and returns studies.", no_args_is_help=True)
db_app = typer.Typer(help="Index database maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")


LOG = logging.getLogger(__name__)


@app.command()
def serve(
    config: ConfigOption = None,
    ae_title: Annotated[str | None, typer.Option("--ae-title", help="This node's AE title.")] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="DICOM port.")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Store, index and queue.")] = None,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="Do not start the embedded worker.")] = False,
    metrics_port: Annotated[int | None, typer.Option("--metrics-port", help="Prometheus port.")] = None,
    log_format: LogFormatOption = None,
) -> None:
    """Receive studies over DICOM and run the node."""
    settings = settings_or_exit(
        config, ae_title=ae_title, host=host, port=port, data_dir=data_dir, log_format=log_format
    )
    if metrics_port is not None or settings.dicomweb.enabled:
        from dicom_node.ops.multiprocess import use_metrics_folder

        # Before the node (and prometheus_client) is imported: serve, its embedded worker and the
        # worker's pool processes all write their metrics there, and /metrics sums them. With DICOMweb
        # on, `dicom-node status` reads its request counts from there too.
        use_metrics_folder(settings.data_dir / "metrics")
    from dicom_node.node import Node

    try:
        node = Node(
            settings,
            run_jobs=True,
            embedded_worker=not no_worker,
            config_file=config,
            metrics_port=metrics_port,
        )
        node.catch_signals()
        report = node.start()
    except (DicomNodeError, OSError) as error:
        if settings.log_format == "json":
            LOG.error("cannot start: %s", error)
        else:
            errors.print(f"[red]cannot start:[/red] {error}")
        raise typer.Exit(1) from None
    assert node.address is not None
    host_bound, port_bound = node.address
    started = (
        f"dicom-node {settings.ae_title} listening on {host_bound}:{port_bound}, "
        f"data in {settings.data_dir.resolve()}"
        + (f" (recovered: {report})" if any(vars(report).values()) else "")
    )
    if settings.log_format == "json":
        LOG.info(
            started, extra={"ae_title": settings.ae_title, "port": port_bound, "metrics_port": metrics_port}
        )
    else:
        errors.print(started)
    if node.web is not None and settings.log_format != "json":
        errors.print(f"DICOMweb on {node.web.url}")
    # What start-up made (imports, the 8 055 UIDs of the supported contexts, SQLAlchemy's caches: about
    # 160 000 objects) lives as long as the process; frozen, a full collection no longer walks it.
    # pynetdicom's server runs gc.collect() every 60th accepted association or 0.5 s idle turn, with
    # the GIL held: 30-40 ms unfrozen, under 0.1 ms frozen (2 cores, 2026-12-02), a pause of every
    # association at once.
    gc.freeze()
    node.run_until_signalled(settings.shutdown_grace)


def status_document(database: Database) -> dict[str, Any]:
    """What ``status --json`` prints: counts straight from the index."""
    with database.sessions() as session:
        by_state = dict(session.execute(select(Study.state, func.count()).group_by(Study.state)).all())
        totals = session.execute(
            select(func.count(Instance.id), func.coalesce(func.sum(Instance.size), 0))
        ).one()
        series_count = session.scalar(select(func.count(Series.id))) or 0
        last = session.scalar(select(func.max(Instance.received_at)))
        midnight = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
        # Counted when each association ends (the audit row), so a live one shows after its release.
        qr_counts = session.execute(
            select(
                *(
                    func.coalesce(func.sum(column), 0)
                    for column in (
                        AssociationRecord.find_requests,
                        AssociationRecord.move_requests,
                        AssociationRecord.get_requests,
                        AssociationRecord.instances_sent,
                    )
                )
            ).where(AssociationRecord.started_at >= midnight)
        ).one()
        finds, moves, gets, sent = (int(value) for value in qr_counts)
    return {
        "studies": {"total": sum(by_state.values()), "by_state": by_state},
        "series": series_count,
        "instances": int(totals[0]),
        "bytes": int(totals[1]),
        "last_received_at": iso(last),
        "query_retrieve_today": {
            "find": int(finds),
            "move": int(moves),
            "get": int(gets),
            "instances_sent": int(sent),
        },
        "database": database.engine.url.render_as_string(hide_password=True),
        "schema_revision": database.current_revision(),
    }


def _dicomweb_status(settings: Settings) -> dict[str, Any]:
    """``[dicomweb]`` and the requests the running ``serve`` answered (its metric files)."""
    web = settings.dicomweb
    document: dict[str, Any] = {"enabled": web.enabled, "host": web.host, "port": web.port}
    if web.enabled:
        from dicom_node.ops.metrics import dicomweb_requests

        counts = dicomweb_requests(settings.data_dir / "metrics")
        document["requests"] = counts["by_service"]
        document["by_status"] = counts["by_status"]
        document["total"] = sum(counts["by_service"].values())
    return document


@app.command()
def status(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Show what the node holds and what it is doing."""
    settings = settings_or_exit(config)
    database = open_database(settings)
    document = status_document(database)
    document.update(status_extras(settings, database))
    document["dicomweb"] = _dicomweb_status(settings)
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
    qr = document["query_retrieve_today"]
    table.add_row(
        "Q/R today (UTC)",
        f"{qr['find']} C-FIND, {qr['move']} C-MOVE, {qr['get']} C-GET; {qr['instances_sent']} instances sent",
    )
    table.add_row("index", f"{document['database']} (schema {document['schema_revision']})")
    web = document["dicomweb"]
    if web["enabled"]:
        served = ", ".join(f"{k} {v}" for k, v in sorted(web["requests"].items())) or "none yet"
        table.add_row("dicomweb", f"{web['host']}:{web['port']}: {web['total']} requests ({served})")
    for d in document["destinations"]:
        table.add_row(f"destination {d['name']}", f"{d['ae_title']}@{d['host']}:{d['port']}")
    for row in document.get("pipelines", []):
        table.add_row(f"pipeline {row['name']}", pipeline_line(row))
    console.print(table)


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Create or migrate the index schema to the newest revision."""
    settings = settings_or_exit(config)
    database = open_database(settings, upgrade=True)
    console.print(f"index at schema revision {database.current_revision()}")


from dicom_node.cli import network, query, studies  # noqa: E402
from dicom_node.cli.jobs import pipeline_line, register, status_extras  # noqa: E402

app.command()(studies.studies)
app.command()(studies.audit)
app.command()(network.echo)
app.command()(network.send)
app.command()(query.find)
app.command()(query.move)

register(app)

from dicom_node.cli.retention import register as register_retention  # noqa: E402

register_retention(app)

from dicom_node.cli.config import register as register_config  # noqa: E402

register_config(app)

from dicom_node.cli.route import register as register_route  # noqa: E402

register_route(app)


def _mount_models(argv: list[str]) -> None:
    # The models sub-app imports torch; mount it only when it can be used, so that ``serve`` and the
    # rest of the CLI (the DICOM edge above all) never load torch.
    if not argv or argv[0] in {"models", "--help", "-h"}:
        from dicom_node.cli.models import app as models_app

        app.add_typer(models_app, name="models")


def main() -> None:
    """Console-script entry point."""
    _mount_models(sys.argv[1:])
    app()
