"""What every ``dicom-node`` command module shares: the two consoles and opening the index."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from dicom_node.config import Settings, load_settings
from dicom_node.errors import ConfigError
from dicom_node.index.database import Database, SchemaError

console = Console()
errors = Console(stderr=True)

ConfigOption = Annotated[Path | None, typer.Option("--config", help="TOML settings file.", exists=False)]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def settings_or_exit(config: Path | None, **overrides: Any) -> Settings:
    """The settings, or exit code 2 with the configuration error on standard error."""
    try:
        return load_settings(config, **overrides)
    except ConfigError as error:
        errors.print(f"[red]configuration error:[/red] {error}")
        raise typer.Exit(2) from None


def iso(value: datetime | None) -> str | None:
    """ISO 8601 for ``--json`` output (index timestamps are timezone-aware UTC)."""
    return value.isoformat() if value is not None else None


def open_database(settings: Settings, *, upgrade: bool = False) -> Database:
    """The index at the code's schema; exit code 1 with the reason when it cannot be opened.

    Only ``db upgrade`` passes ``upgrade`` (``serve`` and ``worker`` upgrade on their own, under the
    same lock); every other command waits while an upgrade runs and never writes the schema itself.
    """
    database = Database(settings.effective_database_url)
    try:
        if upgrade:
            database.upgrade()
        else:
            database.require_schema()
    except SchemaError as error:
        database.dispose()
        errors.print(f"[red]cannot use the index:[/red] {escape(str(error))}")
        raise typer.Exit(1) from None
    except Exception as error:
        database.dispose()
        errors.print(f"[red]cannot open the index database:[/red] {escape(str(error))}")
        raise typer.Exit(1) from None
    return database
