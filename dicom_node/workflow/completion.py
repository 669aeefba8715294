"""Completion evidence: when a study may be taken as complete before its quiet period has passed.

A route's ``complete_on`` names the evidence it accepts besides the quiet period (which always completes
a study, and ``max_study_age`` forces it):

``quiet``
    only the quiet period (the default: it needs nothing from the sender).
``association``
    the association that brought the study's last instance was released (not aborted), no other
    association that brought instances of the study is still open, and no instance arrived for
    ``association_settle`` seconds since.
``commitment``
    a Storage Commitment request committed every instance the study holds, after each was received.
``mpps``
    COMPLETED Modality Performed Procedure Steps of the study list exactly the instances it holds: every
    listed instance is present, and nothing is present that none lists.

Every piece of evidence is a row (``study.released_at``, ``commitment_item``, ``mpps_instance``), so a
restart loses none. A study completes early only when *every* route that may match it accepts evidence
that holds: one route that waits for the quiet period makes the whole study wait, because the study has
one completion and one revision that all its routes are evaluated on. Evidence that covers fewer
instances than the study holds (a late instance, a failed commitment item, the node's own results stored
in the study) does not count: the study then waits for its quiet period, as without evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session

from dicom_node.index.models import (
    AssociationOutcome,
    AssociationRecord,
    CommitmentItem,
    CommitmentRequest,
    Instance,
    MppsState,
    PerformedInstance,
    PerformedProcedureStep,
    Series,
    Study,
)
from dicom_node.workflow.routing import Route

QUIET = "quiet"


def record_release(session: Session, association_id: int, now: datetime) -> list[str]:
    """Stamp ``released_at`` on the studies association ``association_id`` brought instances of.

    Returns their Study Instance UIDs.
    """
    study_ids = (
        select(Series.study_id)
        .join(Instance, Instance.series_id == Series.id)
        .where(Instance.association_id == association_id)
        .distinct()
    )
    uids = list(session.scalars(select(Study.study_instance_uid).where(Study.id.in_(study_ids))).all())
    if uids:
        session.execute(
            update(Study).where(Study.id.in_(study_ids)).values(released_at=now),
            execution_options={"synchronize_session": False},
        )
    return uids


def _study_instances(study: Study) -> Any:
    return (
        select(Instance.id).join(Series, Series.id == Instance.series_id).where(Series.study_id == study.id)
    )


def association_released(session: Session, study: Study, settle: float, now: datetime) -> bool:
    """The study's last sender released its association ``settle`` seconds ago and none is still open."""
    released = study.released_at
    if released is None or released < study.last_received_at or now < released + timedelta(seconds=settle):
        return False
    still_open = session.scalar(
        select(
            exists()
            .where(Instance.association_id == AssociationRecord.id)
            .where(AssociationRecord.outcome == AssociationOutcome.ACTIVE)
            .where(Instance.id.in_(_study_instances(study)))
        )
    )
    return not still_open


def commitment_covers(session: Session, study: Study) -> bool:
    """Every instance of the study was committed by a Storage Commitment request after it arrived."""
    total = session.scalar(select(func.count()).select_from(_study_instances(study).subquery())) or 0
    if total == 0:
        return False
    committed = session.scalar(
        select(func.count(func.distinct(Instance.id)))
        .join(Series, Series.id == Instance.series_id)
        .join(CommitmentItem, CommitmentItem.sop_instance_uid == Instance.sop_instance_uid)
        .join(CommitmentRequest, CommitmentRequest.id == CommitmentItem.request_id)
        .where(
            Series.study_id == study.id,
            CommitmentItem.failure_reason.is_(None),
            CommitmentItem.sop_class_uid == Instance.sop_class_uid,
            CommitmentRequest.decided_at >= Instance.received_at,
        )
    )
    return committed == total


def mpps_covers(session: Session, study: Study) -> bool:
    """COMPLETED MPPS of the study list exactly the instances the study holds (and list at least one)."""
    listed = set(
        session.scalars(
            select(PerformedInstance.sop_instance_uid)
            .join(PerformedProcedureStep, PerformedProcedureStep.id == PerformedInstance.mpps_id)
            .where(
                PerformedProcedureStep.study_instance_uid == study.study_instance_uid,
                PerformedProcedureStep.state == MppsState.COMPLETED,
            )
        ).all()
    )
    if not listed:
        return False
    present = set(
        session.scalars(
            select(Instance.sop_instance_uid)
            .join(Series, Series.id == Instance.series_id)
            .where(Series.study_id == study.id)
        ).all()
    )
    return listed == present


def evidence_holds(session: Session, study: Study, mode: str, settle: float, now: datetime) -> bool:
    """Whether the evidence ``mode`` (a ``complete_on`` value other than ``quiet``) holds for ``study``."""
    if mode == "association":
        return association_released(session, study, settle, now)
    if mode == "commitment":
        return commitment_covers(session, study)
    if mode == "mpps":
        return mpps_covers(session, study)
    return False


def early_completion(
    session: Session, study: Study, routes: Sequence[Route], settle: float, now: datetime
) -> str | None:
    """The evidence that completes ``study`` before its quiet period, or None.

    Every route that may match the study must accept evidence other than the quiet period, and each
    one's evidence must hold; a study no route may match waits for the quiet period.
    """
    modes = {route.complete_on for route in routes if route.may_match(study)}
    if not modes or QUIET in modes:
        return None
    for mode in sorted(modes):
        if not evidence_holds(session, study, mode, settle, now):
            return None
    return "+".join(sorted(modes))
