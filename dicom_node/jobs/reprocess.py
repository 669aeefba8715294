"""``dicom-node reprocess STUDY_UID [--pipeline NAME]``: analyse a study again, as new jobs.

What it does, in one transaction:

* refuses while the study is still receiving (it is routed when it completes) and while any job of a
  pipeline it would run is ``queued`` or ``running`` — a running job is never touched (re-queueing it
  would clear its claim and let two workers run it);
* chooses, for each pipeline, among the study's **received image series** only: never a series of the
  node's own result objects (named in the ``result`` table, or stored by the node itself — no
  association, the node's AE title), and with the route's own criteria and selection (so a localizer
  or a thick series is refused exactly as routing refuses it). Without ``--pipeline`` the pipelines are
  those the routes choose now; with it, that pipeline (a shipped one without a route takes the largest
  received image series that is not a localizer);
* creates one new job per pipeline at the study's current revision. A pipeline that already has a job
  at that revision (a job row is unique per study, pipeline and revision) makes the reprocess open a new
  revision first (``revision`` + 1, marked routed at once so routing adds nothing): earlier runs stay as
  they were, with their results and deliveries, as history.

The new jobs are queued like routed ones (their lease is stamped, the caller rings the broker); each
delivers its results again when it succeeds.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import timedelta

from sqlalchemy import and_, exists, or_, select
from sqlalchemy.orm import Session

from dicom_node.config import Settings
from dicom_node.errors import DicomNodeError
from dicom_node.index.database import Database
from dicom_node.index.models import Instance, Job, JobState, Result, Series, Study, StudyState, utcnow
from dicom_node.workflow.routing import Route, compile_routes, route_study


class ReprocessRefusedError(DicomNodeError):
    """The study cannot be reprocessed now or as asked; the message says why and what to do."""


def received_series(session: Session, study: Study, node_ae_title: str) -> list[Series]:
    """The study's series that came from peers, not the node's own result objects.

    A series is the node's own when a ``result`` row names it, or when none of its instances came over
    an association from a peer (the node stores its results without one, under its own AE title).
    """
    own_results = select(Result.series_instance_uid).join(Job).where(Job.study_id == study.id)
    from_a_peer = exists().where(
        Instance.series_id == Series.id,
        or_(
            Instance.association_id.is_not(None),
            and_(Instance.calling_ae_title.is_not(None), Instance.calling_ae_title != node_ae_title),
        ),
    )
    return list(
        session.scalars(
            select(Series)
            .where(Series.study_id == study.id, Series.series_instance_uid.not_in(own_results), from_a_peer)
            .order_by(Series.id)
        ).all()
    )


def _is_localizer(series: Series) -> bool:
    return "LOCALIZER" in {v.strip().upper() for v in (series.image_type or "").split("\\")}


def _choose(study: Study, pipeline: str, routes: Sequence[Route], candidates: Sequence[Series]) -> Series:
    route = next((r for r in routes if r.pipeline == pipeline), None)
    if route is None:
        images = [s for s in candidates if not _is_localizer(s) and s.num_instances > 0]
        if not images:
            raise ReprocessRefusedError(f"study {study.study_instance_uid} has no received image series")
        return max(images, key=lambda s: (s.num_instances, -s.id))
    qualifying = [s for s in candidates if route.why_not(study, s) is None]
    if not qualifying:
        reasons = "; ".join(
            f"series {s.series_number or s.series_instance_uid}: {route.why_not(study, s)}"
            for s in candidates
        )
        raise ReprocessRefusedError(
            f"no received series of study {study.study_instance_uid} qualifies for {pipeline}: "
            + (reasons or "no series")
        )
    return route.choose(qualifying)


def reprocess_study(
    database: Database,
    settings: Settings,
    study_uid: str,
    pipeline: str | None,
    known_pipelines: Collection[str] = (),
) -> list[int]:
    """Create the new jobs (see the module docstring) and return their ids, to be enqueued.

    Raises ``LookupError`` for an unknown study and ``ReprocessRefusedError`` with the reason otherwise.
    """
    routes = compile_routes(settings.routes)
    if pipeline is not None and pipeline not in {r.pipeline for r in routes} | set(known_pipelines):
        raise ReprocessRefusedError(
            f"unknown pipeline {pipeline!r}: no route names it and it is none of {sorted(known_pipelines)}"
        )
    with database.session() as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid).with_for_update())
        if study is None:
            raise LookupError(f"no study {study_uid}")
        if study.state != StudyState.COMPLETE:
            raise ReprocessRefusedError(
                f"study {study_uid} is still receiving ({study.state}); it is analysed when it completes"
            )
        candidates = received_series(session, study, settings.ae_title)
        if pipeline is not None:
            chosen = {pipeline: _choose(study, pipeline, routes, candidates)}
            route = next((r for r in routes if r.pipeline == pipeline), None)
            requires = {pipeline: route.requires if route is not None else ()}
        else:
            decision = route_study(study, routes, candidates)
            if not decision.matches:
                raise ReprocessRefusedError(f"study {study_uid} matches no route: {decision.reason}")
            by_id = {s.id: s for s in candidates}
            chosen = {m.pipeline: by_id[m.series_id] for m in decision.matches}
            requires = {m.pipeline: m.requires for m in decision.matches}
        _refuse_unfinished(session, study, set(chosen))
        taken = set(
            session.scalars(
                select(Job.pipeline).where(
                    Job.study_id == study.id,
                    Job.study_revision == study.revision,
                    Job.pipeline.in_(chosen),
                )
            ).all()
        )
        if taken:
            study.revision += 1
            study.routed_revision = study.revision
        now = utcnow()
        jobs = [
            Job(
                study_id=study.id,
                series_id=series.id,
                study_revision=study.revision,
                pipeline=name,
                state=JobState.QUEUED,
                attempts=0,
                stable_at=study.completed_at,
                created_at=now,
                queued_at=now,
                lease_expires_at=now + timedelta(seconds=settings.jobs.queued_lease),
                requires=",".join(requires[name]) or None,
            )
            for name, series in sorted(chosen.items())
        ]
        session.add_all(jobs)
        session.flush()
        return [job.id for job in jobs]


def _refuse_unfinished(session: Session, study: Study, pipelines: set[str]) -> None:
    unfinished = session.scalars(
        select(Job)
        .where(
            Job.study_id == study.id,
            Job.pipeline.in_(pipelines),
            Job.state.in_([JobState.QUEUED, JobState.RUNNING]),
        )
        .order_by(Job.id)
    ).all()
    if not unfinished:
        return
    described = ", ".join(
        f"job {job.id} ({job.pipeline}) is {job.state}"
        + (f" on {job.worker_host}" if job.state == JobState.RUNNING and job.worker_host else "")
        for job in unfinished
    )
    raise ReprocessRefusedError(
        f"not touched: {described}; reprocess study {study.study_instance_uid} again once it has ended"
    )
