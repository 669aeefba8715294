"""A job's content checks: run before its pipeline, on the worker, with the figures kept on the job row.

The route that created the job names the checks (``job.requires``, from ``[[routes]] requires``). They
run here, after the claim and before the pipeline is even looked up: pixels are read on the worker, never
on the C-STORE path, and a series without the anatomy the pipeline needs costs a few decoded slices, not
a model run. What they measured is stored as JSON in ``job.content_checks`` (``dicom-node jobs`` and
``dicom-node route --explain`` show it); a check that fails raises ``ContentCheckFailedError``, which
``jobs.analysis`` turns into a ``skipped`` job whose error is the measured reason, e.g. "no lung in field
of view: 6 ml of air inside the body (needs 100 ml)".
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import update

from dicom_node.errors import DicomNodeError
from dicom_node.index.models import Job

if TYPE_CHECKING:
    from dicom_node.jobs.context import WorkerContext

LOG = logging.getLogger(__name__)

__all__ = ["ContentCheckFailedError", "require_content", "required_checks"]


class ContentCheckFailedError(DicomNodeError):
    """The job's series lacks what its pipeline needs (a content check failed); the job is skipped."""


def required_checks(job: Job) -> tuple[str, ...]:
    """The checks ``job`` requires, in the order its route named them."""
    return tuple(name for name in (job.requires or "").split(",") if name)


def measure(paths: Sequence[Path], names: Sequence[str]) -> dict[str, Any]:
    """Run the checks ``names`` on the series ``paths``; their JSON report (``pipelines.content_checks``)."""
    from pipelines.content_checks import run_checks

    return run_checks(paths, names).as_json()


def require_content(
    context: WorkerContext, job_id: int, token: str, names: Sequence[str], paths: Sequence[Path]
) -> dict[str, Any]:
    """Measure, store the figures on the job (while ``token`` holds it) and raise if a check failed."""
    report = measure(paths, names)
    with context.database.session() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.claim_token == token)
            .values(content_checks=json.dumps(report, sort_keys=True)),
            execution_options={"synchronize_session": False},
        )
    checks: dict[str, dict[str, Any]] = report["checks"]
    LOG.info(
        "job %d: content checks %s in %.0f ms",
        job_id,
        "; ".join(str(c["reason"]) for c in checks.values()),
        float(report["seconds"]) * 1000,
        extra={"job_id": job_id},
    )
    if failed := [str(c["reason"]) for c in checks.values() if not c["passed"]]:
        raise ContentCheckFailedError("; ".join(failed))
    return report


def stored_report(job: Job) -> dict[str, Any] | None:
    """The figures stored on ``job`` (``None`` before its checks ran, or if the JSON is unreadable)."""
    if not job.content_checks:
        return None
    try:
        report = json.loads(job.content_checks)
    except ValueError:
        return None
    return report if isinstance(report, dict) else None


def summary(report: dict[str, Any] | None) -> str:
    """One line for a table: each check's verdict and main figure (``lungs 6 ml no; spine 16/16 yes``)."""
    if not report:
        return ""
    parts = []
    for name, check in dict(report.get("checks") or {}).items():
        figures = dict(check.get("figures") or {})
        if "air_ml" in figures:
            figure = f"{figures['air_ml']:.0f} ml"
        elif "sampled_slices" in figures:
            figure = f"{figures['slices_with_vertebra']:.0f}/{figures['sampled_slices']:.0f} slices"
        else:
            figure = "not measured"
        parts.append(f"{name} {figure} {'ok' if check.get('passed') else 'FAIL'}")
    return "; ".join(parts)


def measure_series(store_paths: Sequence[Path], names: Sequence[str]) -> dict[str, Any]:
    """``measure`` for a caller outside a worker (``route --explain``): an unreadable series or a node
    without the analysis extra gives ``{"error": ...}`` instead of raising."""
    try:
        return measure(store_paths, names)
    except ImportError as error:
        return {
            "error": f"content checks need the analysis extra (pip install dicom-node[analysis]): {error}"
        }
    except Exception as error:  # a refused series: say why, explain goes on
        return {"error": f"{type(error).__name__}: {error}"}
