"""Modality Performed Procedure Step SCP: N-CREATE (IN PROGRESS) and N-SET (COMPLETED, DISCONTINUED).

PS3.4 Annex F.7. Each step is a row (``mpps``) with the instances its Performed Series Sequence lists
(Referenced Image Sequence and Referenced Non-Image Composite SOP Instance Sequence; ``mpps_instance``),
which ``workflow.completion`` compares with what arrived for routes with ``complete_on = "mpps"``.

Statuses: 0x0111 duplicate SOP instance (N-CREATE of a step that exists), 0x0120 missing attribute,
0x0106 invalid attribute value (a status other than IN PROGRESS on N-CREATE, an unknown status, a bad
UID), 0x0112 no such object instance (N-SET of an unknown step), 0x0110 processing failure (N-SET of a
step that is already COMPLETED or DISCONTINUED: "may no longer be updated").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import evt
from sqlalchemy import select

from dicom_node.edge.commitment import Evidence, status_dataset
from dicom_node.index.database import Database
from dicom_node.index.models import MppsState, PerformedInstance, PerformedProcedureStep, utcnow

LOG = logging.getLogger(__name__)

SUCCESS = 0x0000
INVALID_ATTRIBUTE_VALUE = 0x0106
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_OBJECT_INSTANCE = 0x0112
MISSING_ATTRIBUTE = 0x0120
STATES = {s.value for s in MppsState}


class StepError(ValueError):
    """A request the SCP refuses: its DIMSE status and the error comment."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status


def _uid(value: object, name: str) -> str:
    text = str(value or "")
    if not text:
        raise StepError(MISSING_ATTRIBUTE, f"{name} is missing")
    if len(text) > 64 or not UID(text).is_valid:
        raise StepError(INVALID_ATTRIBUTE_VALUE, f"{name} is not a valid UID")
    return text


def _state(ds: Dataset) -> str | None:
    if "PerformedProcedureStepStatus" not in ds:
        return None
    state = str(ds.PerformedProcedureStepStatus or "").strip().upper()
    if state not in STATES:
        raise StepError(
            INVALID_ATTRIBUTE_VALUE,
            f"Performed Procedure Step Status {state!r} is unknown",
        )
    return state


def performed_instances(ds: Dataset) -> list[PerformedInstance] | None:
    """The instances of a Performed Series Sequence, or None when the attribute is absent."""
    if "PerformedSeriesSequence" not in ds:
        return None
    listed: list[PerformedInstance] = []
    for series in ds.PerformedSeriesSequence or []:
        series_uid = _uid(series.get("SeriesInstanceUID"), "Performed Series Sequence > Series Instance UID")
        for keyword in ("ReferencedImageSequence", "ReferencedNonImageCompositeSOPInstanceSequence"):
            for item in series.get(keyword) or []:
                listed.append(
                    PerformedInstance(
                        series_instance_uid=series_uid,
                        sop_class_uid=_uid(item.get("ReferencedSOPClassUID"), "Referenced SOP Class UID"),
                        sop_instance_uid=_uid(
                            item.get("ReferencedSOPInstanceUID"), "Referenced SOP Instance UID"
                        ),
                    )
                )
    return listed


def _study_uid(ds: Dataset) -> str:
    items = ds.get("ScheduledStepAttributesSequence") or []
    if not items:
        raise StepError(MISSING_ATTRIBUTE, "Scheduled Step Attributes Sequence is missing")
    return _uid(items[0].get("StudyInstanceUID"), "Scheduled Step Attributes Sequence > Study Instance UID")


@dataclass
class MppsService:
    """Keeps the steps a modality reports; pokes the assembler when one ends."""

    database: Database
    on_evidence: Evidence | None = None

    def handle_n_create(self, event: evt.Event) -> tuple[int | Dataset, Dataset | None]:
        calling = event.assoc.requestor.ae_title.strip()
        try:
            return self._create(event, calling)
        except StepError as error:
            uid = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
            LOG.warning("refused MPPS N-CREATE %s from %s: 0x%04X %s", uid, calling, error.status, error)
            return status_dataset(error.status, str(error)), None

    def _create(self, event: evt.Event, calling: str) -> tuple[int | Dataset, Dataset | None]:
        uid = _uid(getattr(event.request, "AffectedSOPInstanceUID", None), "Affected SOP Instance UID")
        ds = event.attribute_list
        state = _state(ds)
        if state != MppsState.IN_PROGRESS:
            raise StepError(
                INVALID_ATTRIBUTE_VALUE, "N-CREATE needs Performed Procedure Step Status IN PROGRESS"
            )
        study_uid = _study_uid(ds)
        listed = performed_instances(ds) or []
        now = utcnow()
        with self.database.session() as session:
            if session.scalar(
                select(PerformedProcedureStep.id).where(PerformedProcedureStep.sop_instance_uid == uid)
            ):
                raise StepError(DUPLICATE_SOP_INSTANCE, "an MPPS with this SOP Instance UID exists already")
            step = PerformedProcedureStep(
                sop_instance_uid=uid,
                state=state,
                study_instance_uid=study_uid,
                calling_ae_title=calling,
                created_at=now,
                updated_at=now,
            )
            step.instances.extend(listed)
            session.add(step)
        LOG.info(
            "MPPS %s created by %s for study %s",
            uid,
            calling,
            study_uid,
            extra={"mpps_uid": uid, "calling_ae": calling, "study_instance_uid": study_uid},
        )
        return SUCCESS, ds

    def handle_n_set(self, event: evt.Event) -> tuple[int | Dataset, Dataset | None]:
        calling = event.assoc.requestor.ae_title.strip()
        try:
            return self._set(event, calling)
        except StepError as error:
            uid = str(getattr(event.request, "RequestedSOPInstanceUID", "") or "")
            LOG.warning("refused MPPS N-SET %s from %s: 0x%04X %s", uid, calling, error.status, error)
            return status_dataset(error.status, str(error)), None

    def _set(self, event: evt.Event, calling: str) -> tuple[int | Dataset, Dataset | None]:
        uid = _uid(getattr(event.request, "RequestedSOPInstanceUID", None), "Requested SOP Instance UID")
        ds = event.modification_list
        state = _state(ds)
        listed = performed_instances(ds)
        now = utcnow()
        with self.database.session() as session:
            step = session.scalar(
                select(PerformedProcedureStep).where(PerformedProcedureStep.sop_instance_uid == uid)
            )
            if step is None:
                raise StepError(NO_SUCH_OBJECT_INSTANCE, "no MPPS with this SOP Instance UID")
            if step.state != MppsState.IN_PROGRESS:
                raise StepError(PROCESSING_FAILURE, f"the MPPS is {step.state} and may no longer be updated")
            if listed is not None:
                step.instances.clear()
                session.flush()
                step.instances.extend(listed)
            if state == MppsState.COMPLETED and not step.instances:
                raise StepError(MISSING_ATTRIBUTE, "COMPLETED needs Performed Series Sequence instances")
            if state is not None:
                step.state = state
            step.updated_at = now
            if state in (MppsState.COMPLETED, MppsState.DISCONTINUED):
                step.ended_at = now
            final, count = step.state, len(step.instances)
        LOG.info(
            "MPPS %s set to %s by %s (%d instances listed)",
            uid,
            final,
            calling,
            count,
            extra={"mpps_uid": uid, "calling_ae": calling, "state": final},
        )
        if final == MppsState.COMPLETED and self.on_evidence is not None:
            self.on_evidence(0.0)
        return SUCCESS, ds
