"""``dicom-node config check``: the effective settings, where each value came from, or every problem.

Exit 0 with the settings (a table, or ``--json``); exit 2 with every problem on standard error. Secrets
are redacted: the passwords in ``database_url`` and ``broker_url``. Key files are named, never read.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from dicom_node.cli.support import ConfigOption, JsonOption, config_error_exit, console, errors
from dicom_node.config import (
    ENV_PREFIX,
    ConfigError,
    ResolvedSettings,
    RouteSpec,
    Settings,
    redact_url,
    resolve_settings,
)
from dicom_node.workflow.routing import DEFAULT_ROUTES

app = typer.Typer(help="Check the settings.", no_args_is_help=True)

_TABLES = ("timeouts", "access", "jobs", "tls", "dicomweb", "query_retrieve")
_LISTS = ("destinations", "routes")
_NOT_SETTINGS = {"config"}


def effective_settings(resolved: ResolvedSettings) -> dict[str, dict[str, Any]]:
    """``{setting: {"value", "source", "origin"}}``, tables flattened (``jobs.max_attempts``)."""
    settings = resolved.settings
    dumped = settings.model_dump(mode="json")
    dumped["database_url"] = redact_url(settings.effective_database_url)
    dumped["broker_url"] = redact_url(settings.effective_broker_url)
    routes = settings.routes or tuple(RouteSpec.model_validate(route) for route in DEFAULT_ROUTES)
    dumped["routes"] = [route.model_dump(mode="json", exclude_none=True) for route in routes]
    document: dict[str, dict[str, Any]] = {}

    def add(name: str, value: Any, *path: str) -> None:
        origin = resolved.origin(*path)
        document[name] = {
            "value": value,
            "source": origin.kind,
            "origin": origin.name or None,
        }

    for field in Settings.model_fields:
        value = dumped[field]
        if field in _TABLES and isinstance(value, Mapping):
            for key, item in value.items():
                add(f"{field}.{key}", item, field, key)
        else:
            add(field, value, field)
    return document


def _text(value: Any) -> str:
    if value is None:
        return "off"
    if isinstance(value, list):
        return ", ".join(map(str, value)) if value else "(none)"
    return str(value)


def _route_text(route: Mapping[str, Any]) -> str:
    match = route.get("match") or {}
    parts = [f"{k} {_text(v)}" for k, v in match.items() if v is not None]
    text = f"{route['pipeline']} ({route.get('select', 'thinnest')}): {'; '.join(parts)}"
    if route.get("quiet_period") is not None:
        text += f"; quiet_period {route['quiet_period']:g} s"
    if route.get("enabled") is False:
        text += " [disabled]"
    return text


def _print_table(document: Mapping[str, Mapping[str, Any]], resolved: ResolvedSettings) -> None:
    title = f"dicom-node settings ({resolved.config_file or 'no settings file'})"
    table = Table("setting", "value", "source", title=escape(title))
    for name, entry in document.items():
        # The file is named in the title; flags and variables by name.
        named = entry["origin"] and entry["source"] != "file"
        source = entry["source"] + (f" {entry['origin']}" if named else "")
        value = entry["value"]
        if name in _LISTS:
            if not value:
                table.add_row(name, "(none)", escape(source))
            for index, item in enumerate(value):
                if name == "routes":
                    text = _route_text(item)
                else:
                    text = (
                        f"{item['name']}: {item['ae_title']}@{item['host']}:{item['port']} ({item['profile']}"
                    )
                    text += " + presentation state" if item.get("presentation_state") else ""
                    text += ", TLS)" if item["tls"] else ")"
                table.add_row(f"{name}[{index}]", escape(text), escape(source))
        else:
            table.add_row(name, escape(_text(value)), escape(source))
    console.print(table)


def _environment_notes() -> list[str]:
    """``DICOM_NODE_*`` variables that are no setting but look like one (a typo is otherwise silent)."""
    fields = list(Settings.model_fields)
    notes = []
    for variable in sorted(os.environ):
        if not variable.startswith(ENV_PREFIX):
            continue
        top = variable[len(ENV_PREFIX) :].lower().split("__")[0]
        if top in fields or top in _NOT_SETTINGS:
            continue
        if close := difflib.get_close_matches(top, fields, n=1, cutoff=0.8):
            notes.append(
                f"{variable} is not a setting and is ignored; did you mean {ENV_PREFIX}{close[0].upper()}?"
            )
    return notes


@app.command("check")
def check(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Print the effective settings and where each came from; exit 2 listing every problem."""
    for note in _environment_notes():
        errors.print(f"note: {escape(note)}", soft_wrap=True, highlight=False)
    try:
        resolved = resolve_settings(config)
    except ConfigError as error:
        raise config_error_exit(error) from None
    document = effective_settings(resolved)
    if as_json:
        file = str(resolved.config_file) if resolved.config_file else None
        console.print_json(json.dumps({"config_file": file, "settings": document}))
        return
    _print_table(document, resolved)


def register(parent: typer.Typer) -> None:
    """Add ``config`` to ``parent``."""
    parent.add_typer(app, name="config")
