"""``dicom-node studies`` and ``audit``: what arrived, in what state, and who associated."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table
from sqlalchemy import select

from dicom_node.cli.support import (
    ConfigOption,
    JsonOption,
    console,
    iso,
    open_database,
    settings_or_exit,
)
from dicom_node.index.models import AssociationRecord, Study


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
        # Why a complete study started no job (no route matched); null when it did or is not routed yet.
        "routing_reason": study.routing_reason,
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


def studies(
    config: ConfigOption = None,
    state: Annotated[str | None, typer.Option(help="Only studies in this state.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List received studies."""
    settings = settings_or_exit(config)
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
    # Under the table, one line per study that matched no route: the reasons are too long for a column.
    # soft_wrap: the terminal wraps the line, rich inserts no breaks (so it can be copied and grepped).
    for row in rows:
        if row["routing_reason"]:
            console.print(
                f"no job for {row['study_instance_uid']}: {row['routing_reason']}",
                soft_wrap=True,
                markup=False,
            )


def _qr_cell(row: dict[str, Any]) -> str:
    """``2F 1M 0G →20``: C-FIND, C-MOVE, C-GET requests and instances sent; empty without any."""
    keys = ("find_requests", "move_requests", "get_requests", "instances_sent")
    if not any(row[k] for k in keys):
        return ""
    return f"{row['find_requests']}F {row['move_requests']}M {row['get_requests']}G →{row['instances_sent']}"


def audit(
    config: ConfigOption = None,
    limit: Annotated[int, typer.Option(help="How many of the newest associations.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """Show the association audit trail (newest first)."""
    settings = settings_or_exit(config)
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
                "find_requests": r.find_requests,
                "move_requests": r.move_requests,
                "get_requests": r.get_requests,
                "instances_sent": r.instances_sent,
            }
            for r in records
        ]
    if as_json:
        console.print_json(json.dumps({"associations": rows}))
        return
    table = Table("#", "Calling AE", "Peer", "Started", "Outcome", "Accepted", "Refused", "Q/R", "Reason")
    for r in rows:
        table.add_row(
            str(r["id"]),
            str(r["calling_ae_title"]),
            f"{r['peer_address']}:{r['peer_port']}",
            str(r["started_at"] or ""),
            str(r["outcome"]),
            str(r["instances_accepted"]),
            str(r["instances_refused"]),
            _qr_cell(r),
            str(r["reason"] or ""),
        )
    console.print(table)
