"""Logging for every process of the node: one ``configure_logging(level, fmt)``.

``text`` (the default) writes ``time level logger: message`` lines. ``json`` writes one JSON object per
line (python-json-logger): ``timestamp`` (ISO 8601, UTC), ``level``, ``logger``, ``process``,
``thread``, ``message``, plus the fields the node's log calls pass as ``extra`` — ``study_instance_uid``,
``series_instance_uid``, ``sop_instance_uid``, ``job_id``, ``delivery_id``, ``pipeline``,
``calling_ae``, ``destination``, … — so that a log shipper can index them without parsing messages.
The message text carries the same identifiers, so the text format loses nothing. Patient names and IDs
are never logged above DEBUG, in either format.

``serve`` hands its level and format to the embedded worker through ``DICOM_NODE_LOG_LEVEL`` and
``DICOM_NODE_LOG_FORMAT``; a worker keeps Celery from configuring logging itself (``celery.signals.
setup_logging``), so task logs come out in the same format.

Warnings: ``logging.captureWarnings(True)`` sends every ``warnings.warn`` through the ``py.warnings``
logger. pydicom reports each of its warnings twice, on its own ``pydicom`` logger and with
``warnings.warn`` (``pydicom.misc.warn_and_log``); the ``warnings`` copy of those is ignored, so each
appears once, from the ``pydicom`` logger, whose level follows the configured one.
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import TextIO

from pythonjsonlogger.json import JsonFormatter

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JSON_FIELDS = "%(levelname)s %(name)s %(process)d %(threadName)s %(message)s"
JSON_RENAMES = {"levelname": "level", "name": "logger", "threadName": "thread"}
QUIET_LIBRARIES = ("pynetdicom", "alembic")


class NodeLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler ``configure_logging`` installs; calling it again replaces it, never stacks it.

    It writes to whatever ``sys.stderr`` is when a record is emitted (as logging's last-resort handler
    does), so a command run in-process by a test runner never writes to a stream that has been closed.
    """

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def log_formatter(fmt: str) -> logging.Formatter:
    """The formatter of ``fmt`` (``text`` or ``json``)."""
    if fmt == "json":
        return JsonFormatter(JSON_FIELDS, rename_fields=JSON_RENAMES, timestamp=True)
    if fmt == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Log records at ``level`` and above to standard error in format ``fmt``."""
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"log level must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {level!r}")
    handler = NodeLogHandler()
    handler.setFormatter(log_formatter(fmt))
    root = logging.getLogger()
    for previous in [h for h in root.handlers if isinstance(h, NodeLogHandler)]:
        root.removeHandler(previous)
    root.addHandler(handler)
    root.setLevel(numeric)
    # pynetdicom logs every PDU at INFO, Alembic every schema check; keep them at WARNING unless debugging.
    for chatty in QUIET_LIBRARIES:
        logging.getLogger(chatty).setLevel(numeric if numeric <= logging.DEBUG else logging.WARNING)
    logging.getLogger("pydicom").setLevel(numeric)
    logging.captureWarnings(True)
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
