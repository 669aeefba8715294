"""Leases on claimed rows: a job or a delivery is held by whoever has its current ``claim_token``.

A worker claims a row with a conditional UPDATE that sets a fresh token and ``lease_expires_at``; the
reconciler takes the row back (clearing the token) once the lease has lapsed. ``LeaseHeartbeat`` is what
keeps a lease alive while the work runs, for jobs (the pipeline) and deliveries (the association) alike:
a thread renews it every third of its length, and ``renew`` / ``guard`` do the same on demand as a
compare-and-set on the token, so a worker that was presumed dead (frozen, partitioned) and comes back
learns it lost the row before it publishes or sends anything more.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Update, update
from sqlalchemy.orm import Session

from dicom_node.errors import DicomNodeError
from dicom_node.index.database import Database
from dicom_node.index.models import Delivery, Job, utcnow

LOG = logging.getLogger(__name__)

Claimable = type[Job] | type[Delivery]


class LeaseLostError(DicomNodeError):
    """Another worker holds the row now (this one was presumed dead): its work is discarded, not published."""


def holder() -> str:
    """``host:pid``: who holds a row this process claims (``worker_host`` of jobs and deliveries)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def claim(
    database: Database,
    model: Claimable,
    row_id: int,
    *,
    waiting: str,
    working: str,
    lease: float,
    **values: Any,
) -> str | None:
    """Take row ``row_id`` if it is ``waiting`` (or ``working`` under a lapsed lease): one conditional
    UPDATE that sets ``working``, a fresh claim token, ``lease`` seconds of lease, one more attempt and
    ``values``; the token, or ``None`` when another worker holds the row or it is done."""
    token = uuid.uuid4().hex
    now = utcnow()
    with database.session() as session:
        result = session.execute(
            update(model)
            .where(
                model.id == row_id,
                (model.state == waiting) | ((model.state == working) & (model.lease_expires_at < now)),
            )
            .values(
                state=working,
                attempts=model.attempts + 1,
                claim_token=token,
                worker_host=holder(),
                lease_expires_at=now + timedelta(seconds=lease),
                **values,
            ),
            execution_options={"synchronize_session": False},
        )
        return token if getattr(result, "rowcount", 0) else None


class LeaseHeartbeat:
    """Extends the lease of one claimed row every third of ``lease`` seconds until the block ends."""

    def __init__(self, database: Database, model: Claimable, row_id: int, token: str, lease: float) -> None:
        self.database = database
        self.model = model
        self.row_id = row_id
        self.token = token
        self.lease = lease
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, name=f"lease-{model.__tablename__}-{row_id}", daemon=True
        )

    def __enter__(self) -> LeaseHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """End the heartbeat (again: a no-op) before the row's outcome is written."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _statement(self) -> Update:
        model = self.model
        return (
            update(model)
            .where(model.id == self.row_id, model.claim_token == self.token)
            .values(lease_expires_at=utcnow() + timedelta(seconds=self.lease))
            .execution_options(synchronize_session=False)
        )

    def guard(self, connection: Connection | Session) -> bool:
        """Renew the lease on ``connection``'s transaction: a compare-and-set on the claim token.

        Run as the first statement of a transaction that publishes work, it fences the publication:
        it commits only while this worker holds the row, and (on PostgreSQL a row lock, on SQLite the
        write lock) no other worker can claim the row before that transaction ends.
        """
        result = connection.execute(self._statement())
        held = bool(getattr(result, "rowcount", 0))
        if not held:
            self.lost.set()
        return held

    def renew(self) -> bool:
        """Renew the lease now, in its own transaction; ``False`` (and ``lost`` set) if the row is gone."""
        with self.database.session() as session:
            return self.guard(session)

    def check(self) -> None:
        """Raise ``LeaseLostError`` unless the lease could be renewed just now."""
        if self.lost.is_set() or not self.renew():
            raise LeaseLostError(
                f"{self.model.__tablename__} {self.row_id}: another worker holds it now (this one was "
                "presumed dead after its lease ran out)"
            )

    def _beat(self) -> None:
        while not self._stop.wait(self.lease / 3):
            try:
                if not self.renew():
                    LOG.warning(
                        "%s %d: lease lost (another worker holds it)", self.model.__tablename__, self.row_id
                    )
                    return
            except Exception:
                LOG.warning(
                    "%s %d: could not renew the lease", self.model.__tablename__, self.row_id, exc_info=True
                )
