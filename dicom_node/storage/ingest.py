"""Keeping one received instance: validate its identifiers, write it durably, index it.

``Ingest.store`` is what the C-STORE handler calls; it returns only after the file is fsynced and
renamed into place and its index row is committed ("ack means durable"). Re-sent instances:

* identical bytes (same sha256 of the encoded data set as received) → success, still one instance;
* different bytes under the same SOP Instance UID → the newer content wins (a modality or PACS that
  re-sends a corrected instance expects that), the earlier file is kept under ``.superseded/`` and the
  instance's ``version`` goes up, so nothing received is ever lost and the study re-opens as
  ``updated``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from sqlalchemy import Connection, Row, bindparam, insert, text, update
from sqlalchemy.exc import IntegrityError

from dicom_node.errors import InvalidIdentifierError, UnreadableDatasetError
from dicom_node.index.database import Database
from dicom_node.index.leases import LeaseLostError
from dicom_node.index.models import (
    Instance,
    Series,
    SeriesState,
    Study,
    StudyState,
    UtcDateTime,
    utcnow,
)
from dicom_node.ops.metrics import RECEIVED_INSTANCES
from dicom_node.storage.store import InstanceStore, StoredFile, validate_uid

LOG = logging.getLogger(__name__)


# The statements run for every received instance, written once as SQL text with typed parameters:
# building and cache-keying the equivalent expression objects cost more than executing them.
_TIME = UtcDateTime()
_SELECT_INSTANCE = text(
    "SELECT id, sha256, path, size, series_id FROM instance WHERE sop_instance_uid = :uid"
)
_SELECT_STUDY = text("SELECT id, modalities FROM study WHERE study_instance_uid = :uid")
_SELECT_SERIES = text("SELECT id, study_id FROM series WHERE series_instance_uid = :uid")
_INSERT_INSTANCE = text(
    "INSERT INTO instance (series_id, sop_instance_uid, sop_class_uid, transfer_syntax_uid,"
    " instance_number, path, size, sha256, version, calling_ae_title, association_id, received_at)"
    " VALUES (:series_id, :sop_instance_uid, :sop_class_uid, :transfer_syntax_uid, :instance_number,"
    " :path, :size, :sha256, 1, :calling_ae_title, :association_id, :received_at)"
).bindparams(bindparam("received_at", type_=_TIME))
_UPDATE_SERIES = text(
    "UPDATE series SET num_instances = num_instances + :added, total_bytes = total_bytes + :delta,"
    " last_received_at = :now, state = :receiving, stable_at = NULL WHERE id = :id"
).bindparams(bindparam("now", type_=_TIME))
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


class InstanceSource(StrEnum):
    """Where a stored instance came from: received over DICOM (or recovered), or a result we wrote."""

    RECEIVED = "received"
    RESULT = "result"


def _raw_value(ds: Dataset, keyword: str) -> str | None:
    """A text value exactly as received, without pydicom's conversion.

    Conversion validates (and warns about) every value and dominates the handler's time; the index only
    needs the text. Non-ASCII bytes fall back to pydicom, which decodes them with the data set's
    Specific Character Set. Multiple values stay joined by backslashes, as encoded.
    """
    tag = tag_for_keyword(keyword)
    if tag is None or tag not in ds:
        return None
    element = ds.get_item(tag)
    value = element.value if element is not None else None
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            return value.decode("ascii").rstrip("\x00 ")
        except UnicodeDecodeError:
            value = ds.get(keyword)
    if isinstance(value, list | tuple) or (hasattr(value, "__iter__") and not isinstance(value, str)):
        return "\\".join(str(v) for v in value)
    return str(value).rstrip("\x00 ")


def _raw_uid(ds: Dataset, keyword: str) -> str | None:
    """A UI value as received: validation is ``validate_uid``'s job, not a warnings filter's."""
    return _raw_value(ds, keyword)


def _text(ds: Dataset, keyword: str, limit: int = 64) -> str | None:
    text = _raw_value(ds, keyword)
    return text[:limit].strip() or None if text else None


def _numbers(ds: Dataset, keyword: str) -> list[float] | None:
    text = _raw_value(ds, keyword)
    if not text:
        return None
    try:
        return [float(part) for part in text.split("\\")]
    except ValueError:
        return None


def _integer(ds: Dataset, keyword: str) -> int | None:
    value = _number(ds, keyword)
    return int(value) if value is not None else None


def _number(ds: Dataset, keyword: str) -> float | None:
    values = _numbers(ds, keyword)
    return values[0] if values else None


def orientation_of(ds: Dataset) -> str | None:
    """axial / coronal / sagittal / oblique from Image Orientation (Patient), if present."""
    iop = _numbers(ds, "ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return None
    r, c = iop[:3], iop[3:]
    normal = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
    axis = max(range(3), key=lambda i: abs(normal[i]))
    if abs(normal[axis]) < 0.8:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


@dataclass(frozen=True)
class ReceivedInstance:
    """The identifiers and indexable attributes of one received data set.

    ``produced_here`` marks the node's own result objects: they are stored and indexed like any
    instance, but change none of their study's received facts (calling AE, modalities, counts, state).
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    instance_number: int | None
    study: dict[str, Any]
    series: dict[str, Any]
    produced_here: bool = False


def describe_instance(
    ds: Dataset,
    *,
    transfer_syntax_uid: str,
    requested_sop_class_uid: str | None = None,
    requested_sop_instance_uid: str | None = None,
) -> ReceivedInstance:
    """Validate the identifiers of ``ds`` and pick the attributes the index keeps.

    Raises ``InvalidIdentifierError`` naming the attribute, or ``UnreadableDatasetError`` when the
    data set cannot be parsed (a truncated or corrupt stream).
    """
    try:
        study_uid = validate_uid(_raw_uid(ds, "StudyInstanceUID"), "Study Instance UID (0020,000D)")
        series_uid = validate_uid(_raw_uid(ds, "SeriesInstanceUID"), "Series Instance UID (0020,000E)")
        sop_uid = validate_uid(_raw_uid(ds, "SOPInstanceUID"), "SOP Instance UID (0008,0018)")
        sop_class = validate_uid(_raw_uid(ds, "SOPClassUID"), "SOP Class UID (0008,0016)")
        if requested_sop_instance_uid and requested_sop_instance_uid.rstrip("\x00 ") != sop_uid:
            raise InvalidIdentifierError(
                "SOP Instance UID (0008,0018) in the data set differs from Affected SOP Instance UID"
            )
        if requested_sop_class_uid and requested_sop_class_uid.rstrip("\x00 ") != sop_class:
            raise InvalidIdentifierError(
                "SOP Class UID (0008,0016) in the data set differs from Affected SOP Class UID"
            )
        instance_number = _integer(ds, "InstanceNumber")
        series_number = _integer(ds, "SeriesNumber")
        study = {
            "patient_id": _text(ds, "PatientID"),
            "accession_number": _text(ds, "AccessionNumber"),
            "study_date": _text(ds, "StudyDate", 8),
            "study_time": _text(ds, "StudyTime", 16),
            "study_description": _text(ds, "StudyDescription"),
        }
        series = {
            "modality": _text(ds, "Modality", 16),
            "body_part_examined": _text(ds, "BodyPartExamined"),
            "series_description": _text(ds, "SeriesDescription"),
            "series_number": series_number,
            "series_date": _text(ds, "SeriesDate", 8),
            "protocol_name": _text(ds, "ProtocolName"),
            "image_type": _text(ds, "ImageType", 128),
            "orientation": orientation_of(ds),
            "view_position": _text(ds, "ViewPosition", 16),
            "slice_thickness": _number(ds, "SliceThickness"),
            "kvp": _number(ds, "KVP"),
            "manufacturer": _text(ds, "Manufacturer"),
            "frame_of_reference_uid": _text(ds, "FrameOfReferenceUID"),
        }
    except InvalidIdentifierError:
        raise
    except Exception as error:  # pydicom raises many types on corrupt input
        raise UnreadableDatasetError(f"the data set cannot be decoded: {error}") from error
    return ReceivedInstance(
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
        sop_class_uid=sop_class,
        transfer_syntax_uid=transfer_syntax_uid,
        instance_number=instance_number,
        study=study,
        series=series,
    )


@dataclass(frozen=True)
class StoreResult:
    outcome: StoreOutcome
    sop_instance_uid: str
    size: int


def _counted(result: StoreResult, received: ReceivedInstance) -> StoreResult:
    """Count an instance kept (its index commit has returned) in ``dicom_node_received_instances``."""
    source = InstanceSource.RESULT if received.produced_here else InstanceSource.RECEIVED
    RECEIVED_INSTANCES.labels(outcome=result.outcome.value, source=source.value).inc()
    return result


class Ingest:
    """Everything the C-STORE handler needs: the store, the index and one write lock per process."""

    def __init__(self, store: InstanceStore, database: Database) -> None:
        self.store = store
        self.database = database
        # Rename + commit happen under one lock so two associations that deliver the same SOP
        # Instance UID at once cannot interleave; the slow part (write + fsync) runs outside it.
        self._lock = threading.Lock()

    def store_encoded(
        self,
        received: ReceivedInstance,
        encoded: bytes | memoryview | Sequence[bytes | memoryview],
        *,
        calling_ae_title: str | None = None,
        association_id: int | None = None,
        guard: Callable[[Connection], bool] | None = None,
    ) -> StoreResult:
        """Write ``encoded`` (a complete DICOM file, or its parts in order) and index it.

        ``guard`` (the node's own results: ``LeaseHeartbeat.guard``) runs first in the transaction that
        renames the file into place and indexes it; when it returns ``False`` nothing is published and
        ``LeaseLostError`` is raised (the temporary file is discarded).
        """
        relative = self.store.relative_path(
            received.study_instance_uid, received.series_instance_uid, received.sop_instance_uid
        )
        parts = [encoded] if isinstance(encoded, bytes | bytearray | memoryview) else list(encoded)
        tmp_path, written = self.store.write_temporary(parts)
        try:
            with self._lock:
                for attempt in range(3):
                    try:
                        return _counted(
                            self._commit(
                                received, relative, tmp_path, written, calling_ae_title, association_id, guard
                            ),
                            received,
                        )
                    except IntegrityError:
                        # Another process inserted the same study/series/instance first; retry.
                        if attempt == 2:
                            raise
                raise AssertionError("unreachable")
        finally:
            self.store.discard(tmp_path)

    def _commit(
        self,
        received: ReceivedInstance,
        relative: str,
        tmp_path: Path,
        written: StoredFile,
        calling_ae_title: str | None,
        association_id: int | None,
        guard: Callable[[Connection], bool] | None = None,
    ) -> StoreResult:
        # SQLAlchemy Core rather than the ORM here: this runs once per received instance, under the
        # write lock, and five plain statements cost a fraction of the ORM's unit of work.
        now = utcnow()
        with self.database.engine.connect() as conn:
            if guard is not None and not guard(conn):
                conn.rollback()
                raise LeaseLostError(f"not publishing {received.sop_instance_uid}: the claim was lost")
            existing = conn.execute(_SELECT_INSTANCE, {"uid": received.sop_instance_uid}).first()
            on_disk = existing is not None and self.store.path(existing.path).exists()
            if on_disk and existing is not None and existing.sha256 == written.sha256:
                return StoreResult(StoreOutcome.DUPLICATE, received.sop_instance_uid, written.size)
            superseded: Path | None = None
            if on_disk and existing is not None:
                superseded = self.store.supersede(existing.path, existing.sha256)
            final = self.store.commit(tmp_path, relative)
            try:
                outcome = self._index(
                    conn, received, relative, written, existing, now, calling_ae_title, association_id
                )
                conn.commit()
            except BaseException:
                conn.rollback()
                if superseded is not None and existing is not None:
                    superseded.replace(self.store.path(existing.path))
                elif existing is None:
                    final.unlink(missing_ok=True)
                raise
        level = logging.WARNING if outcome is StoreOutcome.REPLACED else logging.DEBUG
        LOG.log(
            level,
            "%s SOP Instance %s of study %s",
            outcome,
            received.sop_instance_uid,
            received.study_instance_uid,
            extra={
                "outcome": outcome.value,
                "sop_instance_uid": received.sop_instance_uid,
                "series_instance_uid": received.series_instance_uid,
                "study_instance_uid": received.study_instance_uid,
                "calling_ae": calling_ae_title,
                "association_id": association_id,
            },
        )
        return StoreResult(outcome, received.sop_instance_uid, written.size)

    def _index(
        self,
        conn: Connection,
        received: ReceivedInstance,
        relative: str,
        written: StoredFile,
        existing: Row[int, str, str, int, int] | None,
        now: datetime,
        calling_ae_title: str | None,
        association_id: int | None,
    ) -> StoreOutcome:
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
                    "total_bytes": 0,
                    "state": SeriesState.RECEIVING,
                },
            ).scalar_one()
        else:
            series_id, owner = series_row
            if owner != study_id:
                raise InvalidIdentifierError(
                    "Series Instance UID (0020,000E) already belongs to another study"
                )

        if existing is None:
            conn.execute(
                _INSERT_INSTANCE,
                {
                    "series_id": series_id,
                    "sop_instance_uid": received.sop_instance_uid,
                    "sop_class_uid": received.sop_class_uid,
                    "transfer_syntax_uid": received.transfer_syntax_uid,
                    "instance_number": received.instance_number,
                    "path": relative,
                    "size": written.size,
                    "sha256": written.sha256,
                    "calling_ae_title": calling_ae_title,
                    "association_id": association_id,
                    "received_at": now,
                },
            )
            outcome, added, delta = StoreOutcome.STORED, 1, written.size
        else:
            outcome = StoreOutcome.DUPLICATE if existing.sha256 == written.sha256 else StoreOutcome.REPLACED
            added, delta = 0, written.size - existing.size
            conn.execute(
                update(Instance)
                .where(Instance.id == existing.id)
                .values(
                    sha256=written.sha256,
                    size=written.size,
                    path=relative,
                    transfer_syntax_uid=received.transfer_syntax_uid,
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
                "now": now,
                "receiving": SeriesState.RECEIVING.value,
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
