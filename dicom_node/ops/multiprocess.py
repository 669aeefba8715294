"""prometheus_client's multiprocess mode for a process tree: one folder of per-process metric files.

The node's work finishes in several processes: ``serve`` (the edge and ingest), its embedded worker
subprocess, and that worker's Celery prefork children. Each writes its counters and histograms to
memory-mapped files in ``$PROMETHEUS_MULTIPROC_DIR``, and the ``/metrics`` endpoint sums them
(``ops.metrics.scrape_registry``). prometheus_client chooses between in-memory and file-backed values
when it is first imported, so ``use_metrics_folder`` must run before anything imports it: the CLI
calls it at the top of ``serve --metrics-port`` and ``worker --metrics-port``, before importing the
node; the children inherit the variable.

This module must not import prometheus_client.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def metrics_folder() -> Path | None:
    """The multiprocess folder of this process, if it runs in multiprocess mode."""
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def use_metrics_folder(default: Path | None = None) -> Path:
    """Put this process and the children it starts in multiprocess mode; return the folder.

    ``$PROMETHEUS_MULTIPROC_DIR`` wins when it is set (whoever set it owns its files). Otherwise
    ``default`` is emptied of metric files from earlier runs and used (``serve``: ``<data_dir>/metrics``);
    without a default a new temporary folder is made (a worker on another host; the caller removes it).
    Raises ``RuntimeError`` if prometheus_client was imported before, in single-process mode.
    """
    folder = metrics_folder()
    if folder is None and "prometheus_client" in sys.modules:
        raise RuntimeError(
            "prometheus_client was imported before the metrics folder was chosen; "
            "its values would stay in this process only"
        )
    if folder is None:
        if default is None:
            folder = Path(tempfile.mkdtemp(prefix="dicom-node-metrics-"))
        else:
            default.mkdir(parents=True, exist_ok=True)
            for stale in default.glob("*.db"):
                stale.unlink(missing_ok=True)
            folder = default
        os.environ[MULTIPROC_ENV] = str(folder.resolve())
    folder.mkdir(parents=True, exist_ok=True)
    return folder
