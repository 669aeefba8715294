"""Study assembly: a series is stable after its quiet period, a study complete after its window.

Kept entirely in the database so a restart loses no partial study. A study is ``complete`` once no
instance arrived for its window (``quiet_period``, or the longest ``quiet_period`` of the routes that
match it), or earlier when the completion evidence every such route accepts holds (``complete_on``:
association released, Storage Commitment, MPPS; ``workflow.completion``), or once it is older than
``max_study_age`` whatever keeps arriving (a forced close). A later
instance re-opens it as ``updated``; when that is quiet again it is ``complete`` with ``revision`` + 1,
which is what later stages compare to decide whether to run again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dicom_node.config import Settings
from dicom_node.index.database import Database
from dicom_node.index.models import Series, SeriesState, Study, StudyState, utcnow
from dicom_node.workflow.completion import early_completion
from dicom_node.workflow.routing import Route, compile_routes

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompletedStudy:
    """A study that just turned complete."""

    study_instance_uid: str
    revision: int
    forced: bool
    evidence: str = "quiet"
    """What completed it: ``quiet``, ``max_study_age`` or the ``complete_on`` evidence that held."""


def study_window(study: Study, settings: Settings, routes: Sequence[Route] | None = None) -> float:
    """The quiet period for ``study``: the longest window of the routes that may match it, else the default.

    Whether a route may match is routing's study-level test (modality and calling AE, in any case).
    """
    candidates = compile_routes(settings.routes) if routes is None else routes
    windows = [r.quiet_period for r in candidates if r.quiet_period is not None and r.may_match(study)]
    return max(windows) if windows else settings.quiet_period


def mark_stable_series(session: Session, settings: Settings, now: datetime) -> int:
    """Series with no instance for ``series_quiet_period`` become stable."""
    cutoff = now - timedelta(seconds=settings.series_quiet_period)
    result = session.execute(
        update(Series)
        .where(Series.state == SeriesState.RECEIVING, Series.last_received_at <= cutoff)
        .values(state=SeriesState.STABLE, stable_at=now)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def assemble(database: Database, settings: Settings, now: datetime | None = None) -> list[CompletedStudy]:
    """One pass: mark quiet series stable and quiet (or too old) studies complete."""
    now = now or utcnow()
    completed: list[CompletedStudy] = []
    routes = compile_routes(settings.routes)
    with database.session() as session:
        mark_stable_series(session, settings, now)
        open_studies = session.scalars(
            select(Study).where(Study.state.in_([StudyState.RECEIVING, StudyState.UPDATED]))
        ).all()
        for study in open_studies:
            quiet = (now - study.last_received_at).total_seconds()
            age = (now - study.first_received_at).total_seconds()
            forced = age >= settings.max_study_age
            evidence = "max_study_age" if forced else "quiet"
            if quiet < study_window(study, settings, routes) and not forced:
                early = early_completion(session, study, routes, settings.association_settle, now)
                if early is None:
                    continue
                evidence = early
            study.state = StudyState.COMPLETE
            study.completed_at = now
            study.revision += 1
            if forced:
                # Close the series too, so a study that never goes quiet still moves on.
                for series in study.series:
                    if series.state == SeriesState.RECEIVING:
                        series.state = SeriesState.STABLE
                        series.stable_at = now
            completed.append(CompletedStudy(study.study_instance_uid, study.revision, forced, evidence))
            LOG.info(
                "study %s complete (revision %d, by %s)",
                study.study_instance_uid,
                study.revision,
                evidence,
                extra={
                    "study_instance_uid": study.study_instance_uid,
                    "revision": study.revision,
                    "evidence": evidence,
                },
            )
    return completed
