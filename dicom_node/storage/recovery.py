"""Start-up repair after a crash (``kill -9``, power loss) between the steps of a store.

The crash windows of ``Ingest`` and how each is closed are listed in docs/ingest.md. What this finds:

* an intent record of a replacement whose process died (``.tmp/*.intent``): if the index row holds the
  new content the replacement committed; otherwise it is rolled back from the kept copy under
  ``.superseded`` (the new content was never acknowledged, and the sender will send it again);
* temporary files of this host's processes that are no longer running (removed; another host's, or a
  running process's, are left alone: several nodes and workers may share one store);
* a file renamed into place whose row never committed: indexed from the file itself (it is complete
  and fsynced, only its acknowledgement was lost, and the sender's re-send will be a duplicate);
* a row whose file is missing: restored from ``.superseded`` when its content (or an earlier version)
  is kept there; only a row whose data is nowhere in the store is removed, with a warning;
* audit rows still 'active' (closed as aborted).

``check_store_present`` runs before any of this: a store root that is missing or empty while the index
holds instances is a file system that is not mounted, not a store that lost everything, and the node
refuses to start rather than unindex every instance.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pydicom
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicom_node.errors import IngestError, StoreMissingError
from dicom_node.index.audit import AuditTrail
from dicom_node.index.database import Database
from dicom_node.index.models import Instance, Result, Series, Study
from dicom_node.storage.attributes import describe_instance
from dicom_node.storage.ingest import Ingest
from dicom_node.storage.part10 import dataset_sha256
from dicom_node.storage.store import SUPERSEDED_DIR, InstanceStore, StoredFile

LOG = logging.getLogger(__name__)
QUARANTINE_DIR = ".quarantine"


@dataclass(frozen=True)
class RecoveryReport:
    temporary_files_removed: int
    orphan_files_indexed: int
    orphan_files_quarantined: int
    missing_files_unindexed: int
    stale_associations_closed: int
    replacements_rolled_back: int = 0
    files_restored: int = 0


def check_store_present(root: Path, database: Database) -> None:
    """Raise ``StoreMissingError`` if the index holds instances and ``root`` is missing or empty."""
    with database.sessions() as session:
        count = session.scalar(select(func.count(Instance.id))) or 0
    if not count:
        return
    if not root.is_dir():
        problem = "does not exist"
    elif not any(not entry.name.startswith(".") for entry in root.iterdir()):
        problem = "is empty"
    else:
        return
    raise StoreMissingError(
        f"the index holds {count} instances but the store root {root} {problem}: is its file system "
        "mounted? Not starting, so that no index row is removed; mount the store (or point data_dir "
        "at it) and start again"
    )


def _roll_back_replacements(ingest: Ingest) -> int:
    store, database = ingest.store, ingest.database
    rolled_back = 0
    for path, intent in store.dead_intents():
        with database.sessions() as session:
            row = session.scalar(select(Instance).where(Instance.sop_instance_uid == intent.sop_instance_uid))
        kept = store.root / intent.kept
        if row is not None and row.sha256 == intent.new_sha256 and row.path == intent.new_path:
            if intent.old_path != intent.new_path:  # committed; the old path's file is kept already
                store.path(intent.old_path).unlink(missing_ok=True)
        else:
            if intent.new_path != intent.old_path:
                store.path(intent.new_path).unlink(missing_ok=True)
            if kept.exists():
                store.restore(kept, intent.old_path)
            rolled_back += 1
            LOG.warning("recovery: rolled back an unacknowledged replacement of %s", intent.sop_instance_uid)
        store.drop_intent(path)
    return rolled_back


def _index_orphan(ingest: Ingest, relative: str) -> None:
    store = ingest.store
    path = store.path(relative)
    ds = pydicom.dcmread(path, stop_before_pixels=True, defer_size=4096)
    received = describe_instance(ds, transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID))
    expected = store.relative_path(
        received.study_instance_uid, received.series_instance_uid, received.sop_instance_uid
    )
    if expected != relative:
        raise IngestError(f"its UIDs belong at {expected}")
    written = StoredFile(relative_path=relative, size=path.stat().st_size, sha256=dataset_sha256(path))
    ingest.index_in_place(received, relative, written)


def _kept_copy(store: InstanceStore, instance: Instance) -> Path | None:
    """The kept copy of ``instance``'s own content, else its newest earlier version, else None."""
    exact = store.kept_path(instance.path, instance.sha256)
    if exact.is_file():
        return exact
    folder = (store.root / SUPERSEDED_DIR / instance.path).parent
    name = Path(instance.path).name
    if not folder.is_dir():
        return None
    versions = [p for p in folder.glob(f"{name}.*") if p.is_file()]
    return max(versions, key=lambda p: p.stat().st_mtime) if versions else None


def _repair_missing(ingest: Ingest, on_disk: set[str]) -> tuple[int, int]:
    store = ingest.store
    restored = missing = 0
    with ingest.database.session() as session:
        for instance in session.scalars(select(Instance)).all():
            if instance.path in on_disk or store.path(instance.path).exists():
                continue
            kept = _kept_copy(store, instance)
            if kept is not None:
                store.restore(kept, instance.path)
                restored_path = store.path(instance.path)
                sha256 = dataset_sha256(restored_path)
                if sha256 != instance.sha256:
                    LOG.warning(
                        "recovery: %s restored from %s (an earlier version: its own content is gone)",
                        instance.sop_instance_uid,
                        kept.name,
                    )
                    size = restored_path.stat().st_size
                    _adjust_counts(session, instance, size - instance.size)
                    instance.sha256, instance.size = sha256, size
                restored += 1
                continue
            LOG.warning("recovery: %s is indexed but its file is nowhere in the store", instance.path)
            _adjust_counts(session, instance, -instance.size, removed=True)
            session.delete(instance)
            missing += 1
    return restored, missing


def _adjust_counts(session: Session, instance: Instance, delta: int, *, removed: bool = False) -> None:
    series = session.get(Series, instance.series_id)
    if series is None:
        return
    series.num_instances -= 1 if removed else 0
    series.num_frames -= (instance.number_of_frames or 1) if removed else 0
    series.total_bytes += delta
    # The node's own results never counted in their study (storage/ingest.py, produced_here).
    own = session.scalar(
        select(Result.id).where(Result.sop_instance_uid == instance.sop_instance_uid).limit(1)
    )
    study = None if own is not None else session.get(Study, series.study_id)
    if study is not None:
        study.num_instances -= 1 if removed else 0
        study.total_bytes += delta


def recover(ingest: Ingest, audit: AuditTrail) -> RecoveryReport:
    """Make the store and the index agree again; safe to run at every start."""
    store, database = ingest.store, ingest.database
    rolled_back = _roll_back_replacements(ingest)
    removed = store.clean_temporary()
    with database.sessions() as session:
        indexed = set(session.scalars(select(Instance.path)).all())
    on_disk = set(store.iter_instance_files())
    orphans_indexed = quarantined = 0
    for relative in sorted(on_disk - indexed):
        try:
            _index_orphan(ingest, relative)
            orphans_indexed += 1
        except (IngestError, OSError, ValueError, pydicom.errors.InvalidDicomError) as error:
            target = store.root / QUARANTINE_DIR / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            store.path(relative).replace(target)
            quarantined += 1
            LOG.error("moved unreadable file %s to quarantine: %s", relative, error, extra={"path": relative})
    restored, missing = _repair_missing(ingest, on_disk)
    stale = audit.close_stale()
    report = RecoveryReport(
        temporary_files_removed=removed,
        orphan_files_indexed=orphans_indexed,
        orphan_files_quarantined=quarantined,
        missing_files_unindexed=missing,
        stale_associations_closed=stale,
        replacements_rolled_back=rolled_back,
        files_restored=restored,
    )
    if any(vars(report).values()):
        LOG.warning("recovery: %s", report)
    return report
