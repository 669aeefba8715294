"""Which queued jobs a worker may take along into one batch (``[analysis] batch_size``).

Only the query: the oldest queued jobs of one pipeline, other than the one the worker holds. Claiming
them (the same conditional UPDATE as any claim, so two workers never both take one), their leases and
their outcomes are ``jobs.analysis``'s.
"""

from __future__ import annotations

from sqlalchemy import select

from dicom_node.index.database import Database
from dicom_node.index.models import Job, JobState


def queued_jobs(database: Database, pipeline: str, *, exclude: int, limit: int) -> list[int]:
    """Up to ``limit`` ids of queued ``pipeline`` jobs, oldest first, without ``exclude``."""
    if limit <= 0:
        return []
    with database.sessions() as session:
        rows = session.scalars(
            select(Job.id)
            .where(Job.state == JobState.QUEUED, Job.pipeline == pipeline, Job.id != exclude)
            .order_by(Job.queued_at, Job.id)
            .limit(limit)
        )
        return list(rows)
