"""Keeping one received instance: validate its identifiers, write it durably, index it.

``Ingest.store`` is what the C-STORE handler calls; it returns only after the file is fsynced and
renamed into place and its index row is committed ("ack means durable"). Re-sent instances:

* identical bytes (same sha256 of the encoded data set as received, whichever AE sent it: the file
  meta, which names the sender, is not part of the hash) → success, still one instance, no new version;
* different bytes under the same SOP Instance UID → the newer content wins (a modality or PACS that
  re-sends a corrected instance expects that), the earlier file is kept under ``.superseded/`` and the
  instance's ``version`` goes up, so nothing received is ever lost and the study re-opens as
  ``updated``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Row, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from dicom_node.errors import IndexUnavailableError
from dicom_node.index.database import Database
from dicom_node.index.leases import LeaseLostError
from dicom_node.index.models import (
    utcnow,
)
from dicom_node.ops.metrics import RECEIVED_INSTANCES
from dicom_node.storage.attributes import ReceivedInstance, describe_instance, orientation_of
from dicom_node.storage.indexing import StoreOutcome, index_instance
from dicom_node.storage.locks import ProcessLock
from dicom_node.storage.part10 import META_READ, dataset_offset, dataset_sha256
from dicom_node.storage.store import InstanceStore, Intent, StoredFile, storage_error

__all__ = [
    "Ingest",
    "ReceivedInstance",
    "StoreOutcome",
    "StoreResult",
    "describe_instance",
    "orientation_of",
]

LOG = logging.getLogger(__name__)


# Run for every received instance, as SQL text (see storage/indexing.py for why).
_SELECT_INSTANCE = text(
    "SELECT id, sha256, path, size, series_id, number_of_frames FROM instance WHERE sop_instance_uid = :uid"
)
_UPDATE_SHA256 = text("UPDATE instance SET sha256 = :sha256 WHERE id = :id")


@dataclass(frozen=True)
class StoreResult:
    outcome: StoreOutcome
    sop_instance_uid: str
    size: int


def _counted(result: StoreResult, received: ReceivedInstance) -> StoreResult:
    """Count an instance kept (its index commit has returned) in ``dicom_node_received_instances``."""
    source = "result" if received.produced_here else "received"  # the node's own objects, or not
    RECEIVED_INSTANCES.labels(outcome=result.outcome.value, source=source).inc()
    return result


class Ingest:
    """Everything the C-STORE handler needs: the store, the index and one write lock per store."""

    def __init__(self, store: InstanceStore, database: Database) -> None:
        self.store = store
        self.database = database
        # Rename + commit happen under one lock so two associations that deliver the same SOP
        # Instance UID at once cannot interleave, in this process or another on the same store
        # (receiver processes, workers); the slow part (write + fsync) runs outside it. Whichever
        # commits second wins (docs/ingest.md, "Re-sent instances"). The flock adds about 1.4 µs per
        # instance (2 cores, 2026-12-02).
        self._lock = ProcessLock(store.root / ".commit.lock")

    def store_encoded(
        self,
        received: ReceivedInstance,
        encoded: bytes | memoryview | Sequence[bytes | memoryview],
        *,
        calling_ae_title: str | None = None,
        association_id: int | None = None,
        guard: Callable[[Connection], bool] | None = None,
    ) -> StoreResult:
        """Write ``encoded`` and index it: a complete DICOM file, or its parts in order with the data
        set as the last part (the parts before it are the preamble and file meta).

        ``guard`` (the node's own results: ``LeaseHeartbeat.guard``) runs first in the transaction that
        renames the file into place and indexes it; when it returns ``False`` nothing is published and
        ``LeaseLostError`` is raised (the temporary file is discarded).
        """
        if isinstance(encoded, bytes | bytearray | memoryview):
            parts = [encoded]
            offset = dataset_offset(memoryview(encoded)[:META_READ])
        else:
            parts = list(encoded)
            offset = sum(len(part) for part in parts[:-1])
        tmp_path, written = self.store.write_temporary(parts, dataset_offset=offset)
        return self.store_file(
            received,
            tmp_path,
            written,
            calling_ae_title=calling_ae_title,
            association_id=association_id,
            guard=guard,
        )

    def store_file(
        self,
        received: ReceivedInstance,
        tmp_path: Path,
        written: StoredFile,
        *,
        calling_ae_title: str | None = None,
        association_id: int | None = None,
        guard: Callable[[Connection], bool] | None = None,
    ) -> StoreResult:
        """Commit a complete, fsynced temporary file and index it; the file is the caller's no more."""
        try:
            relative = self.store.relative_path(
                received.study_instance_uid, received.series_instance_uid, received.sop_instance_uid
            )
            return self._commit_locked(
                received, relative, tmp_path, written, calling_ae_title, association_id, guard
            )
        finally:
            self.store.discard(tmp_path)

    def index_in_place(self, received: ReceivedInstance, relative: str, written: StoredFile) -> StoreResult:
        """Index a complete file that already lies at ``relative`` (recovery of a lost commit)."""
        return self._commit_locked(received, relative, None, written, None, None)

    def _commit_locked(
        self,
        received: ReceivedInstance,
        relative: str,
        tmp_path: Path | None,
        written: StoredFile,
        calling_ae_title: str | None,
        association_id: int | None,
        guard: Callable[[Connection], bool] | None = None,
    ) -> StoreResult:
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
                        raise IndexUnavailableError("index conflict: retried 3 times") from None
                except DBAPIError as error:  # SQLite locked past its timeout, PostgreSQL away, ...
                    raise IndexUnavailableError(f"index unavailable: {error.orig}") from error
                except OSError as error:
                    raise storage_error(error, "commit") from error
            raise AssertionError("unreachable")

    def _same_content(self, conn: Connection, existing: Row[Any], written: StoredFile) -> bool:
        """Is the stored file's data set the one just written? Compares the data set, never the meta.

        Rows written before hashes covered only the data set hold the sha256 of the whole file; for
        those (and for real changes) the stored file's data set is hashed once, and an identical one
        gets its row's hash brought up to date.
        """
        if existing.sha256 == written.sha256:
            return True
        if dataset_sha256(self.store.path(existing.path)) != written.sha256:
            return False
        conn.execute(_UPDATE_SHA256, {"sha256": written.sha256, "id": existing.id})
        conn.commit()
        return True

    def _commit(
        self,
        received: ReceivedInstance,
        relative: str,
        tmp_path: Path | None,
        written: StoredFile,
        calling_ae_title: str | None,
        association_id: int | None,
        guard: Callable[[Connection], bool] | None = None,
    ) -> StoreResult:
        # SQLAlchemy Core rather than the ORM here: this runs once per received instance, under the
        # write lock, and five plain statements cost a fraction of the ORM's unit of work.
        # The ingest engine's SQLite commits are synchronous=NORMAL: the file is durable before the
        # commit and recovery indexes a file whose row a power loss took (Database.ingest_engine).
        now = utcnow()
        final = self.store.path(relative)
        with self.database.ingest_engine.connect() as conn:
            if guard is not None and not guard(conn):
                conn.rollback()
                raise LeaseLostError(f"not publishing {received.sop_instance_uid}: the claim was lost")
            existing = conn.execute(_SELECT_INSTANCE, {"uid": received.sop_instance_uid}).first()
            on_disk = existing is not None and self.store.path(existing.path).exists()
            if on_disk and existing is not None and self._same_content(conn, existing, written):
                return StoreResult(StoreOutcome.DUPLICATE, received.sop_instance_uid, written.size)
            # A replacement: first an intent record, then the current file linked under .superseded,
            # then the new file renamed over it, then the commit. A crash anywhere in between is
            # rolled back by recovery from the intent (storage/recovery.py).
            intent: Path | None = None
            kept: Path | None = None
            durable = on_disk and self.database.is_sqlite
            try:
                if durable:
                    # A replacement's commit must be on disk before its intent record goes: recovery
                    # reads the intent, not the file, to tell a committed replacement from one to undo.
                    conn.exec_driver_sql("PRAGMA synchronous=FULL")
                if on_disk and existing is not None:
                    kept = self.store.kept_path(existing.path, existing.sha256)
                    intent = self.store.write_intent(
                        Intent(
                            sop_instance_uid=received.sop_instance_uid,
                            old_path=existing.path,
                            old_sha256=existing.sha256,
                            new_path=relative,
                            new_sha256=written.sha256,
                            kept=str(kept.relative_to(self.store.root)),
                        )
                    )
                    self.store.keep_copy(existing.path, existing.sha256)
                if tmp_path is not None:
                    self.store.commit(tmp_path, relative)
                outcome = index_instance(
                    conn, received, relative, written, existing, now, calling_ae_title, association_id
                )
                conn.commit()
            except BaseException:
                with contextlib.suppress(Exception):  # a connection that died cannot roll back
                    conn.rollback()
                self._undo(tmp_path, final, existing.path if existing is not None else None, kept)
                if intent is not None:
                    self.store.drop_intent(intent)
                raise
            finally:
                if durable:
                    with contextlib.suppress(Exception):
                        conn.exec_driver_sql("PRAGMA synchronous=NORMAL")
            if existing is not None and kept is not None and existing.path != relative:
                self.store.path(existing.path).unlink(missing_ok=True)  # kept under .superseded
            if intent is not None:
                self.store.drop_intent(intent)
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

    def _undo(self, tmp_path: Path | None, final: Path, old_path: str | None, kept: Path | None) -> None:
        """Put the files back as they were before a commit that failed (its row was rolled back).

        The new file goes back to its temporary name (so a retry can commit it again; otherwise it is
        discarded), and a replaced file comes back from its kept link.
        """
        if tmp_path is None:
            return  # indexing a file in place moved nothing
        if not tmp_path.exists() and final.exists():  # the rename happened
            final.replace(tmp_path)
        if kept is not None and old_path is not None and kept.exists():
            self.store.restore(kept, old_path)
