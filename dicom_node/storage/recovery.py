"""Start-up repair after a crash (``kill -9``, power loss) between the steps of a store.

The edge writes a temporary file, fsyncs, renames, then commits the index row. A crash can leave:
a temporary file (removed here), a renamed file whose row never committed (indexed here from the file
itself: it is complete and fsynced, only its acknowledgement was lost, and the sender will re-send it
as a duplicate), or an audit row still 'active' (closed here as aborted). A row whose file is missing
cannot come from the edge's own order of operations; it means someone deleted files by hand, and the
row is removed with a warning so that the index never claims what the store does not hold.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pydicom
from sqlalchemy import select

from dicom_node.errors import IngestError
from dicom_node.index.audit import AuditTrail
from dicom_node.index.models import Instance, Series, Study
from dicom_node.storage.ingest import Ingest, describe_instance

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecoveryReport:
    temporary_files_removed: int
    orphan_files_indexed: int
    orphan_files_quarantined: int
    missing_files_unindexed: int
    stale_associations_closed: int


def recover(ingest: Ingest, audit: AuditTrail) -> RecoveryReport:
    """Make the store and the index agree again; safe to run at every start."""
    store, database = ingest.store, ingest.database
    removed = store.clean_temporary()
    with database.sessions() as session:
        indexed = set(session.scalars(select(Instance.path)).all())
    on_disk = set(store.iter_instance_files())
    orphans_indexed = quarantined = 0
    for relative in sorted(on_disk - indexed):
        path = store.path(relative)
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            received = describe_instance(ds, transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID))
            data = path.read_bytes()
            ingest.store_encoded(received, data)
            orphans_indexed += 1
        except (IngestError, OSError, pydicom.errors.InvalidDicomError) as error:
            target = store.root / ".quarantine" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            path.replace(target)
            quarantined += 1
            LOG.error("moved unreadable file %s to quarantine: %s", relative, error, extra={"path": relative})
    missing = 0
    with database.session() as session:
        for instance in session.scalars(select(Instance)).all():
            if instance.path in on_disk or store.path(instance.path).exists():
                continue
            series = session.get(Series, instance.series_id)
            if series is not None:
                series.num_instances -= 1
                series.total_bytes -= instance.size
                study = session.get(Study, series.study_id)
                if study is not None:
                    study.num_instances -= 1
                    study.total_bytes -= instance.size
            session.delete(instance)
            missing += 1
    stale = audit.close_stale()
    report = RecoveryReport(removed, orphans_indexed, quarantined, missing, stale)
    if any(vars(report).values()):
        LOG.warning("recovery: %s", report)
    return report
