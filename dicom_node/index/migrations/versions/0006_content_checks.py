"""content checks: the checks a job's route requires (``job.requires``) and what they measured
(``job.content_checks``, JSON)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 12:00:00.000000

Jobs created before this revision require no content check; nothing here reads the stored files.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("job") as batch_op:
        batch_op.add_column(sa.Column("requires", sa.String(64), nullable=True))
        batch_op.add_column(sa.Column("content_checks", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job") as batch_op:
        batch_op.drop_column("content_checks")
        batch_op.drop_column("requires")
