"""``dicom-node find`` and ``move``: the convenience Query/Retrieve SCU commands (like findscu/movescu)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from pydicom.multival import MultiValue
from rich.table import Table

from dicom_node.cli.network import _destination
from dicom_node.cli.support import ConfigOption, JsonOption, console, errors, settings_or_exit

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
DEFAULT_KEYS = {
    "PATIENT": ["PatientID", "PatientName", "PatientBirthDate", "NumberOfPatientRelatedStudies"],
    "STUDY": [
        "PatientID",
        "PatientName",
        "StudyDate",
        "AccessionNumber",
        "ModalitiesInStudy",
        "StudyDescription",
        "NumberOfStudyRelatedInstances",
        "StudyInstanceUID",
    ],
    "SERIES": [
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "NumberOfSeriesRelatedInstances",
        "SeriesInstanceUID",
    ],
    "IMAGE": ["InstanceNumber", "SOPClassUID", "SOPInstanceUID"],
}


def _keys(level: str, keys: list[str] | None) -> dict[str, str]:
    """``-k Keyword=value`` (match) and ``-k Keyword`` (return) → keyword → value, after the level's
    default return keys."""
    parsed = {keyword: "" for keyword in DEFAULT_KEYS[level]}
    for key in keys or []:
        keyword, _, value = key.partition("=")
        if not keyword.strip():
            errors.print(f"[red]-k {key!r}: expected Keyword=value or Keyword[/red]")
            raise typer.Exit(2)
        parsed[keyword.strip()] = value.strip()
    return parsed


def _level(level: str) -> str:
    value = level.strip().upper()
    if value not in LEVELS:
        errors.print(f"[red]unknown level {level!r}; one of {', '.join(LEVELS)}[/red]")
        raise typer.Exit(2)
    return value


def _model(patient_root: bool, level: str) -> str:
    return "patient" if patient_root or level == "PATIENT" else "study"


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple | MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value)


def find(
    level: Annotated[str, typer.Argument(help="PATIENT, STUDY, SERIES or IMAGE.")],
    to: Annotated[str, typer.Option("--to", help="A configured destination name or AE@HOST:PORT.")],
    key: Annotated[
        list[str] | None,
        typer.Option(
            "-k", "--key", help="Keyword=value to match (wildcards * ?, ranges a-b), Keyword to return."
        ),
    ] = None,
    patient_root: Annotated[bool, typer.Option("--patient-root", "-P", help="Patient Root model.")] = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """C-FIND a peer (or this node) and print the matches."""
    from dicom_node.delivery.query_scu import QueryFailed, identifier
    from dicom_node.delivery.query_scu import find as send_find

    settings = settings_or_exit(config)
    destination = _destination(settings, to)
    chosen = _level(level)
    keys = _keys(chosen, key)
    try:
        query = identifier(chosen, keys)
    except ValueError as error:
        errors.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    rows: list[dict[str, str]] = []
    try:
        for match in send_find(destination, settings.ae_title, query, model=_model(patient_root, chosen)):
            rows.append({k: _text(match.get(k)) for k in keys})
    except QueryFailed as error:
        errors.print(f"[red]C-FIND refused by {destination.address}:[/red] {error}")
        raise typer.Exit(1) from None
    except (ConnectionError, OSError) as error:
        errors.print(f"[red]C-FIND failed:[/red] {error}")
        raise typer.Exit(1) from None
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table(*keys, title=f"{len(rows)} {chosen.lower()} matches at {destination.address}")
    for row in rows:
        table.add_row(*(row[k] for k in keys))
    console.print(table)


def move(
    uid: Annotated[
        str, typer.Argument(help="The Study Instance UID (or, with --series, Series Instance UID).")
    ],
    to: Annotated[str, typer.Option("--to", help="The AE title to move to (the peer must know it).")],
    source: Annotated[
        str, typer.Option("--from", help="Where to move from: a destination name or AE@HOST:PORT.")
    ],
    series: Annotated[
        str | None, typer.Option("--series", help="Move one series of the study: its Series Instance UID.")
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """C-MOVE a study (or one series) from a peer (or this node) to an AE title."""
    from dicom_node.delivery.query_scu import identifier
    from dicom_node.delivery.query_scu import move as send_move

    settings = settings_or_exit(config)
    peer = _destination(settings, source)
    keys = {"StudyInstanceUID": uid}
    if series:
        keys["SeriesInstanceUID"] = series
    query = identifier("SERIES" if series else "STUDY", keys)
    try:
        report = send_move(peer, settings.ae_title, query, to.strip())
    except (ConnectionError, OSError) as error:
        errors.print(f"[red]C-MOVE failed:[/red] {error}")
        raise typer.Exit(1) from None
    document = {
        "status": f"0x{report.status & 0xFFFF:04X}",
        "completed": report.completed,
        "failed": report.failed,
        "warning": report.warning,
        "comment": report.comment,
        "failed_instances": report.failed_instances,
    }
    if as_json:
        console.print_json(json.dumps(document))
    else:
        line = (
            f"C-MOVE from {peer.address} to {to}: status {document['status']}, {report.completed} completed, "
            f"{report.failed} failed, {report.warning} warning"
        )
        console.print(line + (f" ({report.comment})" if report.comment else ""))
    if report.status not in (0x0000,):
        raise typer.Exit(1)
