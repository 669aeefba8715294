"""``dicom-node echo`` and ``send``: the convenience SCU commands."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from dicom_node.cli.support import (
    ConfigOption,
    console,
    errors,
    settings_or_exit,
)
from dicom_node.config import Destination, Settings, parse_address
from dicom_node.errors import ConfigError


def _destination(settings: Settings, target: str) -> Destination:
    try:
        return parse_address(target) if "@" in target else settings.destination(target)
    except ConfigError as error:
        errors.print(f"[red]{error}[/red] (give a configured destination name or AE@HOST:PORT)")
        raise typer.Exit(2) from None


def echo(
    target: Annotated[str, typer.Argument(help="A configured destination name or AE@HOST:PORT.")],
    config: ConfigOption = None,
) -> None:
    """C-ECHO a destination."""
    from dicom_node.delivery.scu import echo as send_echo

    settings = settings_or_exit(config)
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


def send(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (recursive).", exists=True)],
    to: Annotated[str, typer.Option("--to", help="A configured destination name or AE@HOST:PORT.")],
    config: ConfigOption = None,
) -> None:
    """C-STORE DICOM files to a peer, as they are on disk."""
    from dicom_node.delivery.scu import FileToSend, iter_dicom_files, read_header, send_files

    settings = settings_or_exit(config)
    destination = _destination(settings, to)
    files: list[FileToSend] = []
    skipped: list[str] = []
    for path in iter_dicom_files(paths):
        try:
            files.append(read_header(path))
        except Exception as error:
            skipped.append(f"{path}: {error}")
    for line in skipped:
        # one line per file however long its path (a log or grep must find the whole path)
        errors.print(f"[yellow]skipped (not DICOM):[/yellow] {escape(line)}", soft_wrap=True)
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
