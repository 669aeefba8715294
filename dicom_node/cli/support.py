"""What every ``dicom-node`` command module shares: the two consoles, the settings (and with them the
logging every command configures) and opening the index."""

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
from dicom_node.ops.logging import configure_logging

console = Console()
errors = Console(stderr=True)

ConfigOption = Annotated[Path | None, typer.Option("--config", help="TOML settings file.", exists=False)]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
LogFormatOption = Annotated[
    str | None,
    typer.Option(
        "--log-format",
        help='Log lines as "text" or "json" (default: DICOM_NODE_LOG_FORMAT, log_format in the file, text).',
    ),
]


def config_error_exit(error: ConfigError) -> typer.Exit:
    """Print every problem of ``error`` on standard error; the ``Exit(2)`` to raise."""
    errors.print(f"[red]configuration error:[/red] {escape(str(error))}", soft_wrap=True, highlight=False)
    return typer.Exit(2)


def settings_or_exit(config: Path | None, **overrides: Any) -> Settings:
    """The settings, or exit code 2 with the configuration error(s) on standard error.

    Logging is configured from them (``log_level``, ``log_format``), so every command logs alike.
    """
    try:
        settings = load_settings(config, **overrides)
    except ConfigError as error:
        raise config_error_exit(error) from None
    try:
        configure_logging(settings.log_level, settings.log_format)
    except ValueError as error:  # an unknown log_level
        raise config_error_exit(ConfigError(str(error))) from None
    return settings


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
