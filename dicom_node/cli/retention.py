"""``dicom-node retention``: show (``--dry-run``, the default) or apply the retention policy.

Mounted on the main typer app by ``register(app)``. ``--json`` prints one stable document::

    {"mode": "dry-run" | "apply", "retention_days": 30.0, "now": ISO-8601,
     "studies": [{"study_instance_uid", "deletable", "reason", "settled_at", "delete_after",
                  "instances", "bytes"}, ...],
     "deleted": {"studies": [UID, ...], "instances": N, "bytes": N, "files_missing": N,
                 "skipped": {UID: reason}}}          # "deleted" only with --apply

``--acknowledge STUDY_UID`` (repeatable) accepts the failed jobs and deliveries of a study's current
revision, so that it can be deleted once its retention period is over.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from dicom_node.cli.support import (
    ConfigOption,
    console,
    errors,
    iso,
    open_database,
    settings_or_exit,
)
from dicom_node.config import Settings
from dicom_node.index.models import utcnow
from dicom_node.storage.retention import (
    RetentionPolicy,
    Verdict,
    acknowledge_failures,
    apply_retention,
    review,
)


def verdict_row(verdict: Verdict) -> dict[str, Any]:
    return {
        "study_instance_uid": verdict.study_instance_uid,
        "deletable": verdict.deletable,
        "reason": verdict.reason,
        "settled_at": iso(verdict.settled_at),
        "delete_after": iso(verdict.delete_after),
        "instances": verdict.instances,
        "bytes": verdict.bytes,
    }


def _settings(config: Path | None, days: float | None) -> Settings:
    settings = settings_or_exit(config, retention_days=days)
    try:
        RetentionPolicy.from_settings(settings)
    except ValueError as error:
        errors.print(f"[red]configuration error:[/red] {error}")
        raise typer.Exit(2) from None
    return settings


def register(app: typer.Typer) -> None:
    """Add ``retention`` to ``app``."""

    @app.command()
    def retention(
        config: ConfigOption = None,
        apply: Annotated[
            bool, typer.Option("--apply/--dry-run", help="Delete (--apply) or only show (--dry-run).")
        ] = False,
        days: Annotated[
            float | None, typer.Option("--days", help="Override retention_days for this run.", min=0)
        ] = None,
        acknowledge: Annotated[
            list[str] | None,
            typer.Option("--acknowledge", help="Accept a study's failed jobs/deliveries (repeatable)."),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    ) -> None:
        """Delete received images N days after their results were delivered (dry run by default)."""
        settings = _settings(config, days)
        policy = RetentionPolicy.from_settings(settings)
        database = open_database(settings)
        try:
            for uid in acknowledge or []:
                try:
                    revision = acknowledge_failures(database, uid)
                except LookupError as error:
                    errors.print(f"[red]{error}[/red]")
                    raise typer.Exit(1) from None
                errors.print(f"acknowledged the failures of {uid} revision {revision}")
            now = utcnow()
            verdicts = review(database, policy, now)
            document: dict[str, Any] = {
                "mode": "apply" if apply else "dry-run",
                "retention_days": policy.days,
                "now": now.isoformat(),
                "studies": [verdict_row(v) for v in verdicts],
            }
            if apply:
                report = apply_retention(
                    database,
                    settings.storage_root,
                    policy,
                    now,
                    [v.study_id for v in verdicts if v.deletable],
                )
                document["deleted"] = {
                    "studies": report.studies,
                    "instances": report.instances,
                    "bytes": report.bytes,
                    "files_missing": report.files_missing,
                    "skipped": report.skipped,
                }
        finally:
            database.dispose()
        if as_json:
            console.print_json(json.dumps(document))
            return
        _print_table(document, policy)

    _ = retention


def _print_table(document: dict[str, Any], policy: RetentionPolicy) -> None:
    deletable = [s for s in document["studies"] if s["deletable"]]
    title = (
        f"retention: {policy.days:g} days — {len(deletable)} of {len(document['studies'])} studies deletable"
        if policy.enabled
        else "retention is off (retention_days = 0): nothing is ever deleted"
    )
    table = Table("Study Instance UID", "Deletable", "Instances", "MB", "Delete after", "Reason", title=title)
    for row in document["studies"]:
        table.add_row(
            row["study_instance_uid"],
            "yes" if row["deletable"] else "no",
            str(row["instances"]),
            f"{row['bytes'] / 1e6:.1f}",
            row["delete_after"] or "",
            row["reason"],
        )
    console.print(table)
    deleted = document.get("deleted")
    if deleted is not None:
        console.print(
            f"deleted {deleted['instances']} instances ({deleted['bytes'] / 1e6:.1f} MB) "
            f"of {len(deleted['studies'])} studies"
            + (f"; {deleted['files_missing']} files were already gone" if deleted["files_missing"] else "")
        )
        for uid, reason in deleted["skipped"].items():
            errors.print(f"[yellow]kept {uid}: {reason}[/yellow]")
    elif deletable:
        console.print("dry run: nothing deleted (use --apply)")
