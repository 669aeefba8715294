"""The index rows of one kept instance: instance, series and study, in the caller's transaction.

Run by ``Ingest`` under its write lock, once per received instance. The statements are SQL text with
typed parameters, written once: building and cache-keying the equivalent expression objects cost more
than executing them. The node's own results (``produced_here``) change no received fact of their study.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Connection, Float, Row, bindparam, insert, text, update

from dicom_node.errors import InvalidIdentifierError
from dicom_node.index.models import Instance, Series, SeriesState, Study, StudyState, UtcDateTime
from dicom_node.storage.attributes import ReceivedInstance
from dicom_node.storage.store import StoredFile

_TIME = UtcDateTime()
_INSERT_INSTANCE = text(
    "INSERT INTO instance (series_id, sop_instance_uid, sop_class_uid, transfer_syntax_uid,"
    " instance_number, number_of_frames, path, size, sha256, version, calling_ae_title, association_id,"
    " received_at) VALUES (:series_id, :sop_instance_uid, :sop_class_uid, :transfer_syntax_uid,"
    " :instance_number, :number_of_frames, :path, :size, :sha256, 1, :calling_ae_title, :association_id,"
    " :received_at)"
).bindparams(bindparam("received_at", type_=_TIME))
_SELECT_STUDY = text("SELECT id, modalities FROM study WHERE study_instance_uid = :uid")
_SELECT_SERIES = text("SELECT id, study_id FROM series WHERE series_instance_uid = :uid")
# The slice positions widen the series' range (its extent_mm); a CASE, portable to SQLite and PostgreSQL.
_UPDATE_SERIES = text(
    "UPDATE series SET num_instances = num_instances + :added, total_bytes = total_bytes + :delta,"
    " num_frames = num_frames + :frames, last_received_at = :now, state = :receiving, stable_at = NULL,"
    " slice_position_min = CASE WHEN slice_position_min IS NULL OR :low < slice_position_min"
    " THEN :low ELSE slice_position_min END,"
    " slice_position_max = CASE WHEN slice_position_max IS NULL OR :high > slice_position_max"
    " THEN :high ELSE slice_position_max END"
    " WHERE id = :id"
).bindparams(bindparam("now", type_=_TIME), bindparam("low", type_=Float()), bindparam("high", type_=Float()))
# A late instance re-opens a complete study; assembly closes it again as a new revision.
_UPDATE_STUDY = text(
    "UPDATE study SET num_instances = num_instances + :added, total_bytes = total_bytes + :delta,"
    " num_series = num_series + :new_series, last_received_at = :now,"
    " state = CASE WHEN state = :complete THEN :updated ELSE state END,"
    " calling_ae_title = COALESCE(:calling, calling_ae_title), modalities = COALESCE(:modalities, modalities)"
    " WHERE id = :id"
).bindparams(bindparam("now", type_=_TIME))


class StoreOutcome(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    REPLACED = "replaced"


def index_instance(
    conn: Connection,
    received: ReceivedInstance,
    relative: str,
    written: StoredFile,
    existing: Row[int, str, str, int, int, int | None] | None,
    now: datetime,
    calling_ae_title: str | None,
    association_id: int | None,
) -> StoreOutcome:
    """Insert or update the instance row, and its series and study rows, in ``conn``'s transaction."""
    study_row = conn.execute(_SELECT_STUDY, {"uid": received.study_instance_uid}).first()
    if study_row is None:
        study_id = conn.execute(
            insert(Study).returning(Study.id),
            {
                **{k: v for k, v in received.study.items()},
                "study_instance_uid": received.study_instance_uid,
                "first_received_at": now,
                "last_received_at": now,
                "num_series": 0,
                "num_instances": 0,
                "total_bytes": 0,
                "revision": 0,
                "state": StudyState.RECEIVING,
                "modalities": "",
                "calling_ae_title": None if received.produced_here else calling_ae_title,
            },
        ).scalar_one()
        modalities_text = ""
    else:
        study_id, modalities_text = study_row
    series_row = conn.execute(_SELECT_SERIES, {"uid": received.series_instance_uid}).first()
    new_series = series_row is None
    if series_row is None:
        series_id = conn.execute(
            insert(Series).returning(Series.id),
            {
                **received.series,
                "series_instance_uid": received.series_instance_uid,
                "study_id": study_id,
                "first_received_at": now,
                "last_received_at": now,
                "num_instances": 0,
                "num_frames": 0,
                "total_bytes": 0,
                "state": SeriesState.RECEIVING,
            },
        ).scalar_one()
    else:
        series_id, owner = series_row
        if owner != study_id:
            raise InvalidIdentifierError("Series Instance UID (0020,000E) already belongs to another study")

    if existing is None:
        conn.execute(
            _INSERT_INSTANCE,
            {
                "series_id": series_id,
                "sop_instance_uid": received.sop_instance_uid,
                "sop_class_uid": received.sop_class_uid,
                "transfer_syntax_uid": received.transfer_syntax_uid,
                "instance_number": received.instance_number,
                "number_of_frames": received.number_of_frames,
                "path": relative,
                "size": written.size,
                "sha256": written.sha256,
                "calling_ae_title": calling_ae_title,
                "association_id": association_id,
                "received_at": now,
            },
        )
        outcome, added, delta = StoreOutcome.STORED, 1, written.size
        frames = received.images
    else:
        outcome = StoreOutcome.DUPLICATE if existing.sha256 == written.sha256 else StoreOutcome.REPLACED
        added, delta = 0, written.size - existing.size
        frames = received.images - (existing.number_of_frames or 1)
        conn.execute(
            update(Instance)
            .where(Instance.id == existing.id)
            .values(
                sha256=written.sha256,
                size=written.size,
                path=relative,
                transfer_syntax_uid=received.transfer_syntax_uid,
                number_of_frames=received.number_of_frames,
                received_at=now,
                calling_ae_title=calling_ae_title,
                association_id=association_id,
                version=Instance.version + (1 if outcome is StoreOutcome.REPLACED else 0),
            )
        )
    conn.execute(
        _UPDATE_SERIES,
        {
            "added": added,
            "delta": delta,
            "frames": frames,
            "now": now,
            "receiving": SeriesState.RECEIVING.value,
            "low": received.slice_range[0] if received.slice_range else None,
            "high": received.slice_range[1] if received.slice_range else None,
            "id": series_id,
        },
    )
    if received.produced_here:
        # The node's own results: what routing and send-back-to-caller read about the study
        # (calling AE, modalities, counts, state, last arrival) stays what was received.
        return outcome
    modality = received.series.get("modality")
    modalities = set(filter(None, (modalities_text or "").split("\\")))
    conn.execute(
        _UPDATE_STUDY,
        {
            "added": added,
            "delta": delta,
            "new_series": 1 if new_series else 0,
            "now": now,
            "complete": StudyState.COMPLETE.value,
            "updated": StudyState.UPDATED.value,
            "calling": calling_ae_title or None,
            "modalities": "\\".join(sorted(modalities | {modality}))
            if modality and modality not in modalities
            else None,
            "id": study_id,
        },
    )
    return outcome
