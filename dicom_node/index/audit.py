"""The association audit trail: who connected, from where, what was accepted or refused, how it ended."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from sqlalchemy import update

from dicom_node.index.database import Database
from dicom_node.index.models import AssociationOutcome, AssociationRecord, utcnow

LOG = logging.getLogger(__name__)


@dataclass
class _Counts:
    accepted: int = 0
    refused: int = 0
    bytes_accepted: int = 0
    find: int = 0
    move: int = 0
    get: int = 0
    sent: int = 0


class AuditTrail:
    """Writes one ``association`` row per association; counts are kept in memory until it ends."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._counts: dict[int, _Counts] = {}
        self._lock = threading.Lock()

    def opened(
        self,
        *,
        calling_ae: str,
        called_ae: str,
        address: str,
        port: int,
        tls: bool,
        outcome: AssociationOutcome = AssociationOutcome.ACTIVE,
        reason: str | None = None,
    ) -> int:
        with self.database.session() as session:
            record = AssociationRecord(
                calling_ae_title=calling_ae[:16],
                called_ae_title=called_ae[:16],
                peer_address=address,
                peer_port=port,
                tls=tls,
                outcome=outcome,
                reason=reason,
                started_at=utcnow(),
                ended_at=None if outcome is AssociationOutcome.ACTIVE else utcnow(),
                instances_accepted=0,
                instances_refused=0,
                bytes_accepted=0,
            )
            session.add(record)
            session.flush()
            record_id = record.id
        if outcome is AssociationOutcome.ACTIVE:
            with self._lock:
                self._counts[record_id] = _Counts()
        return record_id

    def accepted(self, record_id: int, size: int) -> None:
        with self._lock:
            counts = self._counts.get(record_id)
            if counts is not None:
                counts.accepted += 1
                counts.bytes_accepted += size

    def refused(self, record_id: int) -> None:
        with self._lock:
            counts = self._counts.get(record_id)
            if counts is not None:
                counts.refused += 1

    def queried(self, record_id: int, service: str) -> None:
        """One C-FIND, C-MOVE or C-GET request (``service`` ``find``, ``move`` or ``get``)."""
        with self._lock:
            counts = self._counts.get(record_id)
            if counts is not None:
                setattr(counts, service, getattr(counts, service) + 1)

    def sent(self, record_id: int, instances: int) -> None:
        """Instances a C-MOVE or C-GET of the association sent successfully."""
        with self._lock:
            counts = self._counts.get(record_id)
            if counts is not None:
                counts.sent += instances

    def closed(self, record_id: int, outcome: AssociationOutcome, reason: str | None = None) -> None:
        with self._lock:
            counts = self._counts.pop(record_id, _Counts())
        with self.database.session() as session:
            session.execute(
                update(AssociationRecord)
                .where(AssociationRecord.id == record_id)
                .values(
                    outcome=outcome,
                    reason=reason,
                    ended_at=utcnow(),
                    instances_accepted=counts.accepted,
                    instances_refused=counts.refused,
                    bytes_accepted=counts.bytes_accepted,
                    find_requests=counts.find,
                    move_requests=counts.move,
                    get_requests=counts.get,
                    instances_sent=counts.sent,
                )
            )

    def close_stale(self) -> int:
        """Mark associations left 'active' by a crashed process as aborted; returns how many."""
        with self.database.session() as session:
            result = session.execute(
                update(AssociationRecord)
                .where(AssociationRecord.outcome == AssociationOutcome.ACTIVE)
                .values(
                    outcome=AssociationOutcome.ABORTED,
                    reason="node stopped during the association",
                    ended_at=utcnow(),
                )
            )
            return int(getattr(result, "rowcount", 0) or 0)
